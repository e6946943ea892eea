//! What `quiver bench cluster` runs on: its own `redis-server`, and nodes (with or without the broker) in this
//! process, as the bench's clients reach them.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use quiver_client::{Client, ConnectOptions, TokenProvider, TrustOptions};
use quiver_server::cluster::{Broker, BrokerConfig, ClusterTicks, RedisRooms};
use tokio_util::sync::CancellationToken;

use super::BenchError;
use crate::bench::post::{raised_budget, raised_limits};

/// The test's own `redis-server`, killed when dropped.
pub(super) struct RedisProcess {
    child: Child,
    pub(super) url: String,
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisProcess {
    /// A `redis-server` of its own on a free port. The port is found free and let go before Redis binds it, so
    /// another process may take it meanwhile: a Redis that exits at once, or a PING answered by another process
    /// (its `process_id` not our child's), means trying another port (the bench would otherwise measure, and
    /// flush, someone else's Redis).
    pub(super) async fn start() -> Result<RedisProcess, BenchError> {
        let mut last = None;
        for _ in 0..5 {
            match Self::start_once().await? {
                Ok(redis) => return Ok(redis),
                Err(PortTaken(why)) => last = Some(why),
            }
        }
        let why = last.unwrap_or_default();
        Err(BenchError::io("redis-server")(std::io::Error::other(format!("five ports tried: {why}"))))
    }

    async fn start_once() -> Result<Result<RedisProcess, PortTaken>, BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BenchError::io("a free port for redis-server"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(BenchError::io("starting redis-server (Debian package redis-server)"))?;
        let mut redis = RedisProcess { child, url: format!("redis://127.0.0.1:{port}") };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Ok(Err(PortTaken(format!("redis-server on port {port} exited at once ({status})"))));
            }
            if let Ok(pid) = redis.process_id().await {
                if pid == redis.child.id() {
                    return Ok(Ok(redis));
                }
                return Ok(Err(PortTaken(format!("port {port} was taken by another Redis (pid {pid})"))));
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::io("redis-server")(std::io::Error::other("it does not answer PING")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `process_id` the Redis on this port reports.
    async fn process_id(&self) -> redis::RedisResult<u32> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let pid = info.lines().find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok());
        pid.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "no process_id in INFO server"))
        })
    }

    /// CPU seconds the Redis process used so far (user + system), from /proc.
    pub(super) fn cpu_s(&self) -> Option<f64> {
        Some(crate::bench::proc::cpu_time(&self.child.id().to_string())?.as_secs_f64())
    }

    pub(super) async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url.as_str())?.get_multiplexed_async_connection().await
    }
}

/// Why a `redis-server` could not have the port it was started on (another process took it meanwhile).
struct PortTaken(String);

pub(super) fn redis_error(err: redis::RedisError) -> BenchError {
    BenchError::io("redis")(std::io::Error::other(err))
}

/// A node as the bench's clients reach it.
pub(super) struct Node {
    addr: SocketAddr,
    trust: TrustOptions,
    token: TokenProvider,
    _dir: tempfile::TempDir,
    pub(super) broker: Option<Arc<Broker>>,
}

impl Node {
    /// A node on `redis` (or without a broker, rooms in memory), serving until `stop`.
    pub(super) async fn start(redis: Option<&str>, stop: &CancellationToken) -> Result<Node, BenchError> {
        let dir = crate::bench::private_tempdir(None).map_err(BenchError::io("temporary directory"))?;
        let config = quiver_server::ServerConfig {
            durability: quiver_server::store::Durability::Memory,
            limits: raised_limits(),
            budget: raised_budget(),
            admin: None,
            ..quiver_server::ServerConfig::dev(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path().into())
        };
        let (addr, pin, broker) = match redis {
            None => {
                let server = quiver_server::Server::bind(config)?;
                let found = (server.local_addr(), server.fingerprint());
                tokio::spawn(server.run(stop.clone()));
                (found.0, found.1, None)
            }
            Some(url) => {
                let broker = Broker::new(BrokerConfig {
                    url: url.to_string(),
                    presence_expiry: Duration::from_secs(10),
                    heartbeat: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(2),
                    allow_eviction: false,
                })
                .map_err(|err| BenchError::io("broker")(std::io::Error::other(err)))?;
                let rooms = Arc::new(RedisRooms::new(broker.clone(), config.limits.clone()));
                let ticks = Arc::new(ClusterTicks::new(broker.clone(), config.budget.max_channels));
                broker.connect();
                let server = quiver_server::Server::bind_with(config, rooms, ticks)?;
                let found = (server.local_addr(), server.fingerprint());
                tokio::spawn(server.run(stop.clone()));
                (found.0, found.1, Some(broker))
            }
        };
        let token = TokenProvider::dev(dir.path().to_owned(), format!("bench-{:08x}", rand::random::<u32>()));
        Ok(Node { addr, trust: TrustOptions::Pin(pin), token, _dir: dir, broker })
    }

    pub(super) async fn connect(&self) -> Result<Client, BenchError> {
        let options = ConnectOptions {
            trust: self.trust.clone(),
            token_provider: Some(self.token.clone()),
            // QUIC is what these benches measure: never the WebSocket fallback.
            transport: quiver_client::Transport::Quic,
            ..ConnectOptions::default()
        };
        Ok(Client::connect_with(&self.addr.to_string(), options).await?)
    }

    /// Waits until the node's broker is connected.
    pub(super) async fn ready(&self) -> Result<(), BenchError> {
        let Some(broker) = &self.broker else { return Ok(()) };
        let started = Instant::now();
        while let Err(why) = broker.ready() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::io("broker")(std::io::Error::other(why)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
