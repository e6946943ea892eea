//! Browsers: the WebTransport CONNECT on an `h3` connection. The request's path must be the configured one
//! (else 404) and its `Origin` must be allowed (else 403); then the session speaks Quiver's protocol exactly as a
//! native connection does.

use std::time::Duration;

use tokio::time::Instant;
use web_transport_quinn::{http::StatusCode, Request, Session};

use crate::config::WebConfig;

/// How long a refused browser has to read the refusal before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

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

/// Completes the HTTP/3 handshake and accepts or refuses the CONNECT.
pub(super) async fn accept(conn: quinn::Connection, web: &WebConfig, deadline: Instant) -> Result<Session, Refused> {
    let request = match tokio::time::timeout_at(deadline, Request::accept(conn.clone())).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => return Err(Refused::Handshake(err)),
        Err(_) => {
            conn.close(
                quiver_transport::close::quic_code(quiver_proto::ErrorCode::HandshakeTimeout),
                b"no CONNECT in time",
            );
            return Err(Refused::Timeout);
        }
    };
    let path = request.url.path().to_string();
    let origin = request.headers.get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    let refusal = if path != web.path {
        Some((StatusCode::NOT_FOUND, Refused::NotFound { path: path.clone(), serving: web.path.clone() }))
    } else if !web.origin_allowed(origin.as_deref()) {
        Some((StatusCode::FORBIDDEN, Refused::Forbidden(origin.clone().unwrap_or_else(|| "(none)".into()))))
    } else {
        None
    };
    if let Some((status, refused)) = refusal {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            if request.reject(status).await.is_ok() {
                // The browser closes once it has read the status; do not cut it off before.
                conn.closed().await;
            }
        })
        .await;
        conn.close(quinn::VarInt::from_u32(0x010c), refused.to_string().as_bytes()); // H3_REQUEST_REJECTED
        return Err(refused);
    }
    tracing::debug!(%path, origin = origin.as_deref().unwrap_or(""), "WebTransport session");
    request.ok().await.map_err(Refused::Answer)
}
