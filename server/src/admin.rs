//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz` (the
//! endpoint is serving and the store has not failed; 503 otherwise, also while draining). Plain HTTP on its own
//! TCP address, loopback by default: it tells whoever reaches it how the server is doing, so keep it off the
//! internet. The same small HTTP/1.1 server as the demo page (bounded head, time and connections).

use std::{net::IpAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    http::{parse_request, Response},
    metrics::ServerMetrics,
};

/// Prometheus' text exposition format (OpenMetrics, as `prometheus-client` writes it).
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<ServerMetrics>, stop: CancellationToken) {
    crate::http::serve_http(listener, stop, move |head, _peer: IpAddr| respond(head, &metrics)).await
}

/// The response to one request head (sans-IO).
fn respond(head: &[u8], metrics: &Arc<ServerMetrics>) -> Response {
    let (head_only, target, _) = match parse_request(head) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let text = |status, body: String| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into_bytes(),
        head_only,
    };
    match target.split(['?', '#']).next().unwrap_or("/") {
        "/metrics" => {
            Response { status: 200, content_type: METRICS_TYPE, body: metrics.render().into_bytes(), head_only }
        }
        "/healthz" => text(200, "ok\n".into()),
        "/readyz" => match metrics.ready() {
            Ok(()) => text(200, "ready\n".into()),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        "/" => text(200, "quiver-server admin: /metrics /healthz /readyz\n".into()),
        _ => Response::error(404, "not found (try /metrics, /healthz, /readyz)"),
    }
}
