//! Closing a [`Session`] (native QUIC or WebTransport) with an [`ErrorCode`], and reading one back. The numbers are
//! quiver-transport's one mapping; a WebTransport peer gets code and reason in the CLOSE_WEBTRANSPORT_SESSION
//! capsule, which browsers show unchanged as `closeCode`.

use quiver_proto::ErrorCode;
use quiver_transport::close::{describe, truncate_utf8};
use web_transport_quinn::{Session, SessionError, WebTransportError};

/// Closes a session with `code`, giving `reason` (truncated to fit a packet) to the peer.
pub(crate) fn close_session(session: &Session, code: ErrorCode, reason: &str) {
    session.close(code.to_u32(), truncate_utf8(reason, 512).as_bytes());
}

/// [`describe`] for a session's errors.
pub(crate) fn describe_session(error: &SessionError) -> (ErrorCode, String) {
    match error {
        SessionError::ConnectionError(err) => describe(err),
        SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
            (ErrorCode::from_u32(*code), reason.clone())
        }
        other => (ErrorCode::Internal, other.to_string()),
    }
}
