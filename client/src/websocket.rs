//! The WebSocket fallback's side of connecting (the `websocket` feature): TCP, TLS with the same trust as QUIC,
//! the upgrade to `wss://host:port/quiver`, and `Auto`'s race of QUIC and the WebSocket.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quiver_proto::ws::SUBPROTOCOL;
use quiver_transport::ws::{self, Role, WsConfig, WsSession};

use crate::{target::Target, trust, wire::Link, ConnectError, ConnectOptions, TrustOptions};

/// A target's TLS for the WebSocket (ALPN http/1.1, the same trust as QUIC), and its pin's report.
#[derive(Debug, Clone)]
pub(crate) struct WsTls {
    tls: Arc<rustls::ClientConfig>,
    pin: Option<quiver_certs::Fingerprint>,
}

impl WsTls {
    pub(crate) fn new(trust: &TrustOptions, addr: SocketAddr) -> Result<WsTls, ConnectError> {
        let (tls, pin) = trust::tls_config(trust, addr, b"http/1.1", true)?;
        Ok(WsTls { tls: Arc::new(tls), pin })
    }
}

impl Target {
    /// `Auto`: QUIC for the whole `timeout`, and the WebSocket too from `options.fallback_after` (at most half the
    /// timeout) or as soon as QUIC fails; the first through wins and the other attempt is dropped. A QUIC that is
    /// merely slow (a lossy first handshake) still wins where the server has no WebSocket. When both fail: a
    /// refusal or pin mismatch over either, else both errors ([`Target::both_failed`]).
    pub(crate) async fn quic_then_websocket(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let again = targets.clone();
        let websocket = |left| Target::race_ws(again, options, left);
        let delay = options.fallback_after.min(timeout / 2);
        let (quic, websocket) =
            Target::one_then_other(Target::race_quic(targets, timeout), websocket, delay, timeout).await;
        match (quic, websocket) {
            (Ok(found), _) | (_, Ok(found)) => Ok(found),
            (Err(quic), Err(websocket)) => Err(Target::both_failed(quic, websocket)),
        }
    }

    /// `Auto` once the WebSocket won the last time (QUIC blocked on that network): the WebSocket and QUIC at once,
    /// the first through wins: no `fallback_after` spent on a QUIC that was blocked, and none kept from a QUIC
    /// that works again (a blocked moment passed, a WebSocket port or proxy gone, a node that serves none). When
    /// both fail: a refusal or pin mismatch over either, else both errors ([`Target::both_failed`]).
    pub(crate) async fn websocket_then_quic(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let again = targets.clone();
        let quic = |left| Target::race_quic(again, left);
        let (websocket, quic) =
            Target::one_then_other(Target::race_ws(targets, options, timeout), quic, Duration::ZERO, timeout).await;
        match (websocket, quic) {
            (Ok(found), _) | (_, Ok(found)) => Ok(found),
            (Err(websocket), Err(quic)) => Err(Target::both_failed(quic, websocket)),
        }
    }

    /// Both transports failed: one refused for good (a refusal, a pin mismatch) is the answer, else both errors
    /// together. (QUIC's alone was reported until 2026-12-08: where UDP is blocked, its timeout, 8 s after the
    /// WebSocket's own error, a 403 from a proxy or an unknown issuer, which said what was wrong.)
    fn both_failed(quic: ConnectError, websocket: ConnectError) -> ConnectError {
        match (quic.is_fatal(), websocket.is_fatal()) {
            (_, true) => websocket,
            (true, false) => quic,
            (false, false) => ConnectError::Transports { quic: Box::new(quic), websocket: Box::new(websocket) },
        }
    }

    /// QUIC ([`Target::race`]) as a [`Link`].
    async fn race_quic(targets: Vec<Target>, timeout: Duration) -> Result<(Target, Link), ConnectError> {
        let (target, quic) = Target::race(targets, timeout).await?;
        Ok((target, Link::Quic(crate::wire::QuicLink::new(quic))))
    }

