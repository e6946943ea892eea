//! The client library's view of its link: the state watch through a server restart, fatal refusals ending the
//! client instead of silent retries.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, ConnectionState, TrustOptions};
use quiver_proto::Limits;
use quiver_server::ServerConfig;
use quiver_tests::{hostile::named, TestServer};

/// The states `watch` (taken before whatever changes them) goes through until `done` says stop (at most 15 s).
async fn states_until(
    mut watch: tokio::sync::watch::Receiver<ConnectionState>,
    done: impl Fn(&ConnectionState) -> bool,
) -> Vec<ConnectionState> {
    let mut seen = vec![watch.borrow_and_update().clone()];
    tokio::time::timeout(Duration::from_secs(15), async {
        while !done(seen.last().unwrap()) {
            watch.changed().await.unwrap();
            seen.push(watch.borrow_and_update().clone());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("states so far: {seen:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_watch_goes_reconnecting_then_connected_across_a_server_restart() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions {
        trust: server.trust(),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let first = client.welcome().session_id;
    let watch = client.state();
    assert_eq!(*watch.borrow(), ConnectionState::Connected { session_id: first, reconnects: 0 });
    let server = server.restart(Limits::default()).await;
    let seen = states_until(watch, |s| matches!(s, ConnectionState::Connected { reconnects: 1, .. })).await;
    let reconnecting = seen.iter().find_map(|s| match s {
        ConnectionState::Reconnecting { last_error, .. } => Some(last_error.clone()),
        _ => None,
    });
    let reason = reconnecting.unwrap_or_else(|| panic!("never reconnecting: {seen:?}"));
    assert!(reason.contains("GoingAway") || reason.contains("going away"), "{reason}");
    let ConnectionState::Connected { session_id, .. } = seen.last().unwrap() else { unreachable!() };
    assert_ne!(*session_id, first, "a new session");
    assert_eq!(client.welcome().session_id, *session_id);
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_after_a_restart_ends_the_client_naming_both_hashes() {
    let server = TestServer::start(Limits::default());
    let pinned = quiver_certs::sha256(&quiver_certs::dev::read(server.data_dir.path()).unwrap());
    let options = ConnectOptions {
        trust: TrustOptions::Pin(pinned),
        token_provider: Some(quiver_client::TokenProvider::dev(server.data_dir.path().into(), "pinned".into())),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let watch = client.state();
    // The same address and data directory's dev key (so the token still verifies), another certificate.
    let other = tempfile::tempdir().unwrap();
    let server = server
        .restart_with(|dir, addr| {
            let (cert, _) = quiver_certs::dev::load_or_generate(other.path(), std::time::SystemTime::now()).unwrap();
            drop(cert);
            ServerConfig {
                tls: quiver_server::TlsSource::Pem {
                    cert: other.path().join(quiver_certs::dev::CERT_FILE),
                    key: other.path().join(quiver_certs::dev::KEY_FILE),
                },
                ..ServerConfig::dev(addr, dir.to_owned())
            }
        })
        .await;
    let presented = quiver_certs::sha256(&quiver_certs::dev::read(other.path()).unwrap());
    let seen = states_until(watch, |s| matches!(s, ConnectionState::Closed { .. })).await;
    let ConnectionState::Closed { reason, .. } = seen.last().unwrap() else { unreachable!() };
    assert!(reason.contains(&pinned.to_string()) && reason.contains(&presented.to_string()), "{reason}");
    let (_, why) = tokio::time::timeout(Duration::from_secs(1), client.closed()).await.unwrap();
    assert_eq!(&why, reason);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_reaches_a_server_bound_to_ipv6_loopback_and_the_port_defaults() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::dev("[::1]:0".parse().unwrap(), data_dir.path().into());
    let server = match quiver_server::Server::bind(config) {
        Ok(server) => server,
        Err(err) => return quiver_tests::skip("localhost_reaches_a_server_bound_to_ipv6_loopback", &format!("{err}")),
    };
    let port = server.local_addr().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let trust = TrustOptions::Auto { data_dir: data_dir.path().into() };
    // Whatever localhost resolves to first here (127.0.0.1 on this machine), the client gets to [::1].
    let client = Client::connect(&format!("localhost:{port}"), trust.clone()).await.unwrap();
    assert!(client.server_addr().is_ipv6(), "{}", client.server_addr());
    client.ping().await.unwrap();
    client.close().await;
    // Without a port: quiver-server's default.
    let err = Client::connect_with(
        "127.0.0.1",
        ConnectOptions { trust, connect_timeout: Duration::from_millis(300), ..ConnectOptions::default() },
    )
    .await;
    if let Err(quiver_client::ConnectError::Resolve { server, .. }) = &err {
        panic!("{server} did not resolve with the default port");
    }
    assert_eq!(quiver_client::DEFAULT_PORT, 4433);
    shutdown.cancel();
    task.await.unwrap();
}

/// Posts wait in the client until acknowledged (across reconnects too); `max_queued_posts` bounds how many, so an
/// application posting faster than the server takes them gets an error instead of ever more memory.
#[tokio::test] // one thread: the server (on this runtime) acknowledges nothing until the test awaits
async fn posts_beyond_max_queued_posts_fail_at_once_and_the_bound_frees_as_posts_are_acknowledged() {
    let server = TestServer::start(Limits::default());
    let client = server.client_with(ConnectOptions { max_queued_posts: 2, ..ConnectOptions::default() }).await.unwrap();
    // Queued at the call: nothing can be acknowledged before these futures are awaited.
    let first = client.post("q", "one");
    let second = client.post("q", "two");
    let third = client.post("q", "three");
    match third.await {
        Err(quiver_client::RequestError::QueueFull { max: 2 }) => {}
        other => panic!("the third post: {other:?}"),
    }
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (1, 2), "the queued ones go through");
    assert_eq!(client.post("q", "four").await.unwrap(), 3, "acknowledged posts free their places");
    client.close().await;
    server.stop().await;
}

/// A server that answers each connection's Hello with a Welcome, then finishes the control stream and leaves the
/// connection open: what a graceful close looks like until the server's close arrives, and, here, forever. Counts
/// the connections it accepted.
///
/// With `close`, each connection is closed 20 ms after its Welcome instead, as by a server in a crash loop.
async fn after_welcome(
    endpoint: quinn::Endpoint,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    close: bool,
) {
    use quiver_proto::{FrameCodec, Reply, Request, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION};
    while let Some(incoming) = endpoint.accept().await {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = FrameCodec::new(Limits::default().max_frame as usize);
            let mut inbound = bytes::BytesMut::new();
            let req_id = loop {
                match codec.decode::<Request>(&mut inbound).unwrap() {
                    Some(Request { req_id, body: RequestBody::Hello(_) }) => break req_id,
                    Some(other) => panic!("expected a Hello first: {other:?}"),
                    None => match recv.read_chunk(usize::MAX, true).await {
                        Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                        _ => return,
                    },
                }
            };
            let welcome = Welcome {
                version: PROTOCOL_VERSION,
                session_id: 1,
                server_time_us: 0,
                identity: "finisher".into(),
                limits: Limits::default(),
            };
            let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Welcome(welcome)) };
            send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
            if close {
                tokio::time::sleep(Duration::from_millis(20)).await;
                conn.close(0u32.into(), b"crashed");
                return;
            }
            send.finish().unwrap();
            conn.closed().await;
        });
    }
}

/// A fake server ([`after_welcome`]) on 127.0.0.1 with a dev certificate in a temporary data directory: the
/// directory (for the client's trust), its address, and the count of connections it accepted.
fn fake_server(close: bool) -> (tempfile::TempDir, String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (dir, endpoint, addr) = fake_endpoint();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(after_welcome(endpoint, accepted.clone(), close));
    (dir, addr, accepted)
}

/// A quinn server endpoint on 127.0.0.1 with a dev certificate in a temporary data directory: the directory (for
/// the client's trust), the endpoint and its address.
fn fake_endpoint() -> (tempfile::TempDir, quinn::Endpoint, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
    let tickets = quiver_transport::tls::session_tickets(|| {}).unwrap();
    let tuning = quiver_transport::TransportTuning::default();
    let config =
        quiver_transport::tls::server_config(cert.chain, cert.key, &Limits::default(), &tuning, tickets).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    (dir, endpoint, addr)
}

/// This thread's CPU time so far (Linux: `/proc/thread-self/schedstat`), `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
}

