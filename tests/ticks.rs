//! Ticks end to end over real quinn on loopback: fan-out, latest-wins after a pause, payload limits, hostile
//! datagrams counted and ignored.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use quiver_client::{TickError, TickPublisher};
use quiver_proto::{
    ErrorCode, FrameCodec, Hello, Limits, Reply, Request, RequestBody, ServerMsg, TickHeader, PROTOCOL_VERSION,
};
use quiver_tests::{read_msg, tick_within, TestServer};
use tokio::time::Instant;

/// Publishes `count` ticks, one every `interval`; returns the publisher's last seq.
async fn publish(publisher: &TickPublisher, count: u64, interval: Duration) -> u64 {
    let start = Instant::now();
    let mut last = 0;
    for i in 0..count {
        quiver_lab::pace::until(start + interval * i as u32).await;
        last = publisher.send(i.to_be_bytes().to_vec()).unwrap();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_to_a_hundred_subscribers() {
    let server = TestServer::start(Limits::default());
    let mut subscribers = Vec::new();
    for _ in 0..100 {
        let client = server.client().await;
        let subscription = client.subscribe("prices").await.unwrap();
        subscribers.push((client, subscription));
    }
    let publisher_client = server.client().await;
    let publisher = publisher_client.publisher("prices").await.unwrap();
    let mut readers = tokio::task::JoinSet::new();
    for (client, mut subscription) in subscribers {
        readers.spawn(async move {
            let mut seqs = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    let Some(tick) = subscription.next().await else { break };
                    seqs.push(tick.seq);
                    if tick.seq >= 200 {
                        break;
                    }
                }
            })
            .await;
            drop(client);
            (seqs, subscription.stats())
        });
    }
    publish(&publisher, 200, Duration::from_millis(2)).await;
    let mut total = 0;
    while let Some(result) = readers.join_next().await {
        let (seqs, stats) = result.unwrap();
        assert!(!seqs.is_empty(), "a subscriber received nothing");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs strictly increasing: {seqs:?}");
        assert_eq!(stats.stale_dropped, 0);
        total += stats.received;
    }
    // Loopback loses nothing, but a loaded 2-core machine may conflate a few: most ticks arrive everywhere.
    assert!(total >= 100 * 150, "only {total} of 20,000 deliveries");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_pauses_gets_the_newest_tick_not_the_backlog() {
    let server = TestServer::start(Limits::default());
    let sub_client = server.client().await;
    let mut subscription = sub_client.subscribe("game").await.unwrap();
    let pub_client = server.client().await;
    let publisher = pub_client.publisher("game").await.unwrap();
    let publishing = tokio::spawn(async move {
        let last = publish(&publisher, 1500, Duration::from_millis(1)).await;
        (publisher, last)
    });
    let first = tick_within(&mut subscription, Duration::from_secs(10)).await.expect("a tick");
    // Stop reading for a while; the publisher goes on at 1 kHz.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let latest_now = subscription.latest().unwrap().seq;
    let after_pause = tick_within(&mut subscription, Duration::from_secs(10)).await.expect("a tick");
    assert!(after_pause.seq > first.seq + 300, "a backlog was delivered: {} after {}", after_pause.seq, first.seq);
    // The first after the pause is the newest there was when it was asked for (or newer): the backlog was
    // replaced, tick by tick, not queued (superseded here, or replaced at the server: lost).
    assert!(
        after_pause.seq >= latest_now,
        "first tick after the pause ({}) is older than {latest_now}",
        after_pause.seq
    );
    let skipped = subscription.stats();
    assert!(skipped.superseded + skipped.lost >= 300, "{skipped:?}");
    let (_publisher, last) = publishing.await.unwrap();
    assert!(last >= 1500);
    let stats = subscription.stats();
    assert!(stats.latency.count > 0 && stats.latency.p50_us > 0, "{stats:?}");
    server.stop().await;
}

