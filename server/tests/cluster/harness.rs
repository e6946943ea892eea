//! What the cluster tests share: a `redis-server` of their own, nodes (processes) on it, clients, and checks of one
//! order.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use quiver_client::{ConnectOptions, RoomEvent, TrustOptions};

use super::{
    lines::{Lines, NoLine},
    ports,
};

/// Presence expiry and heartbeat the nodes run with here (short, so that a dead node is noticed quickly), and a
/// request timeout that keeps the expiry above two request timeouts (the longest a live node's beats can be apart
/// on a slow Redis, with the request timeout longer than a heartbeat: the server refuses less).
pub(crate) const EXPIRY_MS: u64 = 2_000;
pub(crate) const HEARTBEAT_MS: u64 = 250;
pub(crate) const REQUEST_TIMEOUT_MS: u64 = 900;

pub(crate) fn server_bin() -> String {
    std::env::var("QUIVER_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_quiver-server").to_string())
}

/// False (after a loud message) when `redis-server` is missing; a failure under `QUIVER_REQUIRE_ALL=1`.
pub(crate) fn redis_available(test: &str) -> bool {
    if Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = "redis-server is not installed (Debian package redis-server)";
    if std::env::var("QUIVER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("QUIVER_REQUIRE_ALL=1 and {why}");
    }
    // Written to the stderr handle, not with `eprintln!`, which the test harness captures for passing tests.
    let bar = "!".repeat(74);
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr().lock(),
        format_args!("{bar}\n!!! SKIPPED {test}: {why}\n{bar}\n"),
    );
    false
}

/// A process killed when dropped (a failing test must not leave it running).
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub(crate) fn signal(&self, signal: &str) {
        let parsed: nix::sys::signal::Signal = format!("SIG{signal}").parse().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        nix::sys::signal::kill(pid, parsed).unwrap_or_else(|err| panic!("kill -{signal}: {err}"));
    }
}

/// Where a Redis keeps its snapshots (`SAVE`), and the port it is started on again from the last one: Redis back
/// with older data than the nodes saw.
pub(crate) struct Snapshots {
    _dir: tempfile::TempDir,
    path: String,
    port: u16,
}

impl Snapshots {
    /// A Redis that saves into a directory of its own, on a port it can be started on again.
    pub(crate) fn start() -> (Snapshots, Redis) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        let port = ports::restartable_port();
        let redis = Redis::start_on(port, &["--dir", &path]);
        (Snapshots { _dir: dir, path, port }, redis)
    }

    /// Kills `redis` and starts it again from its last snapshot.
    pub(crate) fn restart(&self, redis: Redis) -> Redis {
        drop(redis);
        Redis::start_on(self.port, &["--dir", &self.path])
    }
}

/// A `redis-server` of the test's own, persistence off.
pub(crate) struct Redis {
    pub(crate) process: Running,
    pub(crate) port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Redis::start_on(ports::restartable_port(), &[])
    }

    /// A Redis on `port` (a restart: the port of one that was stopped), with `extra` arguments (`--dir`).
    pub(crate) fn start_on(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let redis = Redis { process: Running(child), port };
        let started = Instant::now();
        while redis.query::<String>(&mut redis::cmd("PING")).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server does not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its own, not another process's on the port (which answered the PING before this one could fail to bind).
        let info: String = redis.query(&mut redis::cmd("INFO").arg("server").clone()).unwrap();
        let pid = info.lines().find_map(|line| line.strip_prefix("process_id:")).map(str::trim);
        let own = redis.process.0.id().to_string();
        assert_eq!(pid, Some(own.as_str()), "another process's redis-server answers on port {port}");
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        cmd.query(&mut conn)
    }

    /// Connections in Pub/Sub mode now (subscribed): the nodes' Pub/Sub connections once they subscribed.
    pub(crate) fn pubsub_clients(&self) -> usize {
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub")).unwrap();
        list.lines().filter(|line| !line.trim().is_empty()).count()
    }

    /// PUBLISH commands Redis has run so far.
    pub(crate) fn publishes(&self) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats")).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    /// The PUBLISH count once it has held still for 200 ms (at most 5 s): the nodes' announcements settled (a fixed
    /// wait took a late one for the traffic under test on a busy machine).
    pub(crate) async fn settled_publishes(&self) -> u64 {
        let started = std::time::Instant::now();
        let mut last = self.publishes();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = self.publishes();
            if now == last || started.elapsed() > std::time::Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    }
}

/// One node: its process, QUIC address and admin address.
pub(crate) struct Node {
    pub(crate) process: Running,
    pub(crate) addr: String,
    pub(crate) admin: SocketAddr,
}

