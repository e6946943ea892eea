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
pub use profile::{DirectionProfile, ImpairmentProfile, PRESETS};
pub use relay::{Relay, RelayConfig, RelayStats};