/// A subscription's reader is not left waiting forever: unsubscribing ends every handle of the channel (they share
/// one subscription), and a client that ends ends its subscriptions' readers, each with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_for_its_readers_when_unsubscribed_or_when_the_client_ends() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    let first = client.subscribe("feed").await.unwrap();
    let mut second = client.subscribe("feed").await.unwrap();
    let mut other = client.subscribe("other").await.unwrap();
    let waiting = tokio::spawn(async move { (second.next().await, second.end_reason()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.unsubscribe().await.unwrap();
    let (tick, why) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the reader ends").unwrap();
    assert!(tick.is_none(), "{tick:?}");
    assert_eq!(why.map(|(code, _)| code), Some(ErrorCode::NoError));
    // Subscribed again: a new subscription, which ticks reach.
    let mut again = client.subscribe("feed").await.unwrap();
    assert_eq!(again.end_reason(), None);
    client.publisher("feed").await.unwrap().send("after").unwrap();
    let tick = tokio::time::timeout(Duration::from_secs(5), again.next()).await.expect("a tick");
    assert_eq!(tick.map(|t| t.payload), Some("after".into()));

    assert_eq!(other.end_reason(), None);
    let publisher = client.publisher("other").await.unwrap();
    assert_eq!(publisher.end_reason(), None);
    client.close().await;
    // A publisher of a closed client is done, with the client's reason: not `NotConnected` (reconnecting), which a
    // publisher's loop retries for ever.
    let sent = publisher.send("after the close");
    assert!(matches!(sent, Err(TickError::Ended { code: ErrorCode::NoError, .. })), "{sent:?}");
    assert!(matches!(publisher.max_payload(), Err(TickError::Ended { .. })));
    assert_eq!(publisher.end_reason().map(|(code, _)| code), Some(ErrorCode::NoError));
    let tick = tokio::time::timeout(Duration::from_secs(5), other.next()).await;
    assert!(matches!(tick, Ok(None)), "a closed client's subscription reader gets None: {tick:?}");
    assert!(again.next_batch().await.is_none());
    assert_eq!(other.end_reason().map(|(code, _)| code), Some(ErrorCode::NoError));
    server.stop().await;
}

#[tokio::test]
async fn oversized_payload_is_refused_naming_the_maximum() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    let publisher = client.publisher("big").await.unwrap();
    let max = publisher.max_payload().unwrap();
    assert!(max > 1000 && max < 1500, "max payload {max}");
    let err = publisher.send(vec![0u8; max + 1]).unwrap_err();
    assert_eq!(err, TickError::TooLarge { size: max + 1, max_payload: max });
    assert!(err.to_string().contains(&format!("maximum payload is {max} bytes")), "{err}");
    publisher.send(vec![0u8; max]).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unclaimed_datagrams_are_counted_and_ignored() {
    let server = TestServer::start(Limits::default());
    let watcher = server.client().await;
    let mut subscription = watcher.subscribe("feed").await.unwrap();
    let good = server.client().await;
    let publisher = good.publisher("feed").await.unwrap();

    // A hostile peer: says Hello, subscribes (so it has a channel id) but never claims it, then sends junk.
    let conn = server.raw().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let token = Some(server.token("hostile"));
    let hello = Hello { version: PROTOCOL_VERSION, agent: "hostile".into(), name: None, token };
    let mut out = codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) }).unwrap();
    codec.encode(&Request { req_id: 1, body: RequestBody::Subscribe { channel: "feed".into() } }, &mut out).unwrap();
    send.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    read_msg(&mut recv, &mut buf).await.unwrap();
    let Some(ServerMsg::Reply { result: Ok(Reply::Subscribed { channel_id, .. }), .. }) =
        read_msg(&mut recv, &mut buf).await
    else {
        panic!("no Subscribed")
    };
    let tick = |channel_id: u64| {
        let mut d = BytesMut::new();
        TickHeader { channel_id, seq: 1, sent_time_us: 1 }.encode(&mut d).unwrap();
        d.put_slice(b"junk");
        d.freeze()
    };
    for _ in 0..20 {
        conn.send_datagram(bytes::Bytes::from_static(&[0xff])).unwrap(); // header cut short
        conn.send_datagram(tick(channel_id)).unwrap(); // subscribed, not claimed
        conn.send_datagram(tick(999)).unwrap(); // never assigned
        publisher.send(b"real".to_vec()).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let received = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
    assert_eq!(received.payload, "real");
    // Every tick published either arrives or is counted lost: waited for (one still on its way after a fixed
    // wait counted as neither).
    let started = std::time::Instant::now();
    let accounted = || {
        let (s, sub) = (server.stats.snapshot(), subscription.stats());
        s.ticks_published == sub.received + sub.lost
    };
    while !accounted() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.stats.snapshot();
    assert!(stats.datagrams_malformed >= 15, "{stats:?}");
    assert!(stats.datagrams_unclaimed >= 15, "{stats:?}");
    assert!(stats.datagrams_unknown_channel >= 15, "{stats:?}");
    assert_eq!(stats.ticks_published, subscription.stats().received + subscription.stats().lost);
    assert!(conn.close_reason().is_none(), "the hostile connection is not disconnected for junk datagrams");
    server.stop().await;
}

