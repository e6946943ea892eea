//! Hostile peers at the connection level, beside a bystander ([`quiver_tests::hostile`]): connections that never
//! say Hello, more connections than `max_connections_per_ip` and `max_connections` allow, and new connections faster
//! than `new_connections_per_s_per_ip`. Each is timed out, closed or refused with the right code, and the bystander
//! loses nothing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use quiver_client::ConnectOptions;
use quiver_proto::{ErrorCode, Limits, RequestBody};
use quiver_tests::{
    closed_with,
    hostile::{beside_a_bystander, bounded, frame, Control},
    TestServer,
};

/// Initials from addresses not validated.
#[path = "hostile_connections/forged.rs"]
mod forged;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_sends_hello() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 500, ..Limits::default() });
        beside_a_bystander(&server, async {
            // One opens no stream at all; one opens the control stream and sends half a frame; one sends a
            // request that is not Hello first (refused at once).
            let silent = server.try_raw().await.unwrap();
            let mute = server.try_raw().await.unwrap();
            let (mut send, _recv) = mute.open_bi().await.unwrap();
            send.write_all(&[0x10]).await.unwrap();
            let started = Instant::now();
            assert_eq!(closed_with(&silent).await.0, ErrorCode::HandshakeTimeout);
            assert_eq!(closed_with(&mute).await.0, ErrorCode::HandshakeTimeout);
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
            let rude = server.try_raw().await.unwrap();
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
                let conn = server.try_raw().await.expect("accepted, to be told why it is closed");
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
            let native = || server.stats.connections_native.load(std::sync::atomic::Ordering::Relaxed);
            let before = native();
            let leaving = held.pop().unwrap();
            leaving.conn.close(0u32.into(), b"bye");
            drop(leaving);
            // Once the server has seen it go (not after a fixed sleep, which a loaded machine can outlast).
            let started = Instant::now();
            while native() >= before {
                assert!(started.elapsed() < Duration::from_secs(5), "the closed connection still counts");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            held.push(Control::open(&server).await);
            held[0].ping(1).await;
        })
        .await;
        let stats = server.stats.snapshot();
        assert_eq!(stats.connections_over_per_ip, 4, "{stats:?}");
        assert_eq!(stats.retries_over_limit, 4, "each was made to validate its address first: {stats:?}");
        server.stop().await;

        // The server-wide limit, from another address (127.0.0.1 is at its own limit too now: told of that first).
        let server = TestServer::start(Limits { max_connections: 4, max_connections_per_ip: 4, ..Limits::default() });
        beside_a_bystander(&server, async {
            let _held = [Control::open(&server).await, Control::open(&server).await];
            let conn = server.try_raw_from([127, 0, 0, 2].into()).await.unwrap();
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
            // New connections until one is refused (the bucket refills 5 a second while this machine's handshakes
            // take their time: a slow one admits more than the burst first, but never more than it refilled).
            let (mut admitted, started) = (0, std::time::Instant::now());
            let refused = loop {
                match server.try_raw().await {
                    Ok(_) => admitted += 1,
                    Err(err) => break err,
                }
                let refilled = (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
                assert!(admitted <= 10 + refilled, "{admitted} admitted, {refilled} refilled since the first");
            };
            assert!(is_refused(&refused), "{refused}");
            assert!(admitted >= 8, "refused after {admitted}: the burst is 10, the bystander took 2");
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

fn is_refused(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// Connections that never say Hello hold a slot each for `handshake_timeout_ms`; at most
/// `budget.max_awaiting_hello` of them are kept at once: one more closes the one waiting longest of the network
/// holding the most (here every socket is 127.0.0.1's, so the oldest), with `TooManyConnections` and why, while a
/// real client that says Hello is welcomed and stays. Before, silent connections from a few dozen addresses filled
/// `max_connections` for as long as they were renewed, and real clients were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_awaiting_hello_are_bounded_and_the_oldest_silent_one_makes_room() {
    use quiver_server::{Budget, ServerConfig};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
        let budget = Budget { max_awaiting_hello: 3, ..Budget::default() };
        let server = TestServer::start_with(ServerConfig { budget, ..dev }, dir);
        beside_a_bystander(&server, async {
            let mut silent = Vec::new();
            for _ in 0..3 {
                silent.push(server.try_raw().await.unwrap());
            }
            let started = Instant::now();
            // A real client: it makes room (the first silent one goes) and, once welcomed, is never closed for it.
            let mut control = Control::open(&server).await;
            let (code, reason) = closed_with(&silent[0]).await;
            assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
            assert!(reason.contains("budget.max_awaiting_hello (3)"), "{reason}");
            assert!(reason.contains("from 127.0.0.0/24, had waited longest"), "{reason}");
            assert!(started.elapsed() < Duration::from_secs(5), "closed at once, not at the handshake timeout");
            for _ in 0..5 {
                silent.push(server.try_raw().await.unwrap());
            }
            // Oldest first: the two left of the first three, then the first two of the five.
            for conn in &silent[1..5] {
                assert_eq!(closed_with(conn).await.0, ErrorCode::TooManyConnections);
            }
            assert!(silent[5..].iter().all(|conn| conn.close_reason().is_none()), "the three newest still wait");
            control.ping(1).await;
        })
        .await;
        let closed = server.stats.snapshot().connections_closed_awaiting_hello;
        assert!(closed >= 5);
        assert_eq!(server.stats.refusals(ErrorCode::TooManyConnections), closed, "among the refusals by code");
        server.stop().await;
    })
    .await;
}

/// `max_connections` set below `budget.max_awaiting_hello` (a small box, a public deployment lowering it): silent
/// connections never filled the awaiting table, so none was closed to make room, and they held every slot of
/// `max_connections` for as long as they were renewed. A validated newcomer at `max_connections` now takes the place
/// of the longest waiting one not welcomed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_fill_a_max_connections_below_max_awaiting_hello() {
    bounded(async {
        // The bystander holds two connections; four silent ones, from another address, fill the rest (the awaiting
        // table's bound, 1,024 by default, is far away).
        let limits = Limits { max_connections: 6, max_connections_per_ip: 6, ..Limits::default() };
        let server = TestServer::start(limits);
        beside_a_bystander(&server, async {
            let mut silent = Vec::new();
            for _ in 0..4 {
                silent.push(server.try_raw_from([127, 0, 0, 2].into()).await.unwrap());
            }
            let mut control = Control::open(&server).await;
            let (code, reason) = closed_with(&silent[0]).await;
            assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
            assert!(
                reason.contains("closed before Hello to make room") && reason.contains("max_connections"),
                "{reason}"
            );
            assert!(silent[1..].iter().all(|conn| conn.close_reason().is_none()), "one made room, the others wait");
            control.ping(1).await;
        })
        .await;
        assert!(server.stats.snapshot().connections_closed_awaiting_hello >= 1);
        server.stop().await;
    })
    .await;
}

/// A TCP connection to the WebSocket listener from `from` that sends the first byte of a TLS handshake and then
/// nothing: a connection still upgrading, holding its place of `max_connections`.
async fn silent_tcp(server: &TestServer, from: std::net::IpAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let mut tcp = socket.connect(server.websocket.expect("a WebSocket listener")).await.unwrap();
    tcp.write_all(&[0x16]).await.unwrap();
    tcp
}

/// Waits (10 s at most) until the server counts `count` TCP connections upgrading: a connect returns once the
/// kernel took the handshake, before the server accepted it.
async fn wait_upgrading(server: &TestServer, count: i64) {
    let upgrading = || server.stats.websocket_upgrading.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while upgrading() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(upgrading(), count, "the silent connections were not all accepted");
}

/// Whether the server closed `tcp` within 5 s.
async fn closed_by_the_server(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// Silent TCP connections to the WebSocket listener (upgrading: a TLS handshake begun, nothing more) cannot fill
/// `max_connections` either: a QUIC newcomer takes the place of the longest waiting one. Before, a connection still
/// upgrading was not among those awaiting Hello, so nothing could close it to make room, and the QUIC newcomer was
/// refused `TooManyConnections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websocket_upgrades_cannot_fill_max_connections() {
    bounded(async {
        let limits = Limits { max_connections: 6, max_connections_per_ip: 6, ..Limits::default() };
        let server = TestServer::start(limits);
        beside_a_bystander(&server, async {
            let mut silent = Vec::new();
            for _ in 0..4 {
                silent.push(silent_tcp(&server, [127, 0, 0, 2].into()).await);
            }
            // Accepted and admitted, all four (a connect returns once the kernel took the handshake).
            wait_upgrading(&server, 4).await;
            let mut control = Control::open(&server).await;
            assert!(closed_by_the_server(&mut silent[0]).await, "the longest waiting one made room");
            control.ping(1).await;
        })
        .await;
        assert!(server.stats.snapshot().connections_closed_awaiting_hello >= 1, "counted as closed to make room");
        server.stop().await;
    })
    .await;
}

/// A TCP newcomer over its address's bound on upgrading connections is refused before it is admitted: it closes
/// nobody. (Admitted first, at `max_connections` it closed a connection not welcomed yet to make room, and was then
/// refused itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_newcomer_over_its_upgrade_bound_closes_nobody() {
    use quiver_server::{Budget, ServerConfig};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { max_connections: 6, max_connections_per_ip: 6, ..Limits::default() };
        let budget = Budget { websocket_max_upgrading_per_ip: 1, ..Budget::default() };
        let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
        let server = TestServer::start_with(ServerConfig { limits, budget, ..dev }, dir);
        beside_a_bystander(&server, async {
            let mut silent = Vec::new();
            for _ in 0..3 {
                silent.push(server.try_raw_from([127, 0, 0, 2].into()).await.unwrap());
            }
            let mut upgrading = silent_tcp(&server, [127, 0, 0, 3].into()).await;
            wait_upgrading(&server, 1).await;
            // At max_connections (the bystander's 2, 3 silent, 1 upgrading): one more upgrade from .3 is over its
            // address's bound.
            let mut over = silent_tcp(&server, [127, 0, 0, 3].into()).await;
            assert!(closed_by_the_server(&mut over).await, "the newcomer over its bound is closed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(server.stats.snapshot().connections_closed_awaiting_hello, 0, "nobody was closed for it");
            assert!(silent.iter().all(|conn| conn.close_reason().is_none()), "nobody was closed for it");
            let mut buf = [0u8; 1];
            let still = tokio::time::timeout(
                Duration::from_millis(100),
                tokio::io::AsyncReadExt::read(&mut upgrading, &mut buf),
            );
            assert!(still.await.is_err(), "the first upgrade from .3 is still open");
        })
        .await;
        server.stop().await;
    })
    .await;
}