/// A connection whose control stream ended can take no request: the client neither spins on it (on a current-thread
/// runtime that would starve the very close it waits for) nor keeps it when no close comes, but moves on to a new
/// connection, its post still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_connection_whose_control_stream_ended_waits_without_spinning_and_the_client_moves_on() {
    let (dir, addr, accepted) = fake_server(false);

    // The client on a runtime of one thread of its own: a spin there blocks its timers too, so the test sees it as
    // this thread never answering.
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await;
            let client = client.unwrap();
            let post = client.post("room", "never acknowledged");
            let (cpu, started) = (thread_cpu(), std::time::Instant::now());
            let waited = tokio::time::timeout(quiver_client::CONTROL_GONE_GRACE * 3, post).await;
            let busy = thread_cpu().zip(cpu).map(|(after, before)| (after - before).as_secs_f64());
            done.send((waited.is_err(), busy.map(|busy| busy / started.elapsed().as_secs_f64()))).unwrap();
        });
    });
    let (timed_out, busy) = finished.recv_timeout(Duration::from_secs(30)).expect("the client's runtime stays free");
    assert!(timed_out, "nothing can acknowledge the post");
    // A loop retrying the post on the dead connection kept the thread on the CPU the whole time.
    assert!(busy.is_none_or(|busy| busy < 0.5), "the client's thread was busy {busy:?} of the time while it waited");
    assert!(
        accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the client left the connection without a control stream for a new one"
    );
}

