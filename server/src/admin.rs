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

/// Serves the admin endpoints on `listener` until `stop` (its token; its bounds on connections), for requests naming this machine, an IP address or one of
/// `hosts`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<ServerMetrics>,
    hosts: Arc<Vec<String>>,
    stop: (CancellationToken, crate::http::HttpBounds),
) {
    crate::http::serve_http(listener, stop, move |head, _peer: IpAddr| respond(head, &metrics, &hosts)).await
}

/// True when `host` (a `Host` header) may be answered: none (not a browser), `localhost`, an IP address, or a name
/// in `hosts`, with or without a port. A browser sends the page's own name: a page whose name was rebound to this
/// machine, or to a port-forwarding proxy in front of it (DNS rebinding; a container's published port reaches the
/// listener from the bridge's address, not loopback), names itself, so it reads nothing.
fn host_allowed(host: Option<&str>, hosts: &[String]) -> bool {
    let Some(host) = host else { return true };
    if crate::web::is_loopback_host(Some(host)) {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => return rest.split_once(']').is_some_and(|(v6, _)| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::Ipv4Addr>().is_ok() || hosts.iter().any(|allowed| host_matches(allowed, name))
}

/// True when `name` is `allowed`, or (`allowed` = `*.domain`) a name under `domain`; case aside.
fn host_matches(allowed: &str, name: &str) -> bool {
    match allowed.strip_prefix("*.") {
        // By bytes: the peer's name need not cut where the domain's characters do.
        Some(domain) => {
            let (name, domain) = (name.as_bytes(), domain.as_bytes());
            name.len() > domain.len() + 1 && {
                let (head, tail) = name.split_at(name.len() - domain.len());
                head.ends_with(b".") && tail.eq_ignore_ascii_case(domain)
            }
        }
        None => allowed.eq_ignore_ascii_case(name),
    }
}

/// The response to one request head (sans-IO). The request must name this machine, an IP address or one of
/// `hosts` ([`host_allowed`]), whatever the peer: a web page whose own name was rebound to this machine (DNS
/// rebinding) would otherwise read the metrics from the browser of whoever runs the server, as its own origin.
fn respond(head: &[u8], metrics: &Arc<ServerMetrics>, hosts: &[String]) -> Response {
    let (head_only, target, lines) = match parse_request(head) {
        Ok(request) => request,
        Err(response) => return response,
    };
    // A HEAD is answered without a body, refusals included (RFC 9110 §9.3.2; `parse_request`'s too).
    let error = |status, why: &str| Response { head_only, ..Response::error(status, why) };
    if !host_allowed(crate::web::host_header(lines), hosts) {
        return error(
            403,
            "the admin listener answers requests for localhost, IP addresses and the names in admin.hosts only",
        );
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
        "/healthz" => match metrics.alive() {
            Ok(()) => text(200, "ok\n".into()),
            Err(why) => text(503, format!("failing: {why}\n")),
        },
        "/readyz" => match metrics.ready() {
            Ok(()) => text(200, "ready\n".into()),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        "/" => text(200, "quiver-server admin: /metrics /healthz /readyz\n".into()),
        _ => error(404, "not found (try /metrics, /healthz, /readyz)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for another name than this machine's, an IP address or one in `admin.hosts` is refused from any
    /// peer (DNS rebinding: a page's own name pointed at this machine, or at a container's published port, which
    /// the listener sees coming from the bridge, not loopback); a request without `Host` is served.
    #[test]
    fn requests_are_answered_only_for_this_machines_names_addresses_and_admin_hosts() {
        let metrics = Arc::new(ServerMetrics::new(Arc::default()));
        let hosts = vec!["metrics.internal".to_string(), "*.quiver.svc".to_string()];
        let status = |host: &str| {
            let head = format!("GET /healthz HTTP/1.1\r\n{host}\r\n\r\n");
            respond(head.as_bytes(), &metrics, &hosts).status
        };
        for host in [
            "Host: localhost:9433",
            "Host: 127.0.0.1:9433",
            "Host: [::1]:9433",
            "Host: 10.1.2.3:9433",
            "Host: [fd00::7]:9433",
            "Host: METRICS.internal:9433",
            "Host: quiver-0.quiver.svc:9433",
            "X-None: 1",
        ] {
            assert_eq!(status(host), 200, "{host}");
        }
        for host in [
            "Host: attacker.example:9433",
            "Host: attacker.example",
            "Host: [attacker]:1",
            "Host: 10.1.2.3.evil",
            "Host: quiver.svc",
            "Host: evilquiver.svc",
            "Host: a.éuiver.svc",
        ] {
            assert_eq!(status(host), 403, "{host}");
        }
    }

    /// The certificate's expiry is served once the server has one, never as 0 (1970) before: the store opens
    /// before the certificate is loaded, and an alert on `expiry - time()` paged on every slow start.
    #[test]
    fn the_certificate_expiry_is_served_only_once_known() {
        let stats = Arc::new(crate::stats::ServerStats::default());
        let metrics = Arc::new(ServerMetrics::new(stats.clone()));
        let name = "quiver_tls_certificate_expiry_timestamp_seconds";
        assert!(!metrics.render().contains(name), "before the certificate is loaded");
        stats.certificate_expires(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000));
        assert!(metrics.render().contains(&format!("\n{name} 2000000000\n")), "{}", metrics.render());
    }

    /// A HEAD gets no body, whatever the status (a refusal's and a 404's carried theirs).
    #[test]
    fn a_head_request_gets_no_body() {
        let metrics = Arc::new(ServerMetrics::new(Arc::default()));
        for (head, status) in [
            ("HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
            ("HEAD /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
            ("HEAD /metrics HTTP/1.1\r\nHost: attacker.example\r\n\r\n", 403),
            ("HEAD / HTTP/2.0\r\n\r\n", 400),
        ] {
            let response = respond(head.as_bytes(), &metrics, &[]);
            assert_eq!((response.status, response.head_only), (status, true), "{head}");
        }
    }
}
