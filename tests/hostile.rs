//! Hostile peers, end to end: a real server on 127.0.0.1:0, raw quinn connections doing what no client should, and
//! beside them a well-behaved `quiver_client::Client` (a "bystander") joined to a room and subscribed to a tick
//! channel. Each test asserts that the hostile connection is closed (or its requests refused) with the right code,
//! and that the bystander keeps receiving every room message, in order with no gap, and ticks during and after the
//! attack. Randomness is seeded (`SEED`), so a failure reproduces. Every loop is bounded in count and time.
#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quiver_client::{Client, ConnectOptions, RoomEvent};
use quiver_proto::{
    varint, ErrorCode, FrameCodec, Hello, Limits, Post, Reply, Request, RequestBody, ServerMsg, TickHeader,
    ALPN_QUIVER, PROTOCOL_VERSION,
};
use quiver_tests::{closed_with, read_msg, TestServer};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The seed of every random byte in this file.
const SEED: u64 = 0x5157_4956_4552; // "QUIVER"

/// The longest any one test may take.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// How long an attack is kept up at least, so that "during" means something.
const ATTACK_AT_LEAST: Duration = Duration::from_millis(300);

/// The bystander's room and tick channel.
const ROOM: &str = "town";
const CHANNEL: &str = "prices";

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

fn frame(req_id: u64, body: RequestBody) -> BytesMut {
    codec().encode_to_vec(&Request { req_id, body }).unwrap()
}

fn hello(token: String) -> RequestBody {
    RequestBody::Hello(Hello { version: PROTOCOL_VERSION, agent: "hostile".into(), name: None, token: Some(token) })
}

/// A bare QUIC connection (its own endpoint, so nothing is shared with other connections), or why not.
async fn connect_raw(server: &TestServer) -> Result<quinn::Connection, quinn::ConnectionError> {
    let config = quiver_client::quinn_client_config(&server.trust(), server.addr, ALPN_QUIVER).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint.connect(server.addr, "localhost").unwrap().await
}

