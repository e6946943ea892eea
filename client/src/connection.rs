//! One connection to the server: the QUIC handshake, Hello/Welcome, then requests on the control stream (written
//! from the caller's task, replies read by a reader task), and what the server opens, sends or pushes handed to a
//! [`Handler`] (the driver). Every task it starts runs on the tracker it is given and ends with the connection.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use quiver_proto::{
    copies::{self, Copy, CopyQueue, CopyTarget},
    ErrorCode, FrameCodec, Hello, Reply, Request, RequestBody, ServerMsg, TickHeader, Welcome, ALPN_QUIVER,
};
use quiver_transport::{close::describe, TailProbe};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::{
    error::ProtocolError,
    state::requests::Outstanding,
    sync::lock,
    trust::{self, PinReport},
    ConnectError, ConnectOptions, RequestError,
};

/// Numbers connections, so that what was set up on one (a publish claim) is not used on the next.
static CONNECTION_IDS: AtomicUsize = AtomicUsize::new(1);

type Waiter = oneshot::Sender<Result<Reply, RequestError>>;

/// What a connection hands to its owner.
pub(crate) trait Handler: Send + Sync + 'static {
    /// What a subscription's channel id on this connection leads to.
    type Route: Clone + Send + Sync + 'static;
    /// A tick datagram for a subscription.
    fn tick(&self, route: &Self::Route, header: TickHeader, payload: Bytes);
    /// The server opened a room stream.
    fn room_stream(&self, connection: usize, recv: quinn::RecvStream);
    /// The server pushed a message that answers no request (Kicked, GoAway, Error).
    fn pushed(&self, connection: usize, msg: ServerMsg);
    /// A datagram copy of frames of the room stream with `slot`, at positions from `first` (redundant delivery).
    fn room_copy(&self, connection: usize, slot: u64, first: u64, frames: Vec<Bytes>);
}

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
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    host: String,
    pub(crate) endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    pin: Option<(quiver_certs::Fingerprint, PinReport)>,
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
        let config = quiver_transport::tls::client_config(tls, &options.tuning).map_err(trust::TrustError::from)?;
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(ConnectError::Socket)?;
        let qlog = options.qlog_dir.clone().map(|dir| (dir, options.tuning.clone()));
        Ok(Target { addr, host: host.to_string(), endpoint, config, pin, qlog })
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

/// A live (or just closed) connection and its control stream.
#[derive(Debug)]
pub(crate) struct Connection<H: Handler> {
    pub(crate) id: usize,
    pub(crate) quic: quinn::Connection,
    pub(crate) welcome: Welcome,
    codec: FrameCodec,
    send: tokio::sync::Mutex<quinn::SendStream>,
    outstanding: Arc<Mutex<Outstanding<Waiter>>>,
    /// A probe datagram shortly after each request, so that a lost request is detected without waiting for the
    /// next one.
    probe: Arc<TailProbe>,
    /// Subscriptions by their channel id on this connection.
    routes: Mutex<HashMap<u64, H::Route>>,
    /// Requests written after Hello so far (the server numbers them the same way: a post copy names its post by its
    /// number, and the server takes it only once every earlier request was served).
    requests: AtomicU64,
    /// Rooms whose posts also go as datagram copies (their stream said it has copies), and where the copies wait
    /// for the probe timer.
    copy_rooms: Mutex<HashSet<String>>,
    copies: Arc<Mutex<CopyQueue>>,
}

