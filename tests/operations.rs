//! Operating a server: `/metrics` moves by exactly the traffic, `/readyz` follows the server's life, qlog files.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_proto::{ErrorCode, Limits};
use quiver_server::{Server, ServerConfig};
use quiver_tests::{http_get, sample, sample_if, TestServer};
use tokio_util::sync::CancellationToken;

fn with_admin(limits: Limits) -> TestServer {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().into());
    TestServer::start_with(ServerConfig { limits, admin: Some("127.0.0.1:0".parse().unwrap()), ..dev }, data_dir)
}

async fn scrape(server: &TestServer) -> String {
    let (status, body) = http_get(server.admin.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_traffic() {
    let server = with_admin(Limits { max_rooms: 1, ..Limits::default() });
    let client = server.client().await;
    let mut room = client.join("lobby").await.unwrap();
    let publisher_client = server.client().await;
    let before = scrape(&server).await;

    for i in 0..3 {
        room.post(format!("hello {i}")).await.unwrap();
    }
    let refused = client.join("second").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TooManyRooms));
    let mut subscription = client.subscribe("prices").await.unwrap();
    let publisher = publisher_client.publisher("prices").await.unwrap();
    for i in 0..5u64 {
        publisher.send(i.to_be_bytes().to_vec()).unwrap();
        // One at a time: each is sent before the next is published, so none is conflated.
        let tick = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap().unwrap();
        assert_eq!(tick.seq, i + 1);
    }
    // A repeated Subscribe answers the same id and is no second subscription.
    let again = client.subscribe("prices").await.unwrap();
    let mut posts = 0;
    while posts < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), room.next()).await.expect("the posts arrive");
        if let quiver_client::RoomEvent::Message(_) = event.expect("the room ended") {
            posts += 1;
        }
    }
    let after = scrape(&server).await;

    // (A labelled counter is exported from its first count: absent before, it was 0.)
    let delta = |name: &str| sample(&after, name) - quiver_tests::sample_if(&before, name).unwrap_or(0.0);
    assert_eq!(delta("quiver_posts_total"), 3.0);
    assert_eq!(delta("quiver_posts_duplicate_total"), 0.0);
    assert_eq!(delta("quiver_room_deliveries_total"), 3.0, "three messages to the one member");
    assert_eq!(delta("quiver_post_delivery_seconds_count"), 3.0);
    // Buckets are cumulative and end at +Inf with the count.
    let buckets: Vec<f64> = after
        .lines()
        .filter(|l| l.starts_with("quiver_post_delivery_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 10 && buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(sample(&after, "quiver_post_delivery_seconds_bucket{le=\"+Inf\"}"), 3.0, "{after}");
    assert_eq!(delta("quiver_refusals_total{code=\"TooManyRooms\"}"), 1.0);
    assert_eq!(delta("quiver_limit_breaches_total{limit=\"max_rooms\"}"), 1.0);
    assert_eq!(delta("quiver_ticks_received_total"), 5.0);
    assert_eq!(delta("quiver_ticks_sent_total"), 5.0);
    assert_eq!(delta("quiver_ticks_conflated_total"), 0.0);
    // Gauges: what is there now.
    assert_eq!(sample(&after, "quiver_connections{transport=\"native\"}"), 2.0);
    assert_eq!(sample(&after, "quiver_connections{transport=\"webtransport\"}"), 0.0);
    assert_eq!(sample(&after, "quiver_handshakes_total"), 2.0);
    assert_eq!(sample(&after, "quiver_room_members"), 1.0);
    assert_eq!(sample(&after, "quiver_subscriptions"), 1.0);
    assert_eq!((sample(&before, "quiver_subscriptions"), sample(&after, "quiver_channels")), (0.0, 1.0));
    assert_eq!(sample(&after, "quiver_rooms"), 1.0);
    assert_eq!(sample(&after, "quiver_websocket_upgrading"), 0.0, "exported (its counting: tests/websocket.rs)");
    assert!(sample(&after, "quiver_retained_history_bytes") > 0.0);
    assert_eq!(sample(&after, "quiver_outbox_queued_bytes"), 0.0, "everything was written");
    assert_eq!(sample(&after, "quiver_up"), 1.0);
    assert!(sample(&after, "quiver_quic_sent_packets_total") > sample(&before, "quiver_quic_sent_packets_total"));
    assert!(sample(&after, "quiver_quic_rtt_seconds{stat=\"max\"}") > 0.0);
    assert!(sample(&after, "quiver_store_commits_total") >= 1.0, "the posts were stored");

    // Leaving, and connections going, take the gauges back down.
    room.leave().await.unwrap();
    drop((subscription, again));
    client.close().await;
    publisher_client.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = scrape(&server).await;
        let gauges = ["quiver_connections{transport=\"native\"}", "quiver_room_members", "quiver_subscriptions"];
        if gauges.iter().all(|g| sample(&now, g) == 0.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gauges did not return to 0:\n{now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The room budget's work is served: rooms evicted at `budget.max_rooms` and new rooms refused there (they were
/// counted, and named by docs/security.md, but never exported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_budgets_evictions_and_refusals_are_exported() {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().into());
    let budget = quiver_server::Budget { max_rooms: 2, ..dev.budget.clone() };
    let admin = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(ServerConfig { budget, admin, ..dev }, data_dir);
    let client = server.client().await;
    for room in ["a", "b", "c", "d"] {
        client.post(room, "one").await.unwrap(); // nobody in them: the idle ones make place
    }
    let (_x, _y) = (client.join("x").await.unwrap(), client.join("y").await.unwrap());
    let refused = client.post("z", "full").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ServerFull), "{refused}");
    let metrics = scrape(&server).await;
    assert!(sample(&metrics, "quiver_rooms_evicted_total") >= 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "quiver_rooms_refused_total"), 1.0);
    assert!(sample_if(&metrics, "quiver_rooms_removed_total").is_some());
    assert!(sample_if(&metrics, "quiver_history_shed_bytes_total").is_some());
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_server_serves_and_again_once_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
    let server = Server::bind(ServerConfig { admin: Some("127.0.0.1:0".parse().unwrap()), ..dev }).unwrap();
    let admin = server.admin_addr().unwrap();
    // Bound, store open, but not accepting yet.
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: not serving: starting, or draining for shutdown\n"));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert!(http_get(admin, "/metrics").await.1.contains("quiver_up 0"));
    let metrics = server.metrics();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while http_get(admin, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    assert!(metrics.ready().is_err(), "not ready once draining");
    assert!(summary.to_string().starts_with("server stopped\n"), "{summary}");
}

