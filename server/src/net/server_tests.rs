//! The server as a whole, without clients: its data-directory lock and how a run ends.

use super::*;

/// A connection left open after the drain timeout keeps the room store (through the hub) past its server: the
/// data directory stays locked until the store is closed, so a second server cannot take the directory while
/// the first one's writer may still be committing.
#[test]
fn the_data_directory_stays_locked_while_the_store_outlives_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let config = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    assert!(config.durability != crate::store::Durability::Memory, "the default stores rooms");
    let server = Server::bind(config).unwrap();
    let leftover = server.rooms.clone();
    drop(server);
    let held = crate::datadir::DataDirLock::acquire(dir.path());
    assert!(
        matches!(held, Err(crate::datadir::DataDirError::InUse { .. })),
        "released while the store was still open: {held:?}"
    );
    drop(leftover);
    crate::datadir::DataDirLock::acquire(dir.path()).expect("released once the store is closed");
}

/// A demo page address that is taken is reported as the page's, with how to change it: before, it read "cannot
/// bind UDP socket".
#[tokio::test]
async fn a_page_address_in_use_is_reported_as_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page = taken.local_addr().unwrap();
    let web = crate::WebConfig { http: Some(page), ..crate::WebConfig::default() };
    let config = ServerConfig { web, ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned()) };
    let Err(err) = Server::bind(config) else { panic!("bound a page address that is taken") };
    let err = err.to_string();
    assert!(err.starts_with(&format!("demo page listener {page}:")) && err.contains("--no-web"), "{err}");
}

/// An endpoint that stops by itself (quinn's driver ends on a socket error, as a close here stands in for)
/// ends the run at once, without waiting out the drain timeout for tasks that only a shutdown stops, and the
/// summary says it failed (the binary exits 1, so a supervisor restarts it).
#[tokio::test]
async fn an_endpoint_that_stops_by_itself_ends_the_run_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        drain_timeout: Duration::from_secs(30),
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let server = Server::bind(config).unwrap();
    assert!(server.websocket_addr().is_some(), "a task only the shutdown stops");
    let endpoint = server.endpoint.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(0u32.into(), b"gone");
    let summary = tokio::time::timeout(Duration::from_secs(5), run).await.expect("the run ended").unwrap();
    assert!(summary.endpoint_lost, "{summary}");
    assert!(shutdown.is_cancelled(), "the other listeners were told to stop");
    assert!(summary.to_string().contains("FAILED"), "{summary}");
}

/// A running dev server renews its certificate once less than a day of it is left (browsers refuse an expired
/// one, and nothing else would renew it before the next restart or SIGHUP): new connections and the demo page get
/// the new one; the token keys stay.
#[tokio::test]
async fn a_running_dev_server_renews_its_certificate_when_due() {
    use std::time::SystemTime;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let server = Server::bind(config).unwrap();
    let reloader = server.reloader();
    let first = server.fingerprint.get();
    let now = SystemTime::now();
    assert_eq!(reloader.renew_dev_if_due(now).unwrap(), None, "14 days left");
    let later = now + Duration::from_secs(13 * 24 * 3600 + 1800); // 30 min left
    let renewed = reloader.renew_dev_if_due(later).unwrap().expect("renewed when due");
    assert_ne!(renewed, first);
    assert_eq!(server.fingerprint.get(), renewed, "the demo page hands out the new hash");
    assert_eq!(reloader.renew_dev_if_due(later).unwrap(), None, "once");
    // The clock set back (a VM's snapshot restored, a clock that ran ahead corrected): the certificate is not valid
    // yet, and browsers check the dates. Renewed as a start would, once (the watcher looked at the expiry alone).
    let back = SystemTime::now() - Duration::from_secs(3 * 3600);
    let again = reloader.renew_dev_if_due(back).unwrap().expect("renewed: not valid yet");
    assert_ne!(again, renewed);
    assert_eq!(reloader.renew_dev_if_due(back).unwrap(), None, "valid from then on");
}