#[tokio::test]
async fn subscription_and_channel_limits_have_their_codes() {
    let server = TestServer::start(Limits { max_subscriptions: 2, max_publish_channels: 1, ..Limits::default() });
    let client = server.client().await;
    let _a = client.subscribe("a").await.unwrap();
    let _b = client.subscribe("b").await.unwrap();
    assert_eq!(client.subscribe("c").await.unwrap_err().code(), Some(ErrorCode::TooManySubscriptions));
    let _p = client.publisher("a").await.unwrap();
    assert_eq!(client.publisher("z").await.unwrap_err().code(), Some(ErrorCode::TooManyChannels));
    let err = client.request(RequestBody::Unsubscribe { channel: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_publishers_survive_a_reconnect() {
    let server = TestServer::start(Limits::default());
    let sub_client = server.client().await;
    let mut subscription = sub_client.subscribe("live").await.unwrap();
    let pub_client = server.client().await;
    let publisher = pub_client.publisher("live").await.unwrap();
    // A second publisher of the channel shares the first's numbering (and claim, put back after the reconnect too).
    let second = pub_client.publisher("live").await.unwrap();
    assert_eq!((publisher.send(b"zero".to_vec()).unwrap(), second.send(b"zero".to_vec()).unwrap()), (1, 2));
    publisher.send(b"one".to_vec()).unwrap();
    let one = async { while subscription.next().await.expect("the subscription goes on").payload != "one" {} };
    tokio::time::timeout(Duration::from_secs(5), one).await.unwrap();
    sub_client.connection().unwrap().close(0u32.into(), b"test");
    pub_client.connection().unwrap().close(0u32.into(), b"test");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match publisher.send(b"two".to_vec()) {
                Ok(_) => {}
                Err(TickError::NotConnected) => {}
                Err(err) => panic!("{err}"),
            }
            if let Ok(tick) = tokio::time::timeout(Duration::from_millis(20), subscription.next()).await {
                break tick.expect("the subscription goes on");
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.payload, "two");
    assert!(second.send(b"three".to_vec()).is_ok(), "the first publisher's claim was put back for the second too");
    server.stop().await;
}

/// Dropping a channel's last `TickSubscription` unsubscribes it, as dropping a `Room` leaves: a front end that opens
/// and closes panels never runs into `max_subscriptions` (it did: the subscriptions stayed, resubscribed at every
/// reconnect). A handle still held keeps the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_of_a_subscription_unsubscribes() {
    let server = TestServer::start(Limits { max_subscriptions: 2, ..Limits::default() });
    let client = server.client().await;
    for round in 0..5 {
        let panel = client.subscribe(&format!("panel-{round}")).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(panel);
    }
    // Two handles of one channel: dropping one keeps the subscription for the other.
    let held = client.subscribe("kept").await.unwrap();
    drop(client.subscribe("kept").await.unwrap());
    let publisher = client.publisher("kept").await.unwrap();
    let mut held = held;
    let tick = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            publisher.send("x").unwrap();
            if let Some(tick) = tick_within(&mut held, Duration::from_millis(50)).await {
                break tick;
            }
        }
    })
    .await
    .expect("the channel still held gets its ticks");
    assert_eq!(tick.payload, "x");
    server.stop().await;
}

/// A subscribe given up midway (a timeout around it) leaves no handle behind: the subscription it made meanwhile
/// is unsubscribed like a dropped one (its handle was counted and never handed out, and the channel stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_given_up_midway_leaves_no_subscription_behind() {
    let server = TestServer::start(Limits { max_subscriptions: 2, ..Limits::default() });
    let client = server.client().await;
    for step in 0..30u64 {
        // Given up after 0 to about 3.5 ms: before the Subscribe is written, while it waits for its reply, or after.
        let after = Duration::from_micros(step * step * 4);
        drop(tokio::time::timeout(after, client.subscribe(&format!("c{step}"))).await);
    }
    // None is held: two channels fit again (once the background unsubscribes are written).
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match (client.subscribe("a").await, client.subscribe("b").await) {
                (Ok(a), Ok(b)) => break (a, b),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(both.is_ok(), "subscriptions given up midway are still held");
    server.stop().await;
}