/// A store that failed to write refuses posts until the server restarts: `/healthz` says so (503), so that a
/// liveness probe restarts it. Before, it stayed 200 and the server refused every post until someone noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_once_the_store_failed() {
    let dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
    let server = Server::bind(ServerConfig { admin: Some("127.0.0.1:0".parse().unwrap()), ..dev }).unwrap();
    let admin = server.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    let store = server.store().expect("a durable store");
    store.writer_stats().failed.store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("restarted"), "{body}");
    drop(server);
}

/// A bind that fails after the admin listener started (here the UDP port is taken) stops that listener: it kept
/// answering `/healthz` 200, and a program retrying the bind found its admin port in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_leaves_no_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dev = ServerConfig::dev(taken.local_addr().unwrap(), dir.path().into());
    assert!(Server::bind(ServerConfig { admin: Some(admin), ..dev }).is_err(), "bound a UDP port in use");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(admin).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the admin listener still answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qlog_dir_gets_one_parseable_qlog_file_per_connection() {
    let data_dir = tempfile::tempdir().unwrap();
    let qlogs = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().into());
    let server = TestServer::start_with(ServerConfig { qlog_dir: Some(qlogs.path().into()), ..dev }, data_dir);
    let client_qlogs = tempfile::tempdir().unwrap();
    let options = quiver_client::ConnectOptions {
        trust: server.trust(),
        qlog_dir: Some(client_qlogs.path().into()),
        ..Default::default()
    };
    let client = quiver_client::Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let room = client.join("lobby").await.unwrap();
    room.post("hello").await.unwrap();
    client.close().await;
    server.stop().await;
    check_qlog(qlogs.path());
    check_qlog(client_qlogs.path());
}

/// A qlog directory the server cannot write is refused at start, naming `log.qlog_dir` (found at each connection
/// before, each one a warning and no qlog).
#[test]
fn a_qlog_dir_that_cannot_be_written_is_refused_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let file = data_dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().join("data"));
    let Err(refused) = Server::bind(ServerConfig { qlog_dir: Some(file.join("qlogs")), ..dev }) else {
        panic!("started with a qlog directory it cannot write")
    };
    assert!(refused.to_string().starts_with("log.qlog_dir: cannot write qlog files in"), "{refused}");
}

