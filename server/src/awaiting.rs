//! Connections admitted and not welcomed yet (their TLS handshake, a browser's CONNECT, then Hello), without
//! sockets or clocks: at most `budget.max_awaiting_hello` in all. A connection that never says Hello holds its slot
//! in `max_connections` for `handshake_timeout_ms`; without this bound a few dozen addresses opening silent
//! connections at their allowed rate would fill every slot, and real clients would be refused for as long as they
//! kept it up. With it, when one more arrives over the bound, one waiting is closed to make room (a SYN cache's
//! answer to a SYN flood):
//! - if the newcomer's source group already holds more than its share (a sixteenth of the bound), **that group's**
//!   longest waiting: a flood from a few networks closes its own connections, not a real client's;
//! - otherwise the longest waiting handshake from an address not validated, if any: it may be forged (anyone can
//!   send an Initial with another's address), so forged ones are closed before real clients;
//! - otherwise the longest waiting of all: a flood spread over many networks must open as many connections as the
//!   bound within the time a real client takes to say Hello (a round trip or two) to close it, and each of those
//!   costs it a handshake the server's rate limits and CPU bound.
//!
//! (Evicting from the group holding the most, whatever its size, would let a flood of one connection from each of
//! a thousand networks pick the real networks with two clients connecting at once: an office, a carrier's NAT.)
//!
//! A source group is an IPv4 /24 or an IPv6 /48: wider than the per-address limits' key (an IPv4 address, an IPv6
//! /64), because what matters here is who is flooding, and one party commonly holds a /24 or a /48.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

/// The source group an address belongs to: its IPv4 /24, or its IPv6 /48 (IPv4-mapped addresses count as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Group(IpAddr);

impl Group {
    /// The group of a peer address.
    pub fn of(ip: IpAddr) -> Group {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Group(IpAddr::V4((u32::from(v4) & 0xffff_ff00).into())),
            IpAddr::V6(v6) => Group(IpAddr::V6((u128::from(v6) & (u128::MAX << 80)).into())),
        }
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}/24"),
            IpAddr::V6(v6) => write!(f, "{v6}/48"),
        }
    }
}

/// A connection's place in the table, to leave it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The connections awaiting Hello, oldest first, each with a handle `H` that closes it (the server's is a
/// cancellation token). Every operation is O(log n).
#[derive(Debug)]
pub struct AwaitingHello<H> {
    max: usize,
    /// A group holding more than this is over its share.
    share: usize,
    next: u64,
    waiting: BTreeMap<Ticket, (Group, H)>,
    per_group: HashMap<Group, BTreeSet<Ticket>>,
    /// Those still in a handshake from an address not validated ([`AwaitingHello::enter_if_room`]): closed first
    /// to make room, so that Initials anyone can forge get real clients closed only once none of them is left.
    unvalidated: BTreeSet<Ticket>,
}

/// A connection closed to make room: its handle, and what to tell it.
#[derive(Debug)]
pub struct Evicted<H> {
    /// The handle it entered with.
    pub handle: H,
    /// Its group, for the log.
    pub group: Group,
}

impl<H> AwaitingHello<H> {
    /// An empty table holding at most `max` connections (at least 1).
    pub fn new(max: u32) -> AwaitingHello<H> {
        let max = max.max(1) as usize;
        let (waiting, per_group, unvalidated) = (BTreeMap::new(), HashMap::new(), BTreeSet::new());
        AwaitingHello { max, share: (max / 16).max(1), next: 0, waiting, per_group, unvalidated }
    }

    /// A connection from `ip` now awaits Hello. Returns its ticket and, when the table was full, the connection
    /// that left it to make room (never this one), as [`AwaitingHello::make_room`] picks it.
    pub fn enter(&mut self, ip: IpAddr, handle: H) -> (Ticket, Option<Evicted<H>>) {
        let group = Group::of(ip);
        let evicted = match self.waiting.len() >= self.max {
            true => self.make_room(ip),
            false => None,
        };
        let ticket = Ticket(self.next);
        self.next += 1;
        self.waiting.insert(ticket, (group, handle));
        self.per_group.entry(group).or_default().insert(ticket);
        (ticket, evicted)
    }

