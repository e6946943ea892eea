//! Hostile peers on the control stream, beside a bystander ([`quiver_tests::hostile`]): bytes that are no frame,
//! frames that hold no valid message, a length prefix past `max_frame`, and floods of requests and posts over the
//! rate limits. Each is closed (or its requests refused) with the right code, and the bystander loses nothing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use quiver_proto::{varint, ErrorCode, Limits, Post, Reply, RequestBody, ServerMsg};
use quiver_tests::{
    closed_with,
    hostile::{beside_a_bystander, bounded, frame, hello, named, Control, SEED},
    TestServer,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_control_stream() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 2_000, ..Limits::default() });
        beside_a_bystander(&server, async {
            let mut rng = StdRng::seed_from_u64(SEED);
            for round in 0..8 {
                let conn = server.try_raw().await.unwrap();
                let (mut send, _recv) = conn.open_bi().await.unwrap();
                if round % 2 == 1 {
                    send.write_all(&frame(0, hello(server.token("hostile")))).await.unwrap();
                }
                // More than a frame's worth: whatever length the first bytes announce is there or too large.
                let mut bytes = vec![0u8; 70_000];
                rng.fill(&mut bytes[..]);
                let _ = send.write_all(&bytes).await;
                let (code, reason) = closed_with(&conn).await;
                assert!(
                    matches!(code, ErrorCode::ProtocolViolation | ErrorCode::FrameTooLarge),
                    "round {round} (seed {SEED}): closed with {code}: {reason}"
                );
            }
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!(stats.protocol_violations + stats.frames_too_large, 8, "{stats:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_frame_holding_an_invalid_message() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        beside_a_bystander(&server, async {
            // A whole Ping (whose length prefix is one byte) plus one byte, in one frame.
            let mut trailing = frame(7, RequestBody::Ping { client_time_us: 1 }).split_off(1).to_vec();
            trailing.push(0);
            let bodies: [(&str, Vec<u8>); 4] = [
                ("unknown request variant", vec![0x01, 0x63, 0x00]),
                ("truncated Post", vec![0x02, 0x03, 0x01, b'r']),
                ("invalid UTF-8 room name", vec![0x03, 0x02, 0x02, 0xff, 0xfe]),
                ("trailing bytes", trailing),
            ];
            for (what, body) in bodies {
                let mut control = Control::open(&server).await;
                let mut bytes = BytesMut::new();
                varint::encode(body.len() as u64, &mut bytes).unwrap();
                bytes.extend_from_slice(&body);
                control.send.write_all(&bytes).await.unwrap();
                let (code, reason) = closed_with(&control.conn).await;
                assert_eq!(code, ErrorCode::ProtocolViolation, "{what}: {reason}");
            }
            // Well-formed but not allowed here: a second Hello.
            let mut control = Control::open(&server).await;
            let refused = control.request(1, hello(server.token("hostile"))).await;
            assert_eq!(refused.unwrap_err().code, ErrorCode::HelloRequired);
            assert_eq!(closed_with(&control.conn).await.0, ErrorCode::HelloRequired);
        })
        .await;
        assert_eq!(server.stats.snapshot().protocol_violations, 4);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_length_prefix() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        beside_a_bystander(&server, async {
            // 2^62 - 1 (the largest varint), and max_frame + 1: refused on the prefix, without waiting for a body.
            let prefixes: [&[u8]; 2] = [&[0xff; 8], &[0x80, 0x01, 0x00, 0x01]];
            for (i, prefix) in prefixes.into_iter().enumerate() {
                for with_hello in [false, true] {
                    // The receiving half is kept: dropping it would stop the server's replies (STOP_SENDING), which
                    // the server answers with ControlStreamClosed, possibly before the prefix arrives.
                    let control = if with_hello {
                        let control = Control::open(&server).await;
                        (control.conn, control.send, control.recv)
                    } else {
                        let conn = server.try_raw().await.unwrap();
                        let (send, recv) = conn.open_bi().await.unwrap();
                        (conn, send, recv)
                    };
                    let (conn, mut send, _recv) = control;
                    let sent = Instant::now();
                    send.write_all(prefix).await.unwrap();
                    let (code, reason) = closed_with(&conn).await;
                    assert_eq!(code, ErrorCode::FrameTooLarge, "prefix {i}, hello {with_hello}: {reason}");
                    assert!(sent.elapsed() < Duration::from_secs(2), "closed only after {:?}", sent.elapsed());
                }
            }
        })
        .await;
        assert_eq!(server.stats.snapshot().frames_too_large, 4);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_ping() {
    bounded(async {
        // Burst 400; closed after 4 bursts (1,600) refused within a second.
        let server = TestServer::start(Limits { requests_per_s: 200, ..Limits::default() });
        beside_a_bystander(&server, async {
            let mut control = Control::open(&server).await;
            let mut flood = BytesMut::new();
            for req_id in 1..=5_000 {
                flood.extend_from_slice(&frame(req_id, RequestBody::Ping { client_time_us: req_id }));
            }
            let started = Instant::now();
            let _ = control.send.write_all(&flood).await;
            let (ok, limited) = control.drain().await;
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::RateLimited, "{reason}");
            let allowed = 400 + (200.0 * started.elapsed().as_secs_f64()).ceil() as u64;
            assert!(ok <= allowed, "{ok} pings answered, at most {allowed} allowed");
            assert!(ok >= 399, "the burst is served: {ok}"); // Hello took one token
            assert_eq!(limited, 1_601, "refused until closed");
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!((stats.requests_rate_limited, stats.floods_closed), (1_601, 1), "{stats:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_refused_and_the_connection_stays() {
    bounded(async {
        // Burst 300; the bystander's feeder posts 100/s on its own connection.
        let server = TestServer::start(Limits { requests_per_s: 150, ..Limits::default() });
        beside_a_bystander(&server, async {
            // A library client that sends a burst: the part over the rate is refused, the connection stays.
            let client = named(&server, "eager").await;
            let started = Instant::now();
            let mut pings = JoinSet::new();
            for _ in 0..400 {
                let client = client.clone();
                pings.spawn(async move { client.ping().await });
            }
            let mut limited = 0;
            while let Some(result) = pings.join_next().await {
                if let Err(err) = result.unwrap() {
                    assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
                    limited += 1;
                }
            }
            // Hello and 5 clock pings used 6 of the 300-token burst (refilled meanwhile, never past 300); the bucket
            // refills (150/s) while the burst is served, by as many as this machine's time took from its start (timed
            // from before the connect, a slow connect left nothing to check: at 0.67 s the lowest count was 0).
            let refilled = (150.0 * started.elapsed().as_secs_f64()).ceil() as u64;
            let lowest = 100u64.saturating_sub(refilled);
            assert!((lowest..=106).contains(&limited), "{limited} refused, {refilled} refilled");
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.ping().await.unwrap();
            assert!(client.connection().unwrap().close_reason().is_none());
        })
        .await;
        assert_eq!(server.stats.snapshot().floods_closed, 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_posts() {
    bounded(async {
        // Burst 300 posts (the bystander posts 100/s on its own connection); closed after 1,200 refused.
        let server = TestServer::start(Limits { posts_per_s: 150, ..Limits::default() });
        beside_a_bystander(&server, async {
            let mut control = Control::open(&server).await;
            let mut flood = BytesMut::new();
            for req_id in 1..=3_000u64 {
                let post = Post { room: "spam".into(), client_msg_id: req_id, body: vec![b'x'; 100].into() };
                flood.extend_from_slice(&frame(req_id, RequestBody::Post(post)));
            }
            let started = std::time::Instant::now();
            let _ = control.send.write_all(&flood).await;
            let (ok, limited) = control.drain().await;
            assert_eq!(closed_with(&control.conn).await.0, ErrorCode::RateLimited);
            // The burst, plus what the bucket refilled (150/s) while the server worked through the flood: each
            // accepted post waits for its store commit, so how many depends on this machine's disk, not a constant.
            let refilled = (150.0 * started.elapsed().as_secs_f64()).ceil() as u64;
            assert!((300..=305 + refilled).contains(&ok), "{ok} posts accepted, {refilled} refilled");
            assert_eq!(limited, 1_201);
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!((stats.posts_rate_limited, stats.floods_closed), (1_201, 1), "{stats:?}");
        server.stop().await;
    })
    .await;
}

/// A server with `frame_timeout_ms`, and a client `name` welcomed on it whose control stream takes only 1 KiB
/// before the server must wait for it to read (it reads nothing from the receive half, which it must keep: dropped,
/// it would stop the server's sending).
async fn reading_little(
    frame_timeout_ms: u32,
    name: &str,
) -> (TestServer, quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let budget = quiver_server::Budget { frame_timeout_ms, ..quiver_server::Budget::default() };
    let server = TestServer::start_with_budget(budget);
    let mut config =
        quiver_client::quinn_client_config(&server.trust(), server.addr, quiver_proto::ALPN_QUIVER).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(1024));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint.connect_with(config, server.addr, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(0, hello(server.token(name)))).await.unwrap();
    (server, conn, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_replies_is_closed_within_the_frame_timeout() {
    bounded(async {
        let (server, conn, mut send, _recv) = reading_little(300, "sleeper").await;
        // Pings whose replies it never reads: a few KiB, within the request rate.
        for req_id in 1..=200 {
            send.write_all(&frame(req_id, RequestBody::Ping { client_time_us: 1 })).await.unwrap();
        }
        let started = Instant::now();
        let (code, reason) = closed_with(&conn).await;
        assert_eq!(code, ErrorCode::SlowConsumer, "{reason}");
        assert!(reason.contains("did not read"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5), "closed within about the frame timeout");
        assert_eq!(server.stats.refusals(ErrorCode::SlowConsumer), 1);
        assert_eq!(server.stats.snapshot().frame_timeouts, 1, "a breach of frame_timeout_ms (its metric)");
        server.stop().await;
    })
    .await;
}

/// What a client can make the server hold while the server does not read its control stream (here: stuck
/// writing replies the client never reads) is two frames' worth, not quinn's default 1.25 MB per stream (with 256
/// connections from one address, 320 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_make_the_server_buffer_more_than_two_frames_it_has_not_read() {
    bounded(async {
        // (A frame timeout the flood cannot outlast on a loaded machine: the connection must still be open after.)
        let (server, conn, mut send, _recv) = reading_little(30_000, "hoarder").await;
        // Replies it never reads, until the server waits to write one and stops reading.
        let pings: Vec<u8> = (1..=100).flat_map(|id| frame(id, RequestBody::Ping { client_time_us: 1 })).collect();
        send.write_all(&pings).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Then as much as the server's flow control lets it send: well-formed requests (a server that went on
        // reading would take them, not close the connection for a malformed frame).
        let flood: Vec<u8> =
            (101..).flat_map(|id| frame(id, RequestBody::Ping { client_time_us: 1 })).take(4 << 20).collect();
        let mut accepted = 0;
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), send.write(&flood[accepted..])).await {
            accepted += n;
        }
        let window = quiver_transport::tuning::server_receive_windows(&Limits::default()).0 as usize;
        assert!(accepted <= window + pings.len(), "the client got {accepted} bytes into the server unread");
        // (Not refused outright: the window was there to fill.)
        assert!(accepted >= window / 2, "only {accepted} bytes of a {window}-byte window went in");
        assert!(conn.close_reason().is_none(), "the connection is still open: {:?}", conn.close_reason());
        conn.close(0u32.into(), b"done"); // (the server's write, stuck on it for the frame timeout, ends)
        server.stop().await;
    })
    .await;
}

/// A burst of small requests with large replies (History pages of a frame each) is answered a frame at a time, as
/// the peer reads them, not buffered whole (a 16 KiB burst of History requests made over 100 MB of replies): every
/// request still gets its reply, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_history_requests_is_answered_in_order_a_frame_at_a_time() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        let writer = server.client().await;
        let body = vec![b'h'; 4_000];
        for _ in 0..40 {
            writer.post("archive", body.clone()).await.unwrap();
        }
        let mut control = Control::open(&server).await;
        let mut burst = BytesMut::new();
        for req_id in 1..=100 {
            let history = RequestBody::History { room: "archive".into(), since: None, limit: 100 };
            burst.extend_from_slice(&frame(req_id, history));
        }
        control.send.write_all(&burst).await.unwrap();
        for expected in 1..=100 {
            match control.next().await {
                Some(ServerMsg::Reply { req_id, result: Ok(Reply::History(page)) }) => {
                    assert_eq!(req_id, expected, "replies in request order");
                    assert!(!page.messages.is_empty(), "a page of the room's history");
                }
                other => panic!("reply {expected}: {other:?}"),
            }
        }
        writer.close().await;
        server.stop().await;
    })
    .await;
}

/// A client that pipelines posts and then finishes its control stream gets every post's reply before the server
/// closes (the posts wait for their store commit; the close used to come first and lose their replies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_pipelined_before_the_client_finishes_its_control_stream_are_all_answered() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        let mut control = Control::open(&server).await;
        let mut posts = BytesMut::new();
        for req_id in 1..=50u64 {
            let post = Post { room: "last-words".into(), client_msg_id: req_id, body: vec![b'w'; 100].into() };
            posts.extend_from_slice(&frame(req_id, RequestBody::Post(post)));
        }
        control.send.write_all(&posts).await.unwrap();
        control.send.finish().unwrap();
        for expected in 1..=50u64 {
            match control.next().await {
                Some(ServerMsg::Reply { req_id, result: Ok(Reply::Posted { seq, .. }) }) => {
                    assert_eq!((req_id, seq), (expected, expected), "every post answered, in order");
                }
                other => panic!("post {expected}: {other:?}"),
            }
        }
        let (code, reason) = closed_with(&control.conn).await;
        assert_eq!(code, ErrorCode::NoError, "{reason}");
        server.stop().await;
    })
    .await;
}

/// A client that sends requests answered at once (Pings) and finishes its control stream in the same write gets
/// every reply before the server closes: replies written just before the FIN was read used to be dropped by a close
/// that did not wait for them to leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answered_at_once_before_the_client_finishes_are_all_answered() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        for round in 0..20u64 {
            let mut control = Control::open(&server).await;
            let mut pings = BytesMut::new();
            for req_id in 1..=3u64 {
                pings.extend_from_slice(&frame(req_id, RequestBody::Ping { client_time_us: req_id }));
            }
            control.send.write_all(&pings).await.unwrap();
            control.send.finish().unwrap();
            for expected in 1..=3u64 {
                match control.next().await {
                    Some(ServerMsg::Reply { req_id, result: Ok(Reply::Pong { .. }) }) if req_id == expected => {}
                    other => panic!("round {round}, ping {expected}: {other:?}"),
                }
            }
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::NoError, "{reason}");
        }
        server.stop().await;
    })
    .await;
}
