//! Carries out [`Admission`]'s decisions on quinn's incoming connections: Retry and refusal right here in the
//! accept loop (stateless, no task), admitted connections with a [`Slot`] that counts them until they end, and
//! connections over a count handed on to be closed with `TooManyConnections` once their handshake is done.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use quiver_proto::ErrorCode;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::{
    admission::{Admission, Decision, Overload},
    awaiting::Ticket,
    stats::{bump, ServerStats},
};

/// What the connection task does once the handshake is complete.
#[derive(Debug)]
pub(super) enum Admitted {
    /// Serve it; the slot is released when it is dropped.
    Serve(Slot),
    /// Close it with `TooManyConnections` and this reason (one of the over-limit handshakes until dropped).
    TooMany(String, OverLimit),
}

/// A connection over a count among the handshakes in progress to be closed ([`Admission::over_limit_done`] when
/// dropped).
#[derive(Debug)]
pub(super) struct OverLimit(Arc<Mutex<Admission>>);

impl Drop for OverLimit {
    fn drop(&mut self) {
        lock(&self.0).over_limit_done();
    }
}

/// An admitted connection's place in the counts (and, from an unvalidated address, among the handshakes in
/// progress until [`Slot::handshaken`]), and among the connections awaiting Hello until [`Slot::welcomed`].
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
    handshaking: bool,
    /// Its place among the connections awaiting Hello, from [`admit`] (an address not validated) or
    /// [`Slot::await_hello`] to [`Slot::welcomed`].
    awaiting: Option<Ticket>,
    /// Closed to make room before [`Slot::welcomed`] took it out of the table (its shutdown token is cancelled).
    made_room: bool,
}

impl Slot {
    fn new(admission: &Arc<Mutex<Admission>>, ip: IpAddr, handshaking: bool) -> Slot {
        Slot { admission: admission.clone(), ip, handshaking, awaiting: None, made_room: false }
    }

    /// The connection now awaits Hello (`max_awaiting_hello`); `shutdown` is its own shutdown token, which a newer
    /// connection cancels when this one has to make room for it ([`Slot::made_room`] then tells it from a server
    /// shutdown). A connection awaiting Hello that has to make room for this one is told so.
    pub(super) fn await_hello(&mut self, shutdown: &CancellationToken) {
        if self.awaiting.is_some() {
            return;
        }
        let (ticket, made_room) = lock(&self.admission).awaiting_hello().enter(self.ip, shutdown.clone());
        if let Some(made_room) = made_room {
            tracing::debug!(group = %made_room.group, "closing a connection awaiting Hello: max_awaiting_hello");
            made_room.handle.cancel();
        }
        self.awaiting = Some(ticket);
    }

    /// Whether the connection's shutdown token was cancelled to make room for a newer one awaiting Hello (rather
    /// than by the server's shutdown): it awaits Hello and has left the table without being welcomed.
    pub(super) fn made_room(&self) -> bool {
        self.made_room || self.awaiting.is_some_and(|ticket| !lock(&self.admission).awaiting_hello().contains(ticket))
    }

    /// The share of rooms and channels of the connection's network (`crate::shares`), when the server keeps them.
    pub(super) fn network_share(&self) -> Option<crate::shares::NetworkShare> {
        lock(&self.admission).share_of(self.ip)
    }

    /// The QUIC handshake completed: the address is validated.
    pub(super) fn handshaken(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut admission = lock(&self.admission);
            admission.handshake_done(self.ip);
            if let Some(ticket) = self.awaiting {
                admission.awaiting_hello().validated(ticket);
            }
        }
    }

    /// The connection said Hello and was welcomed: no newer connection can close it to make room any more.
    pub(super) fn welcomed(&mut self) {
        if let Some(ticket) = self.awaiting.take() {
            // Gone already: a newer connection made it make room (its shutdown token is cancelled), and it is
            // closed as such, not as a server shutdown.
            self.made_room = !lock(&self.admission).awaiting_hello().leave(ticket);
        }
    }
}

