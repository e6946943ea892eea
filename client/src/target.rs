//! Where a client connects: the servers it was given, resolved to every address (each with its own QUIC endpoint
//! and TLS configurations), and how one is picked: happy eyeballs over QUIC, WebSocket (the fallback), or QUIC
//! first and WebSocket when QUIC does not get through ([`Transport`]).

use std::{net::SocketAddr, time::Duration};

use quiver_proto::ALPN_QUIVER;

use crate::{trust, wire::Link, ConnectError, ConnectOptions, Transport};

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
    pub(crate) host: String,
    pub(crate) endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    pin: Option<quiver_certs::Fingerprint>,
    /// The WebSocket fallback's TLS (ALPN http/1.1, the same trust), and its pin's report.
    #[cfg(feature = "websocket")]
    pub(crate) ws: crate::websocket::WsTls,
    /// Where each connection writes its qlog, with the tuning its transport is built from.
    qlog: Option<(std::path::PathBuf, quiver_transport::TransportTuning)>,
}

impl Target {
    /// Resolves `servers` (`host:port`, or `host` for port [`DEFAULT_PORT`]; several separated by commas: the
    /// nodes of a cluster) to every address they name, each with its own endpoint, in the order given and the
    /// resolver's order. A name that does not resolve is skipped while another does.
    ///
    /// Every name is resolved at once, and once one has resolved the others have a quarter of `connect_timeout`
    /// more: one after the other, a name whose DNS server does not answer (glibc waits 5 s a try) held back every
    /// other, and the connect timed out with healthy nodes listed, even one listed first (until 2026-12-07, a
    /// review's find). A single name, or names none of which has resolved yet, take as long as they take (the
    /// connect's own timeout bounds them).
    pub(crate) async fn resolve_all(servers: &str, options: &ConnectOptions) -> Result<Vec<Target>, ConnectError> {
        let grace = options.connect_timeout / 4;
        let names: Vec<&str> = servers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let (resolved_one, _) = tokio::sync::watch::channel(false);
        let resolved_one = &resolved_one;
        let resolved = crate::sync::join_all(names.iter().map(|&server| async move {
            let mut others = resolved_one.subscribe();
            let late = async {
                let _ = others.wait_for(|resolved| *resolved).await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                resolved = Target::resolve(server, options) => {
                    if resolved.is_ok() {
                        resolved_one.send_replace(true);
                    }
                    resolved
                }
                () = late => Err(ConnectError::Resolve {
                    server: server.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {grace:?} of another name's"),
                    ),
                }),
            }
        }))
        .await;
        let mut targets = Vec::new();
        let mut first_error = None;
        for (server, resolved) in names.into_iter().zip(resolved) {
            match resolved {
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
            None => {
                #[cfg(test)]
                let with_port = test_resolver(&host, with_port).await;
                let found = tokio::net::lookup_host(&with_port).await.map_err(resolve_err)?;
                found.collect()
            }
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
        let (tls, pin) = trust::tls_config(&options.trust, addr, ALPN_QUIVER, true)?;
        let config = quiver_transport::tls::client_config(tls, &options.tuning).map_err(trust::TrustError::from)?;
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(ConnectError::Socket)?;
        let qlog = options.qlog_dir.clone().map(|dir| (dir, options.tuning.clone()));
        Ok(Target {
            addr,
            host: host.to_string(),
            endpoint,
            config,
            pin,
            #[cfg(feature = "websocket")]
            ws: crate::websocket::WsTls::new(&options.trust, addr)?,
            qlog,
        })
    }

    /// Happy eyeballs (RFC 8305's idea, for QUIC): a handshake to the first address, the next one started
    /// [`NEXT_ADDRESS_DELAY`] later or as soon as one fails; the first to complete wins and the others are dropped.
    /// A host whose first address does not answer (`localhost` as 127.0.0.1 for a server on `[::1]`) connects
    /// through the next. A fatal failure (a pin mismatch) is the answer only if no other address connects; at
    /// `timeout`, that failure, else the first address's error, or `Timeout` when none failed.
    pub(crate) async fn race(
        targets: Vec<Target>,
        timeout: Duration,
    ) -> Result<(Target, quinn::Connection), ConnectError> {
        Target::race_with(targets, timeout, |target| async move {
            let result = target.handshake().await;
            (target, result)
        })
        .await
    }

    /// [`Target::race`] of `attempt` (a QUIC handshake, or a WebSocket's TCP, TLS and upgrade) to each target.
    pub(crate) async fn race_with<T, A, F>(
        targets: Vec<Target>,
        timeout: Duration,
        attempt: A,
    ) -> Result<(Target, T), ConnectError>
    where
        T: Send + 'static,
        A: Fn(Target) -> F,
        F: std::future::Future<Output = (Target, Result<T, ConnectError>)> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: std::collections::VecDeque<(usize, Target)> = targets.into_iter().enumerate().collect();
        let mut attempts = tokio::task::JoinSet::new();
        let start = |attempts: &mut tokio::task::JoinSet<_>, (i, target): (usize, Target)| {
            let attempt = attempt(target);
            attempts.spawn(async move {
                let (target, result) = attempt.await;
                (i, target, result)
            });
        };
        let mut next_at = tokio::time::Instant::now();
        let mut first_error: Option<(usize, ConnectError)> = None;
        // A fatal error from one address (its certificate not the pinned one) is the answer only once no other
        // address connects: a cluster's node mid-way through a certificate change must not end the client while
        // the others serve (the race stopped at it).
        let mut fatal: Option<ConnectError> = None;
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
                    Some(Ok((_, target, Ok(found)))) => return Ok((target, found)),
                    Some(Ok((i, _, Err(err)))) => {
                        if err.is_fatal() {
                            fatal.get_or_insert(err);
                        } else if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
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
        let first_error = first_error.map(|(_, err)| err);
        // An address still being tried at the deadline, or not tried at all (a node down: quinn hears no ICMP, so
        // its handshake fails only at the idle timeout): not every address answered.
        let unanswered = !attempts.is_empty() || !pending.is_empty();
        Err(match (fatal, first_error) {
            (Some(fatal @ ConnectError::PinMismatch { .. }), _) if unanswered => {
                tracing::warn!(%fatal, "an address presented another certificate; another did not answer");
                ConnectError::Timeout(timeout)
            }
            // A certificate not the pinned one from one address, while another failed for now (down, restarting):
            // not the answer, whose error ends a reconnecting client for good, until no address is left that
            // could still serve (the supervisor tries them again). The failure for now is.
            (Some(fatal @ ConnectError::PinMismatch { .. }), Some(for_now)) => {
                tracing::warn!(%fatal, "an address presented another certificate; the others failed for now");
                for_now
            }
            (Some(fatal), _) => fatal,
            (None, Some(for_now)) => for_now,
            (None, None) => ConnectError::Timeout(timeout),
        })
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
            // (Only this client's own TLS error, never a peer's close reason, says what was presented.)
            let ours = match &err {
                quinn::ConnectionError::TransportError(ours) => Some(ours.reason.as_str()),
                _ => None,
            };
            match (self.pin, ours.and_then(trust::presented_in)) {
                (Some(expected), Some(presented)) => ConnectError::PinMismatch { expected, presented },
                _ => ConnectError::Connection(err),
            }
        })
    }
}

