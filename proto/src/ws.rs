//! The WebSocket mapping: the same protocol where QUIC cannot go (UDP blocked, no WebTransport). One WebSocket
//! connection carries what a QUIC connection carries on its streams and datagrams, each binary message one
//! [`WsMessage`]: a kind byte, then the kind's fields. The control stream's bytes, each room stream's bytes (tagged
//! with the stream's id; the stream's first frame, `Open`, names its room), stream ends, datagrams (ticks) and the
//! close (code and reason) map one to one, so everything above this layer is shared with QUIC.
//!
//! ```
//! use bytes::Bytes;
//! use quiver_proto::ws::WsMessage;
//!
//! let msg = WsMessage::Stream { id: 1, bytes: Bytes::from_static(b"\x02\x00\x00") };
//! let wire = msg.encode();
//! assert_eq!(&wire[..], b"\x01\x01\x02\x00\x00");
//! assert_eq!(WsMessage::decode(wire).unwrap(), msg);
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::{varint, ErrorCode};

/// The WebSocket subprotocol (`Sec-WebSocket-Protocol`) both ends name; the protocol version is Hello's, as on QUIC.
pub const SUBPROTOCOL: &str = "quiver";

/// Largest chunk of one stream in one message: a long write is cut into chunks this size, so that streams and
/// datagrams interleave and a peer can bound what it accepts per message.
pub const MAX_CHUNK: usize = 16 * 1024;

/// Largest datagram (tick) over a WebSocket: QUIC's guaranteed UDP payload, more than any QUIC path carries in a
/// DATAGRAM frame, so that whatever a QUIC peer sends fits. Clients publish no more than
/// [`crate::MAX_PORTABLE_DATAGRAM`] (1,148 B) on any path: what every subscriber's path carries.
pub const MAX_DATAGRAM: usize = 1200;

/// Longest close reason, in bytes (as on QUIC: [`crate::MAX_CLOSE_REASON`]).
pub const MAX_REASON: usize = crate::MAX_CLOSE_REASON;

/// One WebSocket binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// Kind 0: bytes of the control stream (either direction), frames as on QUIC. A message may hold several frames
    /// or part of one; senders write whole frames.
    Control(Bytes),
    /// Kind 1 (server → client): bytes of room stream `id`. A new id opens the stream; ids are the server's, from 1,
    /// never reused on the connection.
    Stream {
        /// The stream's id (a QUIC varint on the wire).
        id: u64,
        /// The stream's next bytes (`RoomFrame` frames).
        bytes: Bytes,
    },
    /// Kind 2 (server → client): stream `id` ended after its last bytes (QUIC: FIN; the room was left).
    Finish {
        /// The stream's id.
        id: u64,
    },
    /// Kind 3 (server → client): stream `id` was cut off with `code` (QUIC: RESET_STREAM, e.g. `SlowConsumer`).
    Reset {
        /// The stream's id.
        id: u64,
        /// Why (a QUIC varint on the wire).
        code: ErrorCode,
    },
    /// Kind 4: a datagram (a tick), exactly the bytes of a QUIC datagram.
    Datagram(Bytes),
    /// Kind 6 (client → server): stop sending on stream `id`, with `code` (QUIC: STOP_SENDING). A client sends it
    /// with `SlowConsumer` when it cannot take more of the stream; the server then handles the room as a slow
    /// consumer (the stream ends, `Kicked` follows), as when its own queue for the room overflows.
    Stop {
        /// The stream's id.
        id: u64,
        /// Why (a QUIC varint on the wire).
        code: ErrorCode,
    },
    /// Kind 5: the sender closes the connection with `code` and `reason` (QUIC: CONNECTION_CLOSE); a WebSocket
    /// close frame follows.
    Close {
        /// Why (a QUIC varint on the wire).
        code: ErrorCode,
        /// UTF-8, at most [`MAX_REASON`] bytes.
        reason: String,
    },
}

