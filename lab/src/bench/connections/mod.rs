//! `quiver bench connections`: how many idle connections the server holds and what they cost. It opens `count`
//! Quiver sessions (QUIC handshake, then Hello/Welcome with a token) from client endpoints spread over `sockets`
//! UDP sockets, `in_flight` handshakes at a time, to a server in a process of its own ([`child`]), and reports:
//! the server's resident memory per connection, full handshakes per second, resumed handshakes per second (TLS
//! session tickets: `resumed` connections closed and opened again), the time to connect them all, and the server's
//! CPU while the connections idle (keep-alives only).

mod child;
mod report;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use futures_util::{stream, StreamExt};
use quiver_client::{TokenProvider, TrustOptions};
use quiver_proto::{FrameCodec, Hello, Reply, Request, RequestBody, ServerMsg, ALPN_QUIVER};

pub use child::serve as serve_connections_child;
use child::ServerProcess;
pub use report::ConnectionsReport;

use super::BenchError;

/// Settings of a connections run.
#[derive(Debug, Clone)]
pub struct ConnectionsConfig {
    /// Connections to open and hold.
    pub count: u32,
    /// Client UDP sockets (quinn endpoints) the connections are spread over.
    pub sockets: u32,
    /// Handshakes in flight at once.
    pub in_flight: u32,
    /// Connections closed and opened again with their session tickets (resumed handshakes), at most `count`.
    pub resumed: u32,
    /// How long the server's idle CPU is measured with every connection open.
    pub idle: Duration,
    /// The server process: a program that runs [`serve_connections_child`] (the CLI runs itself with a hidden
    /// subcommand), with its arguments.
    pub server_program: PathBuf,
    /// Its arguments; the bench appends the connection limit and the data directory.
    pub server_args: Vec<String>,
}

impl ConnectionsConfig {
    /// Refuses settings that cannot be run.
    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |field, value: u32, expected| Err(BenchError::BadConfig { field, value: f64::from(value), expected });
        if self.count == 0 {
            return bad("count", 0, "above 0");
        }
        if self.sockets == 0 {
            return bad("sockets", 0, "above 0");
        }
        if self.in_flight == 0 {
            return bad("in_flight", 0, "above 0");
        }
        if self.resumed > self.count {
            return bad("resumed", self.resumed, "at most count");
        }
        Ok(())
    }
}

/// Socket buffer size the bench asks for on its client sockets (the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`); the server asks for the same (`quiver_transport::tuning::SOCKET_BUFFER`).
const CLIENT_SOCKET_BUFFER: usize = quiver_transport::tuning::SOCKET_BUFFER;

