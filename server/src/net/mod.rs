//! The only part of the server that touches quinn: binding the endpoint, the accept loop, one task per connection,
//! room streams and datagrams carrying out what the hub returns, and closing with the right code.

mod admit;
mod clock;
mod close;
mod connection;
mod control;
mod copies;
mod dispatch;
mod early;
mod endpoint;
mod mailbox;
mod open;
mod page;
mod reload;
mod replies;
mod requests;
mod rooms;
mod stream_slots;
mod summary;
#[cfg(test)]
mod test_quic;
mod ticks;
mod websocket;
mod webtransport;
mod wire;

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
use early::{Admin, Early};
pub use endpoint::ServerError;
pub use reload::Reloader;
use reload::{watch_certificate, Current};
pub use summary::Summary;
pub(crate) use wire::WireKind;

/// Locks a mutex of the network layer (never a hub lock: those go through `hub::lock`), taking it over if a
/// panicking holder poisoned it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Server time, µs since the Unix epoch (the time the hub is fed with).
pub fn now_us() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    #[cfg(test)]
    let now = now.saturating_add_signed(test_clock::step_us());
    now
}

/// Tests: a step of the wall clock ([`now_us`]) on one thread (a server on a runtime of one thread there), as NTP,
/// an operator or a machine's sleep makes one; the monotonic clock does not move with it.
#[cfg(test)]
pub(crate) mod test_clock {
    thread_local! { static STEP_US: std::cell::Cell<i64> = const { std::cell::Cell::new(0) }; }

    /// Moves this thread's wall clock by `us`.
    pub(crate) fn step(us: i64) {
        STEP_US.with(|step| step.set(step.get() + us));
    }

    pub(super) fn step_us() -> i64 {
        STEP_US.with(std::cell::Cell::get)
    }
}

/// The tick path's clock, µs: monotonic, counted from this process's first reading plus 10^12 (11.6 days: no
/// reading is 0, and one less any age a tick can have is not below 0). A tick's age (its channel's max age, a relay's time on the way) is measured on it, not on the
/// wall clock, which a clock step (NTP, an operator) moves by any amount: a step back had kept a waiting tick
/// "fresh" for as long as the step, a step forward expired every waiting tick at once. Only differences of its
/// readings mean anything, and only within this process (other nodes' readings go through `cluster::transit`,
/// which takes no two clocks to agree).
pub fn tick_clock_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX).saturating_add(1_000_000_000_000)
}

/// After the drain, how long the CONNECTION_CLOSE frames get to leave before the socket goes.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A bound server, ready to [`run`](Server::run), with its rooms behind `R`.
#[derive(Debug)]
pub struct Server<R = LocalRooms> {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    /// The demo page's listener, when `config.web.http` asks for one (and it is not the WebSocket listener's).
    page: Option<std::net::TcpListener>,
    page_addr: Option<SocketAddr>,
    /// The demo page's key for dev tokens (`#key=` of [`Server::page_url`]): random, this run's only.
    page_key: String,
    /// The WebSocket fallback's listener (which serves the demo page too when it is on the same address).
    websocket: Option<std::net::TcpListener>,
    websocket_addr: Option<SocketAddr>,
    page_on_websocket: bool,
    config: Arc<ServerConfig>,
    rooms: Arc<R>,
    ticks: Arc<dyn TickHub>,
    stats: Arc<ServerStats>,
    /// Connection counts and rates per source address (`max_connections*`, `new_connections_per_s_per_ip`).
    admission: Arc<std::sync::Mutex<crate::admission::Admission>>,
    /// What new connections are accepted with (reloaded by [`Reloader`]).
    current: Arc<std::sync::RwLock<Current>>,
    fingerprint: crate::web::LiveFingerprint,
    /// TLS session tickets, the same across reloads.
    tickets: endpoint::Tickets,
    /// When the certificate in use expires (updated by [`Reloader`]).
    not_after: Arc<std::sync::Mutex<std::time::SystemTime>>,
    /// The admin listener, started first so that `/readyz` answers (503) while the server is not serving yet.
    admin: Option<Admin>,
    metrics: Arc<crate::metrics::ServerMetrics>,
    /// One server per data directory, while this one lives (and its room store: the store holds it too).
    _data_dir: Arc<crate::datadir::DataDirLock>,
}