/// A SIGHUP reload stuck reading its files (a mount that hangs) holds the certificate's lock for as long: the
/// periodic look at the certificate skips it rather than block a runtime thread on it. Until 2026-12-08 it blocked
/// the thread for good: here the runtime's only worker, so nothing else ran and the shutdown was never seen.
#[test]
fn the_certificate_watcher_does_not_wait_for_a_stuck_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = {
        let _in = runtime.enter();
        Server::bind(config).unwrap()
    };
    let reloader = server.reloader();
    let not_after = reloader.not_after.clone();
    let held = not_after.lock().unwrap(); // the stuck reload's
    let (done, ended) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let _server = server;
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            let watch = tokio::spawn(super::reload::watch_certificate(reloader, shutdown.clone()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let other = tokio::spawn(async { "ran" });
            let other = other.await.unwrap();
            shutdown.cancel();
            watch.await.unwrap();
            done.send(other).unwrap();
        });
    });
    let result = ended.recv_timeout(Duration::from_secs(5));
    drop(held);
    assert_eq!(result, Ok("ran"), "the watcher blocked the runtime");
    watcher.join().unwrap();
}

/// A reload that would replace the certificate in use with one that has expired is refused with its date, and the
/// one in use stays (an old file restored). A server started on an expired certificate serves it, with a warning:
/// clients that pin it by its hash do not check dates.
#[tokio::test]
async fn a_reload_to_an_expired_pem_certificate_is_refused() {
    use std::time::SystemTime;
    let (valid, expired, live) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    quiver_certs::dev::load_or_generate(valid.path(), SystemTime::now()).unwrap();
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    quiver_certs::dev::load_or_generate(expired.path(), month_ago).unwrap(); // valid for 14 days from then
    let install = |from: &std::path::Path| {
        for file in [quiver_certs::dev::CERT_FILE, quiver_certs::dev::KEY_FILE] {
            std::fs::copy(from.join(file), live.path().join(file)).unwrap();
        }
    };
    install(valid.path());
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        tls: crate::config::TlsSource::Pem {
            cert: live.path().join(quiver_certs::dev::CERT_FILE),
            key: live.path().join(quiver_certs::dev::KEY_FILE),
        },
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let server = Server::bind(config.clone()).unwrap();
    let in_use = server.fingerprint.get();
    install(expired.path());
    let err = server.reloader().reload(config.auth.clone()).expect_err("an expired certificate").to_string();
    assert!(err.contains("expired at"), "{err}");
    assert_eq!(server.fingerprint.get(), in_use, "the certificate in use stays");
    drop(server);
    let started = Server::bind(config.clone()).unwrap();
    let expired_in_use = started.fingerprint.get();
    assert_ne!(expired_in_use, in_use, "a start serves the expired one, warning");
    // A reload of the certificate in use (for the token keys) is not refused for its dates.
    assert_eq!(started.reloader().reload(config.auth.clone()).unwrap(), expired_in_use);
}

/// A key of another certificate (a renewal half done) is refused naming the setting and both files, at a start as
/// `config check` names them (rustls' words alone named neither).
#[tokio::test]
async fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let (one, two, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for made in [&one, &two] {
        quiver_certs::dev::load_or_generate(made.path(), std::time::SystemTime::now()).unwrap();
    }
    let (cert, key) = (one.path().join(quiver_certs::dev::CERT_FILE), two.path().join(quiver_certs::dev::KEY_FILE));
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        tls: crate::config::TlsSource::Pem { cert: cert.clone(), key: key.clone() },
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let Err(err) = Server::bind(config).map(drop) else { panic!("a key of another certificate was taken") };
    let err = err.to_string();
    assert!(err.starts_with("tls.key: "), "{err}");
    assert!(err.contains(&*cert.to_string_lossy()) && err.contains(&*key.to_string_lossy()), "{err}");
}

