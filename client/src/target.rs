//! Where a client connects: the servers it was given, resolved to every address (each with its own QUIC endpoint
//! and TLS configurations), and how one is picked: happy eyeballs over QUIC, WebSocket (the fallback), or QUIC
//! first and WebSocket when QUIC does not get through ([`Transport`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quiver_proto::{ws::SUBPROTOCOL, ALPN_QUIVER};
use quiver_transport::ws::{self, Role, WsConfig, WsSession};

use crate::{
    trust::{self, PinReport},
    wire::Link,
    ConnectError, ConnectOptions, Transport,
};

/// The port `quiver-server` listens on by default, used when the server is given without one.
pub const DEFAULT_PORT: u16 = 4433;

/// Happy eyeballs: how long an address gets before the next one is tried as well.
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);

/// (the TLS server name, `server` with a port): `host:port`, `[v6]:port`, `host`, `v6` or `[v6]`.
fn split_host(server: &str) -> (String, String) {
    if let Ok(ip) = server.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        if !server.contains("]:") {
            return (ip.to_string(), SocketAddr::new(ip, DEFAULT_PORT).to_string());
        }
    }
    match server.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            (host.trim_start_matches('[').trim_end_matches(']').to_string(), server.to_string())
        }
        _ => (server.to_string(), format!("{server}:{DEFAULT_PORT}")),
    }
}

/// Where to connect and how, resolved once for the client's life.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    host: String,
    pub(crate) endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    pin: Option<(quiver_certs::Fingerprint, PinReport)>,
    /// The WebSocket fallback's TLS (ALPN http/1.1, the same trust), and its pin's report.
    ws_tls: Arc<rustls::ClientConfig>,
    ws_pin: Option<(quiver_certs::Fingerprint, PinReport)>,
    /// Where each connection writes its qlog, with the tuning its transport is built from.
    qlog: Option<(std::path::PathBuf, quiver_transport::TransportTuning)>,
}