impl Server<LocalRooms> {
    /// Locks the data directory, opens the room store there (unless `config.durability` is `Memory`), loads or
    /// generates the certificate and binds the UDP socket, with ticks in this process's memory. Nothing is
    /// accepted until [`Server::run`].
    pub fn bind(config: ServerConfig) -> Result<Server<LocalRooms>, ServerError> {
        // A configuration that cannot run is refused before the store is opened (a recovery may take long).
        config.check()?;
        // Before anything in the directory is read or written.
        let data_dir = Arc::new(crate::datadir::DataDirLock::acquire(&config.data_dir)?);
        let early = Early::start(&config)?;
        let rooms = match config.durability {
            crate::store::Durability::Memory => LocalRooms::new(config.limits.clone(), config.budget.clone()),
            durability => {
                crate::store::disk::check_floor(&config.data_dir, config.budget.disk_min_free_bytes)?;
                let store = crate::store::Store::open_locked(data_dir.clone(), durability)?;
                tracing::info!(store = %store.path().display(), durability = durability.name(), "room store open");
                LocalRooms::durable(config.limits.clone(), config.budget.clone(), store)
            }
        };
        let ticks = Arc::new(LocalTicks::new(config.budget.max_channels));
        Server::bind_locked(config, data_dir, early, Arc::new(rooms), ticks)
    }
}

impl<R: RoomHub> Server<R> {
    /// Like [`Server::bind`], with rooms and ticks behind the given hubs (another engine than this process's
    /// memory).
    pub fn bind_with(config: ServerConfig, rooms: Arc<R>, ticks: Arc<dyn TickHub>) -> Result<Server<R>, ServerError> {
        config.check()?;
        let data_dir = Arc::new(crate::datadir::DataDirLock::acquire(&config.data_dir)?);
        let early = Early::start(&config)?;
        Server::bind_locked(config, data_dir, early, rooms, ticks)
    }

