//! One connection to the server: QUIC handshake, Hello/Welcome, then requests on the control stream (written from
//! the caller's task, replies read by a spawned task) and room streams accepted as the server opens them.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
};

use bytes::BytesMut;
use quiver_proto::{
    ErrorCode, Failure, FrameCodec, Hello, Reply, Request, RequestBody, ServerMsg, TickHeader, Welcome, ALPN_QUIVER,
};
use quiver_transport::TailProbe;
use tokio::sync::oneshot;

use crate::{requests::Outstanding, ticks::SubShared, trust, ConnectError, ConnectOptions, RequestError};

/// Numbers sessions, so that what was set up on one connection (a publish claim) is not used on the next.
static SESSION_IDS: AtomicUsize = AtomicUsize::new(1);

pub(crate) type Waiter = oneshot::Sender<Result<Reply, RequestError>>;

/// A live (or just closed) connection and its control stream.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: usize,
    pub(crate) conn: quinn::Connection,
    pub(crate) welcome: Welcome,
    /// Subscriptions by their channel id on this connection.
    pub(crate) ticks: Mutex<HashMap<u64, Arc<SubShared>>>,
    codec: FrameCodec,
    send: tokio::sync::Mutex<quinn::SendStream>,
    outstanding: Arc<Mutex<Outstanding<Waiter>>>,
    /// An empty datagram shortly after each request, so a lost request is detected without waiting for the next.
    probe: Arc<TailProbe>,
    _probe_task: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// Where to connect and how, resolved once.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) config: quinn::ClientConfig,
    pub(crate) pin: Option<(quiver_certs::Fingerprint, trust::PinReport)>,
}

impl Target {
    pub(crate) async fn resolve(server: &str, options: &ConnectOptions) -> Result<Target, ConnectError> {
        let resolve_err = |source| ConnectError::Resolve { server: server.to_string(), source };
        let addr = tokio::net::lookup_host(server)
            .await
            .map_err(resolve_err)?
            .next()
            .ok_or_else(|| resolve_err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
        // The TLS server name: the host part as written ("localhost", "example.com", "127.0.0.1", "::1").
        let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let (tls, pin) = trust::tls_config(&options.trust, addr, ALPN_QUIVER)?;
        let config = trust::quic_config(tls, &options.tuning);
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(ConnectError::Socket)?;
        Ok(Target { addr, host, endpoint, config, pin })
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn closed((code, reason): (ErrorCode, String)) -> RequestError {
    RequestError::Closed { code, reason }
}

impl Session {
    /// Connects and says Hello. On success, the control stream's reader is running; room streams are handed to
    /// `on_room_stream`.
    pub(crate) async fn open(
        target: &Target,
        options: &ConnectOptions,
        clock_offset_us: Arc<AtomicI64>,
        on_room_stream: impl Fn(quinn::RecvStream, usize) + Send + 'static,
    ) -> Result<Arc<Session>, ConnectError> {
        let connecting = target.endpoint.connect_with(target.config.clone(), target.addr, &target.host)?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(err) => {
                let mismatch = target.pin.as_ref().and_then(|(expected, report)| Some((*expected, report.mismatch()?)));
                return Err(match mismatch {
                    Some((expected, presented)) => ConnectError::PinMismatch { expected, presented },
                    None => ConnectError::Connection(err),
                });
            }
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        let codec = FrameCodec::new(quiver_proto::Limits::default().max_frame as usize);
        let hello = Hello {
            version: options.protocol_version,
            agent: concat!("quiver-client/", env!("CARGO_PKG_VERSION")).into(),
            name: options.name.clone(),
            token: match (&options.token, &options.token_provider) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(provider)) => {
                    Some(provider.token().map_err(|e| ConnectError::Protocol(format!("cannot get a token: {e}")))?)
                }
                (None, None) => None,
            },
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
        // The server may open one stream per room it allows (+1 for a room being left and rejoined).
        conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(welcome.limits.max_rooms.saturating_add(1)));
        let codec = FrameCodec::new(welcome.limits.max_frame as usize);
        let outstanding = Arc::new(Mutex::new(Outstanding::new(1)));
        tokio::spawn(read_replies(conn.clone(), recv, inbound, codec, outstanding.clone()));
        tokio::spawn(accept_room_streams(conn.clone(), on_room_stream));
        let send = tokio::sync::Mutex::new(send);
        let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
        let probing = conn.clone();
        let (probe, _probe_task) = TailProbe::start(options.tuning.tail_probe, move || {
            probing.send_datagram(bytes::Bytes::from_static(quiver_proto::PROBE)).is_ok()
        });
        let session = Arc::new(Session {
            id,
            conn,
            welcome,
            ticks: Mutex::default(),
            codec,
            send,
            outstanding,
            probe,
            _probe_task,
        });
        tokio::spawn(read_datagrams(session.conn.clone(), Arc::downgrade(&session), clock_offset_us));
        Ok(session)
    }

    /// Writes one request; the receiver gets its reply (or why it will not come).
    pub(crate) async fn send(
        &self,
        body: RequestBody,
    ) -> Result<oneshot::Receiver<Result<Reply, RequestError>>, RequestError> {
        let (tx, rx) = oneshot::channel();
        let req_id = lock(&self.outstanding).start(tx).map_err(closed)?;
        let frame = match self.codec.encode_to_vec(&Request { req_id, body }) {
            Ok(frame) => frame,
            Err(err) => {
                lock(&self.outstanding).abandon(req_id);
                return Err(RequestError::Encode(err));
            }
        };
        let mut send = self.send.lock().await;
        if let Err(err) = send.write_all(&frame).await {
            lock(&self.outstanding).abandon(req_id);
            return Err(closed(self.close_reason().unwrap_or((ErrorCode::Internal, err.to_string()))));
        }
        self.probe.sent();
        Ok(rx)
    }

    /// Sends one request and waits for its reply.
    pub(crate) async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        let rx = self.send(body).await?;
        rx.await.unwrap_or_else(|_| Err(closed((ErrorCode::Internal, "reply reader stopped".into()))))
    }