/// A program that embeds the server (a `ServerConfig` of its own, no configuration file) is held to the ranges a
/// file is: before, only the limits were checked there, and a `frame_timeout_ms` of 0 closed every connection at its
/// first partial frame, a `websocket_max_upgrading_per_ip` of 0 refused every WebSocket client.
#[tokio::test]
async fn a_server_config_out_of_range_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let dev = || ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    let refused = |config: ServerConfig| match Server::bind(config) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("bound"),
    };
    let budget = crate::Budget { frame_timeout_ms: 0, ..crate::Budget::default() };
    assert_eq!(refused(ServerConfig { budget, ..dev() }), "budget.frame_timeout_ms: must be at least 1");
    let budget = crate::Budget { websocket_max_upgrading_per_ip: 0, ..crate::Budget::default() };
    assert!(refused(ServerConfig { budget, ..dev() }).starts_with("budget.websocket_max_upgrading_per_ip"));
    let tuning = quiver_transport::TransportTuning { copies: 200, ..quiver_transport::TransportTuning::quiver() };
    assert!(refused(ServerConfig { tuning, ..dev() }).starts_with("transport.copies: at most 8"));
    // ("Never", as a program embedding the server may write it, panicked in `server_transport`.)
    let never = Some(Duration::MAX);
    let tuning = quiver_transport::TransportTuning { keep_alive: never, ..quiver_transport::TransportTuning::quiver() };
    assert!(refused(ServerConfig { tuning, ..dev() }).starts_with("transport.keep_alive_ms: at most 86400000"));
    let tuning = quiver_transport::TransportTuning { tail_probe: never, ..quiver_transport::TransportTuning::quiver() };
    assert!(refused(ServerConfig { tuning, ..dev() }).starts_with("transport.tail_probe_ms: at most"));
    let limits = quiver_proto::Limits { handshake_timeout_ms: 3_600_000, ..quiver_proto::Limits::default() };
    assert!(refused(ServerConfig { limits, ..dev() }).starts_with("limits.handshake_timeout_ms: at most 60000"));
    drop(Server::bind(dev()).expect("the defaults are in range"));
}

/// A Join waiting for the store (its new room's creation, the writer stalled: a hung disk) does not hold the
/// connection past its token's expiry: it is refused `Unavailable` at the expiry and the connection closes
/// `TokenExpired`. Before, the control loop waited in the store's call, and the session outlived its token (and a
/// shutdown waited out its drain) for as long as the disk stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waiting_for_a_stalled_store_ends_at_the_tokens_expiry() {
    use quiver_proto::{ErrorCode, ServerMsg};
    let dir = tempfile::tempdir().unwrap();
    let (server, go) = with_a_stalled_store(dir.path());
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    let sent = std::time::Instant::now();
    let (conn, codec, _send, mut recv) = hello_and_join_a_new_room(dir.path(), addr, 3).await;
    let mut inbound = bytes::BytesMut::new();
    let mut replies = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if let Some(msg) = codec.decode::<ServerMsg>(&mut inbound).unwrap() {
                replies.push(msg);
                continue;
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                _ => return,
            }
        }
    });
    let ended = read.await.is_ok();
    let took = sent.elapsed();
    go.send(()).unwrap();
    assert!(ended, "the connection outlived its token while the store stalled: {replies:?}");
    assert!(took < Duration::from_millis(5_500), "ended after {took:?}");
    let refused = replies.iter().any(|msg| {
        matches!(msg, ServerMsg::Reply { req_id: 1, result: Err(failure) } if failure.code == ErrorCode::Unavailable)
    });
    assert!(refused, "{replies:?}");
    let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await.expect("closed");
    assert!(format!("{closed:?}").contains("token"), "{closed:?}");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
}