/// The other way round: silent QUIC connections (no Hello) cannot keep a WebSocket client out at
/// `max_connections`: it takes the place of the longest waiting one, as a QUIC newcomer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_quic_connections_cannot_keep_a_websocket_client_out() {
    bounded(async {
        let limits = Limits { max_connections: 6, max_connections_per_ip: 6, ..Limits::default() };
        let server = TestServer::start(limits);
        beside_a_bystander(&server, async {
            let mut silent = Vec::new();
            for _ in 0..4 {
                silent.push(server.try_raw_from([127, 0, 0, 2].into()).await.unwrap());
            }
            let options = ConnectOptions { name: Some("browser".into()), ..ConnectOptions::default() };
            let client = server.ws_client_with(options).await.expect("welcomed over the WebSocket fallback");
            let (code, reason) = closed_with(&silent[0]).await;
            assert_eq!(code, ErrorCode::TooManyConnections, "{reason}");
            client.close().await;
        })
        .await;
        server.stop().await;
    })
    .await;
}

/// A returning client's address-validation token (QUIC NEW_TOKEN, which every connection is given for the next)
/// spares it the Retry, across a reload of the certificate (SIGHUP) and a restart on the same data directory: every
/// configuration the server makes shares one token key, derived from the data directory's secret. Before, each made
/// a random key of its own, and the endpoint checks tokens with the one it was bound with: after a reload every
/// token given out was unreadable to it (after a restart, every token), and its client was made to validate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_clients_address_token_holds_across_reloads_and_restarts() {
    use quiver_server::{Budget, ServerConfig};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // Every handshake from an address not validated yet gets a Retry.
        let config = |dir: &std::path::Path, addr| ServerConfig {
            budget: Budget { max_unvalidated_handshakes_per_ip: 0, ..Budget::default() },
            ..ServerConfig::dev(addr, dir.to_owned())
        };
        let mut server = TestServer::start_with(config(dir.path(), "127.0.0.1:0".parse().unwrap()), dir);
        // One client endpoint and configuration throughout: its token store keeps what each connection was given.
        let client = quiver_client::quinn_client_config(&server.trust(), server.addr, quiver_proto::ALPN_QUIVER);
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client.unwrap());
        // Connects, waits for both tokens the connection is given (the store keeps the two newest, and the next
        // connection takes the older of them: one from this connection), and closes.
        let visit = |server: &TestServer| {
            let connecting = endpoint.connect(server.addr, "localhost").unwrap();
            async move {
                let connection = connecting.await.unwrap();
                while connection.stats().frame_rx.new_token < 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                connection.close(0u32.into(), b"bye");
            }
        };
        let retries = |server: &TestServer| server.stats.snapshot().retries_over_handshakes;
        visit(&server).await;
        assert_eq!(retries(&server), 1, "the first visit validates with a Retry");
        visit(&server).await;
        assert_eq!(retries(&server), 1, "a token from the visit before: no Retry");
        server.reloader.reload(quiver_auth::AuthConfig::DevKey).unwrap();
        visit(&server).await; // accepted with the reloaded configuration, and given its tokens
        visit(&server).await;
        assert_eq!(retries(&server), 1, "a token given after the reload: no Retry");
        server = server.restart_with(config).await;
        visit(&server).await;
        assert_eq!(retries(&server), 0, "a token given before the restart: no Retry (a fresh count)");
        server.stop().await;
    })
    .await;
}
