//! One connection to the server: the QUIC handshake, Hello/Welcome, then requests on the control stream (written
//! from the caller's task, replies read by a reader task), and what the server opens, sends or pushes handed to a
//! [`Handler`] (the driver). Every task it starts runs on the tracker it is given and ends with the connection.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use quiver_proto::{
    copies::{self, CopyQueue, CopyTarget},
    ErrorCode, FrameCodec, Hello, Reply, Request, RequestBody, ServerMsg, TickHeader, Welcome,
};
use quiver_transport::TailProbe;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::{
    error::ProtocolError,
    state::requests::Outstanding,
    sync::lock,
    unrouted::Unrouted,
    wire::{Link, LinkRecv, LinkSend, ReadError},
    ConnectError, ConnectOptions, RequestError,
};

/// A Subscribe unanswered ([`Connection::subscribing`]).
pub(crate) struct Subscribing<'a, H: Handler>(&'a Connection<H>);

impl<H: Handler> Drop for Subscribing<'_, H> {
    fn drop(&mut self) {
        lock(&self.0.unrouted).ended();
    }
}

/// Numbers connections, so that what was set up on one (a publish claim) is not used on the next.
static CONNECTION_IDS: AtomicUsize = AtomicUsize::new(1);

type Waiter = oneshot::Sender<Result<Reply, RequestError>>;

/// What a connection hands to its owner.
pub(crate) trait Handler: Send + Sync + 'static {
    /// What a subscription's channel id on this connection leads to.
    type Route: Clone + Send + Sync + 'static;
    /// A tick datagram for a subscription, arrived on connection `connection` `ago` (zero but for one held until
    /// its route was made: [`Unrouted`]).
    fn tick(&self, connection: usize, route: &Self::Route, header: TickHeader, payload: Bytes, ago: Duration);
    /// The server opened a room stream on connection `connection` (`link`, whose frames are at most `max_frame`
    /// bytes); `unfinished` counts the bytes of
    /// unfinished frames the connection's room streams hold together (`streams::Unfinished`).
    fn room_stream(&self, connection: (usize, &Link, usize), recv: LinkRecv, unfinished: &Arc<AtomicUsize>);
    /// The server pushed a message that answers no request (Kicked, GoAway, Error).
    fn pushed(&self, connection: usize, msg: ServerMsg);
    /// A datagram copy of frames of the room stream with `slot`, at positions from `first` (redundant delivery).
    fn room_copy(&self, connection: usize, slot: u64, first: u64, frames: Vec<Bytes>);
}