/// One open session: its connection and control stream (dropping the stream would end the session).
struct Session {
    conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// Runs the connections benchmark; `progress` hears what it is doing.
pub async fn run_connections(
    config: ConnectionsConfig,
    progress: impl Fn(&str) + Send + Sync,
) -> Result<ConnectionsReport, BenchError> {
    config.check()?;
    progress("starting the server process");
    // Room for the resumed connections' overlap with the closing ones, and for the bench's own slack.
    let mut args = config.server_args.clone();
    args.push(config.count.saturating_add(config.resumed).saturating_add(64).to_string());
    // The server's data directory is the bench's: removed even when the server process has to be killed.
    let data_dir = crate::bench::private_tempdir(None).map_err(BenchError::io("temporary directory"))?;
    args.push(data_dir.path().display().to_string());
    let mut server = ServerProcess::start(&config.server_program, &args).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_bytes();
    let addr = server.ready.addr;
    let trust = TrustOptions::Pin(server.pin);
    let token = TokenProvider::dev(server.ready.data_dir.clone(), "bench-connections".into())
        .token()
        .await
        .map_err(|err| BenchError::io("dev token")(std::io::Error::other(err)))?;
    let (endpoints, granted) = client_endpoints(config.sockets)?;
    // One client configuration per connection, as one per client process: each keeps its own session tickets.
    progress("preparing client configurations");
    let mut configs = Vec::with_capacity(config.count as usize);
    for _ in 0..config.count {
        configs.push(quiver_client::quinn_client_config(&trust, addr, ALPN_QUIVER)?);
    }
    let open = |i: usize| {
        let (endpoint, client) = (endpoints[i % endpoints.len()].clone(), configs[i].clone());
        let token = token.clone();
        async move { open_session(&endpoint, client, addr, token).await }
    };
    progress(&format!("opening {} connections", config.count));
    let cpu_before = server.cpu();
    let started = Instant::now();
    let (mut sessions, failures, first_failure) =
        open_all((0..config.count as usize).collect(), config.in_flight, &open).await;
    let connect_time = started.elapsed();
    let handshake_cpu = child_spent(cpu_before, server.cpu());
    let opened = sessions.iter().flatten().count() as u32;
    if opened == 0 {
        // Nothing to measure: a report of zeros would read as a run (and exit 0).
        server.stop().await;
        let why = first_failure.unwrap_or_else(|| "no attempt was made".into());
        let why = format!("none of {} connections was opened; the first failure: {why}", config.count);
        return Err(BenchError::io("opening connections")(std::io::Error::other(why)));
    }
    progress("letting the connections settle");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_bytes();
    let stats_open = server.stats().await?;
    progress(&format!("measuring idle CPU for {:.0} s", config.idle.as_secs_f64()));
    let idle_before = server.cpu();
    tokio::time::sleep(config.idle).await;
    let idle_cpu = child_spent(idle_before, server.cpu());
    progress(&format!("closing {} connections and opening them again with their tickets", config.resumed));
    let again: Vec<usize> = (0..config.resumed as usize).filter(|i| sessions[*i].is_some()).collect();
    for &i in &again {
        if let Some(session) = sessions[i].take() {
            session.conn.close(0u32.into(), b"again");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (reopened, resume_failures, resume_failure) = open_all(again, config.in_flight, &open).await;
    let resume_time = started.elapsed();
    let stats_after = server.stats().await?;
    let resumed_ok = reopened.iter().flatten().count() as u32;
    drop(reopened);
    for session in sessions.into_iter().flatten() {
        session.conn.close(0u32.into(), b"done");
    }
    for endpoint in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    server.stop().await;
    Ok(ConnectionsReport::new(report::Measured {
        config: &config,
        opened,
        failures: failures + resume_failures,
        first_failure: first_failure.or(resume_failure),
        connect_time,
        handshake_cpu,
        rss_before,
        rss_after,
        stats_open,
        idle_cpu,
        resumed: resumed_ok,
        resume_time,
        tickets_accepted: stats_after.tls_tickets_accepted.saturating_sub(stats_open.tls_tickets_accepted),
        granted,
    }))
}

/// What the server process spent between two readings.
fn child_spent(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

/// `sockets` client endpoints on 127.0.0.1 with [`CLIENT_SOCKET_BUFFER`] asked for; the buffers granted (receive,
/// send), as the kernel reports them.
fn client_endpoints(sockets: u32) -> Result<(Vec<quinn::Endpoint>, (usize, usize)), BenchError> {
    let io = BenchError::io;
    let runtime =
        quinn::default_runtime().ok_or_else(|| io("client endpoints")(std::io::Error::other("no runtime")))?;
    let mut endpoints = Vec::new();
    let mut granted = (0, 0);
    for _ in 0..sockets {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
            .map_err(io("client socket"))?;
        // Best effort: the kernel caps (or, unprivileged, ignores above its maximum) what is asked.
        let _ = socket.set_recv_buffer_size(CLIENT_SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(CLIENT_SOCKET_BUFFER);
        granted = (socket.recv_buffer_size().unwrap_or(0), socket.send_buffer_size().unwrap_or(0));
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).map_err(io("client socket"))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.into(), runtime.clone())
            .map_err(io("client endpoint"))?;
        endpoints.push(endpoint);
    }
    Ok((endpoints, granted))
}

/// Opens the sessions `which` names, `in_flight` at a time; returns them (by index, `None` where it failed), how
/// many failed and the first failure.
async fn open_all<F>(
    which: Vec<usize>,
    in_flight: u32,
    open: &(impl Fn(usize) -> F + Sync),
) -> (Vec<Option<Session>>, u32, Option<String>)
where
    F: std::future::Future<Output = Result<Session, BenchError>>,
{
    let len = which.iter().max().map_or(0, |m| m + 1);
    let mut sessions: Vec<Option<Session>> = (0..len).map(|_| None).collect();
    let mut failures = 0;
    let mut first_failure = None;
    let mut results =
        stream::iter(which).map(|i| async move { (i, open(i).await) }).buffer_unordered(in_flight as usize);
    while let Some((i, result)) = results.next().await {
        match result {
            Ok(session) => sessions[i] = Some(session),
            Err(err) => {
                failures += 1;
                first_failure.get_or_insert_with(|| err.to_string());
            }
        }
    }
    (sessions, failures, first_failure)
}

/// A QUIC handshake and Hello/Welcome with `token`.
async fn open_session(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    token: String,
) -> Result<Session, BenchError> {
    let conn = endpoint.connect_with(config, addr, "localhost")?.await?;
    // A server that keeps the connection alive but never answers Hello must not hold the bench: the QUIC idle
    // timeout would never fire.
    match tokio::time::timeout(WELCOME_TIMEOUT, welcome(&conn, token)).await {
        Ok(control) => Ok(Session { conn, _control: control? }),
        Err(_) => Err(BenchError::io("hello")(std::io::Error::other(format!("no Welcome within {WELCOME_TIMEOUT:?}")))),
    }
}

/// How long a Hello may wait for its Welcome.
const WELCOME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Hello with `token` on a new control stream, and its Welcome: the stream, kept open for the session.
async fn welcome(
    conn: &quinn::Connection,
    token: String,
) -> Result<(quinn::SendStream, quinn::RecvStream), BenchError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let codec = FrameCodec::new(quiver_proto::Limits::default().max_frame as usize);
    let hello = Hello {
        version: quiver_proto::PROTOCOL_VERSION,
        agent: concat!("quiver-bench/", env!("CARGO_PKG_VERSION")).into(),
        name: None,
        token: Some(token),
    };
    let request = codec
        .encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) })
        .map_err(|err| BenchError::io("hello")(std::io::Error::other(err)))?;
    send.write_all(&request).await?;
    let mut inbound = BytesMut::new();
    loop {
        let decoded = codec.decode::<ServerMsg>(&mut inbound);
        match decoded {
            Ok(Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(_)) })) => break,
            Ok(None) => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                _ => return Err(BenchError::io("hello")(std::io::Error::other("the control stream ended"))),
            },
            Ok(Some(ServerMsg::Reply { result: Err(failure), .. })) => {
                let why =
                    format!("refused with {} ({}): {}", failure.code.name(), failure.code.to_u32(), failure.message);
                return Err(BenchError::io("hello")(std::io::Error::other(why)));
            }
            Ok(Some(other)) => {
                let what: String = format!("{other:?}").chars().take(120).collect();
                let why = format!("answered with something other than Welcome: {what}");
                return Err(BenchError::io("hello")(std::io::Error::other(why)));
            }
            Err(err) => return Err(BenchError::io("hello")(std::io::Error::other(err))),
        }
    }
    Ok((send, recv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_that_cannot_run_is_named() {
        let config = ConnectionsConfig {
            count: 10,
            sockets: 2,
            in_flight: 4,
            resumed: 10,
            idle: Duration::ZERO,
            server_program: "quiver".into(),
            server_args: Vec::new(),
        };
        assert!(config.check().is_ok());
        for (bad, field) in [
            (ConnectionsConfig { count: 0, resumed: 0, ..config.clone() }, "count"),
            (ConnectionsConfig { sockets: 0, ..config.clone() }, "sockets"),
            (ConnectionsConfig { in_flight: 0, ..config.clone() }, "in_flight"),
            (ConnectionsConfig { resumed: 11, ..config.clone() }, "resumed"),
        ] {
            let err = bad.check().unwrap_err();
            assert!(matches!(err, BenchError::BadConfig { field: f, .. } if f == field), "{err:?}");
        }
    }
}