impl<H: Handler> Connection<H> {
    /// Connects and says Hello. On success the connection's tasks run on `tasks`: the control stream's reader, the
    /// room stream acceptor, the datagram reader and the tail probe.
    /// `first`: a QUIC connection already made (by [`Target::race`]), else one is made now.
    pub(crate) async fn open(
        target: &Target,
        first: Option<quinn::Connection>,
        options: &ConnectOptions,
        handler: Weak<H>,
        tasks: &TaskTracker,
    ) -> Result<Arc<Connection<H>>, ConnectError> {
        let quic = match first {
            Some(quic) => quic,
            None => target.handshake().await?,
        };
        let (mut send, mut recv) = quic.open_bi().await?;
        let codec = FrameCodec::new(quiver_proto::Limits::default().max_frame as usize);
        let hello = Hello {
            version: options.protocol_version,
            agent: concat!("quiver-client/", env!("CARGO_PKG_VERSION")).into(),
            name: options.name.clone(),
            token: options.token().await.map_err(ConnectError::Token)?,
        };
        send.write_all(&codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) })?).await?;
        let mut inbound = BytesMut::new();
        let welcome = loop {
            match codec.decode::<ServerMsg>(&mut inbound).map_err(ProtocolError::from)? {
                Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(welcome)) }) => break welcome,
                Some(ServerMsg::Reply { req_id: 0, result: Err(failure) }) => {
                    quiver_transport::close::close(&quic, ErrorCode::NoError, "refused");
                    return Err(ConnectError::Refused(failure));
                }
                Some(other) => return Err(ProtocolError::NotWelcome(Box::new(other)).into()),
                None => match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                    Ok(None) => return Err(ProtocolError::Finished.into()),
                    Err(quinn::ReadError::ConnectionLost(err)) => return Err(ConnectError::Connection(err)),
                    Err(err) => return Err(err.into()),
                },
            }
        };
        // The server may open one stream per room it allows (+1 for a room being left and rejoined).
        quic.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(welcome.limits.max_rooms.saturating_add(1)));
        // Post copies go out on the probe timer, in place of the tail probe.
        let (tuning, timer) = (&options.tuning, options.tuning.probe_timer());
        // The first copies go right after the request's packet (`TailProbe::sent_with_copies`).
        let copies = CopyQueue::new(tuning.copies, Duration::ZERO, tuning.copy_spacing);
        let copies = Arc::new(Mutex::new(copies));
        let (probing, queued, tail_probe) = (quic.clone(), copies.clone(), tuning.tail_probe.is_some());
        let (probe, probe_task) =
            TailProbe::new(timer, move || crate::copies::send_round(&probing, &queued, tail_probe));
        let connection = Arc::new(Connection {
            id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
            quic: quic.clone(),
            codec: FrameCodec::new(welcome.limits.max_frame as usize),
            welcome,
            send: tokio::sync::Mutex::new(send),
            outstanding: Arc::new(Mutex::new(Outstanding::new(1))),
            probe,
            routes: Mutex::default(),
            requests: AtomicU64::new(0),
            copy_rooms: Mutex::default(),
            copies,
        });
        if let Some(task) = probe_task {
            let closed = quic.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = task => {}
                    _ = closed.closed() => {}
                }
            });
        }
        tasks.spawn(read_control(connection.clone(), recv, inbound, handler.clone()));
        tasks.spawn(accept_room_streams(quic.clone(), connection.id, handler.clone()));
        tasks.spawn(read_datagrams(Arc::downgrade(&connection), quic, handler));
        Ok(connection)
    }

    /// Writes one request; the receiver gets its reply (or why it will not come).
    pub(crate) async fn send(
        &self,
        body: RequestBody,
    ) -> Result<oneshot::Receiver<Result<Reply, RequestError>>, RequestError> {
        let (tx, rx) = oneshot::channel();
        let req_id = lock(&self.outstanding).start(tx).map_err(RequestError::closed)?;
        let copied = matches!(&body, RequestBody::Post(post) if lock(&self.copy_rooms).contains(&post.room));
        let frame = match self.codec.encode_to_vec(&Request { req_id, body }) {
            Ok(frame) => frame.freeze(),
            Err(err) => {
                lock(&self.outstanding).abandon(req_id);
                return Err(RequestError::Encode(err));
            }
        };
        let mut send = self.send.lock().await;
        if let Err(err) = send.write_all(&frame).await {
            lock(&self.outstanding).abandon(req_id);
            return Err(RequestError::closed(self.close_reason().unwrap_or((ErrorCode::Internal, err.to_string()))));
        }
        // Numbered in the order written, under the send lock: the server counts them in the same order.
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if copied {
            lock(&self.copies).push(CopyTarget::Posts, number, frame, Some(std::time::Instant::now()));
            self.probe.sent_with_copies();
        } else {
            self.probe.sent();
        }
        Ok(rx)
    }

    /// Posts to `room` also go as datagram copies from now on (its stream on this connection has copies), or
    /// (`false`: the room was left) no longer.
    pub(crate) fn copy_posts_to(&self, room: &str, copy: bool) {
        match copy {
            true => lock(&self.copy_rooms).insert(room.to_string()),
            false => lock(&self.copy_rooms).remove(room),
        };
    }

    /// Sends one request and waits for its reply.
    pub(crate) async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        let rx = self.send(body).await?;
        rx.await.unwrap_or_else(|_| Err(RequestError::closed((ErrorCode::Internal, "reply reader stopped".into()))))
    }

    /// Tick datagrams with `channel_id` go to `route` from now on.
    pub(crate) fn route(&self, channel_id: u64, route: H::Route) {
        lock(&self.routes).insert(channel_id, route);
    }

    /// Tick datagrams stop going to the routes `matches` picks (their channel was unsubscribed).
    pub(crate) fn unroute(&self, matches: impl Fn(&H::Route) -> bool) {
        lock(&self.routes).retain(|_, route| !matches(route));
    }

    /// Why the connection closed, once it has.
    pub(crate) fn close_reason(&self) -> Option<(ErrorCode, String)> {
        self.quic.close_reason().map(|e| describe(&e))
    }
}