/// A dropped `TickPublisher` is not claimed again after a reconnect: a front end that publishes on many channels
/// over time stays within `max_publish_channels` (64) on each connection. Before, every channel ever published was
/// claimed again at each reconnect, so new claims were refused `TooManyChannels` (or an arbitrary claim ended). A
/// publisher still held is claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_publishers_are_not_claimed_again_after_a_reconnect() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    let kept = client.publisher("kept").await.unwrap();
    for i in 0..60 {
        drop(client.publisher(&format!("gone-{i}")).await.unwrap());
    }
    // Published again on the same connection: numbered on (the server drops a seq below the newest it took from
    // this connection as reordered).
    let again = client.publisher("gone-0").await.unwrap();
    assert_eq!(again.send(b"a".to_vec()).unwrap(), 1);
    drop(again);
    assert_eq!(client.publisher("gone-0").await.unwrap().send(b"b".to_vec()).unwrap(), 2);
    let first = client.welcome().session_id;
    client.connection().unwrap().close(0u32.into(), b"test");
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.welcome().session_id == first || client.connection().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reconnected");
    let mut fresh = Vec::new();
    for i in 0..30 {
        fresh.push(client.publisher(&format!("new-{i}")).await.unwrap_or_else(|err| panic!("new-{i}: {err}")));
    }
    assert!(kept.end_reason().is_none() && kept.send(b"still".to_vec()).is_ok(), "the held claim was put back");
    server.stop().await;
}

/// A version-4 session has no Unpublish: `unpublish()` ends the publishers and leaves the claim with the connection,
/// as a dropped publisher's. It sent Unpublish anyway, the server refused it `Unsupported`, and the call failed with
/// the claim ended on the client and kept on the server (the browser client had the same defect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_on_a_version_4_session_ends_the_publishers_without_asking_the_server() {
    let server = TestServer::start(Limits::default());
    let options = quiver_client::ConnectOptions { protocol_version: 4, ..quiver_client::ConnectOptions::default() };
    let client = server.client_with(options).await.unwrap();
    let publisher = client.publisher("match.1").await.unwrap();
    let sharing = client.publisher("match.1").await.unwrap();
    let watcher = server.client().await;
    let mut subscription = watcher.subscribe("match.1").await.unwrap();
    // Ticks numbered up to 300 taken by the server, which keeps the claim (no Unpublish on version 4) with that
    // numbering until the connection ends.
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let seq = publisher.send(b"first".to_vec()).unwrap();
            if seq >= 300 && tick_within(&mut subscription, Duration::from_millis(50)).await.is_some() {
                return;
            }
        }
    });
    arrived.await.expect("the first publisher's ticks");
    publisher.unpublish().await.expect("not refused");
    assert!(matches!(sharing.send(b"late".to_vec()), Err(TickError::Ended { .. })), "ended for both");
    // A new publisher of the channel numbers on: numbered from 1 again, its ticks were dropped by the server as
    // older than the claim's newest (reordered), every one of the first 300, and `send` said nothing.
    let again = client.publisher("match.1").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            again.send(b"again".to_vec()).unwrap();
            if let Some(tick) = tick_within(&mut subscription, Duration::from_millis(50)).await {
                if &tick.payload[..] == b"again" {
                    return tick;
                }
            }
        }
    })
    .await
    .expect("the new publisher's ticks get through");
    assert_eq!(&got.payload[..], b"again");
    assert_eq!(server.stats.snapshot().ticks_reordered_in, 0);
    server.stop().await;
}

