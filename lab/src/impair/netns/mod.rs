//! The link emulator for any IP traffic (Linux, root): two network namespaces of our own, `<name>-srv` and
//! `<name>-cli`, so that every IP packet between them, UDP and TCP alike, crosses the impaired link.
//!
//! A [`NetnsLink`] owns the namespaces and removes everything it created on [`NetnsLink::stop`], on drop and on a
//! failed setup. What joins them is its [`Backend`]: two TUN devices this process holds, every packet passed
//! through the direction's [`Link`](super::Link) (no `sch_netem` needed), or a veth pair shaped by `tc netem`
//! where the kernel has it, so the two emulators can be cross-checked. Programs run inside with `ip netns exec`
//! ([`NetnsLink::command`]), as a thread of this process ([`NetnsLink::enter`]), or as tasks of a
//! [`NamespaceRuntime`].

mod error;
mod link;
mod netem;
mod runtime;
mod tun;

use std::{io, net::Ipv4Addr, process::Command, thread::JoinHandle};

pub use super::Backend;
pub use error::NetnsError;
pub use link::{NetnsLink, NetnsStats};
pub use netem::{netem_args, NETEM_LIMIT};
pub use runtime::NamespaceRuntime;

/// The server side's address (in `<name>-srv`).
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The client side's address (in `<name>-cli`).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the server runs (`SERVER_ADDR`).
    Server,
    /// Where the clients run (`CLIENT_ADDR`).
    Client,
}

/// Ok when this process may create namespaces and TUN devices (effective uid 0, and a probe namespace made and
/// removed) and `ip` is installed; otherwise [`NetnsError::NotRoot`], [`NetnsError::NoTun`],
/// [`NetnsError::IpMissing`] or [`NetnsError::NoNamespaces`] (root in a container without the capability: the tests
/// failed there instead of skipping).
pub fn available() -> Result<(), NetnsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NetnsError::NotRoot);
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(NetnsError::NoTun);
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err(NetnsError::IpMissing),
    }
    // (Not named quiver-…: the tests look for those to be gone.)
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("qprobe-{}-{n}", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|err| NetnsError::NoNamespaces(err.to_string()))?;
    // (Best effort: one left behind harms nothing, and .ci/run removes them.)
    if let Err(err) = ip(&["netns", "del", &probe]) {
        tracing::warn!(%err, namespace = %probe, "cannot remove the probe namespace");
    }
    Ok(())
}

/// Runs `ip` with `args`; its stderr is the error when it fails.
fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip").args(args).output().map_err(|source| NetnsError::Spawn { program: "ip", source })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NetnsError::Failed { command: format!("ip {}", args.join(" ")), stderr })
    }
}

/// Moves the calling thread into `namespace`.
fn setns(namespace: &str) -> Result<(), NetnsError> {
    std::fs::File::open(format!("/var/run/netns/{namespace}"))
        .and_then(|file| nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from))
        .map_err(|source| NetnsError::Setns { namespace: namespace.to_string(), source })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, NetnsError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| NetnsError::Thread { name: name.to_string(), source })
}