/// A server that accepts and then fails at once (a crash loop) is not hit every 50 ms: the reconnect delays start
/// over only after a connection that lasted (`STABLE_CONNECTION`), so they keep growing here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_a_crash_loop_gets_growing_reconnect_delays() {
    let (dir, addr, accepted) = fake_server(true);
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 50 ms doubling to 5 s: about 7 connections in 3 s (each waited 25-50 ms before: about 80).
    let count = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!((3..=12).contains(&count), "{count} connections in 3 s");
    client.close().await;
}

/// A room joined while the client reconnects is joined once: the application's Join goes to the new connection, and
/// the reconnect does not rejoin the room beside it (the two raced, and the loser's AlreadyJoined failed the
/// application's join while the server kept the membership).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_while_the_client_reconnects_is_joined_once() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions { reconnect_delay: Duration::from_millis(200), ..ConnectOptions::default() };
    let client = server.client_with(options).await.unwrap();
    for round in 0..5 {
        let name = format!("during-{round}");
        client.connection().unwrap().close(0u32.into(), b"test: reconnect");
        let mut room = client.join(&name).await.expect("joined, once");
        client.post(&name, "hi").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(quiver_client::RoomEvent::Message(m)) = room.next().await {
                    return m.body;
                }
            }
        })
        .await
        .expect("the room delivers");
        assert_eq!(&got[..], b"hi");
    }
    client.close().await;
    server.stop().await;
}

/// Waits (up to 10 s) for `room` to deliver a presence event of `member`: `joined` or left.
async fn presence(room: &mut quiver_client::Room, member: &str, joined: bool) {
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match room.next().await {
                Some(quiver_client::RoomEvent::MemberJoined { member: m }) if joined && m == member => return,
                Some(quiver_client::RoomEvent::MemberLeft { member: m }) if !joined && m == member => return,
                Some(_) => {}
                None => panic!("the room ended"),
            }
        }
    });
    seen.await.unwrap_or_else(|_| panic!("{member} {} the room", if joined { "never joined" } else { "never left" }));
}