/// A publisher that goes through many channels (one per match) gives each up when done: `max_publish_channels`
/// counts the claims held now, not every claim the connection ever made. Unpublishing ends the claim for every
/// publisher sharing it, and a later publisher of the channel claims it anew and reaches its subscribers. Before,
/// the protocol had no Unpublish and the connection met `TooManyChannels` after its 64th match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_unpublishes_goes_through_more_channels_than_its_limit() {
    let server = TestServer::start(Limits { max_publish_channels: 2, ..Limits::default() });
    let publisher_client = server.client().await;
    for game in 0..10 {
        let publisher = publisher_client.publisher(&format!("match.{game}")).await.unwrap();
        publisher.send(b"kick-off".to_vec()).unwrap();
        publisher.unpublish().await.unwrap();
    }
    let shared = publisher_client.publisher("match.10").await.unwrap();
    let sharing = publisher_client.publisher("match.10").await.unwrap();
    let _other = publisher_client.publisher("match.11").await.unwrap();
    let err = publisher_client.publisher("match.12").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyChannels), "{err}");
    shared.unpublish().await.unwrap();
    assert!(matches!(sharing.send(b"late".to_vec()), Err(TickError::Ended { .. })), "ended for both");
    assert_eq!(sharing.end_reason().map(|(code, _)| code), Some(ErrorCode::NoError));
    sharing.unpublish().await.unwrap(); // ended already: nothing to do
    let not_claimed = publisher_client.request(RequestBody::Unpublish { channel: "match.10".into() }).await;
    assert_eq!(not_claimed.unwrap_err().code(), Some(ErrorCode::NotJoined));
    // Claimed anew, its ticks reach a subscriber.
    let watcher = server.client().await;
    let mut subscription = watcher.subscribe("match.10").await.unwrap();
    let again = publisher_client.publisher("match.10").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            again.send(b"rematch".to_vec()).unwrap();
            if let Some(tick) = tick_within(&mut subscription, Duration::from_millis(50)).await {
                return tick;
            }
        }
    })
    .await
    .expect("a tick of the new claim");
    assert_eq!(&got.payload[..], b"rematch");
    // A channel the publishing connection also subscribes to: the new claim numbers from 1 again, and its ticks are
    // not taken for late ones of the old claim (a claim given up never hands its id on).
    again.unpublish().await.unwrap();
    let mut own = publisher_client.subscribe("match.20").await.unwrap();
    let first = publisher_client.publisher("match.20").await.unwrap();
    for n in 0..50u8 {
        first.send(vec![n]).unwrap();
    }
    // Every one of them taken by the server before the claim is given up.
    tokio::time::timeout(Duration::from_secs(10), async {
        while own.next().await.is_some_and(|tick| tick.payload[..] != [49]) {}
    })
    .await
    .expect("the first claim's last tick");
    first.unpublish().await.unwrap();
    let second = publisher_client.publisher("match.20").await.unwrap();
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            assert!(second.send(b"fresh".to_vec()).unwrap() < 1_000, "numbered from 1");
            if let Some(tick) = tick_within(&mut own, Duration::from_millis(50)).await {
                if &tick.payload[..] == b"fresh" {
                    return tick;
                }
            }
        }
    })
    .await
    .expect("the second claim's ticks get through");
    assert_eq!(&fresh.payload[..], b"fresh");
    assert_eq!(server.stats.snapshot().ticks_reordered_in, 0, "none taken for a late tick of the old claim");
    server.stop().await;
}

/// Dropping a channel's last publisher gives its claim up (as dropping the last subscription handle unsubscribes):
/// a publisher made and dropped per match counted against `max_publish_channels` until the connection ended, and
/// the next match's channel was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_publisher_gives_its_claim_up() {
    let server = TestServer::start(Limits { max_publish_channels: 1, ..Limits::default() });
    let client = server.client().await;
    let first = client.publisher("match.1").await.unwrap();
    first.send(b"over".to_vec()).unwrap();
    drop(first);
    // Given up in the background: the next channel is taken once it is.
    let started = std::time::Instant::now();
    let next = loop {
        match client.publisher("match.2").await {
            Ok(next) => break next,
            Err(err) => {
                assert_eq!(err.code(), Some(quiver_proto::ErrorCode::TooManyChannels), "{err}");
                assert!(started.elapsed() < Duration::from_secs(5), "the dropped publisher's claim was kept");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    next.send(b"next match".to_vec()).unwrap();
    // A publisher made again at once shares nothing with the dropped one's claim being given up.
    let again = client.publisher("match.2").await.unwrap();
    drop(next);
    again.send(b"still claimed".to_vec()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(again.end_reason().is_none(), "{:?}", again.end_reason());
    server.stop().await;
}