/// A raw connection's control stream after a successful Hello.
struct Control {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Control {
    async fn open(server: &TestServer) -> Control {
        let conn = connect_raw(server).await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame(0, hello(server.token("hostile")))).await.unwrap();
        let mut control = Control { conn, send, recv, buf: BytesMut::new() };
        let welcome = control.next().await;
        assert!(matches!(welcome, Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(_)) })), "{welcome:?}");
        control
    }

    async fn next(&mut self) -> Option<ServerMsg> {
        tokio::time::timeout(Duration::from_secs(10), read_msg(&mut self.recv, &mut self.buf)).await.unwrap()
    }

    /// Sends a request and returns its reply.
    async fn request(&mut self, req_id: u64, body: RequestBody) -> Result<Reply, quiver_proto::Failure> {
        self.send.write_all(&frame(req_id, body)).await.unwrap();
        match self.next().await {
            Some(ServerMsg::Reply { req_id: got, result }) if got == req_id => result,
            other => panic!("no reply to {req_id}: {other:?}"),
        }
    }

    async fn ping(&mut self, req_id: u64) {
        let reply = self.request(req_id, RequestBody::Ping { client_time_us: 1 }).await;
        assert!(matches!(reply, Ok(Reply::Pong { .. })), "{reply:?}");
    }

    /// Reads replies until the stream ends; counts them by outcome (`Ok`, `RateLimited`).
    async fn drain(&mut self) -> (u64, u64) {
        let (mut ok, mut limited) = (0, 0);
        while let Some(msg) = self.next().await {
            match msg {
                ServerMsg::Reply { result: Ok(_), .. } => ok += 1,
                ServerMsg::Reply { result: Err(f), .. } if f.code == ErrorCode::RateLimited => limited += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (ok, limited)
    }
}

/// What the bystander saw.
#[derive(Debug, Default)]
struct Seen {
    /// Room message seqs with their arrival.
    messages: Vec<(u64, Instant)>,
    /// Tick arrivals.
    ticks: Vec<Instant>,
    /// Other room events that mean the connection was disturbed (`Resumed`).
    resumed: Vec<RoomEvent>,
}

/// A well-behaved pair of clients: `feeder` posts to the room every 10 ms and publishes a tick every 5 ms;
/// `watcher` is joined to the room and subscribed to the channel and records what arrives.
struct Bystander {
    stop_feeding: CancellationToken,
    stop_watching: CancellationToken,
    feeding: tokio::task::JoinHandle<JoinSet<Result<u64, quiver_client::RequestError>>>,
    watching: tokio::task::JoinHandle<quiver_client::TickStats>,
    seen: Arc<Mutex<Seen>>,
    watcher: Client,
    _feeder: Client,
}

async fn named(server: &TestServer, name: &str) -> Client {
    let options =
        ConnectOptions { name: Some(name.into()), token: Some(server.token(name)), ..ConnectOptions::default() };
    server.client_with(options).await.unwrap()
}

impl Bystander {
    async fn start(server: &TestServer) -> Bystander {
        let watcher = named(server, "watcher").await;
        let mut room = watcher.join(ROOM).await.unwrap();
        let mut ticks = watcher.subscribe(CHANNEL).await.unwrap();
        let feeder = named(server, "feeder").await;
        let publisher = feeder.publisher(CHANNEL).await.unwrap();
        let (stop_feeding, stop_watching) = (CancellationToken::new(), CancellationToken::new());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watching = {
            let (seen, stop) = (seen.clone(), stop_watching.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = ticks.next() => seen.lock().unwrap().ticks.push(Instant::now()),
                        event = room.next() => match event {
                            Some(RoomEvent::Message(m)) => seen.lock().unwrap().messages.push((m.seq, Instant::now())),
                            Some(resumed @ RoomEvent::Resumed { .. }) => seen.lock().unwrap().resumed.push(resumed),
                            Some(_) => {}
                            None => return ticks.stats(),
                        },
                        () = stop.cancelled() => return ticks.stats(),
                    }
                }
            })
        };
        let feeding = {
            let (feeder, stop) = (feeder.clone(), stop_feeding.clone());
            tokio::spawn(async move {
                let mut posts = JoinSet::new();
                let mut interval = tokio::time::interval(Duration::from_millis(5));
                // Bounded: at most 60 s of feeding.
                for i in 0..12_000u64 {
                    tokio::select! {
                        _ = interval.tick() => {}
                        () = stop.cancelled() => break,
                    }
                    let _ = publisher.send(format!("tick {i}"));
                    if i % 2 == 0 {
                        posts.spawn(feeder.post(ROOM, format!("message {i}")));
                    }
                }
                posts
            })
        };
        // Flowing before the attack starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Bystander { stop_feeding, stop_watching, feeding, watching, seen, watcher, _feeder: feeder }
    }

    /// Stops feeding and checks: every post acknowledged and delivered once, in order, with no gap, on a
    /// connection that was never disturbed; ticks arrived during `attack` and after it.
    async fn check(self, attack: (Instant, Instant)) {
        let (started, ended) = attack;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let finished = Instant::now();
        self.stop_feeding.cancel();
        let mut posts = self.feeding.await.unwrap();
        let mut acked = Vec::new();
        while let Some(result) = tokio::time::timeout(Duration::from_secs(10), posts.join_next()).await.unwrap() {
            acked.push(result.unwrap().expect("the bystander's post is accepted"));
        }
        acked.sort_unstable();
        let posted = acked.len() as u64;
        assert!(posted > 20, "the bystander posted only {posted} messages");
        assert_eq!(acked, (1..=posted).collect::<Vec<_>>(), "acknowledged seqs");
        // The last posts may still be on their way to the watcher.
        for _ in 0..200 {
            if self.seen.lock().unwrap().messages.len() as u64 >= posted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.stop_watching.cancel();
        let tick_stats = self.watching.await.unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let seqs: Vec<u64> = seen.messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=posted).collect::<Vec<_>>(), "room messages in order, no gap, no duplicate");
        assert!(seen.resumed.is_empty(), "the bystander's connection was disturbed: {:?}", seen.resumed);
        let count = |from: Instant, to: Instant| seen.ticks.iter().filter(|t| **t >= from && **t <= to).count();
        let during = count(started, ended);
        let after = count(ended, finished);
        assert!(during > 0 && after > 0, "ticks during the attack: {during}, after: {after}");
        let in_attack: Vec<Instant> =
            seen.messages.iter().map(|(_, t)| *t).filter(|t| *t >= started && *t <= ended).collect();
        assert!(!in_attack.is_empty(), "no room message arrived during the attack");
        let gap = seen.ticks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        eprintln!(
            "bystander: {posted} messages ({} during the attack), {} ticks ({during} during, {after} after), \
             longest gap between ticks {gap:?}",
            in_attack.len(),
            seen.ticks.len()
        );
        assert!(gap < Duration::from_secs(1), "ticks stopped for {gap:?}");
        assert_eq!((tick_stats.lost, tick_stats.stale_dropped), (0, 0), "no tick lost: {tick_stats:?}");
        assert!(self.watcher.connection().unwrap().close_reason().is_none(), "the bystander is still connected");
    }
}