/// What a connection from `ip` closed to make room is told (with `TooManyConnections`), `max` the bound.
/// (Which of the three rules of `crate::awaiting` picked it is not known here: the reason names them all, and the
/// connection's network, without claiming it holds the most.)
pub(super) fn evicted_reason(max: u32, ip: IpAddr) -> String {
    format!(
        "closed before Hello to make room: the server is at budget.max_awaiting_hello ({max}) connections not \
         welcomed yet, or at max_connections; this one, from {}, had waited longest of those closed first (a \
         newcomer's network's over their share, else handshakes not validated, else all)",
        crate::awaiting::Group::of(ip)
    )
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut admission = lock(&self.admission);
        if self.handshaking {
            admission.handshake_done(self.ip);
        }
        if let Some(ticket) = self.awaiting.take() {
            admission.awaiting_hello().leave(ticket);
        }
        admission.release(self.ip);
    }
}

/// Decides about `incoming`; what it is served with, and its connection's shutdown token (a child of `shutdown`,
/// which a newer connection cancels to make room). `None`: it was answered with a Retry or refused, nothing more to
/// do (and no token made for it). One from an address not validated enters the connections awaiting Hello at once,
/// under the lock its decision was taken with (the decision found the table not full): entered later, on its own
/// task, a burst of them admitted together found the table full then and waited outside it, where no validated
/// newcomer could close them to make room (the diff review's find).
pub(super) fn admit(
    incoming: quinn::Incoming,
    admission: &Arc<Mutex<Admission>>,
    stats: &ServerStats,
    shutdown: &CancellationToken,
) -> Option<(quinn::Incoming, Admitted, CancellationToken)> {
    let ip = incoming.remote_address().ip();
    let validated = incoming.remote_address_validated();
    let mut table = lock(admission);
    match table.decide(ip, validated, Instant::now()) {
        Decision::Admit => {
            let own = shutdown.child_token();
            let entered = match validated {
                false => table.awaiting_hello().enter_if_room(ip, own.clone()),
                true => None,
            };
            drop(table);
            let mut slot = Slot::new(admission, ip, !validated);
            slot.awaiting = entered;
            Some((incoming, Admitted::Serve(slot), own))
        }
        Decision::Retry(overload) => {
            drop(table);
            // Only unvalidated attempts are asked to retry, and those always may be; refuse if quinn disagrees
            // (then no Retry was sent, and none is counted).
            match incoming.retry() {
                Ok(()) => bump(match overload {
                    Overload::Rate => &stats.retries_over_rate,
                    Overload::Handshakes => &stats.retries_over_handshakes,
                    Overload::Total | Overload::PerIp => &stats.retries_over_limit,
                }),
                Err(err) => {
                    tracing::debug!(%ip, ?overload, "refused: quinn cannot send this attempt a Retry");
                    err.into_incoming().refuse();
                }
            }
            None
        }
        Decision::Refuse(overload) => {
            drop(table);
            refused(overload, ip, stats);
            incoming.refuse();
            None
        }
        Decision::TooMany(overload, reason) => {
            drop(table); // (`too_many` takes the lock)
            Some((incoming, too_many(overload, reason, admission, stats), shutdown.child_token()))
        }
    }
}

/// Decides about a TCP connection (the WebSocket fallback) from `ip`, whose address TCP's handshake validated.
/// `None`: over the new-connection rate, refused.
pub(super) fn admit_tcp(ip: IpAddr, admission: &Arc<Mutex<Admission>>, stats: &ServerStats) -> Option<Admitted> {
    // Validated (a TCP handshake): at max_connections it makes room as a QUIC newcomer does, and its caller puts it
    // among those awaiting Hello at once (`Slot::await_hello`), upgrade and all, so that it can be made to make
    // room in turn. Until 2026-12-06 it entered that table only after its upgrade: silent TCP connections to the
    // WebSocket listener held places of max_connections that no newcomer could take back.
    let decision = lock(admission).decide(ip, true, Instant::now());
    match decision {
        Decision::Admit => Some(Admitted::Serve(Slot::new(admission, ip, false))),
        Decision::Retry(_) => {
            refused(Overload::Rate, ip, stats);
            None
        }
        Decision::Refuse(overload) => {
            refused(overload, ip, stats);
            None
        }
        Decision::TooMany(overload, reason) => Some(too_many(overload, reason, admission, stats)),
    }
}

