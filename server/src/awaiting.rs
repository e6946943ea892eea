//! Connections admitted and not welcomed yet (their TLS handshake, a browser's CONNECT, then Hello), without
//! sockets or clocks: at most `budget.max_awaiting_hello` in all. A connection that never says Hello holds its slot
//! in `max_connections` for `handshake_timeout_ms`; without this bound a few dozen addresses opening silent
//! connections at their allowed rate would fill every slot, and real clients would be refused for as long as they
//! kept it up. With it, when one more arrives over the bound, the one waiting longest **from the source group
//! holding the most** is closed to make room (a SYN cache's answer to a SYN flood): a flood from a few networks
//! closes its own connections, not a real client's, and one spread over more networks than the bound still
//! closes only connections that had waited longest, while a real client needs a couple of round trips to say Hello.
//!
//! A source group is an IPv4 /24 or an IPv6 /48: wider than the per-address limits' key (an IPv4 address, an IPv6
//! /64), because what matters here is who is flooding, and one party commonly holds a /24 or a /48.

use std::{
    collections::{BTreeMap, HashMap},
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
/// cancellation token).
#[derive(Debug)]
pub struct AwaitingHello<H> {
    max: usize,
    next: u64,
    waiting: BTreeMap<Ticket, (Group, H)>,
    per_group: HashMap<Group, u32>,
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
        AwaitingHello { max: max.max(1) as usize, next: 0, waiting: BTreeMap::new(), per_group: HashMap::new() }
    }

    /// A connection from `ip` now awaits Hello. Returns its ticket and, when the table was full, the connection
    /// that left it to make room (the one waiting longest in the group holding the most; never this one).
    pub fn enter(&mut self, ip: IpAddr, handle: H) -> (Ticket, Option<Evicted<H>>) {
        let evicted = (self.waiting.len() >= self.max).then(|| self.evict()).flatten();
        let (ticket, group) = (Ticket(self.next), Group::of(ip));
        self.next += 1;
        self.waiting.insert(ticket, (group, handle));
        *self.per_group.entry(group).or_default() += 1;
        (ticket, evicted)
    }

    /// The connection with `ticket` said Hello, or ended. False when it was not in the table (evicted already).
    pub fn leave(&mut self, ticket: Ticket) -> bool {
        let Some((group, _)) = self.waiting.remove(&ticket) else { return false };
        self.forget(group);
        true
    }

    /// Connections awaiting Hello.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes out the oldest connection of the group holding the most (of several such groups, the one whose oldest
    /// waited longest). Linear in the table's size, and run only when it is full.
    fn evict(&mut self) -> Option<Evicted<H>> {
        let most = self.per_group.values().copied().max()?;
        let ticket = self.waiting.iter().find(|(_, (group, _))| self.per_group.get(group) == Some(&most))?.0;
        let ticket = *ticket;
        let (group, handle) = self.waiting.remove(&ticket)?;
        self.forget(group);
        Some(Evicted { handle, group })
    }

    fn forget(&mut self, group: Group) {
        if let Some(count) = self.per_group.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                self.per_group.remove(&group);
            }
        }
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
            let counted: u32 = table.per_group.values().sum();
            assert_eq!(counted as usize, table.len());
        }
    }
}