/// A client gone while its Join waits for a stalled store: its task ends at once (its slot among its address's
/// connections, its memberships, its subscriptions let go), not when the store moves again. Before, nothing
/// watched the connection during the wait, so a client reconnecting in a loop against a stalled disk held a slot
/// per attempt until its address reached `max_connections_per_ip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_its_join_waits_for_a_stalled_store_lets_go_of_its_connection() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (server, go) = with_a_stalled_store(dir.path());
    let (addr, stats, rooms) = (server.local_addr(), server.stats(), server.rooms.clone());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    let (conn, _codec, _send, _recv) = hello_and_join_a_new_room(dir.path(), addr, 3_600).await;
    let open = || stats.connections_native.load(Ordering::Acquire);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open() != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open(), 1, "the connection was never counted");
    // The Join is waiting for its room's creation to be stored once the room is in the hub (before, the close would
    // be seen by the control loop's read, which is not what this tests).
    while rooms.usage().rooms == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rooms.usage().rooms, 1, "the Join never reached the hub");
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.close(0u32.into(), b"gone");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while open() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = open();
    go.send(()).unwrap();
    assert_eq!(left, 0, "the connection's task waited for the stalled store after its client was gone");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
}

/// A post to a room not in memory (its load from the store waiting) does not hold back the connection's earlier
/// posts: their commits done, they reach the room's members (and their replies are made) while the load waits.
/// Before, the control loop waited in the later post's load, and the earlier posts were neither delivered nor
/// acknowledged until it was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_waiting_for_its_rooms_load_does_not_hold_back_earlier_posts() {
    let server = InProcess::start();
    let (addr, rooms, trust) = (server.addr, server.rooms.clone(), server.trust());
    let member = quiver_client::Client::connect(&addr.to_string(), trust.clone()).await.unwrap();
    let mut lobby = member.join("lobby").await.unwrap();
    let poster = quiver_client::Client::connect(&addr.to_string(), trust).await.unwrap();
    let held = rooms.hold_loads().await; // a room not in memory now waits for its load
                                         // (Queued when called, in this order.)
    let first = tokio::spawn(poster.post("lobby", "first"));
    let second = tokio::spawn(poster.post("cold", "second"));
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // (An ended room answers None at once, for good: a loop on it would never let its timeout fire.)
            let Some(event) = lobby.next().await else { panic!("the room ended: {:?}", lobby.end_reason()) };
            if let quiver_client::RoomEvent::Message(message) = event {
                return message.body;
            }
        }
    })
    .await;
    let first_done = tokio::time::timeout(Duration::from_secs(5), first).await;
    let second_waiting = !second.is_finished();
    drop(held);
    assert_eq!(delivered.expect("the first post was held back by the second's load"), "first");
    assert_eq!(first_done.expect("the first post was not acknowledged").unwrap().unwrap(), 1);
    assert!(second_waiting, "the second post did not wait for its room's load");
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap().unwrap(), 1);
    member.close().await;
    poster.close().await;
    server.stop().await;
}

