//! The end-to-end harness: a real server on 127.0.0.1:0 in the test's runtime, clients of the library, and raw quinn
//! connections for hostile-peer tests ([`hostile`]: the bystander and the raw control stream they share). Used by the
//! tests beside it and by the CLI's tests.
#![allow(clippy::unwrap_used)]

pub mod fakes;
pub mod hostile;
pub mod ports;

use std::{io::Write, net::SocketAddr, time::Duration};

use bytes::BytesMut;
use quiver_client::{Client, ConnectOptions, Message, Room, RoomEvent, Tick, TickSubscription, TrustOptions};
use quiver_proto::{FrameCodec, Limits, ServerMsg};
use quiver_server::{Server, ServerConfig, WebConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: std::sync::Arc<quiver_server::stats::ServerStats>,
    pub data_dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<quiver_server::Summary>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), when the configuration asked for one.
    pub admin: Option<SocketAddr>,
    /// The WebSocket fallback's listener, unless the configuration turned it off.
    pub websocket: Option<SocketAddr>,
    /// Reloads the certificate and token keys, as SIGHUP does.
    pub reloader: quiver_server::Reloader,
}

/// The server could not bind its UDP or TCP port because something else holds it.
fn addr_in_use(err: &quiver_server::ServerError) -> bool {
    matches!(err, quiver_server::ServerError::Bind(err) | quiver_server::ServerError::WebSocket(_, err)
        | quiver_server::ServerError::Page(_, err)
        if err.kind() == std::io::ErrorKind::AddrInUse)
}

