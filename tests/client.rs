//! The client library's view of its link: the state watch through a server restart, fatal refusals ending the
//! client instead of silent retries.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, ConnectionState, TrustOptions};
use quiver_proto::Limits;
use quiver_server::ServerConfig;
use quiver_tests::{states_until, TestServer};

use quiver_tests::fakes::{closes_at_a_clock_ping, fake_endpoint, fake_server, garbage_after_welcome};

#[path = "client/closing.rs"]
mod closing;
#[path = "client/early_ticks.rs"]
mod early_ticks;
#[path = "client/handshake.rs"]
mod handshake;
#[path = "client/releases.rs"]
mod releases;

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

/// A first connect whose server takes the handshake but not the session (here: at its `max_connections`) goes on
/// to the next server given, as a reconnect does: before, it failed with the refusal though another node was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connect_refused_after_the_handshake_goes_on_to_the_next_server() {
    let good = TestServer::start(Limits::default());
    // A full server with the same certificate (so the client trusts both).
    let dir = tempfile::tempdir().unwrap();
    let tls = quiver_server::TlsSource::Pem {
        cert: good.data_dir.path().join(quiver_certs::dev::CERT_FILE),
        key: good.data_dir.path().join(quiver_certs::dev::KEY_FILE),
    };
    let limits = Limits { max_connections: 1, max_connections_per_ip: 1, ..Limits::default() };
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    let full = TestServer::start_with(ServerConfig { tls, limits, ..dev }, dir);
    // Its one connection taken (a handshake that says nothing yet counts).
    let config = quiver_client::quinn_client_config(&good.trust(), full.addr, quiver_proto::ALPN_QUIVER).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let _holder = endpoint.connect(full.addr, "localhost").unwrap().await.unwrap();
    let servers = format!("{},{}", full.addr, good.addr);
    let options = ConnectOptions { trust: good.trust(), ..ConnectOptions::default() };
    let client = Client::connect_with(&servers, options).await.expect("the second server takes the session");
    assert_eq!(client.server_addr(), good.addr);
    client.ping().await.unwrap();
    // (Its one connection from this address: over the address's count, which a refusal names first.)
    assert_eq!(full.stats.snapshot().connections_over_per_ip, 1, "the first server was tried and refused");
    client.close().await;
    full.stop().await;
    good.stop().await;
}

/// With `first_connect_retry`, a server that takes the handshake but not the session is tried again after the
/// backoff until it takes it (here: once its one connection slot is free); before, the refusal ended the connect
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connect_with_retry_waits_out_a_refusal_after_the_handshake() {
    let server = TestServer::start(Limits { max_connections: 1, max_connections_per_ip: 1, ..Limits::default() });
    let holder = server.raw().await;
    let freed = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.close(0u32.into(), b"done");
    });
    let options = ConnectOptions {
        first_connect_retry: Some(Duration::from_secs(10)),
        reconnect_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let client = server.client_with(options).await.expect("connected once the slot was free");
    client.ping().await.unwrap();
    assert!(server.stats.snapshot().connections_over_per_ip >= 1, "refused at first (the address's count)");
    freed.await.unwrap();
    client.close().await;
    server.stop().await;
}

