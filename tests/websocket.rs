//! The WebSocket fallback end to end: a WebSocket client and a QUIC client in one room see one order; ticks,
//! history and resume work the same over it; `Auto` falls back when UDP does not get through and stays on the
//! WebSocket; hostile upgrades and messages get clear errors.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, Message, Room, RoomEvent, Transport, TransportKind};
use quiver_proto::{ErrorCode, Limits};
use quiver_tests::TestServer;

const WAIT: Duration = Duration::from_secs(30);

fn named(name: &str) -> ConnectOptions {
    ConnectOptions { name: Some(name.into()), ..ConnectOptions::default() }
}

/// Waits (at most [`WAIT`]) until the client is connected again after a reconnect.
async fn reconnected(states: &mut tokio::sync::watch::Receiver<quiver_client::ConnectionState>) {
    tokio::time::timeout(WAIT, async {
        loop {
            states.changed().await.unwrap();
            if matches!(*states.borrow(), quiver_client::ConnectionState::Connected { reconnects: 1.., .. }) {
                break;
            }
        }
    })
    .await
    .expect("reconnected");
}

async fn messages(room: &mut Room, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    tokio::time::timeout(WAIT, async {
        while messages.len() < count {
            if let RoomEvent::Message(m) = room.next().await.expect("room stream ended") {
                messages.push(m);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} messages within {WAIT:?}", messages.len()));
    messages
}

/// The listener before the upgrade.
#[path = "websocket/listener.rs"]
mod listener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_and_a_quic_client_see_one_order() {
    let server = TestServer::start(Limits { history_max_messages: 5_000, ..Limits::default() });
    let quic = server.client_with(ConnectOptions { transport: Transport::Quic, ..named("ann") }).await.unwrap();
    let ws = server.ws_client_with(named("bob")).await.unwrap();
    assert_eq!(quic.transport(), Some(TransportKind::Quic));
    assert_eq!(ws.transport(), Some(TransportKind::WebSocket));
    assert!(ws.connection().is_none(), "no QUIC connection underneath");
    let mut rooms = [quic.join("town").await.unwrap(), ws.join("town").await.unwrap()];
    let mut posters = tokio::task::JoinSet::new();
    for client in [&quic, &ws] {
        let client = client.clone();
        posters.spawn(async move {
            for i in 0..300 {
                client.post("town", format!("{i}")).await.unwrap();
            }
        });
    }
    while let Some(done) = posters.join_next().await {
        done.unwrap();
    }
    let seen_quic = messages(&mut rooms[0], 600).await;
    let seen_ws = messages(&mut rooms[1], 600).await;
    let order = |ms: &[Message]| ms.iter().map(|m| (m.seq, m.sender.clone(), m.body.clone())).collect::<Vec<_>>();
    assert_eq!(order(&seen_quic), order(&seen_ws), "one order for both transports");
    let seqs: Vec<u64> = seen_ws.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>(), "contiguous, nothing lost or doubled");
    let senders: std::collections::BTreeSet<&str> = seen_ws.iter().map(|m| m.sender.as_str()).collect();
    assert_eq!(senders.len(), 2);
    for from in senders {
        let bodies: Vec<String> = seen_ws
            .iter()
            .filter(|m| m.sender == from)
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        assert_eq!(bodies, (0..300).map(|i| i.to_string()).collect::<Vec<_>>(), "{from}'s posts in its order");
    }
    // History over the WebSocket is the same.
    let page = ws.history("town", None, 50).await.unwrap();
    assert_eq!(page.messages.len(), 50);
    assert_eq!(server.stats.accepted_websocket.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_cross_between_transports() {
    let server = TestServer::start(Limits::default());
    let publisher = server.ws_client_with(named("pub")).await.unwrap();
    let quic = server.client_with(ConnectOptions { transport: Transport::Quic, ..named("q") }).await.unwrap();
    let ws = server.ws_client_with(named("w")).await.unwrap();
    let on_quic = quic.subscribe("prices").await.unwrap();
    let on_ws = ws.subscribe("prices").await.unwrap();
    let ticker = publisher.publisher("prices").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut got_quic, mut got_ws) = (false, false);
    let mut seq = 0u64;
    while !(got_quic && got_ws) {
        assert!(tokio::time::Instant::now() < deadline, "ticks arrive over both transports");
        seq += 1;
        ticker.send(bytes::Bytes::from(seq.to_string())).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        got_quic |= on_quic.latest().is_some();
        got_ws |= on_ws.latest().is_some();
    }
    let too_big = bytes::Bytes::from(vec![0u8; 2000]);
    assert!(matches!(ticker.send(too_big), Err(quiver_client::TickError::TooLarge { .. })));
    // The largest tick the WebSocket publisher may send reaches the QUIC subscriber too. Before, it was offered
    // the WebSocket's own 1,200-byte datagrams (1,176 B of payload), more than a QUIC path carries (about 1,162 B
    // of datagram): the server dropped such ticks for every QUIC and WebTransport subscriber, and nobody was told.
    let max = ticker.max_payload().unwrap();
    assert_eq!(max, quiver_proto::TickHeader::MAX_PORTABLE_PAYLOAD);
    let largest = bytes::Bytes::from(vec![7u8; max]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the largest tick reaches the QUIC subscriber");
        ticker.send(largest.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if on_quic.latest().is_some_and(|tick| tick.payload == largest) {
            break;
        }
    }
    assert!(ticker.send(bytes::Bytes::from(vec![0u8; max + 1])).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_when_udp_is_blocked_and_stays_there() {
    let server = TestServer::start(Limits::default());
    let ws_port = server.websocket.unwrap().port();
    // A UDP port nobody answers on (bound, never read), where the WebSocket listener's TCP port is: QUIC goes
    // unanswered, as behind a firewall that drops UDP.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic_addr = blackhole.local_addr().unwrap();
    const FALLBACK: Duration = Duration::from_millis(1500);
    let options = ConnectOptions {
        trust: server.trust(),
        transport: Transport::Auto,
        fallback_after: FALLBACK,
        websocket_port: Some(ws_port),
        // (The reconnect below measures the transport chosen, not the backoff a slow restart would grow.)
        reconnect_max_delay: Duration::from_millis(200),
        ..named("fallback")
    };
    let started = std::time::Instant::now();
    let client = Client::connect_with(&quic_addr.to_string(), options).await.unwrap();
    let took = started.elapsed();
    assert_eq!(client.transport(), Some(TransportKind::WebSocket));
    assert!(took >= FALLBACK && took < FALLBACK + Duration::from_secs(3), "fell back after {took:?}");
    let mut room = client.join("lobby").await.unwrap();
    client.post("lobby", "over tcp").await.unwrap();
    assert_eq!(messages(&mut room, 1).await[0].body, &b"over tcp"[..]);

    // The choice is kept: after the server goes and comes back, the client reconnects over the WebSocket at once,
    // without giving QUIC its 1.5 s again.
    let mut states = client.state();
    let server = server.restart(Limits::default()).await;
    let lost = std::time::Instant::now();
    reconnected(&mut states).await;
    assert!(lost.elapsed() < FALLBACK, "reconnected over the WebSocket in {:?}", lost.elapsed());
    assert_eq!(client.transport(), Some(TransportKind::WebSocket));
    client.post("lobby", "again").await.unwrap();
    drop(server);
}

/// A client whose WebSocket won once (UDP blocked then) still tries QUIC when the WebSocket is gone (its port or
/// proxy down, a node that serves none): it used to reconnect over the WebSocket only, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_goes_back_to_quic_when_the_websocket_it_won_with_is_gone() {
    let server = TestServer::start(Limits::default());
    let ws_port = server.websocket.unwrap().port();
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic_addr = blackhole.local_addr().unwrap();
    let options = ConnectOptions {
        trust: server.trust(),
        transport: Transport::Auto,
        fallback_after: Duration::from_millis(300),
        websocket_port: Some(ws_port),
        ..named("roamer")
    };
    let client = Client::connect_with(&quic_addr.to_string(), options).await.unwrap();
    assert_eq!(client.transport(), Some(TransportKind::WebSocket));
    let mut states = client.state();
    // The server moves where UDP went unanswered, and serves no WebSocket any more.
    drop(blackhole);
    let server = server
        .restart_with(move |dir, _| {
            let dev = quiver_server::ServerConfig::dev(quic_addr, dir.to_owned());
            let web = quiver_server::WebConfig { websocket: quiver_server::WebSocketListen::Off, ..dev.web.clone() };
            quiver_server::ServerConfig { web, ..dev }
        })
        .await;
    reconnected(&mut states).await;
    assert_eq!(client.transport(), Some(TransportKind::Quic));
    client.post("r", "back on QUIC").await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_resumes_after_the_server_drops_it() {
    let server = TestServer::start(Limits::default());
    let client = server.ws_client_with(named("resumer")).await.unwrap();
    let poster = server.client_with(ConnectOptions { transport: Transport::Quic, ..named("poster") }).await.unwrap();
    let mut room = client.join("r").await.unwrap();
    poster.post("r", "one").await.unwrap();
    assert_eq!(messages(&mut room, 1).await[0].seq, 1);
    let mut states = client.state();
    // The server goes away and comes back on the same ports: the client reconnects over the WebSocket.
    let server = server.restart(Limits::default()).await;
    reconnected(&mut states).await;
    assert_eq!(client.transport(), Some(TransportKind::WebSocket));
    let poster = server.client_with(named("poster2")).await.unwrap();
    poster.post("r", "two").await.unwrap();
    let next = messages(&mut room, 1).await;
    assert_eq!((next[0].seq, &next[0].body[..]), (2, &b"two"[..]), "no gap, no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_refusals_reach_websocket_clients_with_their_codes() {
    let server = TestServer::start(Limits { max_rooms: 1, ..Limits::default() });
    let client = server.ws_client_with(named("limited")).await.unwrap();
    let _room = client.join("a").await.unwrap();
    let err = client.join("b").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyRooms), "{err}");
    // A token the server does not accept: the refusal's code, not a generic failure.
    let refused =
        server.ws_client_with(ConnectOptions { token: Some("not-a-token".into()), ..named("x") }).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenMalformed), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_member_that_stops_reading_is_reset_in_that_room_only() {
    let limits = Limits { max_frame: 4096, max_body: 2048, room_queue_bytes: 16 * 1024, ..Limits::default() };
    let server = TestServer::start(limits);
    let member = server.ws_client_with(named("member")).await.unwrap();
    let writer = server.client_with(ConnectOptions { transport: Transport::Quic, ..named("writer") }).await.unwrap();
    // Room b keeps flowing over the one TCP connection while nobody reads room a.
    quiver_tests::a_member_stops_reading_one_room(&member, &writer).await;
    assert!(server.stats.slow_consumer_resets.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_reach_a_server_that_lists_browser_origins() {
    let web = quiver_server::WebConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..quiver_server::WebConfig::default()
    };
    let server = TestServer::start_web(Limits::default(), web);
    let client = server.ws_client_with(named("native")).await.unwrap();
    assert_eq!(client.transport(), Some(TransportKind::WebSocket));
    client.post("r", "no Origin header: not a browser").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_a_slow_quic_handshake_where_no_websocket_answers() {
    use quiver_lab::impair::{DirectionProfile, ImpairmentProfile};
    let server = TestServer::start(Limits::default());
    // A slow UDP path (300 ms each way) and no TCP listener behind the relay's address: the WebSocket attempt,
    // started after 200 ms, fails, and the QUIC handshake, still going, wins.
    let slow = DirectionProfile { delay_ms: 300.0, ..DirectionProfile::default() };
    let relay = server.relay(ImpairmentProfile::symmetric(slow), 2);
    let options = ConnectOptions {
        trust: server.trust(),
        transport: Transport::Auto,
        fallback_after: Duration::from_millis(200),
        ..named("patient")
    };
    let client = Client::connect_with(&relay.local_addr().to_string(), options).await.unwrap();
    assert_eq!(client.transport(), Some(TransportKind::Quic));
    client.post("r", "over a slow QUIC path").await.unwrap();
}

/// The WebSocket to several addresses is raced like QUIC's handshakes: a first address that accepts TCP and then
/// never answers (a hung node) does not take the whole connect timeout while the next one is up. (They were tried
/// one after another under one deadline: every attempt, the first connect and each reconnect, timed out on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_first_address_does_not_keep_the_websocket_from_the_next() {
    let server = TestServer::start(Limits::default());
    let ws = server.websocket.expect("a WebSocket listener");
    // The same port on 127.0.0.2: the kernel completes TCP handshakes into its backlog; TLS never gets an answer.
    let hung = std::net::TcpListener::bind(("127.0.0.2", ws.port())).unwrap();
    let servers = format!("127.0.0.2:{port},127.0.0.1:{port}", port = server.addr.port());
    let options = ConnectOptions {
        transport: Transport::WebSocket,
        trust: server.trust(),
        websocket_port: Some(ws.port()),
        connect_timeout: Duration::from_secs(3),
        ..ConnectOptions::default()
    };
    // Within the 3 s (before: `Timeout`, the first address holding the attempt to the end).
    let client = Client::connect_with(&servers, options).await.expect("connected through the second address");
    client.ping().await.unwrap();
    client.close().await;
    drop(hung);
    server.stop().await;
}

/// A WebSocket connection awaits Hello from its upgrade on (`budget.max_awaiting_hello`): it makes room like a QUIC
/// one (the longest waiting silent connection is closed, `TooManyConnections`) and, once welcomed, stays. Before,
/// admitting a WebSocket connection with the bound in place locked the server's admission table for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_connection_awaiting_hello_makes_room_like_a_quic_one() {
    use quiver_server::{Budget, ServerConfig};
    let dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
    let server = TestServer::start_with(
        ServerConfig { budget: Budget { max_awaiting_hello: 2, ..Budget::default() }, ..dev },
        dir,
    );
    let silent = [server.raw().await, server.raw().await];
    let client = tokio::time::timeout(WAIT, server.ws_client_with(named("websocket"))).await.unwrap().unwrap();
    let (code, reason) = quiver_tests::closed_with(&silent[0]).await;
    assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
    assert!(silent[1].close_reason().is_none(), "only one made room");
    // Welcomed, it no longer awaits Hello: newcomers close the other silent one, then each other.
    let _more = [server.raw().await, server.raw().await];
    assert_eq!(quiver_tests::closed_with(&silent[1]).await.0, ErrorCode::TooManyConnections);
    client.ping().await.unwrap();
    let quic = server.client().await;
    quic.ping().await.unwrap();
}

/// Connections on the WebSocket listener that never finish their upgrade are bounded from one address
/// (`budget.websocket_max_upgrading_per_ip`) and in all (`budget.websocket_max_upgrading`): one more is closed at
/// once and counted as a breach of the setting that closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_websocket_upgrade_bound_is_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let budget =
        quiver_server::Budget { websocket_max_upgrading: 3, websocket_max_upgrading_per_ip: 2, ..Default::default() };
    let server = TestServer::start_with_budget(budget);
    let addr = server.websocket.expect("a WebSocket listener");
    let stats = server.stats.clone();
    let upgrading = || stats.websocket_upgrading.load(std::sync::atomic::Ordering::Relaxed);
    // Half a request head from `from`: the connection stays in its upgrade.
    let half_from = |from: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        tcp
    };
    let closed_at_once = |mut tcp: tokio::net::TcpStream| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    };
    let until = |count: i64| async move {
        let started = std::time::Instant::now();
        while upgrading() != count {
            assert!(started.elapsed() < Duration::from_secs(10), "never {count} upgrading");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let first = (half_from([127, 0, 0, 1]).await, half_from([127, 0, 0, 1]).await);
    until(2).await;
    assert!(closed_at_once(half_from([127, 0, 0, 1]).await).await, "a third from one address is closed");
    let other = half_from([127, 0, 0, 2]).await;
    until(3).await;
    // A fourth in all takes the place of the one upgrading longest (before, it was closed itself: a few sources
    // trickling their heads held every slot, and every real WebSocket client was closed at once).
    let fourth = half_from([127, 0, 0, 3]).await;
    assert!(closed_at_once(first.0).await, "the longest upgrading made room");
    until(3).await;
    let s = server.stats.snapshot();
    assert_eq!((s.websocket_upgrades_over_per_ip, s.websocket_upgrades_over_total), (1, 1), "{s:?}");
    let still = |mut tcp: tokio::net::TcpStream| async move {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut byte)).await.is_err()
    };
    assert!(still(fourth).await && still(other).await && still(first.1).await, "the others stay upgrading");
}

/// Behind a reverse proxy the operator trusts (`web.trusted_proxies`), each client is admitted as the address its
/// `X-Forwarded-For` names: two clients behind one local proxy each get `max_connections_per_ip` (before, every
/// client behind the proxy shared 127.0.0.1's one place, and one client could take it from all). The same header
/// from a peer that is no trusted proxy is not believed, and a hop the client wrote left of the proxy's is not
/// either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_admitted_by_their_own_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = quiver_server::WebConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..quiver_server::WebConfig::default()
    };
    let server = TestServer::start_web(Limits { max_connections_per_ip: 1, ..Limits::default() }, web);
    let addr = server.websocket.expect("a WebSocket listener");
    // An upgrade from `from` carrying `forwarded` (an X-Forwarded-For value): its answer's status code, and the
    // connection (kept open while it is served).
    let upgrade = |from: [u8; 4], forwarded: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        let head = format!(
            "GET /quiver HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: quiver\r\nX-Forwarded-For: {forwarded}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        tcp.read_exact(&mut answer).await.unwrap();
        (String::from_utf8_lossy(&answer[9..12]).into_owned(), tcp)
    };
    let over = || server.stats.snapshot().connections_over_per_ip;
    let settled = || tokio::time::sleep(Duration::from_millis(200));
    // The count moves after the 101: waited for (a fixed wait read it too early on a busy machine).
    let reaches = |count: u64| async move {
        let started = std::time::Instant::now();
        while over() < count {
            assert!(started.elapsed() < Duration::from_secs(10), "never {count} over the per-address count");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        settled().await;
        assert_eq!(over(), count, "no more than {count}");
    };

    let first = upgrade([127, 0, 0, 1], "203.0.113.7").await;
    let second = upgrade([127, 0, 0, 1], "203.0.113.8").await;
    assert_eq!((first.0.as_str(), second.0.as_str()), ("101", "101"));
    settled().await;
    assert_eq!(over(), 0, "two clients behind one proxy: one place each");
    // The first client again, with a hop of its own making on the left: still the first client.
    let again = upgrade([127, 0, 0, 1], "198.51.100.1, 203.0.113.7").await;
    assert_eq!(again.0, "101");
    reaches(1).await; // over the first client's one place (closed after the 101)

    // Not a trusted proxy: the header is the peer's word, not believed.
    let untrusted = (upgrade([127, 0, 0, 2], "203.0.113.9").await, upgrade([127, 0, 0, 2], "203.0.113.10").await);
    reaches(2).await; // two from 127.0.0.2 share its one place, whatever they say
    drop((first, second, again, untrusted));
}

/// Over the WebSocket, a pin the server's certificate does not match fails as a pin mismatch naming the certificate
/// presented (the pin verifier's error, read back from the TLS error), and TLS sessions resume: a second client
/// with the same trust presents a ticket the first was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_name_a_pin_mismatch_and_resume_tls_sessions() {
    let server = TestServer::start(Limits::default());
    let resumed = || server.stats.tls_tickets_accepted.load(std::sync::atomic::Ordering::Relaxed);
    let first = server.ws_client_with(named("first")).await.unwrap();
    first.ping().await.unwrap(); // (its tickets come after the handshake)
    let before = resumed();
    let second = server.ws_client_with(named("second")).await.unwrap();
    assert_eq!(second.transport(), Some(TransportKind::WebSocket));
    assert_eq!(resumed(), before + 1, "the second client resumed a session of the first's");
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let wrong = ConnectOptions {
        trust: quiver_client::TrustOptions::Pin(pin),
        transport: Transport::WebSocket,
        websocket_port: server.websocket.map(|ws| ws.port()),
        ..named("wrong")
    };
    let err = Client::connect_with(&server.addr.to_string(), wrong).await.map(|_| ()).unwrap_err();
    let quiver_client::ConnectError::PinMismatch { expected, presented } = &err else { panic!("{err}") };
    let real = quiver_certs::sha256(&quiver_certs::dev::read(server.data_dir.path()).unwrap());
    assert_eq!((*expected, *presented), (pin, real));
    first.close().await;
    second.close().await;
}
