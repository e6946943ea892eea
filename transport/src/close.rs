//! The one mapping from what went wrong to what the peer is told: an [`ErrorCode`] becomes the QUIC application
//! close code (and stream reset code) with the same number. For WebTransport sessions web-transport-quinn maps
//! the same number into HTTP/3's application error space, and browsers see it unchanged as `closeCode` /
//! `streamErrorCode`.

use quinn::VarInt;
pub use quiver_proto::truncate_utf8;
use quiver_proto::ErrorCode;

/// The QUIC application error code for `code`.
pub fn quic_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(code.to_u32())
}

/// The [`ErrorCode`] a QUIC application error code stands for.
pub fn from_quic_code(code: VarInt) -> ErrorCode {
    u32::try_from(code.into_inner()).map(ErrorCode::from_u32).unwrap_or(ErrorCode::Unknown(u32::MAX))
}

/// Closes `conn` with `code`, giving `reason` (truncated to fit a packet) to the peer.
pub fn close(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    // The reason travels in a CONNECTION_CLOSE frame, which must fit one packet.
    let reason = truncate_utf8(reason, quiver_proto::MAX_CLOSE_REASON);
    conn.close(quic_code(code), reason.as_bytes());
}

/// Where a connection's close came from and why, for the client library and logs.
pub fn describe(error: &quinn::ConnectionError) -> (ErrorCode, String) {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (from_quic_code(close.error_code), String::from_utf8_lossy(&close.reason).into_owned())
        }
        quinn::ConnectionError::LocallyClosed => (ErrorCode::NoError, "closed locally".into()),
        other => (ErrorCode::Internal, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_both_ways() {
        for &code in ErrorCode::ALL {
            assert_eq!(from_quic_code(quic_code(code)), code);
        }
        assert_eq!(truncate_utf8("héllo", 2), "h");
    }
}