/// Runs `attack` (for at least [`ATTACK_AT_LEAST`]) beside a bystander, then checks the bystander.
async fn beside_a_bystander(server: &TestServer, attack: impl Future<Output = ()>) {
    let bystander = Bystander::start(server).await;
    let started = Instant::now();
    tokio::time::timeout(TEST_BOUND, attack).await.expect("the attack ends in time");
    tokio::time::sleep_until((started + ATTACK_AT_LEAST).into()).await;
    bystander.check((started, Instant::now())).await;
}

/// Runs a test body within [`TEST_BOUND`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_BOUND, test).await.expect("test bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_control_stream() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 2_000, ..Limits::default() });
        beside_a_bystander(&server, async {
            let mut rng = StdRng::seed_from_u64(SEED);
            for round in 0..8 {
                let conn = connect_raw(&server).await.unwrap();
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
                    let control = if with_hello {
                        let control = Control::open(&server).await;
                        (control.conn, control.send)
                    } else {
                        let conn = connect_raw(&server).await.unwrap();
                        let (send, _) = conn.open_bi().await.unwrap();
                        (conn, send)
                    };
                    let (conn, mut send) = control;
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
async fn hundreds_of_streams_at_once() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        beside_a_bystander(&server, async {
            for bidi in [true, false] {
                let control = Control::open(&server).await;
                let mut opening = JoinSet::new();
                for i in 0..300u32 {
                    let conn = control.conn.clone();
                    opening.spawn(async move {
                        // Most wait for stream credit the server never grants; all end when the connection does.
                        let mut send = if bidi { conn.open_bi().await?.0 } else { conn.open_uni().await? };
                        let _ = send.write_all(&i.to_be_bytes()).await;
                        Ok::<_, quinn::ConnectionError>(())
                    });
                }
                let (code, reason) = closed_with(&control.conn).await;
                assert_eq!(code, ErrorCode::ProtocolViolation, "bidi {bidi}: {reason}");
                let all_done = async { while opening.join_next().await.is_some() {} };
                tokio::time::timeout(Duration::from_secs(5), all_done)
                    .await
                    .expect("the openers end with the connection");
            }
        })
        .await;
        assert_eq!(server.stats.snapshot().protocol_violations, 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_streams_sent_to_the_server() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 1_000, ..Limits::default() });
        beside_a_bystander(&server, async {
            let control = Control::open(&server).await;
            let mut uni = control.conn.open_uni().await.unwrap();
            uni.write_all(b"not a room stream").await.unwrap();
            uni.finish().unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
            assert!(reason.contains("unidirectional"), "{reason}");
            // Only unidirectional streams, never a control stream: nobody reads them, and Hello never comes.
            let conn = connect_raw(&server).await.unwrap();
            for _ in 0..3 {
                let mut uni = conn.open_uni().await.unwrap();
                uni.write_all(b"x").await.unwrap();
            }
            assert_eq!(closed_with(&conn).await.0, ErrorCode::HandshakeTimeout);
        })
        .await;
        server.stop().await;
    })
    .await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_sends_hello() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 500, ..Limits::default() });
        beside_a_bystander(&server, async {
            // One opens no stream at all; one opens the control stream and sends half a frame; one sends a
            // request that is not Hello first (refused at once).
            let silent = connect_raw(&server).await.unwrap();
            let mute = connect_raw(&server).await.unwrap();
            let (mut send, _recv) = mute.open_bi().await.unwrap();
            send.write_all(&[0x10]).await.unwrap();
            let started = Instant::now();
            assert_eq!(closed_with(&silent).await.0, ErrorCode::HandshakeTimeout);
            assert_eq!(closed_with(&mute).await.0, ErrorCode::HandshakeTimeout);
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
            let rude = connect_raw(&server).await.unwrap();
            let (mut send, _recv) = rude.open_bi().await.unwrap();
            send.write_all(&frame(3, RequestBody::Ping { client_time_us: 0 })).await.unwrap();
            assert_eq!(closed_with(&rude).await.0, ErrorCode::HelloRequired);
        })
        .await;
        assert_eq!(server.stats.snapshot().handshake_timeouts, 2);
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
            // Hello and 5 clock pings used 6 of the 300-token burst; a few more come back while they are served.
            assert!((80..=106).contains(&limited), "{limited} refused");
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
            let _ = control.send.write_all(&flood).await;
            let (ok, limited) = control.drain().await;
            assert_eq!(closed_with(&control.conn).await.0, ErrorCode::RateLimited);
            assert!((300..=330).contains(&ok), "{ok} posts accepted");
            assert_eq!(limited, 1_201);
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!((stats.posts_rate_limited, stats.floods_closed), (1_201, 1), "{stats:?}");
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

