//! The rooms and tick channels one network keeps in use, without sockets: at most `budget.max_rooms_per_network`
//! distinct rooms and `budget.max_channels_per_network` distinct channels held by the connections of one source
//! group (an IPv4 /24, an IPv6 /48: [`Group`]) at once.
//!
//! Without it one address under every per-connection limit could fill the server-wide ones: 157 connections (of
//! its 256) joining 64 new room names each hold 10,048 rooms, over `budget.max_rooms`, and rooms with members are
//! never evicted, so every new room name was then refused `ServerFull` for everyone; subscriptions the same against
//! `budget.max_channels`. A network now keeps at most a share of them (a quarter by default, as
//! `max_connections_per_network` is of `max_connections`), so that filling them takes several networks.
//!
//! What is counted is distinct names, not memberships: a thousand clients behind one office's NAT in one lobby
//! hold one room. A room (or channel) is held by a network while any of its connections is a member (subscribes
//! to it or claims it); each membership holds a [`Hold`], which lets go when dropped, so that every way a
//! membership ends (a Leave, a kick, the connection's end) gives its place back.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use quiver_proto::{ErrorCode, Failure};

use crate::{
    awaiting::Group,
    stats::{bump, ServerStats},
};

/// What a membership is: of a room, or of a tick channel (a subscription or a publish claim, which count alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A room joined.
    Room,
    /// A tick channel subscribed to.
    Subscription,
    /// A tick channel claimed for publishing.
    Claim,
}

/// The names one network holds, each with its count of holds.
#[derive(Debug, Default)]
struct Held {
    rooms: HashMap<Arc<str>, u32>,
    channels: HashMap<Arc<str>, u32>,
}

impl Held {
    fn of(&mut self, kind: Kind) -> &mut HashMap<Arc<str>, u32> {
        match kind {
            Kind::Room => &mut self.rooms,
            Kind::Subscription | Kind::Claim => &mut self.channels,
        }
    }
}

/// What every network holds, and the bounds.
#[derive(Debug)]
pub struct Shares {
    max_rooms: u32,
    max_channels: u32,
    /// Entries only while the network holds something.
    held: Mutex<HashMap<Group, Held>>,
    /// Where refusals are counted (`*_over_network_share`).
    stats: Option<Arc<ServerStats>>,
}

impl Shares {
    /// A table allowing each network `max_rooms` rooms and `max_channels` channels, counting refusals in `stats`.
    pub fn new(max_rooms: u32, max_channels: u32, stats: Option<Arc<ServerStats>>) -> Arc<Shares> {
        Arc::new(Shares { max_rooms, max_channels, held: Mutex::default(), stats })
    }