/// A WebSocket message that is not a [`WsMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsDecodeError {
    /// The message is empty.
    #[error("empty WebSocket message")]
    Empty,
    /// The kind byte is none of 0..=6.
    #[error("unknown WebSocket message kind {0}")]
    UnknownKind(u8),
    /// A field is cut short.
    #[error("truncated WebSocket message of kind {0}")]
    Truncated(u8),
    /// Bytes after the last field of a fixed-size kind.
    #[error("{0} bytes left over after a WebSocket message of kind {1}")]
    TrailingBytes(usize, u8),
    /// A code above 2^32-1.
    #[error("error code {0} out of range")]
    CodeOutOfRange(u64),
    /// A close reason that is not UTF-8 or longer than [`MAX_REASON`].
    #[error("close reason: {0}")]
    BadReason(&'static str),
}

impl WsDecodeError {
    /// The code a connection is closed with for this error.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::ProtocolViolation
    }
}

const CONTROL: u8 = 0;
const STREAM: u8 = 1;
const FINISH: u8 = 2;
const RESET: u8 = 3;
const DATAGRAM: u8 = 4;
const CLOSE: u8 = 5;
const STOP: u8 = 6;

fn put_varint(buf: &mut BytesMut, value: u64) {
    // Ids and codes here are below 2^62 (codes are u32; ids count streams).
    let _ = varint::encode(value.min(varint::MAX), buf);
}