fn is_refused(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_from_one_ip() {
    bounded(async {
        // The bystander holds two connections; three more fit.
        let limits = Limits { max_connections_per_ip: 5, ..Limits::default() };
        let server = TestServer::start(limits);
        beside_a_bystander(&server, async {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(Control::open(&server).await);
            }
            for _ in 0..3 {
                let conn = connect_raw(&server).await.expect("accepted, to be told why it is closed");
                let (code, reason) = closed_with(&conn).await;
                assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
                assert!(reason.contains("127.0.0.1 is at max_connections_per_ip (5)"), "{reason}");
            }
            // A library client sees the code too.
            let options =
                ConnectOptions { token: Some(server.token("late")), reconnect: false, ..ConnectOptions::default() };
            let err = server.client_with(options).await.unwrap_err();
            assert!(err.to_string().contains("max_connections_per_ip"), "{err}");
            // One leaves: one more may come.
            let leaving = held.pop().unwrap();
            leaving.conn.close(0u32.into(), b"bye");
            drop(leaving);
            tokio::time::sleep(Duration::from_millis(200)).await;
            held.push(Control::open(&server).await);
            held[0].ping(1).await;
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!(stats.connections_over_per_ip, 4, "{stats:?}");
        assert_eq!(stats.retries_over_limit, 4, "each was made to validate its address first: {stats:?}");
        server.stop().await;

        // The server-wide limit.
        let server = TestServer::start(Limits { max_connections: 4, max_connections_per_ip: 4, ..Limits::default() });
        beside_a_bystander(&server, async {
            let _held = [Control::open(&server).await, Control::open(&server).await];
            let conn = connect_raw(&server).await.unwrap();
            let (code, reason) = closed_with(&conn).await;
            assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
            assert!(reason.contains("max_connections (4)"), "{reason}");
        })
        .await;
        assert_eq!(server.stats.snapshot().connections_over_total, 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_over_the_rate_are_retried_then_refused() {
    bounded(async {
        // Burst 10 new connections per address, 5 a second after; the bystander uses 2.
        let server = TestServer::start(Limits { new_connections_per_s_per_ip: 5, ..Limits::default() });
        beside_a_bystander(&server, async {
            let mut outcomes = Vec::new();
            for _ in 0..12 {
                outcomes.push(connect_raw(&server).await);
            }
            let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
            assert!((8..=11).contains(&admitted), "{admitted} admitted");
            for err in outcomes.iter().filter_map(|o| o.as_ref().err()) {
                assert!(is_refused(err), "{err}");
            }
            // Once the address's bucket is full again (2 s at 5/s), connections come in without a Retry.
            tokio::time::sleep(Duration::from_millis(2_300)).await;
            let retries = server.stats.snapshot().retries_over_rate;
            let mut control = Control::open(&server).await;
            control.ping(1).await;
            assert_eq!(server.stats.snapshot().retries_over_rate, retries);
        })
        .await;
        let stats = server.stats.snapshot();
        assert!(stats.retries_over_rate >= 1 && stats.connections_refused_over_rate >= 1, "{stats:?}");
        server.stop().await;
    })
    .await;
}
