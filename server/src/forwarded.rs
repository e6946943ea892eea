//! The client behind a reverse proxy the operator trusts: `web.trusted_proxies` names the proxies (addresses or
//! CIDR blocks), and a WebSocket upgrade that comes from one is admitted as the address its `X-Forwarded-For`
//! names (the per-address limits apply to it), not as the proxy's: every client behind a local nginx otherwise
//! shared 127.0.0.1's budget, so one of them could use it all up for everyone. Sans IO.
//!
//! The header is read from the right, as the proxies appended to it: the first address that is not a trusted proxy
//! is the client (the ones further left were written by whoever sent the request, and may be forged). A request
//! from a trusted proxy without the header is the proxy's own. A request from any other address is taken as its
//! TCP peer, whatever it says.

use std::{fmt, net::IpAddr, str::FromStr};

/// An address block: an address and how many of its leading bits are the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4 address in its IPv6-mapped form too).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }

    /// Wider than one site's network (IPv4 shorter than /24, IPv6 than /64): every host in it is believed about the
    /// client it forwards for, so a pod or a VM inside it that reaches the listener directly can name any address
    /// with every connection and pass each per-address bound.
    pub fn is_wide(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.prefix < 24,
            IpAddr::V6(_) => self.prefix < 64,
        }
    }
}

/// Whether `a` and `b`, numbers of `bits` bits, agree in their `prefix` leading bits.
fn masked(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix.min(bits));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// Why a text is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address, with or without a prefix length.
    #[error("{0:?} is not an address or a CIDR block")]
    NotAnAddress(String),
    /// A prefix length beyond the family's bits.
    #[error("{text:?}: the prefix length must be 0 to {bits}")]
    Prefix {
        /// The text.
        text: String,
        /// The family's bits (32 or 128).
        bits: u8,
    },
    /// An IPv4-mapped IPv6 block whose prefix reaches into the mapping's first 96 bits.
    #[error("{0:?}: an IPv4-mapped block needs a prefix length of 96 to 128")]
    MappedPrefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `203.0.113.7`, `10.0.0.0/8`, `::1`, `fd00::/8` (an address alone is a block of one).
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let addr: IpAddr = addr.trim().parse().map_err(|_| CidrError::NotAnAddress(text.to_string()))?;
        // The prefix in the family as written (`::ffff:10.0.0.0/104` is IPv6's), then held as IPv4's for an
        // IPv4-mapped block (its last 32 bits).
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.trim() {
            "" => bits,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| CidrError::Prefix { text: text.to_string(), bits })?,
        };
        match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() => match prefix.checked_sub(96) {
                Some(prefix) => Ok(Cidr { addr: IpAddr::V4(v4), prefix }),
                None => Err(CidrError::MappedPrefix(text.to_string())),
            },
            addr => Ok(Cidr { addr, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|block| block.contains(ip))
}

/// The address to admit a request from `peer` as: `peer` itself unless it is a trusted proxy; else the rightmost
/// address of `forwarded_for` (every `X-Forwarded-For` value of the request, in order) that is not a trusted
/// proxy, or, when each one is, the leftmost. An entry that is not an address (`unknown`, which some proxies
/// write) ends the walk there: the address is the trusted proxy's that wrote it (the last one read; `peer` when the
/// header is missing or its rightmost entry is unreadable), whose own budget then holds the clients it cannot name.
pub fn client_address<'a>(
    trusted_proxies: &[Cidr],
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
) -> IpAddr {
    if !trusted(trusted_proxies, peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|value| value.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = hop_address(hop) else { return client };
        client = ip;
        if !trusted(trusted_proxies, ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry's address: `203.0.113.7`, `2001:db8::1`, and the forms with a port some proxies
/// write (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(bracketed) = hop.strip_prefix('[') {
        return bracketed.split_once(']').and_then(|(ip, _)| ip.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn blocks(texts: &[&str]) -> Vec<Cidr> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_hold_their_addresses_in_both_families() {
        let [lo, ten, v6, one, all] =
            ["127.0.0.1", "10.0.0.0/8", "fd00::/8", "::1", "0.0.0.0/0"].map(|t| t.parse::<Cidr>().unwrap());
        assert!(lo.contains(ip("127.0.0.1")) && !lo.contains(ip("127.0.0.2")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")), "the IPv6-mapped form of a dual-stack socket");
        assert!(ten.contains(ip("10.255.1.2")) && !ten.contains(ip("11.0.0.1")));
        assert!(v6.contains(ip("fd12::5")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(one.contains(ip("::1")) && !one.contains(ip("127.0.0.1")));
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        assert_eq!(ten.to_string(), "10.0.0.0/8");
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")) && !mapped.contains(ip("11.0.0.1")), "an IPv4-mapped block");
        for bad in ["10.0.0.0/33", "::/129", "ten", "10.0.0.0/x", "", "::ffff:10.0.0.0/64"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// Blocks wider than one site's network are warned of at start (every host in them is believed).
    #[test]
    fn wide_blocks_are_told_apart() {
        for wide in ["10.0.0.0/8", "0.0.0.0/0", "172.16.0.0/12", "fd00::/8", "2001:db8::/48"] {
            assert!(wide.parse::<Cidr>().unwrap().is_wide(), "{wide}");
        }
        for narrow in ["10.1.2.0/24", "10.1.2.3", "127.0.0.1", "::1", "2001:db8::/64", "::ffff:10.1.2.0/120"] {
            assert!(!narrow.parse::<Cidr>().unwrap().is_wide(), "{narrow}");
        }
    }

    /// The rightmost untrusted hop is the client: what the client wrote itself, left of it, is not believed.
    #[test]
    fn the_client_is_the_rightmost_hop_no_trusted_proxy_wrote() {
        let proxies = blocks(&["127.0.0.1", "10.0.0.0/8"]);
        let from = |peer: &str, xff: &[&str]| client_address(&proxies, ip(peer), xff.iter().copied());
        assert_eq!(from("127.0.0.1", &["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(from("127.0.0.1", &["198.51.100.1, 203.0.113.7"]), ip("203.0.113.7"), "a forged hop on the left");
        assert_eq!(from("127.0.0.1", &["198.51.100.1", "203.0.113.7, 10.1.2.3"]), ip("203.0.113.7"), "two proxies");
        assert_eq!(from("127.0.0.1", &["10.0.0.5, 10.1.2.3"]), ip("10.0.0.5"), "all trusted: the leftmost");
        assert_eq!(from("127.0.0.1", &[]), ip("127.0.0.1"), "the proxy's own request");
        assert_eq!(from("127.0.0.1", &["203.0.113.7, nonsense"]), ip("127.0.0.1"), "an unreadable last hop");
        let unnamed = from("127.0.0.1", &["unknown, 10.1.2.3"]);
        assert_eq!(unnamed, ip("10.1.2.3"), "an unreadable hop: the trusted proxy that wrote it");
        assert_eq!(from("127.0.0.1", &["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(from("127.0.0.1", &["203.0.113.7:4711"]), ip("203.0.113.7"));
        assert_eq!(from("::ffff:127.0.0.1", &["203.0.113.7"]), ip("203.0.113.7"), "a dual-stack listener's peer");
        assert_eq!(from("192.0.2.1", &["203.0.113.7"]), ip("192.0.2.1"), "not a trusted proxy: the header is not read");
        assert_eq!(client_address(&[], ip("127.0.0.1"), ["203.0.113.7"]), ip("127.0.0.1"), "none trusted");
    }
}