/// A request made while the client reconnects, to a server that does not come back within `connect_timeout`,
/// fails as `NotConnected` (nothing sent, the client not done), not as a closed connection: before, it was
/// `Closed { Internal, "not connected (reconnecting)" }`, the same variant as a client that has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outwaits_a_reconnect_fails_as_not_connected() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions {
        trust: server.trust(),
        connect_timeout: Duration::from_millis(300),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let watch = client.state();
    server.stop().await;
    states_until(watch, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    let err = client.ping().await.expect_err("no server");
    assert_eq!(err, quiver_client::RequestError::NotConnected(Duration::from_millis(300)), "{err}");
    assert!(matches!(*client.state().borrow(), ConnectionState::Reconnecting { .. }), "the client goes on");
    client.close().await;
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
async fn localhost_reaches_a_server_bound_to_ipv6_loopback() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::dev("[::1]:0".parse().unwrap(), data_dir.path().into());
    let server = match quiver_server::Server::bind(config) {
        Ok(server) => server,
        // Only a machine without IPv6 (no ::1, or no IPv6 sockets at all) is a skip; any other failure to bind is
        // the server's, and fails.
        Err(quiver_server::ServerError::Bind(err))
            if err.kind() == std::io::ErrorKind::AddrNotAvailable || err.raw_os_error() == Some(97) =>
        {
            return quiver_tests::skip("localhost_reaches_a_server_bound_to_ipv6_loopback", &format!("{err}"));
        }
        Err(err) => panic!("binding [::1]:0: {err}"),
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
    // (Without a port, quiver-server's default is dialled: `quiver_client`'s `target` tests, with no socket on
    // the default port, which a server on this machine may hold.)
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

/// `ConnectionState::Reconnecting::attempt` counts the attempts since the loss: 0 at the first of each outage, also
/// against a server whose connections each fail after a moment (the backoff's delays go on growing across those;
/// its count of attempts had been reported instead, 1, 2, … at the first of each later outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outage_counts_its_reconnect_attempts_from_zero() {
    let (dir, endpoint, addr) = fake_endpoint();
    // (Each connection lives 400 ms: the client's connect, Hello and clock Pings fit even on a loaded machine.)
    let server = tokio::spawn(quiver_tests::fakes::welcomes_then_closes(endpoint, Duration::from_millis(400)));
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        reconnect_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let seen = states_until(client.state(), |s| matches!(s, ConnectionState::Connected { reconnects: 3, .. })).await;
    let firsts: Vec<u32> = seen
        .windows(2)
        .filter_map(|pair| match pair {
            [ConnectionState::Connected { .. }, ConnectionState::Reconnecting { attempt, .. }] => Some(*attempt),
            _ => None,
        })
        .collect();
    assert!(firsts.len() >= 2, "{seen:?}");
    assert!(firsts.iter().all(|attempt| *attempt == 0), "first attempts of each outage: {firsts:?}");
    client.close().await;
    server.abort();
}

/// A connection the client closes itself (here: the server sent a frame that does not decode) ends with the code
/// and reason the client closed it with, for the requests waiting on it and for `Client::closed`. quinn reports
/// such a close only as "closed locally": before, both said `NoError`, "closed locally".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_of_the_clients_own_keeps_its_code_and_reason() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(garbage_after_welcome(endpoint));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect: false, ..ConnectOptions::default() };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let err = client.ping().await.expect_err("the reply does not decode");
    let quiver_client::RequestError::Closed { code, reason } = err else { panic!("{err:?}") };
    assert_eq!(code, quiver_proto::ErrorCode::ProtocolViolation, "{reason}");
    assert!(reason.contains("malformed"), "{code}: {reason}");
    let (closed, why) = tokio::time::timeout(Duration::from_secs(10), client.closed()).await.unwrap();
    assert_eq!(closed, code, "{why}");
    server.abort();
}

/// The default tuning, changed by `change`.
fn tuned(change: impl FnOnce(&mut quiver_transport::TransportTuning)) -> quiver_transport::TransportTuning {
    let mut tuning = ConnectOptions::default().tuning;
    change(&mut tuning);
    tuning
}

/// Options that cannot work are refused before anything is tried: a zero `dead_server_after` dropped every
/// connection at once, a zero `reconnect_delay` reconnected in a busy loop, a `Duration::MAX` panicked.
#[tokio::test]
async fn options_that_cannot_work_are_refused_up_front() {
    let server = TestServer::start(Limits::default());
    let tries = [
        ConnectOptions { dead_server_after: Some(Duration::ZERO), ..ConnectOptions::default() },
        ConnectOptions { reconnect_delay: Duration::ZERO, ..ConnectOptions::default() },
        ConnectOptions { connect_timeout: Duration::ZERO, ..ConnectOptions::default() },
        // (These panicked: doubled or added to a clock reading.)
        ConnectOptions { connect_timeout: Duration::MAX, ..ConnectOptions::default() },
        ConnectOptions { first_connect_retry: Some(Duration::MAX), ..ConnectOptions::default() },
        ConnectOptions { dead_server_after: Some(Duration::MAX), ..ConnectOptions::default() },
        // (These panicked in quinn's driver or the tail probe's task, once connected.)
        ConnectOptions { tuning: tuned(|t| t.keep_alive = Some(Duration::MAX)), ..ConnectOptions::default() },
        ConnectOptions { tuning: tuned(|t| t.tail_probe = Some(Duration::MAX)), ..ConnectOptions::default() },
        ConnectOptions { tuning: tuned(|t| t.copy_spacing = Duration::MAX), ..ConnectOptions::default() },
        // (quinn asks the server for no more than 25 ms on a short path, while the tail probe waited what was
        // configured; a zero initial RTT starts quinn's probe timeout at 1 ms, a burst of repeated Initials.)
        ConnectOptions {
            tuning: tuned(|t| t.max_ack_delay = Some(Duration::from_millis(100))),
            ..ConnectOptions::default()
        },
        ConnectOptions { tuning: tuned(|t| t.initial_rtt = Duration::ZERO), ..ConnectOptions::default() },
    ];
    for options in tries {
        let options = ConnectOptions { trust: server.trust(), token: Some(server.token("a")), ..options };
        let refused = Client::connect_with(&server.addr.to_string(), options).await.err();
        assert!(matches!(refused, Some(quiver_client::ConnectError::Options(_))), "{refused:?}");
    }
    server.stop().await;
}

/// Trust options that cannot work (`TrustOptions::Auto` for a server not on this machine) end the connect at once,
/// `first_connect_retry` or not: before, they were retried for its whole window (a minute here) and only then said.
#[tokio::test]
async fn trust_options_that_cannot_work_are_not_retried() {
    let options = ConnectOptions { first_connect_retry: Some(Duration::from_secs(60)), ..ConnectOptions::default() };
    let connect = Client::connect_with("192.0.2.1:4433", options);
    let refused = tokio::time::timeout(Duration::from_secs(5), connect).await.expect("retried").err();
    use quiver_client::{ConnectError, TrustError};
    assert!(matches!(refused, Some(ConnectError::Trust(TrustError::NotLoopback(_)))), "{refused:?}");
}