    /// Runs `first` for the whole `timeout`, and `other` (given what is left of it) too after `delay` or as soon
    /// as `first` fails; returns as soon as one connects (that one `Ok`, the other's outcome an error or not
    /// tried), or both failed, or `first` failed fatally (a refusal, a pin mismatch: `other` not waited for).
    async fn one_then_other<O, F>(
        first: impl std::future::Future<Output = Result<(Target, Link), ConnectError>>,
        other: F,
        delay: Duration,
        timeout: Duration,
    ) -> (Result<(Target, Link), ConnectError>, Result<(Target, Link), ConnectError>)
    where
        F: FnOnce(Duration) -> O,
        O: std::future::Future<Output = Result<(Target, Link), ConnectError>>,
    {
        let started = tokio::time::Instant::now();
        let first_failed = tokio::sync::Notify::new();
        let second = async {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = first_failed.notified() => {}
            }
            tracing::info!("the first transport is not through yet; trying the other too");
            other(timeout.saturating_sub(started.elapsed())).await
        };
        tokio::pin!(first, second);
        let not_tried = || Err(ConnectError::WebSocket("not tried".into()));
        let (mut first_err, mut second_err) = (None, None);
        loop {
            tokio::select! {
                done = &mut first, if first_err.is_none() => match done {
                    Ok(found) => return (Ok(found), not_tried()),
                    Err(err) if err.is_fatal() => return (Err(err), not_tried()),
                    Err(err) => {
                        first_failed.notify_one();
                        first_err = Some(err);
                    }
                },
                done = &mut second, if second_err.is_none() => match done {
                    Ok(found) => return (first_err.map_or_else(not_tried, Err), Ok(found)),
                    Err(err) => second_err = Some(err),
                },
            }
            match (first_err.take(), second_err.take()) {
                (Some(first), Some(second)) => {
                    tracing::info!(%second, "the other transport did not connect either");
                    return (Err(first), Err(second));
                }
                (first, second) => (first_err, second_err) = (first, second),
            }
        }
    }

    /// The WebSocket to each address, raced as QUIC handshakes are ([`Target::race`]: the next address started a
    /// moment later or as soon as one fails), the first that connects within `timeout` wins. (One after another
    /// under one deadline, a first address that never answers, a dead node's, took the whole timeout every time.)
    pub(crate) async fn race_ws(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let options = Arc::new(options.clone());
        let attempt = |target: Target| {
            let options = options.clone();
            async move {
                let result = target.websocket(&options).await;
                (target, result)
            }
        };
        let (target, ws) = Target::race_with(targets, timeout, attempt).await?;
        Ok((target, Link::Ws(ws)))
    }

    /// TCP, TLS (the same trust as QUIC) and the upgrade to `wss://host:port/quiver`, port the QUIC one unless
    /// `options.websocket_port` says otherwise.
    async fn websocket(&self, options: &ConnectOptions) -> Result<WsSession, ConnectError> {
        use tokio_tungstenite::tungstenite::{http::HeaderValue, Error};
        let failed = |what: &str, err: &dyn std::fmt::Display| ConnectError::WebSocket(format!("{what}: {err}"));
        let addr = SocketAddr::new(self.addr.ip(), options.websocket_port.unwrap_or(self.addr.port()));
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|err| failed(&format!("TCP to {addr}"), &err))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|err| failed(&format!("server name {:?}", self.host), &err))?;
        let connector = tokio_rustls::TlsConnector::from(self.ws.tls.clone());
        let tls = connector.connect(name, tcp).await.map_err(|err| {
            // (The handshake's error is this client's own rustls error; a peer's alert names no certificate.)
            match (self.ws.pin, trust::presented_in(&err.to_string())) {
                (Some(expected), Some(presented)) => ConnectError::PinMismatch { expected, presented },
                _ => failed("TLS", &err),
            }
        })?;
        let mut request = upgrade_request(&self.host, addr.port()).map_err(|err| failed("URL", &err))?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        let config = WsConfig::with_keep_alive(options.tuning.keep_alive);
        let upgraded = tokio_tungstenite::client_async_with_config(request, tls, Some(config.websocket())).await;
        let (socket, response) = upgraded.map_err(|err| match err {
            Error::Http(response) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                ConnectError::WebSocket(format!("upgrade refused: {} {}", response.status(), body.trim()))
            }
            err => failed("upgrade", &err),
        })?;
        if response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()) != Some(SUBPROTOCOL) {
            return Err(ConnectError::WebSocket(format!("the server did not agree to subprotocol {SUBPROTOCOL:?}")));
        }
        Ok(WsSession::start(socket, Role::Client, config, addr))
    }
}

/// The upgrade request to `wss://host:port/quiver`: its `Host` names the server as TLS did (SNI), not the address
/// it resolved to, for a reverse proxy or load balancer in front that routes by it. An IPv6 literal goes in
/// brackets.
fn upgrade_request(
    host: &str,
    port: u16,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, Box<tokio_tungstenite::tungstenite::Error>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let authority = match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    };
    format!("wss://{authority}{}", ws::PATH).into_client_request().map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::upgrade_request;

    #[test]
    fn the_upgrade_names_the_server_as_tls_does() {
        let host = |name: &str| {
            let request = upgrade_request(name, 4433).unwrap();
            request.headers().get("host").map(|h| h.to_str().unwrap().to_string())
        };
        assert_eq!(host("quiver.example.com").as_deref(), Some("quiver.example.com:4433"));
        assert_eq!(host("127.0.0.1").as_deref(), Some("127.0.0.1:4433"));
        assert_eq!(host("::1").as_deref(), Some("[::1]:4433"));
        assert_eq!(upgrade_request("::1", 4433).unwrap().uri().path(), "/quiver");
        assert!(upgrade_request("not a name", 4433).is_err());
    }
}
