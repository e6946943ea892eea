//! What a server starts before its hubs: its counters, metrics and the admin listener, so that `/healthz` and
//! `/readyz` answer while the store opens.

use std::{net::SocketAddr, sync::Arc};

use tokio_util::sync::CancellationToken;

use crate::{stats::ServerStats, ServerConfig, ServerError};

/// The admin listener's task.
#[derive(Debug)]
pub(super) struct Admin {
    pub(super) addr: SocketAddr,
    /// Stops the listener when dropped: also when the server's bind fails after the admin listener started (a
    /// program embedding the server, retrying, found the port still answering `/healthz`).
    pub(super) stop: tokio_util::sync::DropGuard,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and serves `metrics` there until stopped.
    fn start(
        addr: Option<SocketAddr>,
        hosts: &[String],
        metrics: &Arc<crate::metrics::ServerMetrics>,
        bounds: crate::http::HttpBounds,
    ) -> Result<Option<Admin>, ServerError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = crate::http::bind(addr).map_err(|err| ServerError::Admin(addr, err))?;
        let addr = listener.local_addr().map_err(|err| ServerError::Admin(addr, err))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|err| ServerError::Admin(addr, err))?;
        if !addr.ip().is_loopback() {
            // (Meant for a private network or a container's own interface; its Host check admits any IP literal,
            // so it is no protection once the port is reachable from the internet.)
            tracing::warn!(
                %addr,
                "the admin listener (/metrics, /healthz, /readyz) is bound beyond loopback: keep its port off the \
                 public internet (a firewall, or a private network only)"
            );
        }
        let stop = CancellationToken::new();
        let hosts = Arc::new(hosts.to_vec());
        let task = tokio::spawn(crate::admin::serve(listener, metrics.clone(), hosts, (stop.clone(), bounds)));
        Ok(Some(Admin { addr, stop: stop.drop_guard(), task }))
    }
}

/// What a server has before its hubs: counters, metrics and the admin listener, started first so that `/healthz`
/// and `/readyz` answer while the store opens.
#[derive(Debug)]
pub(super) struct Early {
    pub(super) stats: Arc<ServerStats>,
    pub(super) metrics: Arc<crate::metrics::ServerMetrics>,
    pub(super) admin: Option<Admin>,
}

impl Early {
    /// Once the data directory is locked: a qlog directory inside it is made after it (0700 then, not the umask's).
    pub(super) fn start(config: &ServerConfig) -> Result<Early, ServerError> {
        config.prepare_qlog_dir()?;
        let stats = Arc::new(ServerStats::default());
        let metrics = Arc::new(crate::metrics::ServerMetrics::new(stats.clone()));
        let bounds = crate::http::HttpBounds::of(&config.budget).counted(&stats);
        let admin = Admin::start(config.admin, &config.admin_hosts, &metrics, bounds)?;
        Ok(Early { stats, metrics, admin })
    }
}
