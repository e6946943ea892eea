//! What `/healthz` and `/readyz` read: the server's own state and what the hubs report once they exist.

use std::sync::{atomic::AtomicBool, Arc};

use crate::{hub::RoomUsage, store::Store};

/// Liveness and readiness, for `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    /// The endpoint is bound and accepting (false before `Server::run` and while draining).
    pub serving: AtomicBool,
}

/// What the hubs report, once they exist (the admin listener answers before the store is open).
pub struct HubMetrics {
    /// Rooms held and retained bytes, from the room hub.
    pub rooms: Box<dyn Fn() -> RoomUsage + Send + Sync>,
    /// Tick channels in use, and ticks relayed from other nodes dropped as older than their max age.
    pub channels: Box<dyn Fn() -> (usize, u64) + Send + Sync>,
    /// The room store, if rooms are stored.
    pub store: Option<Arc<Store>>,
    /// Whether the room engine can serve (a cluster's broker reachable).
    pub health: Box<dyn Fn() -> Result<(), &'static str> + Send + Sync>,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics").field("store", &self.store.is_some()).finish_non_exhaustive()
    }
}
