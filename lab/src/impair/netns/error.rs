//! Why the netns emulator could not be set up, entered or removed: one variant per step that can fail, so a
//! missing `sch_netem` or a missing `tc` reads differently from a failed `ip` command.

use std::io;

/// Why the netns emulator could not be set up, entered or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// Namespaces and TUN devices need root.
    #[error("the netns link emulator needs root (CAP_NET_ADMIN)")]
    NotRoot,
    /// The kernel offers no TUN devices here.
    #[error("/dev/net/tun is missing")]
    NoTun,
    /// `ip` cannot be run.
    #[error("`ip` (iproute2) is not installed")]
    IpMissing,
    /// Root, but no namespace can be made here (a container without CAP_SYS_ADMIN, say).
    #[error("no network namespace can be made here (`ip netns add` failed: {0})")]
    NoNamespaces(String),
    /// `tc` cannot be run (the netem backend needs it).
    #[error("the netem backend needs `tc` (iproute2)")]
    TcMissing,
    /// A link name that would not make valid namespace and device names.
    #[error("netns link name {0:?}: 1 to 8 of [a-z0-9]")]
    BadName(String),
    /// A program could not be started at all.
    #[error("{program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The impairment profile is not one the link can apply ([`crate::impair::ImpairmentProfile::check`]).
    #[error("impairment profile: {0}")]
    Profile(String),
    /// A command ran and failed.
    #[error("{command}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// A namespace of the link's name exists: another run's (two runs of one name would delete each other's), or
    /// one a killed run left behind.
    #[error(
        "network namespace {namespace} exists: another run is using it (wait for it), or a killed run left it (remove \
         it with `ip netns del {namespace}`)"
    )]
    InUse {
        /// The namespace.
        namespace: String,
    },
    /// `tc` does not know the netem qdisc: the kernel has no `sch_netem`.
    #[error("{command}: {stderr} (this kernel has no sch_netem: use the tun backend)")]
    NoNetem {
        /// The command line.
        command: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// A TUN device could not be created.
    #[error("TUN device {device}: {source}")]
    Tun {
        /// The device's name.
        device: String,
        /// Why.
        source: tun::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A thread could not move into a namespace (opening it or `setns`).
    #[error("cannot enter namespace {namespace}: {source}")]
    Setns {
        /// The namespace.
        namespace: String,
        /// Why.
        source: io::Error,
    },
    /// The tokio runtime inside a namespace could not be built.
    #[error("namespace runtime: {0}")]
    Runtime(io::Error),
    /// The namespace runtime's thread ended before saying whether its runtime started.
    #[error("namespace runtime thread died")]
    RuntimeThreadDied,
}
