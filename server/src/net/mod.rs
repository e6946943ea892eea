//! The only part of the server that touches quinn: binding the endpoint, the accept loop, one task per connection,
//! room streams and datagrams carrying out what the hub returns, and closing with the right code.

mod admit;
mod close;
mod connection;
mod dispatch;
mod endpoint;
mod rooms;
mod ticks;
mod webtransport;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quiver_certs::Fingerprint;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    hub::{
        ticks::{LocalTicks, TickHub},
        LocalRooms, RoomHub,
    },
    stats::ServerStats,
    ServerConfig,
};
pub use endpoint::ServerError;

/// Locks a mutex of the network layer (never a hub lock: those go through `hub::lock`), taking it over if a
/// panicking holder poisoned it.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Server time, µs since the Unix epoch (the time the hub is fed with).
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// How long shutdown waits for connections to take their GoAway and close before it stops waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A bound server, ready to [`run`](Server::run), with its rooms behind `R`.
#[derive(Debug)]
pub struct Server<R = LocalRooms> {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    /// The demo page's listener, when `config.web.http` asks for one.
    page: Option<std::net::TcpListener>,
    page_addr: Option<SocketAddr>,
    fingerprint: Fingerprint,
    config: Arc<ServerConfig>,
    rooms: Arc<R>,
    ticks: Arc<dyn TickHub>,
    stats: Arc<ServerStats>,
    auth: Arc<crate::auth::Auth>,
    /// Connection counts and rates per source address (`max_connections*`, `new_connections_per_s_per_ip`).
    admission: Arc<std::sync::Mutex<crate::admission::Admission>>,
    /// One server per data directory, while this one lives.
    _data_dir: crate::datadir::DataDirLock,
}

impl Server<LocalRooms> {
    /// Locks the data directory, opens the room store there (unless `config.durability` is `Memory`), loads or
    /// generates the certificate and binds the UDP socket, with ticks in this process's memory. Nothing is
    /// accepted until [`Server::run`].
    pub fn bind(config: ServerConfig) -> Result<Server<LocalRooms>, ServerError> {
        // Before anything in the directory is read or written.
        let data_dir = crate::datadir::DataDirLock::acquire(&config.data_dir)?;
        let rooms = match config.durability {
            crate::store::Durability::Memory => LocalRooms::new(config.limits.clone(), config.budget.clone()),
            durability => {
                let store = crate::store::Store::open(&config.data_dir, durability)?;
                tracing::info!(store = %store.path().display(), durability = durability.name(), "room store open");
                LocalRooms::durable(config.limits.clone(), config.budget.clone(), store)
            }
        };
        let ticks = Arc::new(LocalTicks::new(config.budget.max_channels));
        Server::bind_locked(config, data_dir, Arc::new(rooms), ticks)
    }
}

impl<R: RoomHub> Server<R> {
    /// Like [`Server::bind`], with rooms and ticks behind the given hubs (another engine than this process's
    /// memory).
    pub fn bind_with(config: ServerConfig, rooms: Arc<R>, ticks: Arc<dyn TickHub>) -> Result<Server<R>, ServerError> {
        let data_dir = crate::datadir::DataDirLock::acquire(&config.data_dir)?;
        Server::bind_locked(config, data_dir, rooms, ticks)
    }

    fn bind_locked(
        config: ServerConfig,
        data_dir: crate::datadir::DataDirLock,
        rooms: Arc<R>,
        ticks: Arc<dyn TickHub>,
    ) -> Result<Server<R>, ServerError> {
        let (endpoint, fingerprint) = endpoint::bind(&config)?;
        let local_addr = endpoint.local_addr().map_err(ServerError::Bind)?;
        let page = config.web.http.map(crate::web::bind).transpose().map_err(ServerError::Bind)?;
        let page_addr = page.as_ref().map(|l| l.local_addr()).transpose().map_err(ServerError::Bind)?;
        let auth = Arc::new(crate::auth::Auth::from_config(&config.auth, &config.data_dir)?);
        if matches!(config.auth, crate::auth::AuthConfig::Anonymous) {
            tracing::warn!(
                "ANONYMOUS ACCESS: no tokens required; anyone who reaches this server may join, post and publish"
            );
        }
        let stats = Arc::new(ServerStats::default());
        let admission = crate::admission::Admission::new(&config.limits, std::time::Instant::now());
        let admission = Arc::new(std::sync::Mutex::new(admission));
        Ok(Server {
            endpoint,
            local_addr,
            page,
            page_addr,
            fingerprint,
            config: Arc::new(config),
            rooms,
            ticks,
            stats,
            auth,
            admission,
            _data_dir: data_dir,
        })
    }

    /// The server's counters (keep the handle: it stays valid while and after the server runs).
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// The rooms this server serves.
    pub fn rooms(&self) -> &Arc<R> {
        &self.rooms
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the demo page is served over HTTP, if it is.
    pub fn page_addr(&self) -> Option<SocketAddr> {
        self.page_addr
    }

    /// SHA-256 of the certificate the server presents.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, sends every connection GoAway and closes it
    /// with `GoingAway`, and returns once they are closed (or after [`SHUTDOWN_GRACE`]).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        if let Some(listener) = self.page.take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let info = crate::web::PageInfo {
                        udp_port: self.local_addr.port(),
                        path: self.config.web.path.clone(),
                        cert_hash: (self.config.tls == crate::TlsSource::Dev).then_some(self.fingerprint),
                        // What the README's `quiver chat --room lobby` and `quiver tick pub --channel prices` use.
                        room: "lobby".into(),
                        channel: "prices".into(),
                        dev_tokens_from: matches!(self.config.auth, crate::auth::AuthConfig::DevKey)
                            .then(|| self.config.data_dir.clone()),
                    };
                    tasks.spawn(crate::web::serve(listener, info, shutdown.clone()));
                }
                Err(err) => tracing::error!(%err, "demo page: cannot use its listener"),
            }
        }
        tasks.spawn(sweep(self.rooms.clone(), self.config.budget.sweep_interval(), shutdown.clone()));
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    // Retries and refusals are answered here, without a task.
                    let Some((incoming, admitted)) = admit::admit(incoming, &self.admission, &self.stats) else {
                        continue;
                    };
                    let config = self.config.clone();
                    let shutdown = shutdown.child_token();
                    let shared = connection::Shared {
                        config,
                        rooms: self.rooms.clone(),
                        ticks: self.ticks.clone(),
                        stats: self.stats.clone(),
                        auth: self.auth.clone(),
                    };
                    tasks.spawn(connection::serve(incoming, admitted, shared, shutdown));
                }
                () = shutdown.cancelled() => break,
            }
        }
        // Refuse new connections from now on; existing ones see the cancellation and close themselves.
        self.endpoint.set_server_config(None);
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!(remaining = tasks.len(), "connections still open after the shutdown grace period");
        }
        self.endpoint
            .close(quiver_transport::close::quic_code(quiver_proto::ErrorCode::GoingAway), b"server shutting down");
        // Let the CONNECTION_CLOSE frames leave before the socket goes.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        tracing::info!(stats = ?self.stats.snapshot(), "server stopped");
    }
}

/// Drops expired history and empty rooms every `interval` until `shutdown`.
async fn sweep<R: RoomHub>(rooms: Arc<R>, interval: Duration, shutdown: CancellationToken) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => rooms.sweep(now_us()).await,
            () = shutdown.cancelled() => return,
        }
    }
}
