//! A connection's first and last steps in the server's books: accepting its QUIC handshake, and its place in the
//! gauges and the QUIC path figures while it is served.

use std::sync::Arc;

use crate::{
    net::wire::WireKind,
    stats::{bump, ServerStats},
};

/// Accepts `incoming` (and frees its box now, not when the connection's task ends).
pub(super) fn accept(
    incoming: Box<quinn::Incoming>,
    quic: Arc<quinn::ServerConfig>,
) -> Result<quinn::Connecting, quinn::ConnectionError> {
    (*incoming).accept_with(quic)
}

/// A served connection in the gauges and the QUIC path figures, until dropped.
pub(super) struct Open {
    stats: Arc<ServerStats>,
    id: u64,
    kind: WireKind,
}

impl Open {
    pub(super) fn new(stats: &Arc<ServerStats>, id: u64, path: Option<quinn::Connection>, kind: WireKind) -> Open {
        let (gauge, counter) = stats.by_kind(kind);
        ServerStats::add(gauge, 1);
        bump(counter);
        if let Some(path) = path {
            stats.quic.add(id, path);
        }
        Open { stats: stats.clone(), id, kind }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        ServerStats::add(self.stats.by_kind(self.kind).0, -1);
        self.stats.quic.remove(self.id);
    }
}