/// Over a connection count: counted, and closed with `TooManyConnections` and `reason` once it can be told.
fn too_many(overload: Overload, reason: String, admission: &Arc<Mutex<Admission>>, stats: &ServerStats) -> Admitted {
    bump(over_count(overload, stats));
    Admitted::TooMany(reason, OverLimit(admission.clone()))
}

/// Refused outright: over the rate of new connections, or over a count with `max_over_limit_handshakes` such
/// connections already in their handshake (counted as over that count; the client is not told which).
fn refused(overload: Overload, ip: IpAddr, stats: &ServerStats) {
    match overload {
        Overload::Rate | Overload::Handshakes => {
            bump(&stats.connections_refused_over_rate);
            tracing::debug!(%ip, "refused: over new_connections_per_s_per_ip (or its network's rate)");
        }
        Overload::Total | Overload::PerIp => {
            bump(over_count(overload, stats));
            tracing::debug!(%ip, ?overload, "refused: over a connection count, max_over_limit_handshakes in progress");
        }
    }
}

fn over_count(overload: Overload, stats: &ServerStats) -> &std::sync::atomic::AtomicU64 {
    match overload {
        Overload::Total => &stats.connections_over_total,
        _ => &stats.connections_over_per_ip,
    }
}

/// Counts a connection not welcomed yet closed `TooManyConnections` to make room, once its session began: among the
/// refusals by code too, as every close with a code (`quiver_refusals_total{code="TooManyConnections"}` missed them
/// until 2026-12-07).
fn closed_to_make_room(stats: &ServerStats) {
    bump(&stats.connections_closed_awaiting_hello);
    stats.closed_with(ErrorCode::TooManyConnections);
}

/// Closes a connection not welcomed yet to make room for a newer one (`budget.max_awaiting_hello`), and counts it.
/// Returns why, for the log.
pub(super) fn make_room(
    conn: &super::wire::Wire,
    config: &crate::ServerConfig,
    stats: &ServerStats,
    slot: &Slot,
) -> String {
    closed_to_make_room(stats);
    let reason = evicted_reason(config.budget.max_awaiting_hello, slot.ip);
    conn.close(ErrorCode::TooManyConnections, &reason);
    reason
}

/// Why a connection not welcomed yet ends when its shutdown token is cancelled: to make room for a newer one
/// (counted here) or the server's shutdown. The code and reason to close it with.
pub(super) fn ended_early(admitted: &Admitted, max: u32, ip: IpAddr, stats: &ServerStats) -> (ErrorCode, String) {
    match admitted {
        // A handshake from an address not validated (an Initial anyone can forge) closed to make room: counted as
        // abandoned, as one that times out is, not as a limit breach, which forged packets must not be able to raise.
        Admitted::Serve(slot) if slot.made_room() && slot.handshaking => {
            bump(&stats.tls_handshakes_abandoned);
            (ErrorCode::TooManyConnections, evicted_reason(max, ip))
        }
        // (Before its session: no Quiver code reaches the client, so not among the refusals by code.)
        Admitted::Serve(slot) if slot.made_room() => {
            bump(&stats.connections_closed_awaiting_hello);
            (ErrorCode::TooManyConnections, evicted_reason(max, ip))
        }
        _ => (ErrorCode::GoingAway, "the server is shutting down".to_string()),
    }
}
