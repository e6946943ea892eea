//! Browsers: the WebTransport CONNECT on an `h3` connection. The request's path must be the configured one
//! (else 404) and its `Origin` must be allowed (else 403); then the session speaks Quiver's protocol exactly as a
//! native connection does.

use std::time::Duration;

use tokio::time::Instant;
use web_transport_quinn::{http::StatusCode, Request, Session};

use crate::config::WebConfig;

/// How long a refused browser has to read the refusal before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Completes the HTTP/3 handshake and accepts or refuses the CONNECT. `Err` says why it was refused (for the log);
/// the connection is closed by then.
pub(super) async fn accept(conn: quinn::Connection, web: &WebConfig, deadline: Instant) -> Result<Session, String> {
    let request = match tokio::time::timeout_at(deadline, Request::accept(conn.clone())).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => return Err(format!("HTTP/3 handshake: {err}")),
        Err(_) => {
            conn.close(
                quiver_transport::close::quic_code(quiver_proto::ErrorCode::HandshakeTimeout),
                b"no CONNECT in time",
            );
            return Err("no WebTransport CONNECT within the handshake timeout".into());
        }
    };
    let path = request.url.path().to_string();
    let origin = request.headers.get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    let refusal = if path != web.path {
        Some((StatusCode::NOT_FOUND, format!("unknown path {path} (serving {})", web.path)))
    } else if !web.origin_allowed(origin.as_deref()) {
        Some((StatusCode::FORBIDDEN, format!("origin {} is not allowed", origin.as_deref().unwrap_or("(none)"))))
    } else {
        None
    };
    if let Some((status, reason)) = refusal {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            if request.reject(status).await.is_ok() {
                // The browser closes once it has read the status; do not cut it off before.
                conn.closed().await;
            }
        })
        .await;
        conn.close(quinn::VarInt::from_u32(0x010c), reason.as_bytes()); // H3_REQUEST_REJECTED
        return Err(reason);
    }
    tracing::debug!(%path, origin = origin.as_deref().unwrap_or(""), "WebTransport session");
    request.ok().await.map_err(|err| format!("answering the CONNECT: {err}"))
}