/// A connect waits for the clock's first Ping only: the other four refine the server clock's offset after it
/// returned. Before, it waited for all five round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_waits_for_one_clock_ping_and_the_rest_refine_the_offset_after() {
    let (dir, endpoint, addr) = fake_endpoint();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn(quiver_tests::fakes::slow_clock_pongs(endpoint, answered.clone(), release.clone()));
    let options =
        ConnectOptions { trust: TrustOptions::Auto { data_dir: dir.path().to_owned() }, ..Default::default() };
    let started = std::time::Instant::now();
    let client = Client::connect_with(&addr, options).await.unwrap();
    let pongs = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(pongs, 1, "the connect waited for {pongs} clock Pongs");
    // (The second is held until now: a connect that waited for it gave up on it only at connect_timeout, 10 s.)
    assert!(started.elapsed() < Duration::from_secs(5), "the connect took {:?}", started.elapsed());
    release.notify_one();
    let ahead_s = |client: &Client| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
        (client.server_clock_us() as i64 - now) as f64 / 1e6
    };
    let first = ahead_s(&client);
    assert!((first - 10.0).abs() < 0.5, "the first Pong's offset: {first} s");
    let refined = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ahead = ahead_s(&client);
            if ahead > 15.0 {
                return ahead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the offset was never refined by the later, faster Pongs");
    assert!((refined - 20.0).abs() < 0.5, "the fastest Pong's offset: {refined} s");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 5);
    client.close().await;
    server.abort();
}

/// A server that stops reading the client's control stream (STOP_SENDING) and keeps the connection open and
/// acknowledging: the client's next write fails, and it closes the connection itself and reconnects, so its posts go
/// out on the next one. Before, the failed write left the connection the current one (nothing closed it, and the
/// server's keep-alive answers kept `dead_server_after` away): each post was retried on it every 50 ms for good, and
/// the post's future never resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_stream_the_server_stops_reading_is_closed_and_the_post_goes_on_the_next_connection() {
    let (dir, endpoint, addr) = fake_endpoint();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn(quiver_tests::fakes::stops_reading_after_welcome(endpoint, connections.clone()));
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(100),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let posted = tokio::time::timeout(Duration::from_secs(10), client.post("r", "x")).await;
    let seq = posted.expect("the post never resolved").expect("posted");
    assert_eq!(seq, 1);
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 2, "posted on a new connection");
    client.close().await;
    server.abort();
}

/// A reconnect whose connection is closed while the client measures its clock (its Pings) is not the client's
/// connection: it is neither published as connected nor counted as a reconnect, and the client goes on to the
/// next. Before, it was published for a moment (`Connected` with a dead connection, requests sent on it failing
/// with `Closed`) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_its_clock_is_measured_is_not_published() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(closes_at_a_clock_ping(endpoint));
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(100),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.unwrap();
    assert_eq!(client.welcome().session_id, 1);
    let seen = states_until(client.state(), |s| matches!(s, ConnectionState::Connected { session_id: 3, .. })).await;
    assert_eq!(
        *seen.last().unwrap(),
        ConnectionState::Connected { session_id: 3, reconnects: 1 },
        "the connection closed at its clock Ping counted as a reconnect: {seen:?}"
    );
    assert!(!seen.iter().any(|s| matches!(s, ConnectionState::Connected { session_id: 2, .. })), "{seen:?}");
    client.close().await;
    server.abort();
}

/// Posts made faster than the server's post rate (a burst, or a queue built up while disconnected) wait in the
/// client and go out as fast as the server takes them: every one is stored, none refused. Before, the library
/// wrote them all at once; the part over the server's bucket was refused `RateLimited` and failed to the
/// application, and a burst of refusals closed the connection as a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_made_faster_than_the_servers_post_rate_wait_in_the_client_and_all_go_through() {
    // A bucket of 200 posts, 100 more a second: 300 posts at once take about 2 s.
    let server = TestServer::start(Limits { posts_per_s: 100, ..Limits::default() });
    let client = server.client_with(ConnectOptions { name: Some("eager".into()), ..ConnectOptions::default() }).await;
    let client = client.unwrap();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..300 {
        let client = client.clone();
        posts.spawn(async move { client.post("fast", format!("{i}")).await });
    }
    let mut seqs = Vec::new();
    // (300 posts at 100/s: about 3 s; bounded, so that one never answered fails the test instead of holding it.)
    while let Some(posted) = tokio::time::timeout(Duration::from_secs(60), posts.join_next()).await.expect("answered") {
        seqs.push(posted.unwrap().expect("stored, not refused"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let stats = server.stats.snapshot();
    assert_eq!((stats.posts_rate_limited, stats.requests_rate_limited, stats.floods_closed), (0, 0, 0), "{stats:?}");
    server.stop().await;
}