/// Routes tick datagrams to their subscriptions and room copies to the handler; anything undecodable or unknown is
/// dropped.
async fn read_datagrams<H: Handler>(connection: Weak<Connection<H>>, quic: quinn::Connection, handler: Weak<H>) {
    while let Ok(datagram) = quic.read_datagram().await {
        if quiver_proto::is_probe(&datagram) {
            continue; // a tail-loss probe (quiver_transport::probe): it only elicits an ACK
        }
        if copies::is_copy(&datagram) {
            let (Some(connection), Some(handler)) = (connection.upgrade(), handler.upgrade()) else { return };
            match Copy::decode(&datagram, connection.codec.max_frame()) {
                Ok(Copy::Room { slot, first, frames }) => handler.room_copy(connection.id, slot, first, frames),
                Ok(Copy::Posts { .. }) | Err(_) => tracing::debug!("undecodable copy datagram dropped"),
            }
            continue;
        }
        let Ok((header, payload)) = TickHeader::decode(&datagram) else {
            tracing::debug!("undecodable datagram dropped");
            continue;
        };
        let (Some(connection), Some(handler)) = (connection.upgrade(), handler.upgrade()) else { return };
        let route = lock(&connection.routes).get(&header.channel_id).cloned();
        match route {
            Some(route) => handler.tick(&route, header, payload),
            None => tracing::debug!(channel_id = header.channel_id, "datagram for no subscription dropped"),
        }
    }
}

async fn accept_room_streams<H: Handler>(quic: quinn::Connection, id: usize, handler: Weak<H>) {
    while let Ok(recv) = quic.accept_uni().await {
        let Some(handler) = handler.upgrade() else { return };
        handler.room_stream(id, recv);
    }
}

/// Reads the control stream until it ends, completing waiters and handing pushes on; then fails whatever is still
/// outstanding.
async fn read_control<H: Handler>(
    connection: Arc<Connection<H>>,
    mut recv: quinn::RecvStream,
    mut inbound: BytesMut,
    handler: Weak<H>,
) {
    let quic = &connection.quic;
    let mut going_away = None;
    let why = loop {
        match connection.codec.decode::<ServerMsg>(&mut inbound) {
            Ok(Some(ServerMsg::Reply { req_id, result })) => {
                if let Some(waiter) = lock(&connection.outstanding).complete(req_id) {
                    let _ = waiter.send(result.map_err(RequestError::Failed));
                }
            }
            Ok(Some(msg)) => {
                if let ServerMsg::GoAway { code, reason } = &msg {
                    going_away = Some((*code, reason.clone()));
                }
                if let Some(handler) = handler.upgrade() {
                    handler.pushed(connection.id, msg);
                }
            }
            Ok(None) => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    break going_away.unwrap_or((ErrorCode::NoError, "server finished the control stream".into()))
                }
                Err(quinn::ReadError::ConnectionLost(err)) => break describe(&err),
                Err(err) => break (ErrorCode::Internal, format!("control stream: {err}")),
            },
            Err(err) => {
                quiver_transport::close::close(quic, err.code(), &err.to_string());
                break (err.code(), format!("server sent an undecodable frame: {err}"));
            }
        }
    };
    // A finished stream usually means a close follows; prefer its reason.
    let why = quic.close_reason().map_or(why, |err| describe(&err));
    tracing::debug!(code = %why.0, reason = %why.1, "control stream ended");
    for waiter in lock(&connection.outstanding).close(why.clone()) {
        let _ = waiter.send(Err(RequestError::closed(why.clone())));
    }
}