impl TestServer {
    pub fn start(limits: Limits) -> TestServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), tempfile::tempdir().unwrap(), limits)
    }

    /// Stops the server and starts a new one on the same address and data directory (so with the rooms its store
    /// kept).
    pub async fn restart(self, limits: Limits) -> TestServer {
        self.restart_with(|dir, addr| ServerConfig {
            limits: limits.clone(),
            ..ServerConfig::dev(addr, dir.to_owned())
        })
        .await
    }

    /// [`TestServer::restart`] with the configuration `config(data_dir, addr)` returns.
    pub async fn restart_with(self, config: impl Fn(&std::path::Path, SocketAddr) -> ServerConfig) -> TestServer {
        let TestServer { addr, data_dir, shutdown, task, .. } = self;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("server stops in time").unwrap();
        // quinn's endpoint driver releases the socket a moment after the server returns: retry the bind briefly.
        for _ in 0..100 {
            match Server::bind(config(data_dir.path(), addr)) {
                Ok(server) => return Self::run(server, data_dir),
                Err(err) if addr_in_use(&err) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(err) => panic!("{err}"),
            }
        }
        panic!("{addr} still in use 5 s after the server stopped");
    }

    /// [`TestServer::start`] with this WebTransport configuration (path, allowed origins).
    pub fn start_web(limits: Limits, web: WebConfig) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().to_owned());
        Self::start_with(ServerConfig { limits, web, ..dev }, data_dir)
    }

    pub fn start_at(addr: SocketAddr, data_dir: tempfile::TempDir, limits: Limits) -> TestServer {
        let config = ServerConfig { limits, ..ServerConfig::dev(addr, data_dir.path().to_owned()) };
        Self::start_with(config, data_dir)
    }

    /// A server started with `config`, whose data directory is `data_dir` (e.g. one with production token keys).
    /// Port 0 means a port a restart can take again ([`ports::restartable_port`]), not the kernel's pick.
    pub fn start_with(config: ServerConfig, data_dir: tempfile::TempDir) -> TestServer {
        if config.listen.port() != 0 {
            return Self::run(Server::bind(config).unwrap(), data_dir);
        }
        for _ in 0..20 {
            let listen = SocketAddr::new(config.listen.ip(), ports::restartable_port());
            match Server::bind(ServerConfig { listen, ..config.clone() }) {
                Ok(server) => return Self::run(server, data_dir),
                Err(err) if addr_in_use(&err) => {} // another test bound the port since it was picked: pick again
                Err(err) => panic!("{err}"),
            }
        }
        panic!("20 picked ports were taken before the server bound them");
    }

    /// A server with default limits within `budget`.
    pub fn start_with_budget(budget: quiver_server::Budget) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().into());
        Self::start_with(ServerConfig { budget, ..dev }, data_dir)
    }

    fn run(server: Server, data_dir: tempfile::TempDir) -> TestServer {
        let addr = server.local_addr();
        let stats = server.stats();
        let admin = server.admin_addr();
        let websocket = server.websocket_addr();
        let reloader = server.reloader();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer { addr, stats, data_dir, shutdown, task, admin, websocket, reloader }
    }

    pub fn trust(&self) -> TrustOptions {
        TrustOptions::Auto { data_dir: self.data_dir.path().to_owned() }
    }

    /// The link emulator's relay on 127.0.0.1 in front of this server, shaping both ways with `profile`, for at
    /// most `max_clients` clients.
    pub fn relay(
        &self,
        profile: quiver_lab::impair::ImpairmentProfile,
        max_clients: usize,
    ) -> quiver_lab::impair::Relay {
        quiver_lab::impair::Relay::start(quiver_lab::impair::RelayConfig {
            listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            upstream: self.addr,
            profile,
            max_clients,
            client_idle: quiver_lab::impair::CLIENT_IDLE,
        })
        .expect("the relay starts")
    }

    /// A token for `sub` with every right, signed with this server's dev key.
    pub fn token(&self, sub: &str) -> String {
        dev_token(self.data_dir.path(), sub)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string(), self.trust()).await.unwrap()
    }

    pub async fn client_with(&self, options: ConnectOptions) -> Result<Client, quiver_client::ConnectError> {
        let websocket_port = self.websocket.map(|ws| ws.port());
        let options = ConnectOptions { trust: self.trust(), websocket_port, ..options };
        Client::connect_with(&self.addr.to_string(), options).await
    }

    /// A client over the WebSocket fallback.
    pub async fn ws_client_with(&self, options: ConnectOptions) -> Result<Client, quiver_client::ConnectError> {
        self.client_with(ConnectOptions { transport: quiver_client::Transport::WebSocket, ..options }).await
    }

    /// A bare QUIC connection with ALPN `quiver/1` that has not said anything yet.
    pub async fn raw(&self) -> quinn::Connection {
        self.try_raw().await.unwrap()
    }

    /// [`TestServer::raw`], or why the handshake failed. Each connection has its own endpoint, so nothing is shared
    /// with other connections.
    pub async fn try_raw(&self) -> Result<quinn::Connection, quinn::ConnectionError> {
        self.try_raw_from([127, 0, 0, 1].into()).await
    }

    /// [`TestServer::try_raw`] from another loopback address (`from`: in 127.0.0.0/8), as another client would.
    pub async fn try_raw_from(&self, from: std::net::IpAddr) -> Result<quinn::Connection, quinn::ConnectionError> {
        let config = quiver_client::quinn_client_config(&self.trust(), self.addr, quiver_proto::ALPN_QUIVER).unwrap();
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
        endpoint.set_default_client_config(config);
        endpoint.connect(self.addr, "localhost").unwrap().await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("server stops in time").unwrap();
    }
}

/// A token for `sub` with every right for an hour, signed with the dev key in `data_dir`.
pub fn dev_token(data_dir: &std::path::Path, sub: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    quiver_auth::mint_dev(data_dir, &quiver_auth::Claims::everything(sub, now, 3600)).unwrap()
}