impl WsMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        match self {
            WsMessage::Control(bytes) => {
                buf.put_u8(CONTROL);
                buf.put_slice(bytes);
            }
            WsMessage::Stream { id, bytes } => {
                buf.put_u8(STREAM);
                put_varint(&mut buf, *id);
                buf.put_slice(bytes);
            }
            WsMessage::Finish { id } => {
                buf.put_u8(FINISH);
                put_varint(&mut buf, *id);
            }
            WsMessage::Reset { id, code } => {
                buf.put_u8(RESET);
                put_varint(&mut buf, *id);
                put_varint(&mut buf, u64::from(code.to_u32()));
            }
            WsMessage::Stop { id, code } => {
                buf.put_u8(STOP);
                put_varint(&mut buf, *id);
                put_varint(&mut buf, u64::from(code.to_u32()));
            }
            WsMessage::Datagram(bytes) => {
                buf.put_u8(DATAGRAM);
                buf.put_slice(bytes);
            }
            WsMessage::Close { code, reason } => {
                buf.put_u8(CLOSE);
                put_varint(&mut buf, u64::from(code.to_u32()));
                buf.put_slice(crate::truncate_utf8(reason, MAX_REASON).as_bytes());
            }
        }
        buf.freeze()
    }

    /// Bytes [`encode`](WsMessage::encode) returns.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            WsMessage::Control(bytes) | WsMessage::Datagram(bytes) => bytes.len(),
            WsMessage::Stream { id, bytes } => varint::encoded_len(*id) + bytes.len(),
            WsMessage::Finish { id } => varint::encoded_len(*id),
            WsMessage::Reset { id, code } | WsMessage::Stop { id, code } => {
                varint::encoded_len(*id) + varint::encoded_len(u64::from(code.to_u32()))
            }
            WsMessage::Close { code, reason } => {
                varint::encoded_len(u64::from(code.to_u32())) + crate::truncate_utf8(reason, MAX_REASON).len()
            }
        }
    }

    /// Reads one message (the payload slices share `message`'s buffer).
    pub fn decode(message: Bytes) -> Result<WsMessage, WsDecodeError> {
        let kind = *message.first().ok_or(WsDecodeError::Empty)?;
        let mut at = 1;
        let mut next_varint = |message: &Bytes| -> Result<u64, WsDecodeError> {
            let (value, len) = varint::decode(&message[at..]).ok_or(WsDecodeError::Truncated(kind))?;
            at += len;
            Ok(value)
        };
        let code = |value: u64| {
            u32::try_from(value).map(ErrorCode::from_u32).map_err(|_| WsDecodeError::CodeOutOfRange(value))
        };
        let msg = match kind {
            CONTROL => return Ok(WsMessage::Control(message.slice(1..))),
            DATAGRAM => return Ok(WsMessage::Datagram(message.slice(1..))),
            STREAM => {
                let id = next_varint(&message)?;
                return Ok(WsMessage::Stream { id, bytes: message.slice(at..) });
            }
            FINISH => WsMessage::Finish { id: next_varint(&message)? },
            RESET => {
                let id = next_varint(&message)?;
                WsMessage::Reset { id, code: code(next_varint(&message)?)? }
            }
            STOP => {
                let id = next_varint(&message)?;
                WsMessage::Stop { id, code: code(next_varint(&message)?)? }
            }
            CLOSE => {
                let code = code(next_varint(&message)?)?;
                let reason = &message[at..];
                if reason.len() > MAX_REASON {
                    return Err(WsDecodeError::BadReason("longer than 512 bytes"));
                }
                let reason = std::str::from_utf8(reason).map_err(|_| WsDecodeError::BadReason("not UTF-8"))?;
                return Ok(WsMessage::Close { code, reason: reason.to_string() });
            }
            other => return Err(WsDecodeError::UnknownKind(other)),
        };
        match message.len() - at {
            0 => Ok(msg),
            left => Err(WsDecodeError::TrailingBytes(left, kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message() -> impl Strategy<Value = WsMessage> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        let id = || 0..=varint::MAX;
        prop_oneof![
            bytes().prop_map(WsMessage::Control),
            (id(), bytes()).prop_map(|(id, bytes)| WsMessage::Stream { id, bytes }),
            id().prop_map(|id| WsMessage::Finish { id }),
            (id(), any::<u32>()).prop_map(|(id, code)| WsMessage::Reset { id, code: ErrorCode::from_u32(code) }),
            (id(), any::<u32>()).prop_map(|(id, code)| WsMessage::Stop { id, code: ErrorCode::from_u32(code) }),
            bytes().prop_map(WsMessage::Datagram),
            (any::<u32>(), ".{0,100}")
                .prop_map(|(code, reason)| WsMessage::Close { code: ErrorCode::from_u32(code), reason }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            let wire = msg.encode();
            prop_assert_eq!(wire.len(), msg.encoded_len());
            prop_assert_eq!(WsMessage::decode(wire).unwrap(), msg);
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = WsMessage::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: [(&[u8], WsDecodeError); 8] = [
            (b"", WsDecodeError::Empty),
            (b"\x09", WsDecodeError::UnknownKind(9)),
            (b"\x06\x01", WsDecodeError::Truncated(6)),
            (b"\x01", WsDecodeError::Truncated(1)),
            (b"\x02\x40", WsDecodeError::Truncated(2)),
            (b"\x02\x01\x00", WsDecodeError::TrailingBytes(1, 2)),
            (b"\x03\x01\xc0\x00\x00\x01\x00\x00\x00\x00", WsDecodeError::CodeOutOfRange(1 << 32)),
            (b"\x05\x00\xff", WsDecodeError::BadReason("not UTF-8")),
        ];
        for (bytes, err) in cases {
            assert_eq!(WsMessage::decode(Bytes::from_static(bytes)), Err(err), "{bytes:?}");
        }
        let long = [&[5u8, 0][..], &[b'x'; 513][..]].concat();
        assert_eq!(WsMessage::decode(Bytes::from(long)), Err(WsDecodeError::BadReason("longer than 512 bytes")));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(300);
        let wire = WsMessage::Close { code: ErrorCode::Internal, reason }.encode();
        let WsMessage::Close { reason, .. } = WsMessage::decode(wire).unwrap() else { panic!() };
        assert_eq!(reason.len(), 512);
    }
}
