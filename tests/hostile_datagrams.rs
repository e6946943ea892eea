//! Hostile peers on the datagram path, beside a bystander ([`quiver_tests::hostile`]): datagrams of random bytes
//! and a publisher over its tick rate. They are dropped and counted without closing the connection, and the
//! bystander's ticks keep coming.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use quiver_proto::{Limits, Reply, RequestBody, TickHeader};
use quiver_tests::{
    hostile::{beside_a_bystander, bounded, Control, SEED},
    TestServer,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_with_random_content() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        beside_a_bystander(&server, async {
            let mut rng = StdRng::seed_from_u64(SEED + 1);
            let mut control = Control::open(&server).await;
            let max = control.conn.max_datagram_size().expect("datagrams are on");
            for i in 0..3_000u32 {
                let mut datagram = vec![0u8; rng.gen_range(1..=max)];
                rng.fill(&mut datagram[..]);
                control.conn.send_datagram(datagram.into()).unwrap();
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Dropped and counted; the connection is not closed for them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            control.ping(1).await;
            assert!(control.conn.close_reason().is_none());
        })
        .await;
        let stats = server.stats.snapshot();
        assert!(stats.datagrams_malformed + stats.datagrams_unknown_channel > 2_000, "{stats:?}");
        server.stop().await;
    })
    .await;
}