/// A disk floor the store's filesystem can never clear (at or above the most it could have free) is refused at
/// start, naming `budget.disk_min_free_bytes`: it refused every post from the first while the server said it was
/// ready.
#[test]
fn a_disk_floor_above_the_disks_size_is_refused_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().join("data"));
    let budget = quiver_server::Budget { disk_min_free_bytes: 1 << 60, ..dev.budget.clone() };
    let Err(refused) = Server::bind(ServerConfig { budget, ..dev }) else {
        panic!("started with a disk floor above the disk's size")
    };
    assert!(refused.to_string().starts_with("budget.disk_min_free_bytes: "), "{refused}");
    assert!(
        refused.to_string().contains("not below the most the store's filesystem could ever have free"),
        "{refused}"
    );
}

/// The one qlog file in `dir` parses and has packets both ways.
fn check_qlog(dir: &std::path::Path) {
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "sqlog");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    // JSON-SEQ (RFC 7464): records start with RS; the first is the header, then one event per record.
    let records: Vec<serde_json::Value> =
        text.split('\u{1e}').filter(|r| !r.trim().is_empty()).map(|r| serde_json::from_str(r).unwrap()).collect();
    assert!(records[0]["qlog_version"].is_string(), "{}", records[0]);
    let names: Vec<&str> = records[1..].iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"transport:packet_sent") && names.contains(&"transport:packet_received"), "{names:?}");
}

/// The deployment files keep the demo page off (where the server signs with its dev key, the page hands a token
/// with every right to whoever brings its key, which the start prints, to the journal under systemd) and run the
/// image as a numeric user (Kubernetes' `runAsNonRoot` cannot check a name).
#[test]
fn the_deployment_files_turn_the_page_off_and_run_as_a_numeric_user() {
    let read =
        |name: &str| std::fs::read_to_string(format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (unit, image) = (read("quiver.service"), read("Dockerfile"));
    assert!(unit.lines().any(|line| line == "Environment=QUIVER_WEB_PAGE=off"), "deploy/quiver.service");
    assert!(image.contains("QUIVER_WEB_PAGE=off"), "deploy/Dockerfile");
    assert!(unit.lines().any(|line| line.starts_with("LimitNOFILE=")), "deploy/quiver.service");
    let user = image.lines().find(|line| line.starts_with("USER ")).expect("a USER line");
    let id = user.trim_start_matches("USER ").split(':').next().unwrap_or("");
    assert!(id.parse::<u32>().is_ok_and(|id| id > 0), "{user}: not a numeric non-root user");
    // The admin port is not exposed: `docker run -P` would publish it on every address of the host.
    let exposed = image.lines().filter(|line| line.starts_with("EXPOSE ")).collect::<Vec<_>>();
    assert!(!exposed.is_empty() && exposed.iter().all(|line| !line.contains("9433")), "{exposed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_operations_lists_every_metric() {
    let server = with_admin(Limits::default());
    let client = server.client().await;
    let room = client.join("lobby").await.unwrap();
    room.post("so that the store's metrics are there").await.unwrap();
    let metrics = scrape(&server).await;
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
    let families: Vec<&str> = metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(families.len() > 25, "{families:?}");
    for family in &families {
        // Counters are documented with their samples' `_total`, each in a row of the table of its own (a name in
        // passing inside another row is not documentation).
        let documented = [family.to_string(), format!("{family}_total")]
            .iter()
            .any(|name| docs.contains(&format!("| `{name}` |")) || docs.contains(&format!("| `{name}{{")));
        assert!(documented, "docs/operations.md has no row for {family}");
    }
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana-dashboard.json")).unwrap();
    // And the other way: every metric the table lists is served (and charted) (seven counters docs/security.md names were
    // counted and never exported).
    for row in docs.lines().filter_map(|l| l.strip_prefix("| `quiver_")) {
        let name = row.split(['`', '{']).next().unwrap_or_default();
        let family = format!("quiver_{}", name.strip_suffix("_total").unwrap_or(name));
        assert!(families.contains(&family.as_str()), "docs/operations.md lists {family}, which /metrics lacks");
        assert!(dashboard.contains(&family), "deploy/grafana-dashboard.json does not chart {family}");
    }
}
