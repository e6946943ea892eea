//! The client library's link, continued from `client.rs`: rooms joined and left while it reconnects, given up
//! midway, or raced by a late stream, a kick or a room stream that breaks the protocol; connects given up or
//! refused after the Welcome; calls that go again on the next connection; a server that leaves many room streams
//! inside large frames.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, ConnectionState, TrustOptions};
use quiver_proto::{ErrorCode, Limits};
use quiver_server::ServerConfig;
use quiver_tests::{hostile::named, states_until, TestServer};

use quiver_tests::fakes::{
    broken_room_stream, drops_each_first_request, fake_endpoint, late_first_stream, mute_after_welcome, next_request,
    unfinished_frames, welcome, Dropped, Seen,
};

/// Kicks from a room: rejoined (`SlowConsumer`), or the room's end.
#[path = "client_link/kicks.rs"]
mod kicks;

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
        // (Bounded, and a room that ended fails it at once: an ended room answers None for good.)
        let (got, _) = quiver_tests::messages(&mut room, 1).await;
        assert_eq!(&got[0].body[..], b"hi");
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

/// A server that welcomes the client and then answers nothing does not hang `connect`: the clock offset's Pings
/// give up after `connect_timeout` (they waited forever, and so did the connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_wait_forever_for_the_clock_pings() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(mute_after_welcome(endpoint, tokio::sync::oneshot::channel().0, false));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, connect_timeout: Duration::from_secs(1), ..ConnectOptions::default() };
    let connected = tokio::time::timeout(Duration::from_secs(10), Client::connect_with(&addr, options)).await;
    let client = connected.expect("connect returns").expect("connected: the Welcome came");
    client.close().await;
    server.abort();
}

/// A Welcome in another protocol version than the Hello asked for is refused (it was taken, and the client went on
/// speaking its own version to a server that speaks another): here a client asking for the oldest version, and a
/// server answering in the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_in_another_protocol_version_is_refused() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(mute_after_welcome(endpoint, tokio::sync::oneshot::channel().0, false));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let version = quiver_proto::OLDEST_PROTOCOL_VERSION;
    assert_ne!(version, quiver_proto::PROTOCOL_VERSION, "the fake answers in the newest");
    let options = ConnectOptions { trust, protocol_version: version, ..ConnectOptions::default() };
    let refused = tokio::time::timeout(Duration::from_secs(10), Client::connect_with(&addr, options)).await;
    let err = refused.expect("connect returns").map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("protocol version 5") && err.to_string().contains("asked for 4"), "{err}");
    server.abort();
}

/// A reconnect welcomed in another protocol version than its Hello asked for ends the client with
/// `ProtocolViolation` (the server broke the protocol), as the browser client does; before, with `Internal`,
/// "something failed inside the server". The fake's first connection is welcomed in the Hello's version and
/// closed a second later (the client's connect and clock Pings fit on a loaded machine); every later one is
/// welcomed in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_welcomed_in_another_version_ends_the_client_as_a_protocol_violation() {
    use quiver_proto::{FrameCodec, Reply, RequestBody, ServerMsg, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(async move {
        let mut connections = 0u32..;
        while let Some(incoming) = endpoint.accept().await {
            let first = connections.next() == Some(0);
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
                let codec = FrameCodec::new(Limits::default().max_frame as usize);
                let closing = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    closing.close(0u32.into(), b"crashed");
                });
                let mut inbound = bytes::BytesMut::new();
                while let Some(request) = next_request(&codec, &mut inbound, &mut recv).await {
                    let reply = match request.body {
                        RequestBody::Hello(hello) => {
                            let Reply::Welcome(mut welcome) = welcome("ann") else { unreachable!() };
                            welcome.version = match (first, hello.version == PROTOCOL_VERSION) {
                                (true, _) => hello.version,
                                (false, true) => OLDEST_PROTOCOL_VERSION,
                                (false, false) => PROTOCOL_VERSION,
                            };
                            Reply::Welcome(welcome)
                        }
                        RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
                        _ => continue,
                    };
                    let reply = ServerMsg::Reply { req_id: request.req_id, result: Ok(reply) };
                    if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        reconnect_delay: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.expect("welcomed in the Hello's version");
    let seen = states_until(client.state(), |s| matches!(s, ConnectionState::Closed { .. })).await;
    let Some(ConnectionState::Closed { code, reason }) = seen.last() else { unreachable!() };
    assert_eq!(*code, ErrorCode::ProtocolViolation, "{seen:?}");
    assert!(reason.contains("protocol version"), "{reason}");
    server.abort();
}

/// A connect given up after the Welcome (its future dropped: the caller's own timeout) closes its connection. It
/// stayed open before, kept alive for ever by the client's reader tasks, with no handle left to close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_given_up_after_the_welcome_closes_its_connection() {
    let (dir, endpoint, addr) = fake_endpoint();
    let (welcomed, welcome_sent) = tokio::sync::oneshot::channel();
    let mut server = tokio::spawn(mute_after_welcome(endpoint, welcomed, false));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, connect_timeout: Duration::from_secs(60), ..ConnectOptions::default() };
    let connecting = Client::connect_with(&addr, options);
    tokio::select! {
        connected = connecting => panic!("connect returned although the clock Pings went unanswered: {connected:?}"),
        // The connect now waits for its clock Pings; it is dropped there.
        _ = async { welcome_sent.await.unwrap(); tokio::time::sleep(Duration::from_millis(200)).await } => {}
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
    let closed = closed.expect("the server still holds the connection of a connect given up");
    closed.expect("the fake server's task");
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

/// A room stream that breaks the protocol (here a frame that is no room frame) costs the client its connection,
/// not the room: the client closes the connection with `ProtocolViolation`, reconnects and resumes the room from
/// the last message it got, which then goes on. Before, the room's reader just stopped, and the room with it, for
/// as long as the connection lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_stream_that_breaks_the_protocol_is_resumed_on_a_new_connection() {
    let (dir, endpoint, addr) = fake_endpoint();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(broken_room_stream(endpoint, seen_tx));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    let mut room = client.join("r").await.unwrap();
    let mut messages = Vec::new();
    while messages.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), room.next()).await {
            Ok(Some(quiver_client::RoomEvent::Message(m))) => messages.push((m.seq, m.body)),
            Ok(Some(_)) => {}
            other => panic!("the room stalled after {messages:?}: {other:?}"),
        }
    }
    assert_eq!(messages, [(1, bytes::Bytes::from("first")), (2, bytes::Bytes::from("later"))]);
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap());
    }
    let closed = events.iter().find_map(|e| match e {
        Seen::Closed(1, code, reason) => Some((*code, reason.contains("room r's stream"))),
        _ => None,
    });
    let violation = Some((quiver_proto::ErrorCode::ProtocolViolation, true));
    assert_eq!(closed, violation, "the first connection closed for the violation: {events:?}");
    let resumed = quiver_proto::Position { epoch: 7, seq: 1 };
    assert!(events.iter().any(|e| matches!(e, Seen::Join(2, Some(since)) if *since == resumed)), "{events:?}");
    client.close().await;
    server.abort();
}