/// A live (or just closed) connection and its control stream.
#[derive(Debug)]
pub(crate) struct Connection<H: Handler> {
    pub(crate) id: usize,
    pub(crate) link: Link,
    pub(crate) welcome: Welcome,
    codec: FrameCodec,
    send: tokio::sync::Mutex<LinkSend>,
    outstanding: Arc<Mutex<Outstanding<Waiter>>>,
    /// A probe datagram shortly after each request, so that a lost request is detected without waiting for the
    /// next one.
    probe: Arc<TailProbe>,
    /// Subscriptions by their channel id on this connection.
    routes: Mutex<HashMap<u64, H::Route>>,
    /// Tick datagrams for channel ids not routed yet, held while a Subscribe is unanswered (taken under `routes`).
    unrouted: Mutex<Unrouted>,
    /// Where routes' held ticks go ([`Connection::route`]), as the datagram reader's do.
    handler: Weak<H>,
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
    /// `link`: the connection made (by [`Target::connect`]).
    pub(crate) async fn open(
        link: Link,
        options: &ConnectOptions,
        handler: Weak<H>,
        tasks: &TaskTracker,
    ) -> Result<Arc<Connection<H>>, ConnectError> {
        let (mut send, mut recv) = link.open_bi().await.map_err(ConnectError::from_read)?;
        let codec = FrameCodec::new(quiver_proto::Limits::default().max_frame as usize);
        let hello = Hello {
            version: options.protocol_version,
            agent: concat!("quiver-client/", env!("CARGO_PKG_VERSION")).into(),
            name: options.name.clone(),
            token: options.token().await.map_err(ConnectError::Token)?,
        };
        let hello = codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) })?;
        send.write_all(&hello).await.map_err(|err| {
            // Closed before Hello went out (a server refusing at once, e.g. over a per-address limit): the
            // connection's close says why, where the failed write only says "connection lost".
            let (code, reason) = link.close_reason().unwrap_or((ErrorCode::Internal, err.0));
            ConnectError::Closed(code, reason)
        })?;
        let mut inbound = BytesMut::new();
        let welcome = loop {
            // A server that broke the protocol is told so (the caller's close, or a dropped link's, said NoError).
            let decoded =
                codec.decode::<ServerMsg>(&mut inbound).inspect_err(|err| link.close(err.code(), "undecodable"));
            match decoded.map_err(ProtocolError::from)? {
                Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(welcome)) })
                    if welcome.version != options.protocol_version =>
                {
                    link.close(ErrorCode::ProtocolViolation, "Welcome in another protocol version than Hello's");
                    let (hello, welcome) = (options.protocol_version, welcome.version);
                    return Err(ProtocolError::VersionMismatch { hello, welcome }.into());
                }
                Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(welcome)) }) => break welcome,
                Some(ServerMsg::Reply { req_id: 0, result: Err(failure) }) => {
                    link.close(ErrorCode::NoError, "refused");
                    return Err(ConnectError::Refused(failure));
                }
                // A server going away (or reporting an error) before Welcome: its code, as a close's.
                Some(ServerMsg::GoAway { code, reason }) => return Err(ConnectError::Closed(code, reason)),
                Some(ServerMsg::Error(failure)) => return Err(ConnectError::Closed(failure.code, failure.message)),
                Some(other) => {
                    link.close(ErrorCode::ProtocolViolation, "Hello answered with something other than Welcome");
                    return Err(ProtocolError::NotWelcome(Box::new(other)).into());
                }
                None => match recv.read_chunk().await {
                    Ok(Some(chunk)) => inbound.extend_from_slice(&chunk),
                    Ok(None) => return Err(ProtocolError::Finished.into()),
                    Err(err) => return Err(ConnectError::from_read(err)),
                },
            }
        };
        // The server may open one stream per room it allows (+1 for a room being left and rejoined).
        if let Some(quic) = link.quic() {
            // (At most `Limits::MAX_ROOMS_CEILING`: a hostile server's 4 billion would have the client take a stream,
            // a reader and a buffer for every few bytes it sends.)
            let streams = quinn::VarInt::from_u32(welcome.limits.client_max_rooms().saturating_add(1));
            quic.set_max_concurrent_uni_streams(streams);
        }
        #[cfg(feature = "websocket")]
        if let Some(ws) = link.ws() {
            // No stream credit on the WebSocket: the server may open a rejoined room's stream before the left one's
            // finish arrives, so twice as many.
            ws.set_max_inbound_streams(
                usize::try_from(welcome.limits.client_max_rooms())
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
                    .saturating_mul(2),
            );
        }
        // Post copies go out on the probe timer, in place of the tail probe (QUIC only).
        let tuning = &options.tuning;
        let timing = link.quic().and(tuning.probe_timing());
        // The first copies go right after the request's packet (`TailProbe::sent_with_copies`).
        let copies = CopyQueue::new(tuning.copies, Duration::ZERO, tuning.copy_spacing);
        let copies = Arc::new(Mutex::new(copies));
        let (probing, queued, tail_probe) = (link.clone(), copies.clone(), tuning.tail_probe.is_some());
        let sampled = link.clone();
        let path = move || sampled.quic().map(quiver_transport::path_sample).unwrap_or_default();
        let (probe, probe_task) = TailProbe::new(timing, path, move |written| match probing.quic() {
            Some(quic) => crate::copies::send_round(quic, &queued, tail_probe.then_some(written)),
            None => quiver_transport::Probed::Gone,
        });
        let connection = Arc::new(Connection {
            id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
            link: link.clone(),
            codec: FrameCodec::new(welcome.limits.client_max_frame()),
            welcome,
            send: tokio::sync::Mutex::new(send),
            outstanding: Arc::new(Mutex::new(Outstanding::new(1))),
            probe,
            routes: Mutex::default(),
            unrouted: Mutex::default(),
            handler: handler.clone(),
            requests: AtomicU64::new(0),
            copy_rooms: Mutex::default(),
            copies,
        });
        if let Some(task) = probe_task {
            let closed = link.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = task => {}
                    () = closed.closed() => {}
                }
            });
        }
        tasks.spawn(read_control(connection.clone(), recv, inbound, handler.clone()));
        let max_frame = connection.codec.max_frame();
        tasks.spawn(accept_room_streams(link.clone(), (connection.id, max_frame), handler.clone()));
        tasks.spawn(read_datagrams(Arc::downgrade(&connection), link, handler));
        Ok(connection)
    }

    /// Writes one request; the receiver gets its reply (or why it will not come).
    pub(crate) async fn send(&self, body: RequestBody) -> Result<Pending, RequestError> {
        self.send_noting(body, |_| {}).await
    }

    /// [`Connection::send`], telling `note` the request's `req_id` before it is written (a Join's stream names it).
    pub(crate) async fn send_noting(&self, body: RequestBody, note: impl FnOnce(u64)) -> Result<Pending, RequestError> {
        let (tx, rx) = oneshot::channel();
        let req_id = lock(&self.outstanding).start(tx).map_err(RequestError::closed)?;
        note(req_id);
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
            // A connection still open whose control stream cannot be written (the server stopped reading it, or a
            // write failed midway and left half a frame) takes no request any more: it is closed here, so that the
            // client reconnects and what was queued goes on the next one. Left open, nothing else would close it
            // while the server keeps acknowledging, and posts were retried on it for good.
            let why = match self.close_reason() {
                Some(why) => why,
                None => {
                    let why = format!("the control stream cannot be written: {}", err.0);
                    self.link.close(ErrorCode::Internal, &why);
                    (ErrorCode::Internal, why)
                }
            };
            return Err(RequestError::closed(why));
        }
        // Numbered in the order written, under the send lock: the server counts them in the same order.
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        // (A post whose copy was not queued, too large for a datagram, is probed on the probe's own schedule.)
        let queued =
            copied && lock(&self.copies).push(CopyTarget::Posts, number, frame, Some(std::time::Instant::now()));
        if queued {
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
        reply(self.send(body).await?).await
    }

    /// Tick datagrams with `channel_id` go to `route` from now on, those held for it first ([`Unrouted`]: they
    /// arrived before the Subscribe's answer). Under the routes' lock, which the datagram reader takes to look a
    /// route up, so nothing newer reaches the route before them.
    pub(crate) fn route(&self, channel_id: u64, route: H::Route) {
        let mut routes = lock(&self.routes);
        let held = lock(&self.unrouted).take(channel_id);
        if let (Some((header, payload, ago)), Some(handler)) = (held, self.handler.upgrade()) {
            handler.tick(self.id, &route, header, payload, ago);
        }
        routes.insert(channel_id, route);
    }

    /// Counts a Subscribe as unanswered until the guard is dropped (after its route is made, or it failed or was
    /// given up): meanwhile tick datagrams for channel ids with no route are held for it ([`Unrouted`]).
    pub(crate) fn subscribing(&self) -> Subscribing<'_, H> {
        lock(&self.unrouted).began();
        Subscribing(self)
    }

    /// Tick datagrams stop going to the routes `matches` picks (their channel was unsubscribed).
    pub(crate) fn unroute(&self, matches: impl Fn(&H::Route) -> bool) {
        lock(&self.routes).retain(|_, route| !matches(route));
    }

    /// Why the connection closed, once it has.
    pub(crate) fn close_reason(&self) -> Option<(ErrorCode, String)> {
        self.link.close_reason()
    }

    /// True once no request can be sent on the connection: it closed, or its control stream ended (a server that
    /// drains sends GoAway and finishes the stream a moment before it closes the connection).
    pub(crate) fn is_done(&self) -> bool {
        self.close_reason().is_some() || lock(&self.outstanding).is_closed()
    }
}