    fn bind_locked(
        config: ServerConfig,
        data_dir: Arc<crate::datadir::DataDirLock>,
        early: Early,
        rooms: Arc<R>,
        ticks: Arc<dyn TickHub>,
    ) -> Result<Server<R>, ServerError> {
        let resumed = early.stats.clone();
        let tickets = endpoint::Tickets::new(
            quiver_transport::tls::session_tickets(move || crate::stats::bump(&resumed.tls_tickets_accepted))?,
            &config.data_dir,
        )?;
        let (endpoint, certified) = endpoint::bind(&config, &tickets)?;
        let endpoint::Certified { quic, tcp, fingerprint, not_after } = certified;
        let local_addr = endpoint.local_addr().map_err(ServerError::Bind)?;
        let websocket = websocket::bind(&config, local_addr)?;
        let websocket_addr = websocket.as_ref().map(|l| l.local_addr()).transpose().map_err(ServerError::Bind)?;
        // The dev default: the page on loopback at the QUIC port, the WebSocket listener on all addresses at that
        // port: one listener serves both (the page to this machine only, as before).
        let page_on_websocket = match (config.web.http, websocket_addr) {
            (Some(page), Some(ws)) => {
                page.port() != 0 && page.port() == ws.port() && (page.ip() == ws.ip() || ws.ip().is_unspecified())
            }
            _ => false,
        };
        let page = match page_on_websocket {
            true => None,
            false => match config.web.http {
                Some(addr) => Some(crate::http::bind(addr).map_err(|err| ServerError::Page(addr, err))?),
                None => None,
            },
        };
        let page_addr = match (page_on_websocket, &page) {
            (true, _) => config.web.http,
            (false, Some(page)) => Some(
                page.local_addr().map_err(|err| ServerError::Page(config.web.http.unwrap_or(config.listen), err))?,
            ),
            (false, None) => None,
        };
        let auth = Arc::new(crate::auth::Auth::from_config(&config.auth, &config.data_dir)?);
        if matches!(config.auth, crate::auth::AuthConfig::Anonymous) {
            tracing::warn!(
                "ANONYMOUS ACCESS: no tokens required; anyone who reaches this server may join, post and publish"
            );
        }
        let Early { stats, metrics, admin } = early;
        stats.certificate_expires(not_after);
        let handshakes = crate::admission::HandshakeBounds {
            unvalidated: config.budget.max_unvalidated_handshakes,
            unvalidated_per_ip: config.budget.max_unvalidated_handshakes_per_ip,
            unvalidated_per_s: config.budget.max_unvalidated_handshakes_per_s,
            over_limit: config.budget.max_over_limit_handshakes,
            awaiting_hello: config.budget.max_awaiting_hello,
            per_network: config.budget.max_connections_per_network,
            per_network_per_s: config.budget.new_connections_per_s_per_network,
        };
        let shares = crate::shares::Shares::new(
            config.budget.max_rooms_per_network,
            config.budget.max_channels_per_network,
            Some(stats.clone()),
        );
        let admission = crate::admission::Admission::new(&config.limits, handshakes, std::time::Instant::now());
        let admission = admission.with_shares(shares);
        let admission = Arc::new(std::sync::Mutex::new(admission));
        let (usage, channels, health) = (rooms.clone(), ticks.clone(), rooms.clone());
        metrics.set_hubs(crate::metrics::HubMetrics {
            rooms: Box::new(move || usage.room_usage()),
            channels: Box::new(move || (channels.channels(), channels.relays_expired())),
            store: rooms.durable_store(),
            health: Box::new(move || health.health()),
        });
        let current = Current { quic: Arc::new(quic), tcp, keys: Arc::new(tokio::sync::watch::Sender::new(auth)) };
        Ok(Server {
            endpoint,
            local_addr,
            page,
            page_addr,
            page_key: crate::web::new_page_key(),
            websocket,
            websocket_addr,
            page_on_websocket,
            config: Arc::new(config),
            rooms,
            ticks,
            stats,
            admission,
            current: Arc::new(std::sync::RwLock::new(current)),
            fingerprint: crate::web::LiveFingerprint::new(fingerprint),
            tickets,
            not_after: Arc::new(std::sync::Mutex::new(not_after)),
            admin,
            metrics,
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

    /// Where the WebSocket fallback listens (TCP), if it does.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// SHA-256 of the certificate the server presents.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.get()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// The metrics `/metrics` shows.
    pub fn metrics(&self) -> Arc<crate::metrics::ServerMetrics> {
        self.metrics.clone()
    }

    /// The room store, if rooms are stored durably.
    pub fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.rooms.durable_store()
    }

    /// A handle that reloads the certificate and token keys while the server runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            config: self.config.clone(),
            current: self.current.clone(),
            fingerprint: self.fingerprint.clone(),
            tickets: self.tickets.clone(),
            not_after: self.not_after.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains: stops accepting, sends every connection GoAway (after
    /// the request it is serving, so a post in flight is stored and acknowledged first) and closes it with
    /// `GoingAway`, and returns once they are closed, or after `config.drain_timeout`, and the room store
    /// flushed (if nothing else holds it).
    pub async fn run(mut self, shutdown: CancellationToken) -> Summary {
        let tasks = TaskTracker::new();
        let page = self.page_info();
        if let Some(listener) = self.page.take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let bounds = crate::http::HttpBounds::of(&self.config.budget).counted(&self.stats);
                    tasks.spawn(crate::web::serve(listener, page.clone(), (shutdown.clone(), bounds)));
                }
                Err(err) => tracing::error!(%err, "demo page: cannot use its listener"),
            }
        }
        if let Some(listener) = self.websocket.take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let shared = Arc::new(websocket::Listener {
                        config: self.config.clone(),
                        rooms: self.rooms.clone(),
                        ticks: self.ticks.clone(),
                        stats: self.stats.clone(),
                        admission: self.admission.clone(),
                        current: self.current.clone(),
                        page: match (self.page_on_websocket, self.page_addr) {
                            (true, Some(addr)) => Some((Arc::new(page), addr.ip())),
                            _ => None,
                        },
                    });
                    tasks.spawn(websocket::serve(listener, shared, tasks.clone(), shutdown.clone()));
                }
                Err(err) => tracing::error!(%err, "WebSocket listener: cannot use it"),
            }
        }
        tasks.spawn(sweep(self.rooms.clone(), self.config.budget.sweep_interval(), shutdown.clone()));
        tasks.spawn(watch_certificate(self.reloader(), shutdown.clone()));
        let keys = self.current.read().unwrap_or_else(|p| p.into_inner()).keys.clone();
        tasks.spawn(clock::watch_sessions(keys, shutdown.clone()));
        // A SIGTERM while the store opened cancelled `shutdown` already: then the server is never ready and takes
        // no connection (it was marked serving, and the unbiased loop below took about every other handshake queued
        // meanwhile before it saw the shutdown: a load balancer could add a node that was stopping).
        if !shutdown.is_cancelled() {
            self.metrics.health.serving.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut endpoint_lost = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else {
                        // quinn's driver ended on a socket error (it logged it): nothing more can be served. Drain as
                        // at a shutdown (the WebSocket listener and the connections' tasks stop on `shutdown`) and
                        // report a failure.
                        tracing::error!("the UDP endpoint stopped by itself: shutting down");
                        endpoint_lost = true;
                        shutdown.cancel();
                        break;
                    };
                    // Retries and refusals are answered here, without a task.
                    let admitted = admit::admit(incoming, &self.admission, &self.stats, &shutdown);
                    let Some((incoming, admitted, shutdown)) = admitted else {
                        continue;
                    };
                    let config = self.config.clone();
                    let (quic, auth) = {
                        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
                        (current.quic.clone(), current.auth())
                    };
                    let id = rand::random::<u64>();
                    let shared = connection::Shared {
                        config,
                        rooms: self.rooms.clone(),
                        ticks: self.ticks.clone(),
                        stats: self.stats.clone(),
                        auth,
                    };
                    tasks.spawn(connection::serve(id, Box::new(incoming), quic, admitted, shared, shutdown));
                }
            }
        }
        // Not ready from now on (load balancers stop sending clients); refuse new connections; existing ones see
        // the cancellation, finish the request they are serving and answer the posts they took, get GoAway and
        // close.
        self.metrics.health.serving.store(false, std::sync::atomic::Ordering::Relaxed);
        self.endpoint.set_server_config(None);
        tasks.close();
        let drain = self.config.drain_timeout;
        // Connections by the gauges, not the tasks: those include the sweep, the watches and the listeners (a
        // server with no client logged 3 to 5 "connections" here, and a sweep stuck on a stalled disk was
        // summarized as a connection left open).
        let open = || {
            use std::sync::atomic::Ordering::Relaxed;
            let s = &self.stats;
            let open = s.connections_native.load(Relaxed)
                + s.connections_webtransport.load(Relaxed)
                + s.connections_websocket.load(Relaxed);
            usize::try_from(open).unwrap_or(0)
        };
        tracing::info!(connections = open(), timeout_ms = drain.as_millis() as u64, "draining");
        let mut left_open = 0;
        if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
            left_open = open();
            tracing::warn!(connections = left_open, tasks = tasks.len(), "still running after the drain timeout");
        }
        self.endpoint
            .close(quiver_transport::close::quic_code(quiver_proto::ErrorCode::GoingAway), b"server shutting down");
        // Let the CONNECTION_CLOSE frames leave before the socket goes.
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
        if let Some(admin) = self.admin.take() {
            drop(admin.stop); // stops it
                              // It holds the hubs (and so the store) through the metrics: let it go before the server is dropped.
            let _ = tokio::time::timeout(CLOSE_GRACE, admin.task).await;
        }
        let h = &self.stats.post_delivery;
        // Expired ticks as `/metrics` counts them: another node's relays dropped for their age too.
        let mut counters = self.stats.snapshot();
        counters.ticks_expired += self.ticks.relays_expired();
        let summary = Summary {
            counters,
            refusals: quiver_proto::ErrorCode::ALL
                .iter()
                .map(|code| (*code, self.stats.refusals(*code)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            post_delivery_p50_p99_us: h.quantile_us(0.5).zip(h.quantile_us(0.99)),
            left_open,
            endpoint_lost,
        };
        let c = &summary.counters;
        // One line in the log; the table is the caller's to print (quiver-server prints it on stdout).
        tracing::info!(
            connections = c.accepted_native + c.accepted_webtransport + c.accepted_websocket,
            posts = c.posts,
            ticks_in = c.ticks_published,
            left_open = summary.left_open,
            "server stopped"
        );
        // The room store's last commits, its sync and its threads' joins (when the server held its last handle)
        // run on the blocking pool, not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        summary
    }
}

impl<R> Drop for Server<R> {
    fn drop(&mut self) {
        // A server dropped without running (or whose run was cancelled) takes its admin listener with it.
        drop(self.admin.take());
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

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "expiry_tests.rs"]
mod expiry_tests;
