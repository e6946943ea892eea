//! Which new connections the server takes, without sockets or clocks: at most `max_connections` in all,
//! `max_connections_per_ip` per source address and `budget.max_connections_per_network` per network (an IPv4 /24, an
//! IPv6 /48), and at most `new_connections_per_s_per_ip` new ones a second per source address and
//! `budget.new_connections_per_s_per_network` per network. The endpoint asks [`Admission::decide`] for each
//! incoming connection and carries out the answer.
//!
//! An address over its rate is made to prove it is real: attempts that are not validated yet get a QUIC Retry
//! (stateless, costs the server one small packet) and do not use up the rate; validated ones (they came back with
//! the Retry's token) take from the rate or are refused. So spoofed floods cannot spend a real address's rate
//! once it is over, and refusals go only to addresses that asked. Over a connection count, unvalidated attempts
//! get a Retry too; validated ones take from the rate like any other attempt (each costs a handshake) and are
//! admitted just long enough to be closed with `TooManyConnections`, so the client sees why.
//!
//! Handshakes in progress from addresses not validated yet are bounded in all (`max_unvalidated_handshakes`): above
//! it, every unvalidated attempt gets a Retry. A flood of Initials from forged addresses, each new and so under
//! every per-address limit, would otherwise have the server run a TLS handshake toward each and hold its slot in
//! `max_connections` until `handshake_timeout_ms`, until real clients were closed `TooManyConnections`. They are
//! bounded per address too (`max_unvalidated_handshakes_per_ip`): Initials forged with a real client's address
//! would otherwise each be charged to that address (a slot in its count, a token of its rate) until they time out,
//! and locked it out. And they are bounded a second (`max_unvalidated_handshakes_per_s`), in all: an Initial that
//! ends itself at once gives its place back as soon as it took it. Unvalidated attempts take an address's rate down
//! to half its burst, no further: the rest is for attempts the address validated.
//!
//! Handshakes of connections over a count, admitted only to be closed with `TooManyConnections`, are bounded in all
//! (`max_over_limit_handshakes`): above it such attempts are refused at once. They hold no slot in the counts, so a
//! client at its count that stalls its handshakes would otherwise hold one each until `handshake_timeout_ms`.
//!
//! The table keeps an entry only for addresses with open connections or a bucket still refilling; idle ones are
//! swept once a second, so its size stays near the number of open connections plus a few seconds of newcomers.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use quiver_proto::Limits;
use tokio_util::sync::CancellationToken;

use crate::{
    awaiting::{AwaitingHello, Group},
    rate::TokenBucket,
    shares::{NetworkShare, Shares},
};

/// The part of a source address that limits apply to: an IPv4 address, or the /64 prefix of an IPv6 one (a single
/// host commonly gets a whole /64). IPv4-mapped IPv6 addresses (a dual-stack socket's IPv4 peers) count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The key for a peer address.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => SourceKey(IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into())),
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What to do with an incoming connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve it; it now counts as open until [`Admission::release`].
    Admit,
    /// Send a QUIC Retry: the address must prove it is real before the server spends anything on it.
    Retry(Overload),
    /// Refuse it at the QUIC level: a validated address over its rate of new connections (`Rate`), or over a count
    /// while `max_over_limit_handshakes` such handshakes are in progress (`Total`, `PerIp`).
    Refuse(Overload),
    /// Complete the handshake, then close with `TooManyConnections` and this reason (not counted as open; one of
    /// the over-limit handshakes until [`Admission::over_limit_done`]).
    TooMany(Overload, String),
}

/// Bounds on handshakes in progress (the server's `budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeBounds {
    /// From unvalidated addresses, in all (`max_unvalidated_handshakes`).
    pub unvalidated: u32,
    /// From one unvalidated source address (`max_unvalidated_handshakes_per_ip`).
    pub unvalidated_per_ip: u32,
    /// Begun a second, in all, from unvalidated addresses (`max_unvalidated_handshakes_per_s`).
    pub unvalidated_per_s: u32,
    /// Of connections over a count, to be closed with `TooManyConnections` (`max_over_limit_handshakes`).
    pub over_limit: u32,
    /// Admitted connections not welcomed yet, in all (`max_awaiting_hello`; `crate::awaiting`).
    pub awaiting_hello: u32,
    /// Admitted connections from one network, an IPv4 /24 or an IPv6 /48 (`max_connections_per_network`).
    pub per_network: u32,
    /// New connections a second from one network (`new_connections_per_s_per_network`).
    pub per_network_per_s: u32,
}