    /// Takes one connection out of the table to make room for a newcomer from `ip` (the table is full, or the
    /// server is at `max_connections`): the longest waiting of the newcomer's group if that group holds more than its
    /// share (a flood from a few networks closes its own); else the longest waiting of those still in a handshake
    /// from an address not validated, if any (they may be forged); else the longest waiting of all. `None` when the
    /// table is empty.
    pub fn make_room(&mut self, ip: IpAddr) -> Option<Evicted<H>> {
        let own = self.per_group.get(&Group::of(ip)).filter(|own| own.len() > self.share);
        let oldest = own.and_then(|own| own.first()).or_else(|| self.unvalidated.first());
        let oldest = oldest.or_else(|| self.waiting.keys().next());
        oldest.copied().and_then(|ticket| self.take(ticket))
    }

    /// The connection with `ticket` said Hello, or ended. False when it was not in the table (evicted already).
    pub fn leave(&mut self, ticket: Ticket) -> bool {
        self.take(ticket).is_some()
    }

    /// True while the connection with `ticket` is in the table (it was neither welcomed, nor ended, nor evicted).
    pub fn contains(&self, ticket: Ticket) -> bool {
        self.waiting.contains_key(&ticket)
    }

    /// A connection from `ip` now awaits Hello if the table has room for it, closing nobody (a handshake from an
    /// address not validated, which may be forged: it can be closed to make room, never make room itself); `None`
    /// when full.
    pub fn enter_if_room(&mut self, ip: IpAddr, handle: H) -> Option<Ticket> {
        let ticket = (!self.is_full()).then(|| self.enter(ip, handle).0)?;
        self.unvalidated.insert(ticket);
        Some(ticket)
    }

    /// The handshake of `ticket` (entered by [`AwaitingHello::enter_if_room`]) completed: its address is validated,
    /// and it is closed to make room as any other is from now on.
    pub fn validated(&mut self, ticket: Ticket) {
        self.unvalidated.remove(&ticket);
    }

    /// True when the table holds its most.
    pub fn is_full(&self) -> bool {
        self.waiting.len() >= self.max
    }