    /// The share of the network `ip` belongs to.
    pub fn of(self: &Arc<Self>, ip: IpAddr) -> NetworkShare {
        NetworkShare { shares: self.clone(), group: Group::of(ip) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Group, Held>> {
        // (Nothing here can panic while holding it; a poisoned lock still holds consistent counts.)
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Distinct names of `kind` the network holds now.
    pub fn held(&self, ip: IpAddr, kind: Kind) -> usize {
        self.lock().get_mut(&Group::of(ip)).map_or(0, |held| held.of(kind).len())
    }

    /// Networks holding anything now.
    pub fn networks(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, group: Group, kind: Kind, name: &str) {
        let mut networks = self.lock();
        let Some(held) = networks.get_mut(&group) else { return };
        let names = held.of(kind);
        if let Some(count) = names.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                names.remove(name);
            }
        }
        if held.rooms.is_empty() && held.channels.is_empty() {
            networks.remove(&group);
        }
    }
}

/// One network's share, as its connections take from it.
#[derive(Debug, Clone)]
pub struct NetworkShare {
    shares: Arc<Shares>,
    group: Group,
}

impl NetworkShare {
    /// A place for one membership of `name`: always, when the network holds the name already; else when it holds
    /// fewer than its bound of `kind`. Refused with the code of the per-connection bound of the same kind
    /// (`TooManyRooms`, `TooManySubscriptions`, `TooManyChannels`), naming the network and the setting.
    pub fn take(&self, kind: Kind, name: &Arc<str>) -> Result<Hold, Failure> {
        let max = match kind {
            Kind::Room => self.shares.max_rooms,
            Kind::Subscription | Kind::Claim => self.shares.max_channels,
        };
        let mut networks = self.shares.lock();
        let held = networks.entry(self.group).or_default();
        let names = held.of(kind);
        let full = names.len() >= max as usize;
        match names.get_mut(name) {
            Some(count) => *count += 1,
            None if full => {
                if held.rooms.is_empty() && held.channels.is_empty() {
                    networks.remove(&self.group);
                }
                let channels = (ErrorCode::TooManySubscriptions, "tick channels", "max_channels_per_network");
                let (code, what, key) = match kind {
                    Kind::Room => (ErrorCode::TooManyRooms, "rooms", "max_rooms_per_network"),
                    Kind::Subscription => channels,
                    Kind::Claim => (ErrorCode::TooManyChannels, channels.1, channels.2),
                };
                if let Some(stats) = &self.shares.stats {
                    bump(match kind {
                        Kind::Room => &stats.rooms_over_network_share,
                        Kind::Subscription => &stats.subscriptions_over_network_share,
                        Kind::Claim => &stats.claims_over_network_share,
                    });
                }
                let why = format!("the connections from {} hold {max} {what}, budget.{key}", self.group);
                return Err(Failure::new(code, why));
            }
            None => {
                names.insert(name.clone(), 1);
            }
        }
        Ok(Hold { share: Some(self.clone()), kind, name: name.clone() })
    }
}

/// One membership's place in its network's share, given back when dropped.
#[derive(Debug)]
#[must_use = "dropping it gives the place back at once"]
pub struct Hold {
    /// `None`: holds nothing ([`Hold::none`]).
    share: Option<NetworkShare>,
    kind: Kind,
    name: Arc<str>,
}

impl Hold {
    /// A hold of nothing: for a connection no share applies to (tests, and in-process uses without one).
    pub fn none() -> Hold {
        Hold { share: None, kind: Kind::Room, name: Arc::from("") }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.shares.release(share.group, self.kind, &self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_network_holds_at_most_its_share_of_distinct_names() {
        let stats = Arc::new(ServerStats::default());
        let shares = Shares::new(2, 1, Some(stats.clone()));
        let (a, b) = (shares.of(ip("10.0.0.1")), shares.of(ip("10.0.0.200")));
        let (x, y, z): (Arc<str>, Arc<str>, Arc<str>) = ("x".into(), "y".into(), "z".into());
        let first = a.take(Kind::Room, &x).unwrap();
        // Another address of the same /24 shares the bound; a name held already is always allowed.
        let again = b.take(Kind::Room, &x).unwrap();
        let second = b.take(Kind::Room, &y).unwrap();
        let refused = a.take(Kind::Room, &z).unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManyRooms);
        assert!(refused.message.contains("10.0.0.0/24") && refused.message.contains("max_rooms_per_network"));
        assert!(a.take(Kind::Room, &x).is_ok(), "a held room joined once more");
        // Rooms and channels are bounded apart; another network is not touched.
        let channel = a.take(Kind::Subscription, &z).unwrap();
        let claimed = a.take(Kind::Claim, &z).unwrap();
        assert_eq!(a.take(Kind::Subscription, &y).unwrap_err().code, ErrorCode::TooManySubscriptions);
        assert_eq!(a.take(Kind::Claim, &y).unwrap_err().code, ErrorCode::TooManyChannels, "a Publish's own code");
        let counted = stats.snapshot();
        let over = (counted.rooms_over_network_share, counted.subscriptions_over_network_share);
        assert_eq!((over, counted.claims_over_network_share), ((1, 1), 1));
        let other = shares.of(ip("10.0.1.1"));
        let _elsewhere = (other.take(Kind::Room, &z).unwrap(), other.take(Kind::Room, &y).unwrap());
        assert_eq!(shares.held(ip("10.0.0.9"), Kind::Room), 2);
        // A name is given back with its last hold.
        drop(first);
        assert!(a.take(Kind::Room, &z).is_err(), "x is still held by its second membership");
        drop(again);
        let third = a.take(Kind::Room, &z).unwrap();
        drop((second, third, channel, claimed));
        assert_eq!(shares.held(ip("10.0.0.1"), Kind::Room), 0);
        assert_eq!(shares.networks(), 1, "the emptied network's entry is gone, the other's stays");
    }

    #[test]
    fn ipv6_networks_are_48s_and_a_refusal_leaves_no_entry() {
        let shares = Shares::new(1, 1, None);
        let name: Arc<str> = "r".into();
        let held = shares.of(ip("2001:db8:1:2::1")).take(Kind::Room, &name).unwrap();
        // Another /64 of the same /48: the same network.
        let other: Arc<str> = "s".into();
        assert!(shares.of(ip("2001:db8:1:ffff::1")).take(Kind::Room, &other).is_err());
        assert!(shares.of(ip("2001:db8:2::1")).take(Kind::Room, &other).is_ok_and(|hold| {
            drop(hold);
            true
        }));
        drop(held);
        assert_eq!(shares.networks(), 0);
        let zero = Shares::new(0, 0, None);
        assert!(zero.of(ip("10.0.0.1")).take(Kind::Claim, &name).is_err());
        assert_eq!(zero.networks(), 0, "a refusal leaves no empty entry behind");
        drop(Hold::none());
    }
}
