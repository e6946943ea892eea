//! Quiver's latency lab: what measures Quiver, kept out of the client library and the server.
//!
//! - [`impair`]: the link emulator: an [`impair::ImpairmentProfile`] (loss, burst loss, delay, jitter, reordering,
//!   duplication, rate) applied per direction by a sans-IO [`impair::Link`] model, carried out by a UDP
//!   [`impair::Relay`] (no root) or, on Linux as root, between two network namespaces ([`impair::netns`]).
//! - [`bench`](mod@bench): `quiver bench rtt` and `quiver bench fanout`: Quiver's paths beside baselines measured in the same
//!   run (raw UDP, bare quinn, WebSocket over TCP), percentiles from HdrHistogram, JSON and plots.
//! - [`pace`]: sending on a fixed schedule to within a few µs.
//! - [`churn`]: a load of ever-new rooms, channels and connections, for the soak test (`scripts/soak.sh`).
//!
//! ```
//! use quiver_lab::impair::ImpairmentProfile;
//!
//! let lossy = ImpairmentProfile::preset("lossy-5").unwrap();
//! assert!(!lossy.is_clean());
//! ```

#![warn(missing_docs)]
pub mod bench;
pub mod churn;
pub mod impair;
pub mod pace;
mod sync;
