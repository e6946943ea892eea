//! What both ends of a Quiver connection must agree on, in one crate that the server, the client library and the
//! latency lab share (and that depends on neither):
//!
//! - [`tuning`]: every latency-relevant QUIC setting ([`TransportTuning`]) and the transport configurations of
//!   each end built from it.
//! - [`tls`]: TLS 1.3 only, one pinned crypto provider (ring), the ALPNs, 0-RTT off: the QUIC configurations both
//!   ends start from.
//! - [`congestion`]: Cubic with a floor under its window, for small frequent real-time packets.
//! - [`probe`]: the on-demand tail-loss probe, sent by both ends after reliable writes.
//! - [`ws`]: a Quiver connection over one WebSocket (the fallback), shaped like a QUIC connection.
//! - [`close`]: the one mapping between [`quiver_proto::ErrorCode`] and QUIC close / reset codes.
//!
//! ```
//! use quiver_transport::{close, TransportTuning};
//!
//! let tuning = TransportTuning::named("quiver").unwrap();
//! assert_eq!(tuning, TransportTuning::default());
//! let code = close::quic_code(quiver_proto::ErrorCode::SlowConsumer);
//! assert_eq!(close::from_quic_code(code), quiver_proto::ErrorCode::SlowConsumer);
//! ```

#![warn(missing_docs)]
pub mod close;
pub mod congestion;
pub mod probe;
pub mod qlog;
pub mod tls;
pub mod tuning;
#[cfg(feature = "websocket")]
pub mod ws;

pub use probe::{
    copy_round, if_ready, path_loss, path_sample, probe_helps, PathSample, ProbeTiming, Probed, Sent, TailProbe,
};
pub use tuning::{client_transport, server_transport, TransportTuning, UnknownTuning};
