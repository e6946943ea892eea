//! The link emulator: an [`ImpairmentProfile`] (loss, burst loss, delay, jitter, reordering, duplication, rate),
//! the per-direction [`Link`] model that applies it without IO, the UDP [`Relay`] behind `quiver impair`, and (Linux,
//! root) the [`netns`] emulator for any IP traffic between two network namespaces.

mod link;
#[cfg(target_os = "linux")]
pub mod netns;
mod profile;
mod relay;
mod schedule;

pub use link::{DropReason, Fate, Link, LinkStats};
pub use profile::{DirectionProfile, FieldError, ImpairmentProfile, ProfileError, PRESETS};
pub use relay::{Relay, RelayConfig, RelayStats, CLIENT_IDLE};

/// What carries packets between the two network namespaces of the [`netns`] emulator (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Two TUN devices and this process's [`Link`] model (no kernel support beyond TUN needed).
    #[default]
    Tun,
    /// A veth pair with the kernel's `tc netem` on each end (needs `sch_netem` and `tc`).
    Netem,
}

impl Backend {
    /// `tun` or `netem`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tun => "tun",
            Backend::Netem => "netem",
        }
    }

    /// Parses `tun` or `netem`.
    pub fn parse(name: &str) -> Result<Backend, UnknownBackend> {
        match name {
            "tun" => Ok(Backend::Tun),
            "netem" => Ok(Backend::Netem),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// A name [`Backend::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown emulator backend {0:?}: tun or netem")]
pub struct UnknownBackend(pub String);
