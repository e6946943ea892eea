//! The link emulator: an [`ImpairmentProfile`] (loss, burst loss, delay, jitter, reordering, duplication, rate),
//! the per-direction [`Link`] model that applies it without IO, and the UDP [`Relay`] behind `quiver impair`.

mod link;
mod profile;
mod relay;

pub use link::{DropReason, Fate, Link, LinkStats};
pub use profile::{DirectionProfile, ImpairmentProfile, PRESETS};
pub use relay::{Relay, RelayConfig, RelayStats};
