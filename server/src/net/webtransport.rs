//! Browsers: the WebTransport CONNECT on an `h3` connection. The request's path must be the configured one
//! (else 404) and its `Origin` must be allowed (else 403); then the session speaks Quiver's protocol exactly as a
//! native connection does.
//!
//! HTTP/3's critical streams (both control streams, the client's QPACK encoder and decoder streams) must stay open
//! for the life of the connection: closing, resetting or stopping one is a connection error
//! (H3_CLOSED_CRITICAL_STREAM, RFC 9114 §6.2.1, RFC 9204 §4.2), and a strict client then never reads our status or
//! close capsule. web-transport-quinn keeps those streams inside its `Request`, then its `Session`, and has no
//! public API to take them out; dropping them finishes ours and sends STOP_SENDING on the client's. So a refusal
//! is answered with [`Request::respond`] (not `reject`, which drops them at once) and its session is held until the
//! connection is closed, as [`release`](super::close::release) does for served sessions: on a closed connection,
//! quinn sends nothing for dropped streams.

use std::time::Duration;

use tokio::time::Instant;
use web_transport_quinn::{http::StatusCode, Request, Session};

use quiver_proto::ErrorCode;

use crate::{config::WebConfig, stats::ServerStats};

/// How long a refused browser has to read the refusal before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// HTTP/3's error codes (RFC 9114 §8.1) a connection is closed with before it has a WebTransport session: codes of
/// Quiver's own (a `quic_code`) mean nothing to an HTTP/3 client, which takes an unknown code for H3_NO_ERROR.
/// After a refusal (404, 403). (0x010c until 2026-12-05, which is H3_REQUEST_CANCELLED.)
pub(super) const H3_REQUEST_REJECTED: quinn::VarInt = quinn::VarInt::from_u32(0x010b);
/// The HTTP/3 handshake or the CONNECT broke the protocol.
const H3_GENERAL_PROTOCOL_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x0101);
/// No CONNECT in time, or its answer was not taken in time, or the client cancelled its CONNECT.
const H3_REQUEST_CANCELLED: quinn::VarInt = quinn::VarInt::from_u32(0x010c);
/// Closed before its session to make room for a newer connection.
pub(super) const H3_EXCESSIVE_LOAD: quinn::VarInt = quinn::VarInt::from_u32(0x0107);
/// Closed before its session because the server shuts down.
pub(super) const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x0100);

/// Why a browser's session was not opened (for the log; the connection is closed by then).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The HTTP/3 handshake or the CONNECT failed.
    #[error("HTTP/3 handshake: {0}")]
    Handshake(web_transport_quinn::ServerError),
    /// No CONNECT within the handshake timeout.
    #[error("no WebTransport CONNECT within the handshake timeout")]
    Timeout,
    /// The CONNECT's path is not the configured one (404).
    #[error("unknown path {path} (serving {serving})")]
    NotFound {
        /// The requested path.
        path: String,
        /// The configured path.
        serving: String,
    },
    /// The CONNECT's origin is not allowed (403).
    #[error("origin {0} is not allowed")]
    Forbidden(String),
    /// The 200 could not be sent.
    #[error("answering the CONNECT: {0}")]
    Answer(web_transport_quinn::ServerError),
}