impl Target {
    /// Resolves `servers` (`host:port`, or `host` for port [`DEFAULT_PORT`]; several separated by commas: the
    /// nodes of a cluster) to every address they name, each with its own endpoint, in the order given and the
    /// resolver's order. A name that does not resolve is skipped while another does.
    pub(crate) async fn resolve_all(servers: &str, options: &ConnectOptions) -> Result<Vec<Target>, ConnectError> {
        let mut targets = Vec::new();
        let mut first_error = None;
        for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match Target::resolve(server, options).await {
                Ok(found) => targets.extend(found),
                Err(err) => {
                    tracing::debug!(%server, %err, "server skipped");
                    first_error.get_or_insert(err);
                }
            }
        }
        match (targets.is_empty(), first_error) {
            (false, _) => Ok(targets),
            (true, Some(err)) => Err(err),
            (true, None) => Err(ConnectError::Resolve {
                server: servers.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server given"),
            }),
        }
    }

    /// [`Target::resolve_all`] of one server.
    async fn resolve(server: &str, options: &ConnectOptions) -> Result<Vec<Target>, ConnectError> {
        let resolve_err = |source| ConnectError::Resolve { server: server.to_string(), source };
        let (host, with_port) = split_host(server);
        // `localhost` is this machine's loopback in both families (RFC 6761), whatever /etc/hosts lists (or whether
        // it lists it at all): a server bound to [::1] is reached where localhost resolves to 127.0.0.1 only.
        let localhost_port = host
            .eq_ignore_ascii_case("localhost")
            .then(|| with_port.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()))
            .flatten();
        let addrs: Vec<SocketAddr> = match localhost_port {
            Some(port) => vec![
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
            ],
            None => tokio::net::lookup_host(&with_port).await.map_err(resolve_err)?.collect(),
        };
        if addrs.is_empty() {
            return Err(resolve_err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")));
        }
        let mut targets = Vec::with_capacity(addrs.len());
        let mut first_error = None;
        for addr in addrs {
            // An address this machine cannot use (no IPv6, say, or one the trust options refuse) is skipped; only
            // when none is left is that an error.
            match Target::new(addr, &host, options) {
                Ok(target) => targets.push(target),
                Err(err) => {
                    tracing::debug!(%addr, %err, "address skipped");
                    first_error.get_or_insert(err);
                }
            }
        }
        match (targets.is_empty(), first_error) {
            (true, Some(err)) => Err(err),
            _ => Ok(targets),
        }
    }

    fn new(addr: SocketAddr, host: &str, options: &ConnectOptions) -> Result<Target, ConnectError> {
        let (tls, pin) = trust::tls_config(&options.trust, addr, ALPN_QUIVER)?;
        let (ws_tls, ws_pin) = trust::tls_config(&options.trust, addr, b"http/1.1")?;
        let config = quiver_transport::tls::client_config(tls, &options.tuning).map_err(trust::TrustError::from)?;
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(ConnectError::Socket)?;
        let qlog = options.qlog_dir.clone().map(|dir| (dir, options.tuning.clone()));
        let ws_tls = Arc::new(ws_tls);
        Ok(Target { addr, host: host.to_string(), endpoint, config, pin, ws_tls, ws_pin, qlog })
    }

    /// Happy eyeballs (RFC 8305's idea, for QUIC): a handshake to the first address, the next one started
    /// [`NEXT_ADDRESS_DELAY`] later or as soon as one fails; the first to complete wins and the others are dropped.
    /// A host whose first address does not answer (`localhost` as 127.0.0.1 for a server on `[::1]`) connects
    /// through the next. A fatal failure (a pin mismatch) ends it at once; at `timeout`, the first address's
    /// error, or `Timeout` when none failed.
    pub(crate) async fn race(
        targets: Vec<Target>,
        timeout: Duration,
    ) -> Result<(Target, quinn::Connection), ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: std::collections::VecDeque<(usize, Target)> = targets.into_iter().enumerate().collect();
        let mut attempts = tokio::task::JoinSet::new();
        let start = |attempts: &mut tokio::task::JoinSet<_>, (i, target): (usize, Target)| {
            attempts.spawn(async move {
                let result = target.handshake().await;
                (i, target, result)
            });
        };
        let mut next_at = tokio::time::Instant::now();
        let mut first_error: Option<(usize, ConnectError)> = None;
        loop {
            if attempts.is_empty() {
                match pending.pop_front() {
                    Some(next) => {
                        start(&mut attempts, next);
                        next_at = tokio::time::Instant::now() + NEXT_ADDRESS_DELAY;
                    }
                    None => break,
                }
            }
            tokio::select! {
                done = attempts.join_next() => match done {
                    Some(Ok((_, target, Ok(quic)))) => return Ok((target, quic)),
                    Some(Ok((i, _, Err(err)))) => {
                        if err.is_fatal() {
                            return Err(err);
                        }
                        if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                            first_error = Some((i, err));
                        }
                        // A failure starts the next address at once.
                        if let Some(next) = pending.pop_front() {
                            start(&mut attempts, next);
                            next_at = tokio::time::Instant::now() + NEXT_ADDRESS_DELAY;
                        }
                    }
                    _ => {}
                },
                () = tokio::time::sleep_until(next_at), if !pending.is_empty() => {
                    if let Some(next) = pending.pop_front() {
                        start(&mut attempts, next);
                    }
                    next_at = tokio::time::Instant::now() + NEXT_ADDRESS_DELAY;
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(first_error.map_or(ConnectError::Timeout(timeout), |(_, err)| err))
    }

    /// The QUIC handshake, with a pin mismatch reported as such.
    async fn handshake(&self) -> Result<quinn::Connection, ConnectError> {
        let mut config = self.config.clone();
        if let Some((dir, tuning)) = &self.qlog {
            let mut transport = quiver_transport::client_transport(&quiver_proto::Limits::default(), tuning);
            let id = format!("client-{:016x}", rand::random::<u64>());
            quiver_transport::qlog::attach(&mut transport, dir, &id, format!("quiver {id} to {}", self.addr));
            config.transport_config(transport);
        }
        let connecting = self.endpoint.connect_with(config, self.addr, &self.host)?;
        connecting.await.map_err(|err| {
            match self.pin.as_ref().and_then(|(expected, report)| Some((*expected, report.mismatch()?))) {
                Some((expected, presented)) => ConnectError::PinMismatch { expected, presented },
                None => ConnectError::Connection(err),
            }
        })
    }
}