/// Reads one server message from a raw control stream.
pub async fn read_msg(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> Option<ServerMsg> {
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    loop {
        if let Some(msg) = codec.decode::<ServerMsg>(buf).unwrap() {
            return Some(msg);
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            _ => return None,
        }
    }
}

/// The application close code and reason a connection ended with.
pub async fn closed_with(conn: &quinn::Connection) -> (quiver_proto::ErrorCode, String) {
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("closed in time");
    quiver_transport::close::describe(&err)
}

/// For a test that cannot run on this machine (no browser, no interpreter, no privilege): says so loudly on stderr
/// and returns, so that the test passes, unless `QUIVER_REQUIRE_ALL=1` (CI), where every test must run and this
/// panics.
pub fn skip(test: &str, why: &str) {
    if std::env::var("QUIVER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("QUIVER_REQUIRE_ALL=1 and {why}");
    }
    let bar = "!".repeat(79);
    // Written to the stderr handle, not with `eprintln!`, which the test harness captures for passing tests.
    let _ = writeln!(std::io::stderr().lock(), "\n{bar}\n!!! SKIPPED {test}: {why}\n{bar}\n");
}

/// GETs `path` from an HTTP/1.1 server at `addr` (the admin listener, the demo page): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the sample `name` (with its labels as written, e.g. `quiver_refusals_total{code="TooManyRooms"}`)
/// in a Prometheus text exposition. Panics when it is absent: a sample renamed or no longer exported must fail the
/// checks of its value (a check of 0 would otherwise pass).
pub fn sample(metrics: &str, name: &str) -> f64 {
    sample_if(metrics, name).unwrap_or_else(|| panic!("no sample {name} in the exposition:\n{metrics}"))
}

/// The value of the sample `name`, `None` when absent (a labelled counter appears at its first count).
pub fn sample_if(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `count` posts to `room` from `poster`, each on a task of its own, the connection closed under them once the
/// first `drop_at` are made: their seqs as acknowledged, in order (two posts acknowledged with one seq fail).
pub async fn posts_across_a_dropped_connection(poster: &Client, room: &str, count: u64, drop_at: u64) -> Vec<u64> {
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..count {
        let (client, room) = (poster.clone(), room.to_string());
        posts.spawn(async move { client.post(&room, format!("{i}")).await });
        if i == drop_at {
            poster.connection().unwrap().close(0u32.into(), b"test drops the connection");
        }
    }
    let mut acked = std::collections::BTreeSet::new();
    // (Bounded: a post that is never acknowledged fails the test here instead of holding it.)
    let answered = Duration::from_secs(60);
    while let Some(posted) = tokio::time::timeout(answered, posts.join_next()).await.expect("every post answered") {
        assert!(acked.insert(posted.unwrap().unwrap()), "two posts acknowledged with one seq");
    }
    acked.into_iter().collect()
}

/// One member joins rooms `a` and `b` and subscribes to channel `t`; `writer` posts 2,000 messages of 2,000 bytes
/// into each while the member reads only `b` (which must keep flowing, complete, in order and never resumed), then
/// ticks still arrive on `t`, then the member reads `a`: everything arrives, in order, once, after `a` was reset as
/// a slow consumer and resumed. For a server whose `room_queue_bytes` is small (16 KiB), over whatever transport
/// `member` uses.
pub async fn a_member_stops_reading_one_room(member: &Client, writer: &Client) {
    use quiver_client::{Room, RoomEvent};
    const TOTAL: usize = 2000;
    /// The next `count` messages of `room`, and its resumes on the way (`recovered` said by each).
    async fn read(room: &mut Room, count: usize) -> (Vec<u64>, Vec<bool>) {
        let (mut seqs, mut resumes) = (Vec::new(), Vec::new());
        tokio::time::timeout(Duration::from_secs(30), async {
            while seqs.len() < count {
                match room.next().await.expect("room stream ended") {
                    RoomEvent::Message(m) => seqs.push(m.seq),
                    RoomEvent::Resumed { recovered, .. } => resumes.push(recovered),
                    _ => {}
                }
            }
        })
        .await
        .expect("the room's messages arrive");
        (seqs, resumes)
    }
    let mut stalled = member.join("a").await.unwrap();
    let mut flowing = member.join("b").await.unwrap();
    let mut ticks = member.subscribe("t").await.unwrap();
    let publisher = writer.publisher("t").await.unwrap();
    let writer_task = {
        let (writer, body) = (writer.clone(), vec![b'x'; 2000]);
        tokio::spawn(async move {
            for _ in 0..TOTAL {
                writer.post("a", body.clone()).await.unwrap();
                writer.post("b", body.clone()).await.unwrap();
            }
        })
    };
    // Room b keeps flowing while nobody reads room a, and is never reset.
    let (b_seqs, b_resumes) = read(&mut flowing, TOTAL).await;
    assert_eq!(b_seqs, (1..=TOTAL as u64).collect::<Vec<_>>());
    assert!(b_resumes.is_empty(), "room b was never reset: resumed {b_resumes:?}");
    writer_task.await.unwrap();
    // Ticks still flow on the connection while room a is stalled (a tick may be lost; one of many arrives).
    let tick = tokio::time::timeout(Duration::from_secs(10), async {
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    publisher.send(&b"still here"[..]).expect("a tick within the limits");
                }
                tick = ticks.next() => break tick.expect("the subscription ends only with the client"),
            }
        }
    })
    .await
    .expect("ticks arrive while room a is stalled");
    assert_eq!(&tick.payload[..], b"still here");
    // Now read room a: everything arrives, in order, once, after a resume with everything recovered.
    let (a_seqs, a_resumes) = read(&mut stalled, TOTAL).await;
    assert_eq!(a_seqs, (1..=TOTAL as u64).collect::<Vec<_>>());
    assert!(!a_resumes.is_empty(), "room a was reset as a slow consumer and resumed");
    assert!(a_resumes.iter().all(|recovered| *recovered), "every resume recovered everything: {a_resumes:?}");
}

