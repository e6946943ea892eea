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
    crate::http::serve_http(listener, stop, move |head, peer: IpAddr| {
        respond(head, &metrics, crate::web::is_loopback(peer))
    })
    .await
}

/// The response to one request head (sans-IO). From a `loopback` peer the request must name this machine
/// (`Host: localhost`, `127.0.0.1:9433`, none): a web page whose own name was rebound to 127.0.0.1 (DNS rebinding)
/// would otherwise read the metrics from the browser of whoever runs the server, as its own origin (whether the
/// listener is bound to loopback or to every address).
fn respond(head: &[u8], metrics: &Arc<ServerMetrics>, loopback: bool) -> Response {
    let (head_only, target, lines) = match parse_request(head) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if loopback && !crate::web::is_loopback_host(crate::web::host_header(lines)) {
        return Response::error(403, "the admin listener answers requests for this machine's own names only");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// From a loopback peer a request for another name (DNS rebinding: a page's own name pointed at 127.0.0.1) is
    /// refused; this machine's names, and no `Host`, are served. A remote peer is served for every name (a scraper
    /// asks by the address it was given).
    #[test]
    fn a_loopback_peer_is_answered_only_for_this_machines_names() {
        let metrics = Arc::new(ServerMetrics::new(Arc::default()));
        let status = |host: &str, loopback| {
            let head = format!("GET /healthz HTTP/1.1\r\n{host}\r\n\r\n");
            respond(head.as_bytes(), &metrics, loopback).status
        };
        for host in ["Host: localhost:9433", "Host: 127.0.0.1:9433", "Host: [::1]:9433", "X-None: 1"] {
            assert_eq!(status(host, true), 200, "{host}");
        }
        assert_eq!(status("Host: attacker.example:9433", true), 403);
        assert_eq!(status("Host: attacker.example:9433", false), 200);
    }
}
