//! The Quiver client library: connect to a Quiver server over QUIC, open the session, join rooms (reliable,
//! ordered, resumed without gap or duplicate after a reconnect) and subscribe to or publish ticks (unreliable,
//! latest wins).
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
//! The public handles: [`Client`] (the session), [`Room`] (a room's events in order, posting, members),
//! [`TickSubscription`] / [`TickPublisher`] (ticks over datagrams, with loss, staleness and latency statistics),
//! [`TrustOptions`] (which certificate to accept), [`ConnectOptions`] and [`TokenProvider`].
//!
//! Every future may be dropped at any point (a timeout around it, a `select!`): what it started still finishes on
//! the client's own tasks, so the control stream never gets half a frame and the server's state never disagrees
//! with the client's (for what goes through the typed methods: [`Client::request`] is raw). A join given up before it returns leaves the room once the server answers, and dropping a
//! [`Room`] leaves it (in the background); a later join of the same name waits for that Leave to be written.
//! So the library puts no deadline on a reply of its own (a server whose QUIC stack answers while its application
//! hangs keeps a request waiting): put the timeout your application needs around the call. A post given up so may
//! still be stored: it is queued when called and sent (again after a reconnect, with the same `client_msg_id`)
//! whether or not its future is awaited.
//!
//! Inside, the layers mirror the browser client's: [`state`] holds the protocol state without IO (requests in
//! flight, room positions, the post queue, backoff, tick bookkeeping); `connection` is one QUIC connection; the
//! `driver` owns every task (one tracker, one cancellation token) and carries out what the state decides.

#![warn(missing_docs)]
mod client;
mod clock;
mod connection;
mod copies;
mod driver;
mod error;
pub mod latency;
mod link;
mod options;
pub mod room;
mod sessions;
pub mod state;
mod sync;
mod target;
pub mod ticks;
pub mod trust;
mod unrouted;
#[cfg(feature = "websocket")]
mod websocket;
mod wire;

pub use client::{Client, Pong};
pub use connection::CONTROL_GONE_GRACE;
pub use driver::STABLE_CONNECTION;
pub use driver::{EVENT_BUFFER, EVENT_BUFFER_BYTES};
pub use error::{ConnectError, ProtocolError, RequestError, TickError, TokenError};
pub use link::ConnectionState;
pub use options::{ConnectOptions, JoinOptions, TokenFuture, TokenProvider, Transport, UnknownTransport};
/// quinn, at the version [`Client::connection`] hands out a connection of.
pub use quinn;
/// The wire format's crate and the types this API takes and returns, at the very version this library speaks (an
/// application need not depend on `quiver-proto` itself, nor keep its version in step).
pub use quiver_proto::{self, ErrorCode, Failure, HistoryPage, Limits, Position, Welcome};
pub use quiver_transport::TransportTuning;
pub use room::{Message, Room, RoomEvent};
pub use target::DEFAULT_PORT;
pub use ticks::{Tick, TickPublisher, TickStats, TickSubscription};
pub use trust::{quinn_client_config, TrustError, TrustOptions};
pub use wire::TransportKind;
