//! The Quiver server: one QUIC endpoint that serves, per client connection, a control stream, one reliable stream
//! per joined room and unreliable tick datagrams.
//!
//! - [`hub`]: rooms, tick channels, history, presence and each connection's protocol state, without IO: it returns
//!   what to send (a `Delivery` of room frames, a `Fanout` of a tick), behind the `RoomHub` / `TickHub` traits.
//! - [`session`]: the control stream's state machine (Hello, then requests), without sockets or clocks.
//! - [`admission`], [`throttle`], [`rate`]: which connections are taken and how fast each may go (sans-IO).
//! - [`net`]: the only part that touches quinn: endpoint, accept loop, one task per connection carrying out what
//!   the hub returns.
//! - [`web`]: the demo page and the browser client over HTTP.
//! - [`admin`], [`metrics`]: `/metrics`, `/healthz`, `/readyz`, and what they count.
//! - [`token`]: `quiver-server token`, minting access tokens that servers accept.
//! - [`config`]: what the server is started with: address, data directory, certificate, [`quiver_proto::Limits`].
//! - [`settings`]: the configuration file (`quiver.toml`), environment and flags, layered into a [`ServerConfig`].
//! - [`budget`]: the server-wide memory bounds (rooms, channels, retained history, frame timeout).
//! - [`cluster`]: many nodes on one Redis (`--broker`): rooms, presence and ticks shared.
//! - [`store`]: durable room state (epochs, seqs, history, dedupe) in the data directory, with group commit.
//!
//! ```no_run
//! # async fn run() -> Result<(), quiver_server::ServerError> {
//! let config = quiver_server::ServerConfig::dev("127.0.0.1:0".parse().unwrap(), ".quiver".into());
//! let server = quiver_server::Server::bind(config)?;
//! println!("listening on {}", server.local_addr());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server.run(shutdown).await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
pub mod admin;
pub mod admission;
pub mod awaiting;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod datadir;
pub mod forwarded;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod net;
#[cfg(unix)]
pub mod notify;
pub mod open_files;
pub mod post_copies;
pub mod rate;
pub mod session;
pub mod settings;
pub mod shares;
pub mod signals;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod token;
pub mod web;

pub use budget::Budget;
pub use config::{ServerConfig, TlsSource, WebConfig, WebSocketListen};
pub use net::{now_us, tick_clock_us, Reloader, Server, ServerError, Summary};

/// The version `--version` prints: the crate's, and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("QUIVER_COMMIT"), ")");
/// Access tokens (the `quiver-auth` crate).
pub use quiver_auth as auth;