/// A post copy whose frame is not a post (garbage, or another request) is dropped and counted as a malformed
/// datagram, as docs/protocol.md says (it was dropped in silence), and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_copy_that_holds_no_post_is_counted_as_malformed() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        let mut control = Control::open(&server).await;
        let before = server.stats.snapshot().datagrams_malformed;
        // Whole frames (a length, then its bytes) that are no request, twice (the first or the second is due).
        let garbage = bytes::Bytes::from_static(&[3, 0xff, 0xff, 0xff]);
        let mut datagram = BytesMut::new();
        quiver_proto::copies::encode_posts(1, &[garbage.clone(), garbage], &mut datagram).unwrap();
        control.conn.send_datagram(datagram.freeze()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats.snapshot().datagrams_malformed == before {
            assert!(Instant::now() < deadline, "a post copy holding garbage was counted nowhere");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        control.ping(1).await;
        assert!(control.conn.close_reason().is_none());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_its_tick_rate() {
    bounded(async {
        // Burst 1,000 ticks; the bystander publishes 200/s on its own connection.
        let server = TestServer::start(Limits { ticks_per_s: 500, ..Limits::default() });
        let started = Instant::now();
        beside_a_bystander(&server, async {
            let mut control = Control::open(&server).await;
            let reply = control.request(1, RequestBody::Publish { channel: "spam".into(), max_age_ms: None }).await;
            let Ok(Reply::Publishing { channel_id, .. }) = reply else { panic!("{reply:?}") };
            for seq in 0..20_000u64 {
                let mut datagram = BytesMut::new();
                TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut datagram).unwrap();
                datagram.extend_from_slice(b"spam");
                control.conn.send_datagram(datagram.freeze()).unwrap();
                if seq % 500 == 499 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            control.ping(2).await;
        })
        .await;
        let stats = server.stats.snapshot();
        assert!(stats.ticks_rate_limited > 10_000, "{stats:?}");
        // Everything published: the bystander's ticks and at most the spammer's burst plus its rate.
        let bystander_ticks = 200 * (started.elapsed().as_millis() as u64) / 1000 + 10;
        let spam_allowed = 1_000 + 500 * (started.elapsed().as_millis() as u64) / 1000;
        assert!(stats.ticks_published <= bystander_ticks + spam_allowed, "{stats:?}");
        server.stop().await;
    })
    .await;
}

/// A publisher's ticks reordered on the way up (or repeated): the server stamps ticks in the order they arrive, so
/// without a look at the publisher's own seq the older value would reach every subscriber as the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_reordered_tick_is_not_published_as_the_newest() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        let client = server.client().await;
        let mut subscription = client.subscribe("feed").await.unwrap();
        let mut control = Control::open(&server).await;
        let reply = control.request(1, RequestBody::Publish { channel: "feed".into(), max_age_ms: None }).await;
        let Ok(Reply::Publishing { channel_id, .. }) = reply else { panic!("{reply:?}") };
        let tick = |seq: u64, payload: &[u8]| {
            let mut datagram = BytesMut::new();
            TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut datagram).unwrap();
            datagram.extend_from_slice(payload);
            datagram.freeze()
        };
        // As a path that reorders delivers them: 5000, then 4999 and 4998.
        for (seq, payload) in [(5000, &b"new"[..]), (4999, b"old"), (4998, b"older")] {
            control.conn.send_datagram(tick(seq, payload)).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
        assert_eq!(&first.payload[..], b"new");
        // Until the server has taken the two older ticks (polled: a loaded machine may take longer than a fixed wait).
        let counted = tokio::time::timeout(Duration::from_secs(10), async {
            while server.stats.snapshot().ticks_reordered_in < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        counted.await.expect("the reordered ticks reached the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(&subscription.latest().unwrap().payload[..], b"new", "an older tick became the latest");
        let stats = server.stats.snapshot();
        assert_eq!((stats.ticks_published, stats.ticks_reordered_in), (1, 2), "{stats:?}");
        // The same seq again is taken (a client that numbers nothing), as is one far back (a client that numbers
        // anew), and the publisher's next tick goes on.
        for (seq, payload) in [(5000, &b"same"[..]), (1, b"anew"), (2, b"next")] {
            control.conn.send_datagram(tick(seq, payload)).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
            assert_eq!(&got.payload[..], payload);
        }
        server.stop().await;
    })
    .await;
}

/// A tick larger than the server's paths carry (Quiver's clients never publish one; a raw client whose path found
/// a larger MTU can): dropped on arrival and counted once. Before, it took the channel's next seq and went to every
/// subscriber, whose path refused it one by one (a `max_datagram` breach each, and a lost tick for all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_larger_than_the_servers_paths_is_dropped_on_arrival() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        let client = server.client().await;
        let mut subscription = client.subscribe("wide").await.unwrap();
        // A raw client with quinn's path MTU discovery (Quiver's clients keep 1,200 B): on loopback it finds larger
        // packets.
        let mut config =
            quiver_client::quinn_client_config(&server.trust(), server.addr, quiver_proto::ALPN_QUIVER).unwrap();
        let mut transport = quinn::TransportConfig::default();
        transport.mtu_discovery_config(Some(quinn::MtuDiscoveryConfig::default()));
        config.transport_config(std::sync::Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(server.addr, "localhost").unwrap().await.unwrap();
        let mut control = Control::over(conn, &server).await;
        let reply = control.request(1, RequestBody::Publish { channel: "wide".into(), max_age_ms: None }).await;
        let Ok(Reply::Publishing { channel_id, .. }) = reply else { panic!("{reply:?}") };
        let started = Instant::now();
        while control.conn.max_datagram_size().unwrap_or(0) < 1_300 {
            assert!(started.elapsed() < Duration::from_secs(10), "no larger path found");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tick = |seq: u64, size: usize| {
            let mut datagram = BytesMut::new();
            TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut datagram).unwrap();
            datagram.extend_from_slice(&vec![b'w'; size]);
            datagram.freeze()
        };
        control.conn.send_datagram(tick(1, 1_250)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        control.conn.send_datagram(tick(2, 100)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
        assert_eq!(got.payload.len(), 100);
        // A portable datagram (1,148 bytes) that holds a payload over the portable payload (1,124) thanks to its
        // short header (3 bytes): sent on with the channel's seq (8 bytes from 2^30) or a larger id it would not fit
        // every subscriber's path. Before, it passed (the publisher's own datagram fitted).
        let short = tick(3, quiver_proto::MAX_PORTABLE_DATAGRAM - 3);
        assert_eq!(short.len(), quiver_proto::MAX_PORTABLE_DATAGRAM);
        control.conn.send_datagram(short).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        control.conn.send_datagram(tick(4, 100)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
        assert_eq!(got.payload.len(), 100);
        assert_eq!(subscription.stats().lost, 0, "no seq was taken for the large ones");
        let stats = server.stats.snapshot();
        assert_eq!((stats.ticks_too_large_in, stats.ticks_too_large, stats.ticks_published), (2, 0, 2), "{stats:?}");
        server.stop().await;
    })
    .await;
}
