//! The Quiver client library: connect to a Quiver server over QUIC, open the session, and make requests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quiver_client::{Client, TrustOptions};
//!
//! // A server on this machine: trust the dev certificate it keeps in ./.quiver.
//! let client = Client::connect("127.0.0.1:4433", TrustOptions::default()).await?;
//! println!("session {:016x}, rtt {:?}", client.welcome().session_id, client.ping().await?.rtt);
//! let mut lobby = client.join("lobby").await?;
//! let seq = lobby.post("hello").await?;
//! while let Some(event) = lobby.next().await {
//!     println!("{event:?}");
//! }
//! # let _ = seq;
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: the session; reconnects on its own, rejoining rooms and re-sending unacknowledged posts.
//! - [`Room`]: a joined room's events in order (messages, presence, `Resumed`), posting, members.
//! - [`TickSubscription`] / [`TickPublisher`]: ticks over datagrams, latest wins, with loss/staleness/latency stats.
//! - [`TrustOptions`]: which server certificate to accept.
//! - [`latency`]: the latency summary shape every report uses.

mod client;
mod error;
pub mod latency;
mod requests;
pub mod room;
mod session;
pub mod ticks;
pub mod trust;

pub use client::{Client, ConnectOptions, Pong, TokenProvider};
pub use error::{ConnectError, RequestError};
pub use room::{Message, Room, RoomEvent};
pub use ticks::{Tick, TickError, TickPublisher, TickStats, TickSubscription};
pub use trust::{quinn_client_config, TrustError, TrustOptions};

pub(crate) use quiver_transport::close::close;