    /// Connections awaiting Hello.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes `ticket` out of the table.
    fn take(&mut self, ticket: Ticket) -> Option<Evicted<H>> {
        let (group, handle) = self.waiting.remove(&ticket)?;
        self.unvalidated.remove(&ticket);
        if let Some(tickets) = self.per_group.get_mut(&group) {
            tickets.remove(&ticket);
            if tickets.is_empty() {
                self.per_group.remove(&group);
            }
        }
        Some(Evicted { handle, group })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn groups_are_ipv4_24s_and_ipv6_48s() {
        assert_eq!(Group::of(ip("203.0.113.7")), Group::of(ip("203.0.113.250")));
        assert_ne!(Group::of(ip("203.0.113.7")), Group::of(ip("203.0.114.7")));
        assert_eq!(Group::of(ip("::ffff:203.0.113.7")), Group::of(ip("203.0.113.9")));
        assert_eq!(Group::of(ip("2001:db8:1:ff::1")), Group::of(ip("2001:db8:1:1234::9")));
        assert_ne!(Group::of(ip("2001:db8:1::1")), Group::of(ip("2001:db8:2::1")));
        assert_eq!(Group::of(ip("203.0.113.7")).to_string(), "203.0.113.0/24");
        assert_eq!(Group::of(ip("2001:db8:1:ff::1")).to_string(), "2001:db8:1::/48");
    }

    #[test]
    fn under_the_bound_nobody_is_closed_and_leaving_frees_room() {
        let mut table = AwaitingHello::new(2);
        let (a, none) = table.enter(ip("10.0.0.1"), 'a');
        assert!(none.is_none());
        let (_, none) = table.enter(ip("10.0.1.1"), 'b');
        assert!(none.is_none());
        assert!(table.leave(a));
        assert!(!table.leave(a), "left once");
        let (_, none) = table.enter(ip("10.0.2.1"), 'c');
        assert!(none.is_none());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_flood_from_one_network_closes_its_own_connections_not_a_real_clients() {
        let mut table = AwaitingHello::new(4);
        // A real client arrives first and has not said Hello yet; a flood from one /24 follows.
        let (real, _) = table.enter(ip("198.51.100.20"), "real".to_string());
        let mut closed = Vec::new();
        for n in 0..100 {
            let (_, evicted) = table.enter(ip(&format!("203.0.113.{n}")), n.to_string());
            closed.extend(evicted.map(|e| e.handle));
        }
        // Oldest of the flood first, and never the real client.
        assert_eq!(closed.len(), 97);
        assert_eq!(&closed[..3], &["0", "1", "2"]);
        assert!(!closed.iter().any(|h| h == "real"));
        assert!(table.leave(real), "the real client is still waiting");
    }

    /// A flood of one connection from each of many networks cannot pick the real networks where two clients connect
    /// at once (an office, a carrier's NAT): under their share, the longest waiting goes, and a real client that
    /// just arrived outlasts as many newer arrivals as the bound.
    #[test]
    fn a_flood_spread_over_many_networks_closes_the_longest_waiting_not_a_busy_real_network() {
        let mut table = AwaitingHello::new(32);
        let flood = |n: u32| ip(&format!("10.{}.{}.1", n / 256, n % 256));
        for n in 0..32 {
            table.enter(flood(n), format!("flood {n}"));
        }
        let (first, _) = table.enter(ip("198.51.100.20"), "office 1".to_string());
        let (second, _) = table.enter(ip("198.51.100.21"), "office 2".to_string());
        let mut closed = Vec::new();
        for n in 32..61 {
            closed.extend(table.enter(flood(n), format!("flood {n}")).1.map(|e| e.handle));
        }
        assert!(closed.iter().all(|h| h.starts_with("flood")), "{closed:?}");
        assert!(table.leave(first) && table.leave(second), "both office clients still wait");
    }

    #[test]
    fn among_groups_of_equal_size_the_longest_waiting_goes() {
        let mut table = AwaitingHello::new(3);
        table.enter(ip("10.0.0.1"), 1);
        table.enter(ip("10.0.1.1"), 2);
        table.enter(ip("10.0.2.1"), 3);
        let (_, evicted) = table.enter(ip("10.0.3.1"), 4);
        assert_eq!(evicted.unwrap().handle, 1);
        let (_, evicted) = table.enter(ip("10.0.4.1"), 5);
        assert_eq!(evicted.unwrap().handle, 2);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn the_table_never_grows_past_its_bound_and_counts_stay_right() {
        let mut table = AwaitingHello::new(16);
        let mut tickets = Vec::new();
        // A deterministic mix of arrivals from a few groups and departures.
        let mut state = 12345u64;
        for step in 0..5_000u64 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if state >> 62 == 0 && !tickets.is_empty() {
                let index = (state >> 8) as usize % tickets.len();
                table.leave(tickets.swap_remove(index));
            } else {
                let group = (state >> 40) % 5;
                let (ticket, _) = table.enter(ip(&format!("10.0.{group}.1")), step);
                tickets.push(ticket);
            }
            assert!(table.len() <= 16);
            let counted: usize = table.per_group.values().map(BTreeSet::len).sum();
            assert_eq!(counted, table.len());
        }
    }

    /// Handshakes from addresses not validated (which may be forged) are closed to make room first, the oldest of
    /// them, even when a validated connection has waited longer; once validated, one is closed as any other.
    #[test]
    fn unvalidated_handshakes_are_closed_to_make_room_first() {
        let mut table = AwaitingHello::new(3);
        let (real, _) = table.enter(ip("198.51.100.1"), "real");
        let forged = table.enter_if_room(ip("203.0.113.1"), "forged").unwrap();
        let proven = table.enter_if_room(ip("203.0.113.2"), "proven").unwrap();
        table.validated(proven);
        assert!(table.enter_if_room(ip("203.0.113.3"), "full").is_none(), "no room: nobody closed");
        assert_eq!(table.make_room(ip("192.0.2.1")).unwrap().handle, "forged");
        assert!(!table.contains(forged) && table.contains(real));
        assert_eq!(table.make_room(ip("192.0.2.1")).unwrap().handle, "real", "then the longest waiting");
        assert!(table.contains(proven));
        // A newcomer whose network holds more than its share closes its own network's first, unvalidated or not.
        let mut table = AwaitingHello::new(16); // a share of 1
        let (own, _) = table.enter(ip("198.51.100.1"), "own");
        table.enter(ip("198.51.100.2"), "own too");
        table.enter_if_room(ip("203.0.113.1"), "forged").unwrap();
        assert_eq!(table.make_room(ip("198.51.100.3")).unwrap().handle, "own");
        assert!(!table.contains(own));
    }
}