/// A written request's reply, to come.
pub(crate) type Pending = oneshot::Receiver<Result<Reply, RequestError>>;

/// The reply to a request [`Connection::send`] wrote.
pub(crate) async fn reply(rx: Pending) -> Result<Reply, RequestError> {
    rx.await.unwrap_or_else(|_| Err(RequestError::closed((ErrorCode::Internal, "reply reader stopped".into()))))
}

/// The first pause before a request refused `RateLimited` goes again ([`until_taken`]); it doubles up to
/// [`RATE_LIMITED_MAX_PAUSE`].
const RATE_LIMITED_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
const RATE_LIMITED_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends `body` on `live` and waits for its reply; while the server refuses it `RateLimited` (over a rate on this
/// connection: nothing was done) and the connection stays, sends it again after a pause. For the requests that let
/// go (Leave, Unsubscribe, Unpublish), which the client acts on before their reply: refused so and given up, the
/// server kept what the client had forgotten until the connection ended (a Leave's membership: presence listing
/// the member, `AlreadyJoined` at the application's next join of the room; a subscription or a claim: counted
/// against `max_subscriptions` or `max_publish_channels`).
pub(crate) async fn until_taken<H: Handler>(
    live: &Arc<Connection<H>>,
    body: RequestBody,
) -> Result<Reply, RequestError> {
    let mut pause = RATE_LIMITED_PAUSE;
    loop {
        let reply = match live.send(body.clone()).await {
            Ok(pending) => reply(pending).await,
            Err(err) => return Err(err),
        };
        // A connection that ends (or is ending: its control stream done) takes what the request let go with it:
        // `Closed`, which a Leave's caller takes for done, as for any Leave its connection ends under.
        let gone = || {
            let why = (ErrorCode::GoingAway, "the connection ended while the request waited for its rate".into());
            Err(RequestError::closed(live.close_reason().unwrap_or(why)))
        };
        match reply {
            Err(RequestError::Failed(failure)) if failure.code == ErrorCode::RateLimited => {
                if live.is_done() {
                    return gone();
                }
                tracing::debug!(?failure, "a request refused for its rate, sent again after {pause:?}");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = live.link.closed() => return gone(),
                }
                pause = (pause * 2).min(RATE_LIMITED_MAX_PAUSE);
            }
            other => return other,
        }
    }
}