/// A Join, Subscribe, claim or History whose connection drops before the answer is sent again on the next
/// connection and succeeds there, instead of failing with `Closed` while the client reconnects on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_connection_drops_before_the_answer_go_again_on_the_next_connection() {
    calls_go_again_on_the_next_connection(Dropped::Unanswered).await;
}

/// The same when each connection goes as a draining server's does (GoAway and the control stream finished a moment
/// before the close): the calls fail on the finished stream while the connection is not closed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_server_drains_before_the_answer_go_again_on_the_next_connection() {
    calls_go_again_on_the_next_connection(Dropped::Draining).await;
}

/// The same when the draining server refuses each call `Unavailable` ("retry once reconnected") before it closes,
/// as a server shutting down does with the requests it still holds: before, the application got the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_draining_server_refuses_unavailable_go_again_on_the_next_connection() {
    calls_go_again_on_the_next_connection(Dropped::Refused).await;
}

async fn calls_go_again_on_the_next_connection(how: Dropped) {
    use quiver_proto::RequestBody;
    let (dir, endpoint, addr) = fake_endpoint();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(drops_each_first_request(endpoint, seen_tx, how));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    let calls = async {
        let mut room = client.join("r").await.expect("the join, sent again after the drop");
        let message = loop {
            match room.next().await {
                Some(quiver_client::RoomEvent::Message(m)) => break m.body,
                Some(_) => {}
                None => panic!("the room ended"),
            }
        };
        assert_eq!(message, bytes::Bytes::from("after the drop"));
        let _subscription = client.subscribe("c").await.expect("the subscribe, sent again after the drop");
        let _publisher = client.publisher("p").await.expect("the claim, sent again after the drop");
        let page = client.history("r", None, 10).await.expect("the history, asked again after the drop");
        assert_eq!(page.messages.len(), 1);
    };
    tokio::time::timeout(Duration::from_secs(30), calls).await.expect("the calls finished");
    // Each went out once on the connection that dropped, then again on a later one.
    let mut tries = std::collections::HashMap::<&str, Vec<usize>>::new();
    while let Ok((connection, body)) = seen.try_recv() {
        let kind = match body {
            RequestBody::Join(_) => "join",
            RequestBody::Subscribe { .. } => "subscribe",
            RequestBody::Publish { .. } => "publish",
            RequestBody::History { .. } => "history",
            _ => "other",
        };
        tries.entry(kind).or_default().push(connection);
    }
    for kind in ["join", "subscribe", "publish", "history"] {
        let on = &tries[kind];
        assert!(on.len() >= 2 && on[0] < on[1], "{kind} sent on connections {on:?}: {tries:?}");
    }
    client.close().await;
    server.abort();
}

/// At `max_rooms`, dropping a `Room` and joining another at once works: the join waits for the dropped room's Leave
/// (written in the background) to be answered. Before, the Join could reach the server first and be refused
/// `TooManyRooms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_rooms_a_join_right_after_dropping_a_room_waits_for_its_leave() {
    let server = TestServer::start(Limits { max_rooms: 1, ..Limits::default() });
    let client = named(&server, "switcher").await;
    let mut room = client.join("room-0").await.unwrap();
    for i in 1..=200 {
        drop(room);
        room = client.join(&format!("room-{i}")).await.unwrap_or_else(|err| panic!("join {i}: {err}"));
    }
    assert_eq!(room.name(), "room-200");
    server.stop().await;
}

