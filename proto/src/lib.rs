//! Quiver's wire format, shared by server and clients. Sans-IO: no runtime, no sockets, no clock reads.
//!
//! - [`control`]: the control stream (client requests, server replies and pushes).
//! - [`room`]: room streams (one server-opened unidirectional stream per joined room).
//! - [`tick`]: the tick datagram header.
//! - [`copies`]: datagram copies of room frames and posts (redundant delivery).
//! - [`frame`]: `varint length || postcard(message)` stream framing with a size limit.
//! - [`ErrorCode`]: the one list of reasons, used in replies, stream resets and connection closes.
//! - [`Limits`]: every bound the server enforces, reported to the client in `Welcome`.
//!
//! ```
//! use bytes::BytesMut;
//! use quiver_proto::{FrameCodec, Request, RequestBody};
//!
//! let codec = FrameCodec::new(quiver_proto::Limits::default().max_frame as usize);
//! let ping = Request { req_id: 7, body: RequestBody::Ping { client_time_us: 42 } };
//! let mut wire = codec.encode_to_vec(&ping).unwrap();
//! let mut partial = wire.split_to(2);
//! assert_eq!(codec.decode::<Request>(&mut partial).unwrap(), None); // not all there yet
//! partial.unsplit(wire);
//! assert_eq!(codec.decode::<Request>(&mut partial).unwrap(), Some(ping));
//! ```

#![warn(missing_docs)]
pub mod control;
pub mod copies;
mod error_code;
pub mod frame;
mod limits;
pub mod room;
pub mod tick;
pub mod varint;
pub mod ws;

pub use control::{
    Failure, Hello, HistoryPage, Join, Joined, Position, Post, Reply, Request, RequestBody, ServerMsg, Welcome,
};
pub use error_code::ErrorCode;
pub use frame::{DecodeError, EncodeError, FrameCodec};
pub use limits::{Limits, LimitsError, MAX_CLOSE_REASON};
pub use room::{EventKind, RoomEvent, RoomFrame};
pub use tick::{is_probe, DatagramError, TickHeader, MAX_PORTABLE_DATAGRAM, PROBE};

/// `s` cut to at most `max` bytes at a character boundary (a close reason must fit one packet).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The protocol version this build speaks. Version 5 added `Unpublish` (request and reply 9) and gives a
/// subscription and a claim of one channel ids of their own.
pub const PROTOCOL_VERSION: u32 = 5;

/// The oldest protocol version a server of this build still admits: a version-4 client never sends what version 5
/// added, and takes the ids it is given as they come.
pub const OLDEST_PROTOCOL_VERSION: u32 = 4;

/// True for the protocol versions a server of this build admits.
pub fn admits_version(version: u32) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// ALPN of native Quiver clients.
pub const ALPN_QUIVER: &[u8] = b"quiver/1";

/// ALPN of browsers (WebTransport over HTTP/3), served on the same endpoint.
pub const ALPN_H3: &[u8] = b"h3";

#[cfg(test)]
mod tests;