/// A reply awaited already, and the connection it came on.
pub(crate) type Answered<H> = (Result<Reply, RequestError>, Arc<Connection<H>>);

/// How long a connection whose control stream ended may stay open before the client closes it itself
/// (the control stream reader does): many round trips, so that a server's own close, with its reason, comes first.
pub const CONTROL_GONE_GRACE: Duration = Duration::from_secs(2);

/// Routes tick datagrams to their subscriptions and room copies to the handler; anything undecodable or unknown is
/// dropped.
async fn read_datagrams<H: Handler>(connection: Weak<Connection<H>>, link: Link, handler: Weak<H>) {
    while let Some(datagram) = link.read_datagram().await {
        if quiver_proto::is_probe(&datagram) {
            continue; // a tail-loss probe (quiver_transport::probe): it only elicits an ACK
        }
        if copies::is_copy(&datagram) {
            let (Some(connection), Some(handler)) = (connection.upgrade(), handler.upgrade()) else { return };
            match crate::copies::room_copy(&datagram, connection.codec.max_frame()) {
                Some((slot, first, frames)) => handler.room_copy(connection.id, slot, first, frames),
                None => tracing::debug!("undecodable copy datagram dropped"),
            }
            continue;
        }
        let Ok((header, payload)) = TickHeader::decode(&datagram) else {
            tracing::debug!("undecodable datagram dropped");
            continue;
        };
        let (Some(connection), Some(handler)) = (connection.upgrade(), handler.upgrade()) else { return };
        let routes = lock(&connection.routes);
        let Some(route) = routes.get(&header.channel_id).cloned() else {
            // Its Subscribe's answer may be behind it: held for the route that answer makes, while one is unanswered.
            if !lock(&connection.unrouted).hold(header, payload) {
                tracing::debug!(channel_id = header.channel_id, "datagram for no subscription dropped");
            }
            continue;
        };
        drop(routes);
        handler.tick(connection.id, &route, header, payload, Duration::ZERO);
    }
}

/// Hands each room stream the server opens to the handler, with the connection's frame limit (its own Welcome's:
/// the handler's may still be an earlier connection's while this one connects).
async fn accept_room_streams<H: Handler>(link: Link, (id, max_frame): (usize, usize), handler: Weak<H>) {
    let unfinished = Arc::new(AtomicUsize::new(0));
    while let Some(recv) = link.accept_uni().await {
        let Some(handler) = handler.upgrade() else { return };
        handler.room_stream((id, &link, max_frame), recv, &unfinished);
    }
}

/// Reads the control stream until it ends, completing waiters and handing pushes on; then fails whatever is still
/// outstanding.
async fn read_control<H: Handler>(
    connection: Arc<Connection<H>>,
    mut recv: LinkRecv,
    mut inbound: BytesMut,
    handler: Weak<H>,
) {
    let link = &connection.link;
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
            Ok(None) => match recv.read_chunk().await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk),
                Ok(None) => {
                    break going_away.unwrap_or((ErrorCode::NoError, "server finished the control stream".into()))
                }
                Err(ReadError::Closed(code, reason)) => break (code, reason),
                Err(err) => break (ErrorCode::Internal, format!("control stream: {err:?}")),
            },
            Err(err) => {
                link.close(err.code(), &err.to_string());
                break (err.code(), format!("server sent an undecodable frame: {err}"));
            }
        }
    };
    // A finished stream usually means a close follows; prefer its reason.
    let why = link.close_reason().unwrap_or(why);
    tracing::debug!(code = %why.0, reason = %why.1, "control stream ended");
    for waiter in lock(&connection.outstanding).close(why.clone()) {
        let _ = waiter.send(Err(RequestError::closed(why.clone())));
    }
    // Without its control stream the connection can carry no request. A server closes the connection right after
    // finishing the stream (its reason is the one to keep); one that does not is left after a grace period, so that
    // the supervisor moves to a new connection instead of keeping one nothing can be sent on.
    if link.close_reason().is_none() {
        tokio::select! {
            () = link.closed() => {}
            () = tokio::time::sleep(CONTROL_GONE_GRACE) => link.close(why.0, &why.1),
        }
    }
}