/// Completes the HTTP/3 handshake and accepts or refuses the CONNECT. Datagrams that arrive meanwhile are read and
/// dropped (counted in `stats.datagrams_before_session`): a browser sends none before its session is answered, and
/// held unread until Hello, each kept its whole received packet (quinn counts a datagram's payload against the
/// 64 KiB receive buffer, not the packet it holds): a peer sending one-byte datagrams in full packets held ~45×
/// that per connection, for `handshake_timeout_ms`.
pub(super) async fn accept(
    conn: quinn::Connection,
    web: &WebConfig,
    deadline: Instant,
    stats: &ServerStats,
) -> Result<Session, Refused> {
    let drain = async {
        while conn.read_datagram().await.is_ok() {
            crate::stats::bump(&stats.datagrams_before_session);
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        biased;
        accepted = accept_connect(conn.clone(), web, deadline, stats) => accepted,
        () = drain => unreachable!("pends for ever once the connection is gone"),
    }
}

/// [`accept`]'s handshake and CONNECT.
/// A connection that never sends its CONNECT in time is counted as a silent native connection is
/// (`handshake_timeouts`), and one whose HTTP/3 handshake breaks the protocol as a protocol violation, each before
/// its close (as the native lane counts); a peer that went away mid-handshake (a browser's race given up) is not.
async fn accept_connect(
    conn: quinn::Connection,
    web: &WebConfig,
    deadline: Instant,
    stats: &ServerStats,
) -> Result<Session, Refused> {
    // Pinned here rather than dropped by a timeout: a half-done handshake holds the control streams, and must only
    // be dropped (on return) once the connection is closed.
    let handshake = Request::accept(conn.clone());
    tokio::pin!(handshake);
    let request = tokio::select! {
        accepted = &mut handshake => match accepted {
            Ok(request) => request,
            Err(err) => {
                if broke_the_protocol(&err) {
                    stats.refused(ErrorCode::ProtocolViolation);
                }
                // The crate has dropped its half-done streams by now; at least the close says why.
                conn.close(H3_GENERAL_PROTOCOL_ERROR, b"HTTP/3 handshake failed");
                return Err(Refused::Handshake(err));
            }
        },
        () = tokio::time::sleep_until(deadline) => {
            stats.refused(ErrorCode::HandshakeTimeout);
            conn.close(H3_REQUEST_CANCELLED, b"no CONNECT in time");
            return Err(Refused::Timeout);
        }
    };
    let path = request.url.path().to_string();
    let origin = request.headers.get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    // A refusal names what the peer sent, cut short: it is logged, and the peer chooses up to 16 KiB of it.
    let refusal = if path != web.path {
        Some((StatusCode::NOT_FOUND, Refused::NotFound { path: clipped(&path), serving: web.path.clone() }))
    } else if !web.origin_allowed(origin.as_deref()) {
        Some((StatusCode::FORBIDDEN, Refused::Forbidden(origin.as_deref().map_or_else(|| "(none)".into(), clipped))))
    } else {
        None
    };
    if let Some((status, refused)) = refusal {
        refuse(&conn, request, status, &refused).await;
        return Err(refused);
    }
    tracing::debug!(%path, origin = origin.as_deref().unwrap_or(""), "WebTransport session");
    // Within the same deadline: a client that gives the CONNECT stream no credit must not hold its slot forever.
    let answer = request.ok();
    tokio::pin!(answer);
    tokio::select! {
        answered = &mut answer => answered.map_err(|err| {
            // (The client reset its CONNECT stream, say: the session will never be, so nor will the connection.)
            conn.close(H3_REQUEST_CANCELLED, b"the CONNECT could not be answered");
            Refused::Answer(err)
        }),
        () = tokio::time::sleep_until(deadline) => {
            stats.refused(ErrorCode::HandshakeTimeout);
            conn.close(H3_REQUEST_CANCELLED, b"the CONNECT's answer was not taken in time");
            Err(Refused::Timeout)
        }
    }
}

/// Whether an HTTP/3 handshake failed on what the peer sent (malformed SETTINGS or CONNECT, no WebTransport), not
/// on the connection going away (a browser giving an attempt up, a race lost to another node or the WebSocket):
/// a frame cut short (`UnexpectedEnd`) or a read that failed (`Io`) is the peer gone.
fn broke_the_protocol(err: &web_transport_quinn::ServerError) -> bool {
    use web_transport_quinn::{proto, ConnectError, ServerError};
    match err {
        ServerError::ConnectError(ConnectError::ProtoError(cause)) => {
            !matches!(cause, proto::ConnectError::UnexpectedEnd | proto::ConnectError::Io(_))
        }
        // (The crate does not export its settings error: its protocol error is web-transport-proto's, its source;
        // the one without a source is its `WebTransportUnsupported`.)
        ServerError::SettingsError(settings) => match std::error::Error::source(settings) {
            Some(source) => source.downcast_ref::<proto::SettingsError>().is_some_and(|cause| {
                !matches!(cause, proto::SettingsError::UnexpectedEnd | proto::SettingsError::Io(_))
            }),
            None => settings.to_string() == "WebTransport is not supported",
        },
        _ => false,
    }
}

/// Bytes of a peer's path or origin a refusal (and so the log) repeats.
const CLIPPED: usize = 200;

/// `text` cut to [`CLIPPED`] bytes, with an ellipsis where it was cut.
fn clipped(text: &str) -> String {
    match quiver_proto::truncate_utf8(text, CLIPPED) {
        whole if whole.len() == text.len() => whole.to_string(),
        cut => format!("{cut}… ({} bytes)", text.len()),
    }
}

/// Answers the CONNECT with `status` alone and closes the connection once the client has read it (it closes
/// itself then) or after [`REFUSAL_LINGER`]. The critical streams are untouched until the connection is closed: the
/// answered session, which holds them, is dropped only on return. (A client that finishes or resets its CONNECT
/// stream after reading the status gets the connection closed by web-transport-quinn's session, with its own code
/// and no reason, before this close: the status says why.)
async fn refuse(conn: &quinn::Connection, request: Request, status: StatusCode, refused: &Refused) {
    let linger = tokio::time::sleep(REFUSAL_LINGER);
    tokio::pin!(linger);
    let answer = request.respond(status);
    tokio::pin!(answer);
    let answered = tokio::select! {
        answered = &mut answer => answered.ok(),
        () = &mut linger => None,
    };
    if answered.is_some() {
        tokio::select! {
            _ = conn.closed() => {}
            () = &mut linger => {}
        }
    }
    conn.close(H3_REQUEST_REJECTED, refused.to_string().as_bytes());
}

/// The ALPN the connection's handshake settled on.
pub(super) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    data.protocol
}

#[cfg(test)]
mod tests {
    /// An HTTP/3 handshake is a protocol violation only for what the peer sent, not for the peer going away
    /// mid-frame; told apart by variant, not by words (a header value the peer chose is in them).
    #[test]
    fn a_handshake_cut_short_is_no_protocol_violation() {
        use web_transport_quinn::{proto, ConnectError, ServerError};
        let connect = |cause| ServerError::ConnectError(ConnectError::ProtoError(cause));
        assert!(broke_the_protocol(&connect(proto::ConnectError::InvalidMethod)));
        let hidden = proto::ConnectError::WrongScheme(Some("io error: unexpected end of input".into()));
        assert!(broke_the_protocol(&connect(hidden)), "the peer's words do not hide it");
        assert!(!broke_the_protocol(&connect(proto::ConnectError::UnexpectedEnd)));
        assert!(!broke_the_protocol(&ServerError::Connection(quinn::ConnectionError::TimedOut)));
        assert!(!broke_the_protocol(&ServerError::UnexpectedEnd));
    }

    use super::*;

    #[test]
    fn a_peers_text_in_a_refusal_is_cut_short() {
        assert_eq!(clipped("/quiver"), "/quiver");
        let long = format!("/{}", "é".repeat(5_000));
        let cut = clipped(&long);
        assert!(cut.len() < CLIPPED + 40 && cut.ends_with(&format!("… ({} bytes)", long.len())), "{cut}");
        let refused = Refused::NotFound { path: cut, serving: "/quiver".into() };
        assert!(refused.to_string().len() < 300);
    }
}