    pub(crate) fn close_reason(&self) -> Option<(ErrorCode, String)> {
        self.conn.close_reason().map(|e| quiver_transport::close::describe(&e))
    }
}

/// Routes tick datagrams to their subscriptions; anything undecodable or unknown is dropped.
async fn read_datagrams(conn: quinn::Connection, session: Weak<Session>, clock_offset_us: Arc<AtomicI64>) {
    while let Ok(datagram) = conn.read_datagram().await {
        if quiver_proto::is_probe(&datagram) {
            continue; // a tail-loss probe (quiver_transport::probe): it only elicits an ACK
        }
        let now = crate::client::unix_us().saturating_add_signed(clock_offset_us.load(Ordering::Relaxed));
        let Ok((header, payload)) = TickHeader::decode(&datagram) else {
            tracing::debug!("undecodable datagram dropped");
            continue;
        };
        let Some(session) = session.upgrade() else { return };
        let subscription = lock(&session.ticks).get(&header.channel_id).cloned();
        match subscription {
            Some(sub) => sub.on_tick(header, payload, now),
            None => tracing::debug!(channel_id = header.channel_id, "datagram for no subscription dropped"),
        }
    }
}

async fn accept_room_streams(conn: quinn::Connection, on_room_stream: impl Fn(quinn::RecvStream, usize)) {
    while let Ok(recv) = conn.accept_uni().await {
        on_room_stream(recv, conn.stable_id());
    }
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
                Err(quinn::ReadError::ConnectionLost(err)) => break quiver_transport::close::describe(&err),
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
        Some(err) => quiver_transport::close::describe(&err),
        None => why,
    };
    tracing::debug!(code = %why.0, reason = %why.1, "control stream ended");
    for waiter in lock(&outstanding).close(why.clone()) {
        let _ = waiter.send(Err(closed(why.clone())));
    }
}