impl Target {
    /// Connects to one of `targets` over `options.transport` within `timeout`: QUIC (happy eyeballs,
    /// [`Target::race`]), the WebSocket, or (`Auto`) QUIC for `options.fallback_after` and then the WebSocket.
    /// `websocket_first`: an `Auto` client that needed the WebSocket before goes straight to it.
    pub(crate) async fn connect(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
        websocket_first: bool,
    ) -> Result<(Target, Link), ConnectError> {
        match (options.transport, websocket_first) {
            (Transport::Quic, _) => Target::race(targets, timeout).await.map(|(t, quic)| (t, Link::Quic(quic))),
            (Transport::WebSocket, _) | (Transport::Auto, true) => Target::race_ws(targets, options, timeout).await,
            (Transport::Auto, false) => Target::quic_then_websocket(targets, options, timeout).await,
        }
    }

    /// `Auto`: QUIC for the whole `timeout`, and the WebSocket too from `options.fallback_after` (at most half the
    /// timeout) or as soon as QUIC fails; the first through wins and the other attempt is dropped. A QUIC that is
    /// merely slow (a lossy first handshake) still wins where the server has no WebSocket. When both fail: a
    /// refusal or pin mismatch over the WebSocket, else QUIC's error.
    async fn quic_then_websocket(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let started = tokio::time::Instant::now();
        let quic_failed = tokio::sync::Notify::new();
        let again = targets.clone();
        let quic = Target::race(targets, timeout);
        let websocket = async {
            tokio::select! {
                () = tokio::time::sleep(options.fallback_after.min(timeout / 2)) => {}
                () = quic_failed.notified() => {}
            }
            tracing::info!("QUIC is not through yet; trying the WebSocket fallback too");
            Target::race_ws(again, options, timeout.saturating_sub(started.elapsed())).await
        };
        tokio::pin!(quic, websocket);
        let (mut quic_err, mut ws_err) = (None, None);
        loop {
            tokio::select! {
                done = &mut quic, if quic_err.is_none() => match done {
                    Ok((target, quic)) => return Ok((target, Link::Quic(quic))),
                    Err(err) if err.is_fatal() => return Err(err),
                    Err(err) => {
                        quic_failed.notify_one();
                        quic_err = Some(err);
                    }
                },
                done = &mut websocket, if ws_err.is_none() => match done {
                    Ok(found) => return Ok(found),
                    Err(err) => ws_err = Some(err),
                },
            }
            match (quic_err.take(), ws_err.take()) {
                (Some(quic), Some(websocket)) => {
                    tracing::info!(%websocket, "the WebSocket fallback did not connect either");
                    return Err(if websocket.is_fatal() { websocket } else { quic });
                }
                (quic, websocket) => (quic_err, ws_err) = (quic, websocket),
            }
        }
    }

    /// The WebSocket to each address in turn, the first that connects within `timeout` wins.
    async fn race_ws(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first_error = None;
        for target in targets {
            match tokio::time::timeout_at(deadline, target.websocket(options)).await {
                Ok(Ok(ws)) => return Ok((target, Link::Ws(ws))),
                Ok(Err(err)) if err.is_fatal() => return Err(err),
                Ok(Err(err)) => {
                    first_error.get_or_insert(err);
                }
                Err(_) => break,
            }
        }
        Err(first_error.unwrap_or(ConnectError::Timeout(timeout)))
    }

    /// TCP, TLS (the same trust as QUIC) and the upgrade to `wss://addr:port/quiver`, port the QUIC one unless
    /// `options.websocket_port` says otherwise.
    async fn websocket(&self, options: &ConnectOptions) -> Result<WsSession, ConnectError> {
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Error};
        let failed = |what: &str, err: &dyn std::fmt::Display| ConnectError::WebSocket(format!("{what}: {err}"));
        let addr = SocketAddr::new(self.addr.ip(), options.websocket_port.unwrap_or(self.addr.port()));
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|err| failed(&format!("TCP to {addr}"), &err))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|err| failed(&format!("server name {:?}", self.host), &err))?;
        let connector = tokio_rustls::TlsConnector::from(self.ws_tls.clone());
        let tls = connector.connect(name, tcp).await.map_err(|err| {
            match self.ws_pin.as_ref().and_then(|(expected, report)| Some((*expected, report.mismatch()?))) {
                Some((expected, presented)) => ConnectError::PinMismatch { expected, presented },
                None => failed("TLS", &err),
            }
        })?;
        let mut request =
            format!("wss://{addr}{}", ws::PATH).into_client_request().map_err(|err| failed("URL", &err))?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        let config = WsConfig::default();
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
