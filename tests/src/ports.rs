//! Ports for servers a test restarts on the same address.
//!
//! A port the kernel handed out for `127.0.0.1:0` lies in its ephemeral range: once the first server lets it go,
//! any outgoing connection or client socket of any process on the machine (another test's Redis client, a QUIC
//! client endpoint) may be given it before the restarted server binds it again, and then holds it for as long as
//! it lives. CI saw exactly that ("still in use 5 s after the server stopped"). A port below the ephemeral range is
//! only ever taken by a bind that names it, so a port picked here stays free across a restart.
//!
//! Shared by the end-to-end harness and the server crate's process tests (through `#[path]`): no dependencies.

use std::{
    hash::{BuildHasher, Hasher},
    net::{TcpListener, UdpSocket},
};

/// The lowest port picked: below it are well-known services' registered ports.
const LOWEST: u16 = 10_000;
/// Where Linux's default ephemeral range starts, for machines that do not say.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// A port on 127.0.0.1 outside the kernel's ephemeral range on which UDP and TCP are both free right now (so a QUIC
/// server and its WebSocket listener can bind it).
#[allow(unreachable_pub, reason = "public in the harness, private where a test includes it by path")]
pub fn restartable_port() -> u16 {
    let (low, end) = below_ephemeral();
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..1_000 {
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        hasher.write_u32(std::process::id());
        let port = low + (hasher.finish() % u64::from(end - low)) as u16;
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {end} after 1,000 tries");
}

/// The ports picked from: [`LOWEST`] up to the ephemeral range, or the thousand below it where it starts lower
/// (until 2026-12-08 the thousand above `LOWEST`, inside such a range: the race this module is for).
fn below_ephemeral() -> (u16, u16) {
    let end = ephemeral_start();
    let low = LOWEST.min(end.saturating_sub(1_000)).max(1_024);
    assert!(low < end, "the kernel's ephemeral ports start at {end}: no port below them (and above 1024) to pick");
    (low, end)
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_picked_port_is_below_the_ephemeral_range() {
        // (Bindable when picked; binding it again here would race with other tests picking ports meanwhile.)
        let port = super::restartable_port();
        assert!((1_024..super::ephemeral_start()).contains(&port), "{port}");
    }
}