/// Dropping a `Room` leaves it: the other members see the member go, and a join of the name right after succeeds
/// (before, the membership stayed on the server and in the client, and the join failed with `AlreadyJoined`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_room_is_left_and_can_be_joined_again_at_once() {
    let server = TestServer::start(Limits::default());
    let (alice, bob) = (named(&server, "alice").await, named(&server, "bob").await);
    let mut watched = bob.join("r").await.unwrap();
    for _ in 0..3 {
        let room = alice.join("r").await.unwrap();
        presence(&mut watched, "alice", true).await;
        drop(room);
        presence(&mut watched, "alice", false).await;
    }
    // Dropped and joined again in one go: the new Join waits for the dropped room's Leave.
    let room = alice.join("r").await.unwrap();
    drop(room);
    let _room = alice.join("r").await.expect("joined again right after the drop");
    server.stop().await;
}

/// A join or leave whose future is dropped midway (a timeout around it) still finishes what it started: the
/// control stream is never left with half a frame, a join given up is left once answered, and the room can be
/// joined again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_given_up_midway_leave_nothing_behind() {
    let server = TestServer::start(Limits::default());
    let (alice, bob) = (named(&server, "alice").await, named(&server, "bob").await);
    let mut watched = bob.join("r").await.unwrap();
    for step in 0..40u64 {
        // Given up after 0 to about 2 ms: before the Join is written, while it waits for its reply, or after.
        let after = Duration::from_micros(step * step);
        let _ = tokio::time::timeout(after, alice.join("r")).await;
        let room = alice.join("r").await.unwrap_or_else(|err| panic!("step {step}: {err}"));
        let _ = tokio::time::timeout(after, room.leave()).await;
    }
    let room = alice.join("r").await.expect("joined after it all");
    presence(&mut watched, "alice", true).await;
    room.leave().await.unwrap();
    // Whatever came and went before, alice is not left a member: a newcomer's join lists who the server holds.
    let carol = named(&server, "carol").await;
    let members = carol.join("r").await.unwrap().members();
    assert_eq!(members, ["bob", "carol"], "alice is not a member after her last leave");
    // The connection never saw a broken frame: it still answers.
    alice.ping().await.expect("the control stream is intact");
    server.stop().await;
}

/// A server that lets a room's first stream come late: it answers Join, Leave and Join again of one room before
/// anything of the first Join's stream leaves, then sends both streams, the first one's Open first. (React's
/// StrictMode joins, leaves and joins at once; a lost packet delays a stream the same way.)
async fn late_first_stream(endpoint: quinn::Endpoint) {
    use quiver_proto::{
        EventKind, FrameCodec, Joined, Reply, Request, RequestBody, RoomEvent, RoomFrame, ServerMsg, Welcome,
        PROTOCOL_VERSION,
    };
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let frame = |frame: &RoomFrame| codec.encode_to_vec(frame).unwrap().freeze();
    let event = |seq, kind| RoomFrame::Event(RoomEvent { seq, time_us: 0, kind });
    let joined = |req_id, last_seq| Joined {
        room: "r".into(),
        epoch: 1,
        recovered: true,
        replay_from: last_seq + 1,
        last_seq,
        members: vec!["ann".into()],
        req_id,
    };
    let (mut inbound, mut first) = (bytes::BytesMut::new(), None);
    loop {
        let Request { req_id, body } = match codec.decode::<Request>(&mut inbound).unwrap() {
            Some(request) => request,
            None => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => {
                    inbound.extend_from_slice(&chunk.bytes);
                    continue;
                }
                _ => return,
            },
        };
        let reply = match body {
            RequestBody::Hello(_) => Reply::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                session_id: 1,
                server_time_us: 0,
                identity: "ann".into(),
                limits: Limits::default(),
            }),
            RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
            RequestBody::Leave { room } => Reply::Left { room },
            RequestBody::Join(_) if first.is_none() => {
                // The stream is opened (its id taken) but nothing of it is sent yet.
                first = Some((req_id, conn.open_uni().await.unwrap()));
                Reply::Joined(joined(req_id, 4))
            }
            RequestBody::Join(_) => {
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Joined(joined(req_id, 5))) };
                send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
                let (first_req, mut stream) = first.take().unwrap();
                let ann = EventKind::MemberJoined { member: "ann".into() };
                let left = EventKind::MemberLeft { member: "ann".into() };
                let posted = EventKind::Message { sender: "bob".into(), client_msg_id: 5, body: "early".into() };
                for f in
                    [RoomFrame::Open(joined(first_req, 4)), event(4, ann.clone()), event(5, posted), event(5, left)]
                {
                    stream.write_all(&frame(&f)).await.unwrap();
                }
                stream.finish().unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await; // the first stream's Open is read first
                let mut second = conn.open_uni().await.unwrap();
                let posted = EventKind::Message { sender: "bob".into(), client_msg_id: 6, body: "later".into() };
                for f in [RoomFrame::Open(joined(req_id, 5)), event(5, ann), event(6, posted)] {
                    second.write_all(&frame(&f)).await.unwrap();
                }
                continue;
            }
            other => panic!("unexpected request {other:?}"),
        };
        let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
        send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
    }
}

