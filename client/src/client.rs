//! The quinn driver: connects, says Hello, then sends requests on the control stream from the caller's task and
//! reads replies in a spawned task (measured here: driving quinn from `block_on` instead of spawned tasks costs
//! about 4x the round-trip time).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::BytesMut;
use quiver_proto::{
    ErrorCode, Failure, FrameCodec, Hello, Limits, Reply, Request, RequestBody, ServerMsg, Welcome, ALPN_QUIVER,
    PROTOCOL_VERSION,
};
use tokio::sync::oneshot;

use crate::{requests::Outstanding, trust, ConnectError, RequestError, TrustOptions};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Which certificate to accept.
    pub trust: TrustOptions,
    /// The name to be known by in rooms, where the server allows it.
    pub name: Option<String>,
    /// Access token, where the server requires one.
    pub token: Option<String>,
    /// Time allowed for QUIC handshake plus Hello/Welcome.
    pub connect_timeout: Duration,
    /// The protocol version announced in Hello. Leave at [`PROTOCOL_VERSION`]; other values exist to test
    /// servers' version negotiation.
    pub protocol_version: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: TrustOptions::default(),
            name: None,
            token: None,
            connect_timeout: Duration::from_secs(10),
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

type Waiter = oneshot::Sender<Result<Reply, RequestError>>;

/// A connected Quiver session. Cheap to clone; all clones share the connection. Dropping the last clone closes it.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    welcome: Welcome,
    server: SocketAddr,
    codec: FrameCodec,
    send: tokio::sync::Mutex<quinn::SendStream>,
    outstanding: Arc<Mutex<Outstanding<Waiter>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        crate::close(&self.conn, ErrorCode::NoError, "client closed");
    }
}

impl Client {
    /// Connects to `server` (`host:port`), trusting its certificate as `trust` says, and opens the session.
    pub async fn connect(server: &str, trust: TrustOptions) -> Result<Client, ConnectError> {
        Client::connect_with(server, ConnectOptions { trust, ..ConnectOptions::default() }).await
    }

    /// Connects with every option spelled out.
    pub async fn connect_with(server: &str, options: ConnectOptions) -> Result<Client, ConnectError> {
        let timeout = options.connect_timeout;
        tokio::time::timeout(timeout, connect(server, options)).await.map_err(|_| ConnectError::Timeout(timeout))?
    }

    /// The server's Welcome: session id, identity, limits.
    pub fn welcome(&self) -> &Welcome {
        &self.shared.welcome
    }

    /// The limits the server enforces on this connection.
    pub fn limits(&self) -> &Limits {
        &self.shared.welcome.limits
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.shared.server
    }

    /// The underlying QUIC connection (statistics, RTT estimate).
    pub fn connection(&self) -> &quinn::Connection {
        &self.shared.conn
    }