/// Starts a node on the Redis at `broker` with `dir` as its data directory (which must hold the cluster's dev
/// certificate and token key when it is not the first node's).
pub(crate) fn start_node(dir: &Path, broker: &str, extra_env: &[(&str, &str)]) -> Node {
    let port = ports::restartable_port();
    let mut child = Command::new(server_bin())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--no-web", "--admin", "127.0.0.1:0", "--broker", broker])
        .arg("--data-dir")
        .arg(dir)
        .env("QUIVER_BROKER_PRESENCE_EXPIRY_MS", EXPIRY_MS.to_string())
        .env("QUIVER_BROKER_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
        .env("QUIVER_BROKER_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
        .env("RUST_LOG", std::env::var("QUIVER_NODE_LOG").unwrap_or_else(|_| "warn".into()))
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // (Read on a thread of its own, which drains stdout from then on so the node never blocks on it.)
    let lines = Lines::read(child.stdout.take().unwrap());
    let process = Running(child); // killed if the node does not start
    let admin = match lines.starting_with("admin http://", Duration::from_secs(60)) {
        Ok(line) => line["admin http://".len()..].split('/').next().unwrap().parse().unwrap(),
        Err(NoLine::Ended) => panic!("the node did not start (its stdout ended)"),
        Err(NoLine::TimedOut) => panic!("the node did not say where its admin listener is within 60 s"),
    };
    Node { process, addr: format!("127.0.0.1:{port}"), admin }
}

/// The first node in `dirs[0]`, then the others with its dev certificate and keys: one cluster, one certificate.
/// Node `i` reaches Redis at `brokers[i]`.
pub(crate) fn start_cluster(dirs: &[PathBuf], brokers: &[String], extra_env: &[(&str, &str)]) -> Vec<Node> {
    let first = start_node(&dirs[0], &brokers[0], extra_env);
    let mut nodes = vec![first];
    for (dir, broker) in dirs[1..].iter().zip(&brokers[1..]) {
        for entry in std::fs::read_dir(&dirs[0]).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if entry.file_type().unwrap().is_file() && name != "lock" {
                std::fs::copy(entry.path(), dir.join(&name)).unwrap();
            }
        }
        nodes.push(start_node(dir, broker, extra_env));
    }
    nodes
}

/// A test's cluster: its Redis, `n` nodes (data directories in `tmp`) and a runtime for its clients.
pub(crate) struct Cluster {
    pub(crate) redis: Redis,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) _tmp: tempfile::TempDir,
}

pub(crate) fn cluster(n: usize, extra_env: &[(&str, &str)]) -> Cluster {
    let redis = Redis::start();
    let (tmp, dirs) = node_dirs(n);
    let nodes = start_cluster(&dirs, &vec![redis.url(); n], extra_env);
    Cluster { redis, dirs, nodes, runtime: clients_runtime(), _tmp: tmp }
}

/// `n` empty data directories (`node0`, `node1`, …) in a temporary directory, removed when it is dropped.
pub(crate) fn node_dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("node{i}"))).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
    }
    (tmp, dirs)
}

/// The runtime a test's clients (and relays) run on.
pub(crate) fn clients_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `GET path` on the admin listener: the status code.
pub(crate) fn admin_status(admin: SocketAddr, path: &str) -> u16 {
    admin_get(admin, path).split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// `GET path` on the admin listener: the whole response.
pub(crate) fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

pub(crate) fn options(dir: &Path, name: &str) -> ConnectOptions {
    ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.to_owned() },
        name: Some(name.to_string()),
        connect_timeout: Duration::from_secs(3),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        // A killed node is noticed within a second (keep-alives every 200 ms keep live ones talking).
        tuning: quiver_transport::TransportTuning {
            keep_alive: Some(Duration::from_millis(200)),
            ..quiver_transport::TransportTuning::quiver()
        },
        dead_server_after: Some(Duration::from_secs(1)),
        ..ConnectOptions::default()
    }
}

/// What one member saw of a room: messages (seq, body) in order, and whether every resume recovered.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) messages: Vec<(u64, String)>,
    pub(crate) resumed: Vec<bool>,
    pub(crate) left: Vec<(String, Instant)>,
}

pub(crate) fn read_room(mut room: quiver_client::Room, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = room.next().await {
            let mut seen = seen.lock().unwrap();
            match event {
                RoomEvent::Message(m) => seen.messages.push((m.seq, String::from_utf8_lossy(&m.body).into_owned())),
                RoomEvent::Resumed { recovered, .. } => seen.resumed.push(recovered),
                RoomEvent::MemberLeft { member } => seen.left.push((member, Instant::now())),
                RoomEvent::MemberJoined { .. } => {}
            }
        }
    })
}

pub(crate) async fn wait_for(what: &str, within: Duration, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "timed out after {within:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every member saw exactly the acknowledged messages, each once, in seq order from 1, with no gap.
pub(crate) fn check_one_order(acked: &BTreeMap<u64, String>, seen: &[Arc<Mutex<Seen>>]) {
    let n = acked.len() as u64;
    assert_eq!(acked.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "acknowledged seqs");
    for (i, seen) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap();
        let seqs: Vec<u64> = seen.messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "member {i} saw a gap, a duplicate or another order");
        for (seq, body) in &seen.messages {
            assert_eq!(acked.get(seq), Some(body), "member {i}: seq {seq} is not the message acknowledged with it");
        }
        assert!(seen.resumed.iter().all(|recovered| *recovered), "member {i} resumed without recovery");
    }
}

/// Every message in `room`'s history, (seq, body) in order, read page by page.
pub(crate) async fn history(client: &quiver_client::Client, room: &str) -> Vec<(u64, String)> {
    let mut messages = Vec::new();
    let mut since = None;
    loop {
        let page = client.history(room, since, 100).await.unwrap();
        for message in &page.messages {
            if let quiver_proto::EventKind::Message { body, .. } = &message.kind {
                messages.push((message.seq, String::from_utf8_lossy(body).into_owned()));
            }
        }
        since = page.messages.last().map(|m| m.seq);
        if !page.more || page.messages.is_empty() {
            return messages;
        }
    }
}