/// Which limit an attempt ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `new_connections_per_s_per_ip`, or its network's `new_connections_per_s_per_network`.
    Rate,
    /// `max_connections`.
    Total,
    /// `max_connections_per_ip`.
    PerIp,
    /// `max_unvalidated_handshakes` or `max_unvalidated_handshakes_per_ip`.
    Handshakes,
}

#[derive(Debug)]
struct Source {
    open: u32,
    /// Of `open`, admitted unvalidated and still in their handshake.
    unvalidated: u32,
    new_connections: TokenBucket,
    /// Over its rate since the bucket last ran dry, until it refills completely: unvalidated attempts get a Retry.
    validating: bool,
}

/// One network's admitted connections ([`Group`]: an IPv4 /24, an IPv6 /48), of them those from addresses not
/// validated still in their handshake, and its rate of new ones.
#[derive(Debug)]
struct Network {
    open: u32,
    unvalidated: u32,
    new_connections: TokenBucket,
}

/// Open connections per source address and in all, and each address's rate of new ones.
#[derive(Debug)]
pub struct Admission {
    max_total: u32,
    max_per_source: u32,
    rate: u32,
    total: u32,
    /// Admitted attempts from unvalidated addresses whose handshake has not completed yet.
    unvalidated: u32,
    /// Unvalidated attempts admitted a second, in all (a burst of one second's): handshakes that end at once (an
    /// Initial that closes itself) give their place in `unvalidated` back as soon as they took it.
    unvalidated_rate: TokenBucket,
    /// Attempts over a count in their handshake, to be closed.
    over_limit: u32,
    bounds: HandshakeBounds,
    sources: HashMap<SourceKey, Source>,
    /// Connections and rates by network: entries only while some are open or a bucket is refilling (as
    /// `sources`).
    networks: HashMap<Group, Network>,
    last_sweep: Instant,
    /// Admitted connections not welcomed yet, each with the token that closes it.
    awaiting: AwaitingHello<CancellationToken>,
    /// The rooms and channels each network holds (`crate::shares`), for the connections admitted.
    shares: Option<Arc<Shares>>,
}