    /// One Ping/Pong round trip on the control stream.
    pub async fn ping(&self) -> Result<Pong, RequestError> {
        let sent = Instant::now();
        let client_time_us = unix_us();
        match self.request(RequestBody::Ping { client_time_us }).await? {
            Reply::Pong { server_time_us, .. } => Ok(Pong { rtt: sent.elapsed(), client_time_us, server_time_us }),
            other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Sends one request on the control stream and waits for its reply.
    pub async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        let shared = &self.shared;
        let (tx, rx) = oneshot::channel();
        let req_id = lock(&shared.outstanding).start(tx).map_err(closed)?;
        // Whatever happens to this future, the request stops being outstanding.
        let guard = Abandon { outstanding: &shared.outstanding, req_id };
        let frame = shared.codec.encode_to_vec(&Request { req_id, body }).map_err(RequestError::Encode)?;
        {
            let mut send = shared.send.lock().await;
            if let Err(err) = send.write_all(&frame).await {
                let why = self.close_reason().unwrap_or((ErrorCode::Internal, err.to_string()));
                return Err(closed(why));
            }
        }
        let reply = rx.await.unwrap_or_else(|_| Err(closed((ErrorCode::Internal, "reader stopped".into()))));
        drop(guard);
        reply
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<(ErrorCode, String)> {
        self.shared.conn.close_reason().map(|e| quiver_server::net::close::describe(&e))
    }

    /// Waits until the connection is closed (by either side) and says why.
    pub async fn closed(&self) -> (ErrorCode, String) {
        let err = self.shared.conn.closed().await;
        quiver_server::net::close::describe(&err)
    }

    /// Closes the connection with `NoError` and waits (briefly) for the server to learn of it.
    pub async fn close(self) {
        crate::close(&self.shared.conn, ErrorCode::NoError, "client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

/// A Ping's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// Round-trip time measured by the client.
    pub rtt: Duration,
    /// The client's clock when it sent the ping (µs since the Unix epoch).
    pub client_time_us: u64,
    /// The server's clock when it answered.
    pub server_time_us: u64,
}

struct Abandon<'a> {
    outstanding: &'a Mutex<Outstanding<Waiter>>,
    req_id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        lock(self.outstanding).abandon(self.req_id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn closed((code, reason): (ErrorCode, String)) -> RequestError {
    RequestError::Closed { code, reason }
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn resolve(server: &str) -> Result<(SocketAddr, String), ConnectError> {
    let resolve_err = |source| ConnectError::Resolve { server: server.to_string(), source };
    let addr = tokio::net::lookup_host(server)
        .await
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| resolve_err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
    // The TLS server name: the host part as written ("localhost", "example.com", "127.0.0.1", "::1").
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    Ok((addr, host.trim_start_matches('[').trim_end_matches(']').to_string()))
}

async fn connect(server: &str, options: ConnectOptions) -> Result<Client, ConnectError> {
    let (addr, host) = resolve(server).await?;
    let (tls, pin) = trust::tls_config(&options.trust, addr, ALPN_QUIVER)?;
    let config = trust::quic_config(tls);
    let default_limits = Limits::default();
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| ConnectError::Socket(std::io::Error::other("unparsable wildcard address")))?;
    let endpoint = quinn::Endpoint::client(bind).map_err(ConnectError::Socket)?;
    let conn = match endpoint.connect_with(config, addr, &host)?.await {
        Ok(conn) => conn,
        Err(err) => {
            return Err(match pin.and_then(|(expected, report)| Some((expected, report.mismatch()?))) {
                Some((expected, presented)) => ConnectError::PinMismatch { expected, presented },
                None => ConnectError::Connection(err),
            })
        }
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    let codec = FrameCodec::new(default_limits.max_frame as usize);
    let hello = Hello {
        version: options.protocol_version,
        agent: concat!("quiver-client/", env!("CARGO_PKG_VERSION")).into(),
        name: options.name,
        token: options.token,
    };
    let frame = codec
        .encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) })
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    send.write_all(&frame).await.map_err(|e| ConnectError::Protocol(format!("sending Hello: {e}")))?;

    let mut inbound = BytesMut::new();
    let welcome = loop {
        match codec.decode::<ServerMsg>(&mut inbound) {
            Ok(Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(welcome)) })) => break welcome,
            Ok(Some(ServerMsg::Reply { req_id: 0, result: Err(failure) })) => {
                crate::close(&conn, ErrorCode::NoError, "refused");
                return Err(ConnectError::Refused(failure));
            }
            Ok(Some(other)) => return Err(ConnectError::Protocol(format!("expected Welcome, got {other:?}"))),
            Ok(None) => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(ConnectError::Protocol("server finished the control stream".into())),
                Err(quinn::ReadError::ConnectionLost(err)) => return Err(ConnectError::Connection(err)),
                Err(err) => return Err(ConnectError::Protocol(format!("reading Welcome: {err}"))),
            },
            Err(err) => return Err(ConnectError::Protocol(format!("undecodable reply to Hello: {err}"))),
        }
    };
    // The server may open one stream per room it allows.
    conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(welcome.limits.max_rooms.saturating_add(1)));
    let codec = FrameCodec::new(welcome.limits.max_frame as usize);
    let outstanding = Arc::new(Mutex::new(Outstanding::new(1)));
    tokio::spawn(read_replies(conn.clone(), recv, inbound, codec, outstanding.clone()));
    let shared =
        Shared { conn, endpoint, welcome, server: addr, codec, send: tokio::sync::Mutex::new(send), outstanding };
    Ok(Client { shared: Arc::new(shared) })
}

/// Reads the control stream until it ends, completing waiters; then fails whatever is still outstanding.
async fn read_replies(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    mut inbound: BytesMut,
    codec: FrameCodec,
    outstanding: Arc<Mutex<Outstanding<Waiter>>>,
) {
    let mut going_away = None;
    let why = loop {
        match codec.decode::<ServerMsg>(&mut inbound) {
            Ok(Some(ServerMsg::Reply { req_id, result })) => {
                if let Some(waiter) = lock(&outstanding).complete(req_id) {
                    let _ = waiter.send(result.map_err(RequestError::Failed));
                }
            }
            Ok(Some(ServerMsg::GoAway { code, reason })) => {
                tracing::info!(%code, %reason, "server is going away");
                going_away = Some((code, reason));
            }
            Ok(Some(ServerMsg::Kicked { room, code, reason })) => {
                tracing::warn!(?room, %code, %reason, "kicked");
            }
            Ok(Some(ServerMsg::Error(Failure { code, message }))) => {
                tracing::warn!(%code, %message, "server error");
            }
            Ok(None) => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    break going_away.unwrap_or((ErrorCode::NoError, "server finished the control stream".into()))
                }
                Err(quinn::ReadError::ConnectionLost(err)) => break quiver_server::net::close::describe(&err),
                Err(err) => break (ErrorCode::Internal, format!("control stream: {err}")),
            },
            Err(err) => {
                crate::close(&conn, err.code(), &err.to_string());
                break (err.code(), format!("server sent an undecodable frame: {err}"));
            }
        }
    };
    // A finished stream usually means a close follows; prefer its reason.
    let why = match conn.close_reason() {
        Some(err) => quiver_server::net::close::describe(&err),
        None => why,
    };
    tracing::debug!(code = %why.0, reason = %why.1, "control stream ended");
    for waiter in lock(&outstanding).close(why.clone()) {
        let _ = waiter.send(Err(closed(why.clone())));
    }
}