/// How long the room helpers below wait for what they read.
const ROOM_WAIT: Duration = Duration::from_secs(30);

/// Reads events until `count` messages have arrived; returns the messages and every event seen.
pub async fn messages(room: &mut Room, count: usize) -> (Vec<Message>, Vec<RoomEvent>) {
    let mut messages = Vec::new();
    let mut events = Vec::new();
    tokio::time::timeout(ROOM_WAIT, async {
        while messages.len() < count {
            let Some(event) = room.next().await else { panic!("the room ended: {:?}", room.end_reason()) };
            if let RoomEvent::Message(m) = &event {
                messages.push(m.clone());
            }
            events.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} messages within {ROOM_WAIT:?}", messages.len()));
    (messages, events)
}

/// The first event of `room` that `pick` takes (answers `Some` for) within `wait`, `None` if none came. Panics if the
/// room ended: an ended room answers `None` at once, for good, and a loop asking again would never let its own
/// timeout fire.
pub async fn first_event<T>(
    room: &mut Room,
    wait: Duration,
    mut pick: impl FnMut(RoomEvent) -> Option<T>,
) -> Option<T> {
    let found = async {
        loop {
            let Some(event) = room.next().await else { panic!("the room ended: {:?}", room.end_reason()) };
            if let Some(found) = pick(event) {
                return found;
            }
        }
    };
    tokio::time::timeout(wait, found).await.ok()
}

/// The next tick of `subscription` within `wait`, `None` if none came. Panics if the subscription ended: an ended one
/// answers `None` at once, for good, and a loop asking again would never let its own timeout fire.
pub async fn tick_within(subscription: &mut TickSubscription, wait: Duration) -> Option<Tick> {
    match tokio::time::timeout(wait, subscription.next()).await {
        Ok(None) => panic!("the subscription ended: {:?}", subscription.end_reason()),
        Ok(tick) => tick,
        Err(_) => None,
    }
}

/// The seqs of `messages`.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The first `Resumed` the room hears of (after the client reconnected on its own).
pub async fn resumed(room: &mut quiver_client::Room) -> (bool, u64) {
    tokio::time::timeout(ROOM_WAIT, async {
        loop {
            match room.next().await.expect("room stream ended") {
                RoomEvent::Resumed { recovered, epoch } => break (recovered, epoch),
                _ => continue,
            }
        }
    })
    .await
    .unwrap()
}

/// The states `watch` (taken before whatever changes them) goes through until `done` says stop (at most 15 s).
pub async fn states_until(
    mut watch: tokio::sync::watch::Receiver<quiver_client::ConnectionState>,
    done: impl Fn(&quiver_client::ConnectionState) -> bool,
) -> Vec<quiver_client::ConnectionState> {
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