/// A join, subscribe or claim the application gave up (its own timeout), with the client then dropped, ends the
/// client: its connection closes. The call's task held a whole handle on the client, which kept it running (its
/// tasks, its connection and keep-alives) for as long as the server did not answer: for ever, here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_after_giving_up_a_call_closes_its_connection() {
    for call in ["join", "subscribe", "publisher"] {
        let (dir, endpoint, addr) = fake_endpoint();
        // Answers Hello and Pings (the connect's clock), nothing else.
        let server = tokio::spawn(mute_after_welcome(endpoint, tokio::sync::oneshot::channel().0, true));
        let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
        let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
        let wait = Duration::from_millis(200);
        let given_up = match call {
            "join" => tokio::time::timeout(wait, client.join("r")).await.is_err(),
            "subscribe" => tokio::time::timeout(wait, client.subscribe("c")).await.is_err(),
            _ => tokio::time::timeout(wait, client.publisher("c")).await.is_err(),
        };
        assert!(given_up, "{call}: the mute server answered");
        drop(client);
        let closed = tokio::time::timeout(Duration::from_secs(5), server).await;
        closed.unwrap_or_else(|_| panic!("{call}: the connection stayed open")).unwrap();
    }
}

/// A node that refuses the session (here: its token keys are not the cluster's, as mid-way through a rolling
/// change) is passed over while another address is left, at the first connect and at a reconnect (the lost address
/// is tried last, so the refuser first): before, its refusal ended the client though another node served. With no
/// other node taking the session within `connect_timeout` the client ends with the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_the_session_is_passed_over_for_the_others() {
    let good = TestServer::start(Limits::default());
    // The same certificate (trusted), its own dev key (the client's token is not one it takes).
    let dir = tempfile::tempdir().unwrap();
    let tls = quiver_server::TlsSource::Pem {
        cert: good.data_dir.path().join(quiver_certs::dev::CERT_FILE),
        key: good.data_dir.path().join(quiver_certs::dev::KEY_FILE),
    };
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    let refuser = TestServer::start_with(ServerConfig { tls, ..dev }, dir);
    // The certificate kept apart from the good node's data directory, which goes with it when it stops for good.
    let trusted = tempfile::tempdir().unwrap();
    let cert = quiver_certs::dev::CERT_FILE;
    std::fs::copy(good.data_dir.path().join(cert), trusted.path().join(cert)).unwrap();
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: trusted.path().to_owned() },
        token: Some(good.token("a")),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    };
    let servers = format!("{},{}", refuser.addr, good.addr);
    let client = Client::connect_with(&servers, options).await.expect("the second server takes the session");
    assert_eq!(client.server_addr(), good.addr);
    assert!(refuser.stats.refusals(ErrorCode::TokenInvalid) >= 1, "the refuser was tried and refused");
    let watch = client.state();
    let good = good.restart(Limits::default()).await;
    let seen = states_until(watch, |s| matches!(s, ConnectionState::Connected { reconnects: 1, .. })).await;
    assert!(
        seen.iter()
            .any(|s| matches!(s, ConnectionState::Reconnecting { last_error, .. } if last_error.contains("refused"))),
        "the refuser was tried on the way: {seen:?}"
    );
    assert_eq!(client.server_addr(), good.addr);
    client.ping().await.unwrap();
    // The good node gone for good: the refusal is the answer once no other address took the session within
    // connect_timeout (passed over for ever, the client would reconnect in silence for ever).
    let watch = client.state();
    good.stop().await;
    let seen = states_until(watch, |s| matches!(s, ConnectionState::Closed { .. })).await;
    let Some(ConnectionState::Closed { code, .. }) = seen.last() else { unreachable!() };
    assert_eq!(*code, ErrorCode::TokenInvalid, "{seen:?}");
    refuser.stop().await;
}

/// A server announcing large frames (here 4 MiB) opens room streams and leaves each inside one: the client holds at
/// most 64 MiB of unfinished frames across a connection's room streams, then closes it as a
/// protocol violation. Before, it took up to a whole frame on every stream it allows: the Welcome's `max_rooms` + 1
/// streams of `max_frame` each, 4,097 × 16 MiB at the ceilings a client believes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_leaving_room_streams_inside_large_frames_is_cut_off() {
    let (dir, endpoint, addr) = fake_endpoint();
    // Twenty streams of 3.5 MiB: 70 MiB, over the bound (64 MiB).
    let server = tokio::spawn(unfinished_frames(endpoint, 20, 7 << 19));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect: false, ..ConnectOptions::default() };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let (code, why) = tokio::time::timeout(Duration::from_secs(30), client.closed()).await.unwrap();
    assert_eq!(code, ErrorCode::ProtocolViolation, "{why}");
    assert!(why.contains("unfinished frames"), "{why}");
    server.abort();
}