/// How often idle entries are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Admission {
    /// An empty table for these limits and bounds on handshakes in progress.
    pub fn new(limits: &Limits, bounds: HandshakeBounds, now: Instant) -> Admission {
        Admission {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_ip,
            rate: limits.new_connections_per_s_per_ip,
            total: 0,
            unvalidated: 0,
            unvalidated_rate: TokenBucket::new(bounds.unvalidated_per_s, bounds.unvalidated_per_s, now),
            over_limit: 0,
            bounds,
            sources: HashMap::new(),
            networks: HashMap::new(),
            last_sweep: now,
            awaiting: AwaitingHello::new(bounds.awaiting_hello),
            shares: None,
        }
    }

    /// The connections admitted take their rooms and channels from their network's share in `shares`.
    pub fn with_shares(mut self, shares: Arc<Shares>) -> Admission {
        self.shares = Some(shares);
        self
    }

    /// The share of `ip`'s network, when the table has shares.
    pub fn share_of(&self, ip: IpAddr) -> Option<NetworkShare> {
        self.shares.as_ref().map(|shares| shares.of(ip))
    }

    /// Decides about a connection attempt from `ip`; `validated` is true when it carries a valid Retry token (a TCP
    /// connection's handshake validates its address too). An unvalidated attempt admitted counts as a handshake in
    /// progress until [`Admission::handshake_done`]. At `max_connections` a validated attempt makes room by closing
    /// a connection not welcomed yet: each enters the table of those awaiting Hello as it is admitted (a TCP
    /// connection to the WebSocket listener at its accept), so that a newer one can close it in turn.
    pub fn decide(&mut self, ip: IpAddr, validated: bool, now: Instant) -> Decision {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        if !validated && (self.unvalidated >= self.bounds.unvalidated || self.awaiting.is_full()) {
            // Before anything is stored: forged addresses cannot grow the table either. Nor take a place among the
            // connections awaiting Hello from a full table (they would close one to make room) or hold one outside
            // it (where no validated newcomer could take it back at `max_connections`).
            return Decision::Retry(Overload::Handshakes);
        }
        let key = SourceKey::of(ip);
        let (open, unvalidated) = self.sources.get(&key).map_or((0, 0), |s| (s.open, s.unvalidated));
        if !validated && unvalidated >= self.bounds.unvalidated_per_ip {
            // Initials forged with this address take nothing more of its count or rate than this bound.
            return Decision::Retry(Overload::Handshakes);
        }
        let network = Group::of(ip);
        let (in_network, unvalidated_in_network) =
            self.networks.get(&network).map_or((0, 0), |n| (n.open, n.unvalidated));
        let network_full = in_network >= self.bounds.per_network;
        // The address's own count first, then its network's, then the server's: an address at its own limit is told
        // so (and counted so) whether or not the server is full too (until 2026-12-07 it was blamed on
        // `max_connections`, which an operator might raise for nothing).
        let over = if open >= self.max_per_source {
            Some((Overload::PerIp, format!("{key} is at max_connections_per_ip ({})", self.max_per_source)))
        } else if network_full {
            let max = self.bounds.per_network;
            Some((Overload::PerIp, format!("{network} is at budget.max_connections_per_network ({max})")))
        } else if self.total >= self.max_total {
            Some((Overload::Total, format!("the server is at max_connections ({})", self.max_total)))
        } else {
            None
        };
        if let (Some((overload, _)), false) = (&over, validated) {
            // Nothing is stored for an unvalidated attempt over a count: spoofed addresses cannot grow the table.
            return Decision::Retry(*overload);
        }
        // Unvalidated attempts hold at most half of the address's count, and of its network's: with
        // `max_connections_per_ip` at or below `unvalidated_per_ip` (4), Initials forged with a client's address took
        // every place it had, and the client, validated by its Retry, was refused `TooManyConnections` for as long
        // as they were renewed (a packet per address every `handshake_timeout_ms`); the same for a network at
        // `budget.max_connections_per_network`. Beyond half, an attempt validates first (a Retry: one round trip).
        // (Never binding at the defaults: 4 of 256, 256 in all of 2,560.)
        let half_taken = |unvalidated: u32, bound: u32| (u64::from(unvalidated) + 1) * 2 > u64::from(bound);
        if !validated
            && (half_taken(unvalidated, self.max_per_source)
                || half_taken(unvalidated_in_network, self.bounds.per_network))
        {
            return Decision::Retry(Overload::Handshakes);
        }
        // Handshakes in progress bound the work only of those that last: an Initial that ends itself (a
        // CONNECTION_CLOSE, or a frame not allowed, after its ClientHello), from a forged address each, had the
        // server sign a TLS flight and give the place back at once, as fast as they came, and no Retry was ever
        // sent (until 2026-12-07, a review's find). So they are bounded a second too: looked at here, before
        // anything is stored (forged addresses cannot grow the table), and taken last (an attempt refused anything
        // else takes none).
        if !validated && (self.bounds.unvalidated_per_s == 0 || !self.unvalidated_rate.has_token(now)) {
            return Decision::Retry(Overload::Handshakes);
        }
        // The network's rate: a party holding an IPv6 /48 (65,536 /64s, each with a rate of its own) had the server
        // run handshakes as fast as it could make them (until 2026-12-08). Looked at before the address's, taken
        // with it; unvalidated attempts leave half its burst to the validated, as an address's do.
        let per_network_per_s = self.bounds.per_network_per_s;
        let counted = self.networks.entry(network).or_insert_with(|| Network {
            open: 0,
            unvalidated: 0,
            new_connections: TokenBucket::per_second(per_network_per_s, now),
        });
        let reserve = if validated { 0 } else { counted.new_connections.burst() / 2 };
        if !counted.new_connections.can_take_leaving(reserve, now) {
            return if validated { Decision::Refuse(Overload::Rate) } else { Decision::Retry(Overload::Rate) };
        }
        let rate = self.rate;
        let source = self.sources.entry(key).or_insert_with(|| Source {
            open: 0,
            unvalidated: 0,
            new_connections: TokenBucket::per_second(rate, now),
            validating: false,
        });
        if source.validating && source.new_connections.is_full(now) {
            source.validating = false;
        }
        if source.validating && !validated {
            return Decision::Retry(Overload::Rate);
        }
        // Unvalidated attempts take the address's rate down to half its burst, no further: the rest is for its
        // validated ones. Initials forged with a client's address (ending at once, each gave its place among the
        // address's unvalidated handshakes back) spent its whole burst, and the client, validated, was refused
        // (until 2026-12-07, a review's find).
        if !validated && !source.new_connections.try_take_leaving(source.new_connections.burst() / 2, now) {
            source.validating = true;
            return Decision::Retry(Overload::Rate);
        }
        // Every attempt that will cost a handshake takes from the rate, those to be closed for a count too.
        if validated && !source.new_connections.try_take(now) {
            return Decision::Refuse(Overload::Rate);
        }
        if let Some(counted) = self.networks.get_mut(&network) {
            counted.new_connections.try_take(now); // (there: looked at above)
        }
        // At max_connections, a validated newcomer (forged addresses cannot) closes one connection not welcomed yet
        // to take its place, as one more over `max_awaiting_hello` does: otherwise silent connections, fewer than
        // that bound when `max_connections` is set lower, would hold every slot for as long as they are renewed.
        // (The closed one gives its slot back once it is gone: the count is over the bound by as many meanwhile.)
        let over = over.filter(|(overload, _)| {
            *overload != Overload::Total || !validated || open >= self.max_per_source || network_full || {
                let evicted = self.awaiting.make_room(ip);
                if let Some(evicted) = &evicted {
                    tracing::debug!(group = %evicted.group, "closing a connection awaiting Hello: max_connections");
                    evicted.handle.cancel();
                }
                evicted.is_none()
            }
        });
        if let Some((overload, reason)) = over {
            if self.over_limit >= self.bounds.over_limit {
                return Decision::Refuse(overload);
            }
            self.over_limit += 1;
            return Decision::TooMany(overload, reason);
        }
        if !validated {
            // (There since the look above: nothing took one meanwhile, and the bucket only refills.)
            self.unvalidated_rate.try_take(now);
        }
        source.open += 1;
        self.total += 1;
        if let Some(counted) = self.networks.get_mut(&network) {
            counted.open += 1;
            counted.unvalidated += u32::from(!validated);
        }
        if !validated {
            source.unvalidated += 1;
            self.unvalidated += 1;
        }
        Decision::Admit
    }

    /// An unvalidated attempt from `ip` admitted earlier finished its handshake, or failed it (the address is
    /// validated, or the attempt is gone).
    pub fn handshake_done(&mut self, ip: IpAddr) {
        self.unvalidated = self.unvalidated.saturating_sub(1);
        if let Some(source) = self.sources.get_mut(&SourceKey::of(ip)) {
            source.unvalidated = source.unvalidated.saturating_sub(1);
        }
        if let Some(network) = self.networks.get_mut(&Group::of(ip)) {
            network.unvalidated = network.unvalidated.saturating_sub(1);
        }
    }

    /// A connection over a count ([`Decision::TooMany`]) was closed, or its handshake failed.
    pub fn over_limit_done(&mut self) {
        self.over_limit = self.over_limit.saturating_sub(1);
    }

    /// Handshakes of connections over a count in progress.
    pub fn over_limit_handshakes(&self) -> u32 {
        self.over_limit
    }

    /// Handshakes from unvalidated addresses in progress.
    pub fn unvalidated_handshakes(&self) -> u32 {
        self.unvalidated
    }

    /// An admitted connection from `ip` has ended.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(source) = self.sources.get_mut(&SourceKey::of(ip)) {
            if source.open > 0 {
                source.open -= 1;
                self.total = self.total.saturating_sub(1);
                if let Some(network) = self.networks.get_mut(&Group::of(ip)) {
                    network.open = network.open.saturating_sub(1);
                }
            }
        }
    }

    /// Connections admitted and not released, in all.
    pub fn open(&self) -> u32 {
        self.total
    }

    /// The connections admitted and not welcomed yet (`max_awaiting_hello`): an admitted one enters with the token
    /// that closes it, and leaves when it says Hello or ends.
    pub fn awaiting_hello(&mut self) -> &mut AwaitingHello<CancellationToken> {
        &mut self.awaiting
    }

    /// Source addresses the table holds an entry for.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Drops entries that hold nothing a fresh entry would not: no open connection and a full bucket.
    fn sweep(&mut self, now: Instant) {
        self.sources.retain(|_, source| source.open > 0 || !source.new_connections.is_full(now));
        self.networks.retain(|_, network| network.open > 0 || !network.new_connections.is_full(now));
        self.last_sweep = now;
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
