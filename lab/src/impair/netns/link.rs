//! The two namespaces as one owned thing: named after the link, created by its backend, entered by threads and
//! commands, and removed (devices, namespaces, forwarding threads) whatever way it ends.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use super::{ip, setns, Backend, NetnsError, Side, CLIENT_ADDR, SERVER_ADDR};
use crate::impair::{ImpairmentProfile, LinkStats};
use crate::sync::lock;

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsStats {
    /// Client → server.
    pub up: LinkStats,
    /// Server → client.
    pub down: LinkStats,
}

/// A running emulated link between two namespaces.
#[derive(Debug)]
pub struct NetnsLink {
    name: String,
    backend: Backend,
    /// Set on removal; the forwarding threads watch it.
    pub(super) stop: Arc<AtomicBool>,
    /// The backend's forwarding threads, joined on removal.
    pub(super) threads: Vec<JoinHandle<()>>,
    /// Both directions' counters, kept by the TUN backend's readers.
    pub(super) stats: Arc<Mutex<NetnsStats>>,
    /// The namespaces this link added (server, client): only these are removed, never another run's of the same
    /// name.
    created: [bool; 2],
    removed: bool,
}

impl NetnsLink {
    /// Creates the namespaces `<name>-srv` and `<name>-cli` (name: at most 8 of `[a-z0-9]`) and starts forwarding
    /// through `profile`. Needs root (CAP_NET_ADMIN) and `ip` (iproute2).
    pub fn start(name: &str, profile: &ImpairmentProfile) -> Result<NetnsLink, NetnsError> {
        Self::start_with(name, profile, Backend::Tun)
    }

    /// [`NetnsLink::start`] with a choice of backend. [`Backend::Netem`] fails with [`NetnsError::NoNetem`] where
    /// the kernel lacks `sch_netem` (having removed what it created).
    pub fn start_with(name: &str, profile: &ImpairmentProfile, backend: Backend) -> Result<NetnsLink, NetnsError> {
        if name.is_empty() || name.len() > 8 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(NetnsError::BadName(name.to_string()));
        }
        // As the relay checks its profile: one the link would apply otherwise than it says (a burst length under 1
        // at a high loss, clamped) is refused, not run under a report that names it.
        profile.check().map_err(|err| NetnsError::Profile(err.to_string()))?;
        let mut link = NetnsLink {
            name: name.to_string(),
            backend,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Arc::default(),
            created: [false; 2],
            removed: false,
        };
        // On an error, dropping `link` removes what was created.
        match backend {
            Backend::Tun => link.join_with_tun(profile)?,
            Backend::Netem => link.join_with_netem(profile)?,
        }
        Ok(link)
    }

    /// The backend carrying packets.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The namespace of `side`.
    pub fn namespace(&self, side: Side) -> String {
        match side {
            Side::Server => format!("{}-srv", self.name),
            Side::Client => format!("{}-cli", self.name),
        }
    }

    /// Adds `side`'s namespace, refused when one of its name exists (another run's, or one a killed run left).
    pub(super) fn add_namespace(&mut self, side: Side) -> Result<(), NetnsError> {
        let ns = self.namespace(side);
        if std::path::Path::new("/var/run/netns").join(&ns).exists() {
            return Err(NetnsError::InUse { namespace: ns });
        }
        ip(&["netns", "add", &ns]).map_err(|err| match err {
            NetnsError::Failed { stderr, .. } if stderr.contains("File exists") => NetnsError::InUse { namespace: ns },
            other => other,
        })?;
        self.created[side as usize] = true;
        Ok(())
    }

    /// The network device of `side`.
    pub(super) fn device(&self, side: Side) -> String {
        match side {
            Side::Server => format!("{}s", self.name),
            Side::Client => format!("{}c", self.name),
        }
    }

    /// The address of `side`.
    pub fn addr(side: Side) -> Ipv4Addr {
        match side {
            Side::Server => SERVER_ADDR,
            Side::Client => CLIENT_ADDR,
        }
    }

    /// `program` to be run inside `side`'s namespace (`ip netns exec`).
    pub fn command(&self, side: Side, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(side), program]);
        command
    }

    /// Moves the calling thread into `side`'s namespace: sockets it creates from now on live there. Use a thread
    /// of its own; it cannot come back.
    pub fn enter(&self, side: Side) -> Result<(), NetnsError> {
        setns(&self.namespace(side))
    }

    /// Counters so far (all zero with [`Backend::Netem`], whose counters stay in the kernel).
    pub fn stats(&self) -> NetnsStats {
        *lock(&self.stats)
    }

    /// Stops forwarding, removes the devices and namespaces, and returns the counters.
    pub fn stop(mut self) -> Result<NetnsStats, NetnsError> {
        self.remove()?;
        Ok(self.stats())
    }

    fn remove(&mut self) -> Result<(), NetnsError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        self.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for side in [Side::Server, Side::Client].into_iter().filter(|side| self.created[*side as usize]) {
            let (ns, dev) = (self.namespace(side), self.device(side));
            // Deleting the interface wakes our blocked reader with an error; then the namespace goes.
            let _ = ip(&["netns", "exec", &ns, "ip", "link", "del", &dev]);
            if std::path::Path::new("/var/run/netns").join(&ns).exists() {
                if let Err(err) = ip(&["netns", "del", &ns]) {
                    first_error.get_or_insert(err);
                }
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!(%err, name = %self.name, "netns link: cleanup failed");
        }
    }
}
