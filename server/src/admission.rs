//! Which new connections the server takes, without sockets or clocks: at most `max_connections` in all and
//! `max_connections_per_ip` per source address, and at most `new_connections_per_s_per_ip` new ones a second per
//! source address. The endpoint asks [`Admission::decide`] for each incoming connection and carries out the answer.
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
//! and locked it out.
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
    time::{Duration, Instant},
};

use quiver_proto::Limits;
use tokio_util::sync::CancellationToken;

use crate::{awaiting::AwaitingHello, rate::TokenBucket};

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
    /// Of connections over a count, to be closed with `TooManyConnections` (`max_over_limit_handshakes`).
    pub over_limit: u32,
    /// Admitted connections not welcomed yet, in all (`max_awaiting_hello`; `crate::awaiting`).
    pub awaiting_hello: u32,
}

/// Which limit an attempt ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `new_connections_per_s_per_ip`.
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

/// Open connections per source address and in all, and each address's rate of new ones.
#[derive(Debug)]
pub struct Admission {
    max_total: u32,
    max_per_source: u32,
    rate: u32,
    total: u32,
    /// Admitted attempts from unvalidated addresses whose handshake has not completed yet.
    unvalidated: u32,
    /// Attempts over a count in their handshake, to be closed.
    over_limit: u32,
    bounds: HandshakeBounds,
    sources: HashMap<SourceKey, Source>,
    last_sweep: Instant,
    /// Admitted connections not welcomed yet, each with the token that closes it.
    awaiting: AwaitingHello<CancellationToken>,
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
            over_limit: 0,
            bounds,
            sources: HashMap::new(),
            last_sweep: now,
            awaiting: AwaitingHello::new(bounds.awaiting_hello),
        }
    }

    /// Decides about a connection attempt from `ip`; `validated` is true when it carries a valid Retry token. An
    /// unvalidated attempt admitted counts as a handshake in progress until [`Admission::handshake_done`].
    pub fn decide(&mut self, ip: IpAddr, validated: bool, now: Instant) -> Decision {
        self.decide_as(ip, (validated, validated), now)
    }

    /// [`Admission::decide`], for an attempt that `may_make_room` at `max_connections` (by closing a connection not
    /// welcomed yet): a validated QUIC attempt, which enters the table of those awaiting Hello as it is admitted, may;
    /// a TCP connection to the WebSocket listener, which enters it only after its upgrade (and which nothing could
    /// close in turn until then), may not.
    pub fn decide_as(&mut self, ip: IpAddr, (validated, may_make_room): (bool, bool), now: Instant) -> Decision {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        if !validated && self.unvalidated >= self.bounds.unvalidated {
            // Before anything is stored: forged addresses cannot grow the table either.
            return Decision::Retry(Overload::Handshakes);
        }
        let key = SourceKey::of(ip);
        let (open, unvalidated) = self.sources.get(&key).map_or((0, 0), |s| (s.open, s.unvalidated));
        if !validated && unvalidated >= self.bounds.unvalidated_per_ip {
            // Initials forged with this address take nothing more of its count or rate than this bound.
            return Decision::Retry(Overload::Handshakes);
        }
        let over = if self.total >= self.max_total {
            Some((Overload::Total, format!("the server is at max_connections ({})", self.max_total)))
        } else if open >= self.max_per_source {
            Some((Overload::PerIp, format!("{key} is at max_connections_per_ip ({})", self.max_per_source)))
        } else {
            None
        };
        if let (Some((overload, _)), false) = (&over, validated) {
            // Nothing is stored for an unvalidated attempt over a count: spoofed addresses cannot grow the table.
            return Decision::Retry(*overload);
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
        // Every attempt that will cost a handshake takes from the rate, those to be closed for a count too.
        if !source.new_connections.try_take(now) {
            if validated {
                return Decision::Refuse(Overload::Rate);
            }
            source.validating = true;
            return Decision::Retry(Overload::Rate);
        }
        // At max_connections, a validated newcomer (forged addresses cannot) closes one connection not welcomed yet
        // to take its place, as one more over `max_awaiting_hello` does: otherwise silent connections, fewer than
        // that bound when `max_connections` is set lower, would hold every slot for as long as they are renewed.
        // (The closed one gives its slot back once it is gone: the count is over the bound by as many meanwhile.)
        let over = over.filter(|(overload, _)| {
            *overload != Overload::Total || !may_make_room || open >= self.max_per_source || {
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
        source.open += 1;
        self.total += 1;
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
        self.last_sweep = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_ip: u32, rate: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            new_connections_per_s_per_ip: rate,
            ..Limits::default()
        }
    }

    /// At most `unvalidated` unvalidated handshakes in all; no other bound.
    fn bounds(unvalidated: u32) -> HandshakeBounds {
        HandshakeBounds { unvalidated, unvalidated_per_ip: u32::MAX, over_limit: u32::MAX, awaiting_hello: u32::MAX }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_are_ipv4_or_an_ipv6_slash_64() {
        assert_eq!(SourceKey::of(ip("::ffff:10.0.0.1")), SourceKey::of(ip("10.0.0.1")));
        assert_eq!(SourceKey::of(ip("2001:db8:1:2:aaaa::1")), SourceKey::of(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(SourceKey::of(ip("2001:db8:1:2::1")), SourceKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(SourceKey::of(ip("2001:db8:1:2:aaaa::1")).to_string(), "2001:db8:1:2::/64");
        assert_eq!(SourceKey::of(ip("10.0.0.1")).to_string(), "10.0.0.1");
    }

    #[test]
    fn per_source_and_total_counts() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(3, 2, 1000), bounds(1000), t0);
        assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Admit);
        assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Admit);
        // The third from one address: first proven real, then told why.
        assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Retry(Overload::PerIp));
        let Decision::TooMany(Overload::PerIp, reason) = admission.decide(ip("10.0.0.1"), true, t0) else {
            panic!("not refused")
        };
        assert!(reason.contains("max_connections_per_ip (2)") && reason.contains("10.0.0.1"), "{reason}");
        assert_eq!(admission.decide(ip("10.0.0.2"), false, t0), Decision::Admit);
        let Decision::TooMany(Overload::Total, reason) = admission.decide(ip("10.0.0.3"), true, t0) else {
            panic!("not refused")
        };
        assert!(reason.contains("max_connections (3)"), "{reason}");
        assert_eq!(admission.open(), 3);
        admission.release(ip("10.0.0.1"));
        assert_eq!(admission.decide(ip("10.0.0.3"), true, t0), Decision::Admit);
        // Releasing more than was admitted changes nothing.
        for _ in 0..5 {
            admission.release(ip("10.0.0.9"));
            admission.release(ip("10.0.0.2"));
        }
        assert_eq!(admission.open(), 2);
    }

    /// Forged addresses, each new (under every per-address limit): at most `max_unvalidated` of their handshakes
    /// run at once, the rest get a Retry (storing nothing), and a validated client is served meanwhile.
    #[test]
    fn handshakes_from_unvalidated_addresses_are_bounded_in_all() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(10_000, 256, 100), bounds(3), t0);
        let forged = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
        for i in 0..3 {
            assert_eq!(admission.decide(forged(i), false, t0), Decision::Admit);
        }
        let tracked = admission.tracked_sources();
        for i in 3..1_000 {
            assert_eq!(admission.decide(forged(i), false, t0), Decision::Retry(Overload::Handshakes));
        }
        assert_eq!(admission.tracked_sources(), tracked, "a Retry stores nothing");
        assert_eq!(admission.decide(ip("192.0.2.7"), true, t0), Decision::Admit, "validated: not bounded by it");
        assert_eq!((admission.open(), admission.unvalidated_handshakes()), (4, 3));
        // A handshake done (completed or failed) makes room for the next unvalidated attempt.
        admission.handshake_done(forged(0));
        assert_eq!(admission.decide(forged(1_000), false, t0), Decision::Admit);
        assert_eq!(admission.decide(forged(1_001), false, t0), Decision::Retry(Overload::Handshakes));
        for i in 0..10 {
            admission.handshake_done(forged(i));
        }
        assert_eq!(admission.unvalidated_handshakes(), 0);
    }

    #[test]
    fn over_the_rate_unvalidated_attempts_get_a_retry_and_validated_ones_take_what_is_left() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(1000, 1000, 10), bounds(1000), t0); // burst 20
        let a = ip("192.0.2.7");
        for _ in 0..20 {
            assert_eq!(admission.decide(a, false, t0), Decision::Admit);
        }
        assert_eq!(admission.decide(a, false, t0), Decision::Retry(Overload::Rate));
        assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::Rate), "validated, but nothing left");
        // A spoofed flood of unvalidated attempts does not use up the refill...
        for i in 0..1000 {
            assert_eq!(
                admission.decide(a, false, t0 + Duration::from_micros(i * 100)),
                Decision::Retry(Overload::Rate)
            );
        }
        // ...so a real client that comes back validated gets it.
        assert_eq!(admission.decide(a, true, t0 + Duration::from_millis(150)), Decision::Admit);
        // Other addresses are not affected.
        assert_eq!(admission.decide(ip("192.0.2.8"), false, t0), Decision::Admit);
        // Once the bucket is full again (2 s at 10/s from empty), no more Retry.
        assert_eq!(admission.decide(a, false, t0 + Duration::from_secs(3)), Decision::Admit);
    }

    #[test]
    fn idle_entries_are_swept_and_refused_attempts_store_nothing() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(100, 100, 10), bounds(1000), t0);
        for i in 0..50u8 {
            assert_eq!(admission.decide(IpAddr::from([10, 0, 0, i]), false, t0), Decision::Admit);
            admission.release(IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(admission.decide(ip("10.0.1.1"), false, t0), Decision::Admit);
        assert_eq!(admission.tracked_sources(), 51);
        // One token each was taken: refilled within 100 ms at 10/s. The next decision sweeps.
        admission.decide(ip("10.0.1.2"), false, t0 + Duration::from_secs(2));
        assert_eq!(admission.tracked_sources(), 2, "only the addresses with open connections");
        // At the total limit, unvalidated attempts from new addresses leave no entry behind.
        let mut full = Admission::new(&limits(1, 1, 10), bounds(1000), t0);
        full.decide(ip("10.0.0.1"), false, t0);
        for i in 0..200u8 {
            assert_eq!(full.decide(IpAddr::from([10, 1, 0, i]), false, t0), Decision::Retry(Overload::Total));
        }
        assert_eq!(full.tracked_sources(), 1);
    }

    #[test]
    fn attempts_closed_for_a_count_take_from_the_rate() {
        // Each costs a handshake, so a validated peer at its count cannot make the server do them without end.
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(1000, 1, 5), bounds(1000), t0); // burst 10
        let a = ip("198.51.100.1");
        assert_eq!(admission.decide(a, false, t0), Decision::Admit);
        for _ in 0..9 {
            assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
        }
        assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::Rate));
        assert_eq!(admission.open(), 1);
    }

    /// Initials forged with a real client's address (an off-path attacker cannot answer a Retry): at most
    /// `unvalidated_per_ip` of them are charged to it; the rest, and the client's own first attempt meanwhile, get
    /// a Retry, and the client, back validated, is served. Before, each forged attempt took a slot of the address's
    /// count and a token of its rate until its handshake timed out: a few hundred locked the address out.
    #[test]
    fn initials_forged_with_a_real_address_do_not_lock_it_out() {
        let t0 = Instant::now();
        let bounds = HandshakeBounds { unvalidated: 256, unvalidated_per_ip: 4, over_limit: 64, awaiting_hello: 1024 };
        let mut admission = Admission::new(&limits(10_000, 16, 10), bounds, t0); // burst 20
        let victim = ip("203.0.113.9");
        for _ in 0..4 {
            assert_eq!(admission.decide(victim, false, t0), Decision::Admit);
        }
        for i in 0..1_000 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Handshakes));
        }
        // The real client: a Retry too, then served once it comes back with the token, as often as its count and
        // rate allow (the forged four took 4 of its 16 slots and 4 of its 20 tokens).
        let now = t0 + Duration::from_secs(1);
        assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Handshakes));
        for _ in 0..12 {
            assert_eq!(admission.decide(victim, true, now), Decision::Admit);
        }
        assert_eq!((admission.open(), admission.unvalidated_handshakes()), (16, 4));
        // A forged handshake that times out makes room for one more unvalidated attempt from there.
        admission.handshake_done(victim);
        admission.release(victim);
        assert_eq!(admission.decide(victim, false, now), Decision::Admit);
        assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Handshakes));
        // Other addresses are not affected.
        assert_eq!(admission.decide(ip("203.0.113.10"), false, now), Decision::Admit);
    }

    /// Connections over a count are admitted only to be closed with `TooManyConnections` once their handshake is
    /// done, holding no slot meanwhile: at most `over_limit` such handshakes run at once, the rest are refused.
    #[test]
    fn handshakes_over_a_count_are_bounded_in_all() {
        let t0 = Instant::now();
        let bounds = HandshakeBounds { unvalidated: 256, unvalidated_per_ip: 4, over_limit: 2, awaiting_hello: 1024 };
        let mut admission = Admission::new(&limits(1_000, 1, 1_000), bounds, t0);
        let a = ip("198.51.100.1");
        assert_eq!(admission.decide(a, false, t0), Decision::Admit);
        for _ in 0..2 {
            assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
        }
        assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::PerIp));
        assert_eq!(admission.over_limit_handshakes(), 2);
        admission.over_limit_done();
        assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
        assert_eq!(admission.open(), 1);
    }

    /// At `max_connections`, a validated newcomer closes a connection not welcomed yet (the longest waiting, by the
    /// awaiting table's rule) rather than being refused: with `max_connections` set below `max_awaiting_hello`,
    /// silent connections would otherwise hold every slot. Welcomed connections are never closed for it, and a
    /// forged (unvalidated) newcomer closes nothing.
    #[test]
    fn at_max_connections_a_validated_newcomer_takes_the_place_of_one_not_welcomed() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(3, 3, 1_000), bounds(1_000), t0);
        let silent: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let mut tickets = Vec::new();
        for (i, token) in silent.iter().enumerate() {
            let from = ip(&format!("198.51.100.{}", i + 1));
            assert_eq!(admission.decide(from, true, t0), Decision::Admit);
            tickets.push(admission.awaiting_hello().enter(from, token.clone()).0);
        }
        let newcomer = ip("203.0.113.7");
        assert_eq!(admission.decide(newcomer, false, t0), Decision::Retry(Overload::Total), "forged: closes nothing");
        assert!(silent.iter().all(|token| !token.is_cancelled()));
        assert_eq!(admission.decide(newcomer, true, t0), Decision::Admit);
        assert!(silent[0].is_cancelled() && !silent[1].is_cancelled(), "the longest waiting made room");
        assert!(!admission.awaiting_hello().contains(tickets[0]));
        // The other two are welcomed: nothing left to close, so the next is refused as before.
        for ticket in &tickets[1..] {
            assert!(admission.awaiting_hello().leave(*ticket));
        }
        assert!(matches!(admission.decide(ip("203.0.113.8"), true, t0), Decision::TooMany(Overload::Total, _)));
        assert!(!silent[1].is_cancelled() && !silent[2].is_cancelled());
    }

    /// A TCP connection to the WebSocket listener at `max_connections` closes nobody: it enters the table of those
    /// awaiting Hello only after its upgrade, so silent TCP connections would close real clients' handshakes while
    /// nothing could close them.
    #[test]
    fn a_tcp_connection_before_its_upgrade_makes_no_room() {
        let t0 = Instant::now();
        let mut admission = Admission::new(&limits(1, 1, 1_000), bounds(1_000), t0);
        let waiting = CancellationToken::new();
        let quic = ip("198.51.100.1");
        assert_eq!(admission.decide(quic, true, t0), Decision::Admit);
        admission.awaiting_hello().enter(quic, waiting.clone());
        let tcp = admission.decide_as(ip("203.0.113.7"), (true, false), t0);
        assert!(matches!(tcp, Decision::TooMany(Overload::Total, _)), "{tcp:?}");
        assert!(!waiting.is_cancelled(), "the QUIC client in its handshake stays");
    }
}