/// A room joined, left and joined again before the first Join's stream arrived gets only the second Join's stream:
/// each stream's Open frame names its Join. Before, the first stream was taken for the second join's: its events
/// (which the second join never asked for), then the second stream as a spurious `Resumed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_again_does_not_take_the_first_joins_late_stream() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(late_first_stream(endpoint));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    client.join("r").await.unwrap().leave().await.unwrap();
    let mut room = client.join("r").await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        events.push(tokio::time::timeout(Duration::from_secs(10), room.next()).await.unwrap().unwrap());
    }
    let later = match &events[1] {
        quiver_client::RoomEvent::Message(m) => (m.seq, m.body.clone()),
        other => panic!("expected the second join's message, got {other:?} (all: {events:?})"),
    };
    assert_eq!(events[0], quiver_client::RoomEvent::MemberJoined { member: "ann".into() }, "{events:?}");
    assert_eq!(later, (6, bytes::Bytes::from("later")));
    client.close().await;
    server.abort();
}

/// A server that answers Hello and then nothing (a hung process that still holds its connections).
async fn mute_after_welcome(endpoint: quinn::Endpoint) {
    use quiver_proto::{FrameCodec, Reply, Request, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION};
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let mut inbound = bytes::BytesMut::new();
    loop {
        match codec.decode::<Request>(&mut inbound).unwrap() {
            Some(Request { req_id, body: RequestBody::Hello(_) }) => {
                let limits = Limits::default();
                let welcome = Welcome {
                    version: PROTOCOL_VERSION,
                    session_id: 1,
                    server_time_us: 0,
                    identity: "m".into(),
                    limits,
                };
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Welcome(welcome)) };
                send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
            }
            Some(_) => {} // never answered
            None => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                _ => return,
            },
        }
    }
}

/// A server that welcomes the client and then answers nothing does not hang `connect`: the clock offset's Pings
/// give up after `connect_timeout` (they waited forever, and so did the connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_wait_forever_for_the_clock_pings() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(mute_after_welcome(endpoint));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, connect_timeout: Duration::from_secs(1), ..ConnectOptions::default() };
    let connected = tokio::time::timeout(Duration::from_secs(10), Client::connect_with(&addr, options)).await;
    let client = connected.expect("connect returns").expect("connected: the Welcome came");
    client.close().await;
    server.abort();
}

/// Leaving a room (or unsubscribing a channel) while the client reconnects succeeds: the membership went with the
/// connection, and the reconnect does not take the room back (it failed with `NotJoined` from the new connection
/// before, or with the connect timeout while no server answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_while_the_client_reconnects_is_left_without_an_error() {
    let server = TestServer::start(Limits::default());
    let alice = named(&server, "alice").await;
    for _ in 0..3 {
        let room = alice.join("r").await.unwrap();
        let ticks = alice.subscribe("t").await.unwrap();
        alice.connection().unwrap().close(0u32.into(), b"test: reconnect");
        room.leave().await.expect("left");
        ticks.unsubscribe().await.expect("unsubscribed");
        alice.ping().await.expect("reconnected");
        let again = alice.join("r").await.expect("joined again: nothing of the old room was held");
        assert_eq!(again.members(), ["alice"]);
        again.leave().await.unwrap();
    }
    server.stop().await;
}
