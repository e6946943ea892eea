//! Closing a [`Session`] (native QUIC or WebTransport) with an [`ErrorCode`], and reading one back. The numbers are
//! quiver-transport's one mapping; a WebTransport peer gets code and reason in the CLOSE_WEBTRANSPORT_SESSION
//! capsule, which browsers show unchanged as `closeCode`.

use std::time::Duration;

use quiver_proto::ErrorCode;
use quiver_transport::close::{describe, truncate_utf8};
use web_transport_quinn::{Session, SessionError, WebTransportError};

use crate::{
    net::wire::{Wire, WireError},
    stats::ServerStats,
};

/// Closes a session with `code`, giving `reason` (truncated to fit a packet) to the peer.
pub(crate) fn close_session(session: &Session, code: ErrorCode, reason: &str) {
    session.close(code.to_u32(), truncate_utf8(reason, quiver_proto::MAX_CLOSE_REASON).as_bytes());
}

/// How long [`release`] waits for a closed session's connection to end. web-transport-quinn ends it itself after
/// the capsule, within 3 RTT (at least 100 ms); this is only the backstop.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Ends a session's life: closes it with `NoError` unless it was closed already (the first close wins), waits until
/// its QUIC connection is closed, and only then drops its handle (the session goes with the last one). A WebTransport session holds HTTP/3's critical streams;
/// dropping its last handle on an open connection would finish and stop them, a connection error for the peer
/// (RFC 9114 §6.2.1) that would arrive before our close capsule.
pub(crate) async fn release(session: std::sync::Arc<Session>) {
    close_session(&session, ErrorCode::NoError, "session ended");
    if tokio::time::timeout(RELEASE_GRACE, session.closed()).await.is_err() {
        tracing::debug!("connection still open {RELEASE_GRACE:?} after the session closed; closing it");
        // Only a WebTransport session can still be open here (a raw one closes at once): its code space is HTTP/3's.
        let code = web_transport_quinn::proto::error_to_http3(ErrorCode::NoError.to_u32());
        let conn: &quinn::Connection = &session;
        conn.close(quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX), b"session ended");
    }
}

/// [`describe`] for a session's errors. A browser's close capsule may carry a reason of up to 64 KiB, logged at
/// info: cut to `MAX_CLOSE_REASON` as a native close's packet and a WebSocket's frame cut theirs.
pub(crate) fn describe_session(error: &SessionError) -> (ErrorCode, String) {
    match error {
        SessionError::ConnectionError(err) => describe(err),
        SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
            (ErrorCode::from_u32(*code), truncate_utf8(reason, quiver_proto::MAX_CLOSE_REASON).to_string())
        }
        other => (ErrorCode::Internal, other.to_string()),
    }
}

/// Closes the connection with `ControlStreamClosed` because the client reset, stopped or half-finished its control
/// stream; returns the reason (for the log).
pub(super) fn control_stream_closed(conn: &Wire, stats: &ServerStats, reason: String) -> String {
    refuse(conn, stats, ErrorCode::ControlStreamClosed, reason)
}

/// How long a session whose control stream the client reset or stopped with `WT_SESSION_GONE` has to end: Chromium
/// sends it on its session's streams as it closes the session, the close capsule right behind.
const SESSION_GONE_GRACE: Duration = Duration::from_secs(1);

/// The control stream ended with `err`, the connection's end or a browser's `WT_SESSION_GONE` ([`WireError::
/// SessionGone`]); returns the reason (for the log). A `WT_SESSION_GONE` on the control stream of a session that does
/// not end within [`SESSION_GONE_GRACE`] was a peer's reset of that stream alone, refused `ControlStreamClosed` as any
/// other (it closed the session `NoError`, uncounted: a review's find).
pub(super) async fn control_stream_gone(conn: &Wire, stats: &ServerStats, err: WireError) -> String {
    if matches!(err, WireError::SessionGone) && tokio::time::timeout(SESSION_GONE_GRACE, conn.closed()).await.is_err() {
        let reason = "the client reset or stopped its control stream with WT_SESSION_GONE and kept its session";
        return control_stream_closed(conn, stats, reason.to_string());
    }
    err.to_string()
}

/// Counts a refusal with `code`, closes the connection with it and `reason`; returns the reason (for the log).
pub(super) fn refuse(conn: &Wire, stats: &ServerStats, code: ErrorCode, reason: String) -> String {
    stats.refused(code);
    conn.close(code, &reason);
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser's close capsule may carry 64 KiB of reason, which the connection's end logs at info: cut to
    /// `MAX_CLOSE_REASON`, as a native close's and a WebSocket's are by their frames.
    #[test]
    fn a_session_close_reason_is_cut_to_max_close_reason() {
        let long = "é".repeat(40_000);
        let closed = SessionError::WebTransportError(WebTransportError::Closed(3, long));
        let (code, reason) = describe_session(&closed);
        assert_eq!(code, ErrorCode::from_u32(3));
        assert!(reason.len() <= quiver_proto::MAX_CLOSE_REASON && reason.len() > 400, "{}", reason.len());
    }
}