impl Target {
    /// Connects to one of `targets` over `options.transport` within `timeout`: QUIC (happy eyeballs,
    /// [`Target::race`]), the WebSocket, or (`Auto`) QUIC and then the WebSocket too. `websocket_first`: an `Auto`
    /// client whose WebSocket won the last time tries it and QUIC at once. Without the `websocket` feature, `Auto`
    /// is QUIC.
    pub(crate) async fn connect(
        targets: Vec<Target>,
        options: &ConnectOptions,
        timeout: Duration,
        websocket_first: bool,
    ) -> Result<(Target, Link), ConnectError> {
        match (options.transport, websocket_first) {
            #[cfg(feature = "websocket")]
            (Transport::WebSocket, _) => Target::race_ws(targets, options, timeout).await,
            #[cfg(feature = "websocket")]
            (Transport::Auto, true) => Target::websocket_then_quic(targets, options, timeout).await,
            #[cfg(feature = "websocket")]
            (Transport::Auto, false) => Target::quic_then_websocket(targets, options, timeout).await,
            #[cfg(not(feature = "websocket"))]
            (Transport::WebSocket, _) => {
                Err(ConnectError::WebSocket("this quiver-client was built without its `websocket` feature".into()))
            }
            _ => {
                Target::race(targets, timeout).await.map(|(t, quic)| (t, Link::Quic(crate::wire::QuicLink::new(quic))))
            }
        }
    }

    /// The first connection: every resolved address raced (over the transport the options choose), within the
    /// connect timeout; tried again with `backoff` until `deadline` (`first_connect_retry`'s) passes, unless the
    /// failure is fatal.
    pub(crate) async fn first(
        server: &str,
        options: &ConnectOptions,
        deadline: Option<tokio::time::Instant>,
        backoff: &mut crate::state::backoff::Backoff,
    ) -> Result<(Target, Link), ConnectError> {
        loop {
            let err = match Target::once(server, options, &[], options.connect_timeout).await {
                Ok(found) => return Ok(found),
                Err(err) => err,
            };
            if !Target::pause(&err, deadline, backoff).await {
                return Err(err);
            }
        }
    }

    /// One race of the addresses `server` resolves to, except those in `avoid` (servers that took the handshake
    /// but not the session), within `timeout`: a `Resolve` error ("no other address to try") when none is left.
    pub(crate) async fn once(
        server: &str,
        options: &ConnectOptions,
        avoid: &[SocketAddr],
        timeout: Duration,
    ) -> Result<(Target, Link), ConnectError> {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, Target::resolve_all(server, options)).await {
            Ok(Ok(mut targets)) => {
                targets.retain(|target| !avoid.contains(&target.addr));
                if targets.is_empty() {
                    return Err(ConnectError::Resolve {
                        server: server.to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no other address to try"),
                    });
                }
                Target::connect(targets, options, timeout.saturating_sub(started.elapsed()), false).await
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    /// After a failed first connect (`err`): waits the backoff's next delay and returns true if `deadline` leaves
    /// time for another attempt and the failure is not fatal; false at once otherwise.
    pub(crate) async fn pause(
        err: &ConnectError,
        deadline: Option<tokio::time::Instant>,
        backoff: &mut crate::state::backoff::Backoff,
    ) -> bool {
        let delay = backoff.next_delay(rand::random());
        match deadline {
            Some(deadline) if !err.is_fatal() && tokio::time::Instant::now() + delay < deadline => {
                tracing::info!(%err, attempt = backoff.attempts(), "first connect failed; trying again");
                tokio::time::sleep(delay).await;
                true
            }
            _ => false,
        }
    }
}

/// Tests: a name whose resolver never answers (`*.hang.test`), and one that answers as 127.0.0.1 after 300 ms
/// (`*.slow.test`).
#[cfg(test)]
async fn test_resolver(host: &str, with_port: String) -> String {
    if host.ends_with(".hang.test") {
        std::future::pending::<()>().await;
    }
    if !host.ends_with(".slow.test") {
        return with_port;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    with_port.replacen(host, "127.0.0.1", 1)
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