/// The replies before a post that waits for its room's load are written while it waits, also when none of them
/// waits for a commit (a Welcome, a Joined, in the same read as the post): they sat unwritten until the load was
/// done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_before_a_post_waiting_for_its_rooms_load_are_written_meanwhile() {
    use quiver_proto::{FrameCodec, Hello, Join, Limits, Post, Reply, Request, RequestBody, ServerMsg};
    let server = InProcess::start();
    let (addr, rooms, trust, dir) = (server.addr, server.rooms.clone(), server.trust(), server.dir.path());
    let member = quiver_client::Client::connect(&addr.to_string(), trust.clone()).await.unwrap();
    let _lobby = member.join("lobby").await.unwrap(); // in memory from now on
    let held = rooms.hold_loads().await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        quiver_client::trust::quinn_client_config(&trust, addr, quiver_proto::ALPN_QUIVER).unwrap(),
    );
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = quiver_auth::mint_dev(dir, &quiver_auth::Claims::everything("raw", now_s, 600)).unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let hello = Hello { version: quiver_proto::PROTOCOL_VERSION, agent: "test".into(), name: None, token: Some(token) };
    let mut chunk = codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) }).unwrap();
    let join = Join { room: "lobby".into(), since: None, redundant: false };
    codec.encode(&Request { req_id: 1, body: RequestBody::Join(join) }, &mut chunk).unwrap();
    let post = Post { room: "cold".into(), client_msg_id: 1, body: bytes::Bytes::from_static(b"x") };
    codec.encode(&Request { req_id: 2, body: RequestBody::Post(post) }, &mut chunk).unwrap();
    send.write_all(&chunk).await.unwrap();
    let mut inbound = bytes::BytesMut::new();
    let mut replies = Vec::new();
    let joined = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            while let Some(msg) = codec.decode::<ServerMsg>(&mut inbound).unwrap() {
                replies.push(msg);
            }
            let joined = |m: &ServerMsg| matches!(m, ServerMsg::Reply { req_id: 1, result: Ok(Reply::Joined(_)) });
            if replies.iter().any(joined) {
                return;
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                _ => return,
            }
        }
    })
    .await;
    let posted = replies.iter().any(|m| matches!(m, ServerMsg::Reply { req_id: 2, .. }));
    drop(held);
    assert!(joined.is_ok(), "the Welcome and Joined waited for the post's load: {replies:?}");
    assert!(!posted, "the post did not wait for its room's load");
    member.close().await;
    server.stop().await;
}

/// A dev server on 127.0.0.1 running in this test's process, with its hub of rooms.
struct InProcess {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    rooms: std::sync::Arc<crate::hub::LocalRooms>,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<crate::Summary>,
}

impl InProcess {
    fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())).unwrap();
        let (addr, rooms) = (server.local_addr(), server.rooms().clone());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(server.run(shutdown.clone()));
        InProcess { dir, addr, rooms, shutdown, run }
    }

    /// What its clients trust (its dev certificate, and dev tokens, from its data directory).
    fn trust(&self) -> quiver_client::TrustOptions {
        quiver_client::TrustOptions::Auto { data_dir: self.dir.path().to_owned() }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.run).await;
    }
}

/// A dev server on 127.0.0.1 whose store's writer is held (a hung disk) until the returned sender says go.
fn with_a_stalled_store(dir: &std::path::Path) -> (Server, std::sync::mpsc::Sender<()>) {
    let server = Server::bind(ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.to_owned())).unwrap();
    let (go, wait) = std::sync::mpsc::channel();
    let hold = crate::store::Op::Hold(std::sync::Mutex::new(wait), std::sync::Mutex::new(None));
    drop(server.store().expect("a durable store").submit(hold));
    (server, go)
}

/// A raw connection to the dev server at `addr` that sends Hello (a dev token good for `lifetime_s`) and a Join of
/// a room not made yet, in one chunk.
pub(super) async fn hello_and_join_a_new_room(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    lifetime_s: u64,
) -> (quinn::Connection, quiver_proto::FrameCodec, quinn::SendStream, quinn::RecvStream) {
    use quiver_proto::{FrameCodec, Hello, Join, Limits, Request, RequestBody};
    let trust = quiver_client::TrustOptions::Auto { data_dir: dir.to_owned() };
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = quiver_client::trust::quinn_client_config(&trust, addr, quiver_proto::ALPN_QUIVER).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = quiver_auth::Claims::everything("stalled", now_s, lifetime_s);
    let token = quiver_auth::mint_dev(dir, &claims).unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let hello = Hello { version: quiver_proto::PROTOCOL_VERSION, agent: "test".into(), name: None, token: Some(token) };
    let mut chunk = codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) }).unwrap();
    let join = Join { room: "new".into(), since: None, redundant: false };
    codec.encode(&Request { req_id: 1, body: RequestBody::Join(join) }, &mut chunk).unwrap();
    send.write_all(&chunk).await.unwrap();
    (conn, codec, send, recv)
}
