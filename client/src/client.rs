//! The client: a supervised session that reconnects with jittered exponential backoff, rejoins every room from
//! its last position and re-sends unacknowledged posts (the server deduplicates them), so the application sees a
//! continuous event stream or an explicit `Resumed { recovered: false }`.
//!
//! Work runs in spawned tasks: quinn driven from `block_on`'s thread costs about 4x the round trip (measured).

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use quiver_proto::{ErrorCode, HistoryPage, Join, Limits, Post, Reply, RequestBody, Welcome, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    room::{self, Room, RoomShared},
    session::{closed, lock, Session, Target},
    ticks::{PubShared, SubShared, TickPublisher, TickSubscription},
    ConnectError, RequestError, TrustOptions,
};

/// How a client connects and reconnects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Which certificate to accept.
    pub trust: TrustOptions,
    /// The name to be known by in rooms, where the server allows it.
    pub name: Option<String>,
    /// Access token, where the server requires one. A token fixed here cannot be renewed: when it expires the
    /// server closes the connection with `TokenExpired` and the reconnect is refused. Prefer `token_provider`.
    pub token: Option<String>,
    /// Called for a token at every connect (a fresh one after the server closed the connection at the old one's
    /// `exp`). When neither `token` nor this is set and `trust` is `TrustOptions::Auto` with a data directory that
    /// holds the server's dev key, a dev token is minted from it (same machine, development).
    pub token_provider: Option<TokenProvider>,
    /// Time allowed for QUIC handshake plus Hello/Welcome, and for a request to wait for a connection.
    pub connect_timeout: Duration,
    /// Reconnect after losing the connection (true by default). When false, a lost connection ends the client.
    pub reconnect: bool,
    /// The first reconnect delay; it doubles on each failed attempt, with jitter, up to `reconnect_max_delay`.
    pub reconnect_delay: Duration,
    /// The longest delay between reconnect attempts.
    pub reconnect_max_delay: Duration,
    /// The protocol version announced in Hello. Leave at [`PROTOCOL_VERSION`]; other values exist to test
    /// servers' version negotiation.
    pub protocol_version: u32,
    /// Latency-relevant transport settings (the server's own apply to what it sends).
    pub tuning: quiver_transport::TransportTuning,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: TrustOptions::default(),
            name: None,
            token: None,
            token_provider: None,
            connect_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(5),
            protocol_version: PROTOCOL_VERSION,
            tuning: quiver_transport::TransportTuning::quiver(),
        }
    }
}

/// A source of access tokens (see [`ConnectOptions::token_provider`]).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> Result<String, String> + Send + Sync>);

impl TokenProvider {
    /// Tokens from `f`, called at every connect.
    pub fn new(f: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        TokenProvider(Arc::new(f))
    }

    /// Dev tokens minted with the server's dev key in `data_dir`: subject `sub`, every right, valid one hour from
    /// each connect.
    pub fn dev(data_dir: std::path::PathBuf, sub: String) -> Self {
        TokenProvider::new(move || {
            let now_s = unix_us() / 1_000_000;
            let claims = quiver_auth::Claims::everything(sub.clone(), now_s, 3600);
            quiver_auth::mint_dev(&data_dir, &claims).map_err(|e| e.to_string())
        })
    }

    pub(crate) fn token(&self) -> Result<String, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// A Quiver session that survives connection loss. Cheap to clone; dropping the last clone (and every [`Room`])
/// closes it.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

#[derive(Debug)]
struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct Inner {
    target: Target,
    options: ConnectOptions,
    /// The live session, `None` while reconnecting.
    current: watch::Sender<Option<Arc<Session>>>,
    /// Why the client ended for good (closed by the application, refused, or reconnect disabled).
    ended: Mutex<Option<(ErrorCode, String)>>,
    stop: CancellationToken,
    rooms: Mutex<HashMap<String, Arc<RoomShared>>>,
    next_msg_id: AtomicU64,
    posts: mpsc::UnboundedSender<PostJob>,
    last_welcome: Mutex<Welcome>,
    subscriptions: Mutex<HashMap<String, Arc<SubShared>>>,
    publishers: Mutex<HashMap<String, Arc<PubShared>>>,
    /// Server clock minus this machine's clock, in µs, estimated from Ping/Pong at each connect.
    clock_offset_us: Arc<AtomicI64>,
}

#[derive(Debug)]
struct PostJob {
    room: String,
    client_msg_id: u64,
    body: Bytes,
    done: oneshot::Sender<Result<u64, RequestError>>,
}

impl Client {
    /// Connects to `server` (`host:port`), trusting its certificate as `trust` says, and opens the session.
    pub async fn connect(server: &str, trust: TrustOptions) -> Result<Client, ConnectError> {
        Client::connect_with(server, ConnectOptions { trust, ..ConnectOptions::default() }).await
    }

    /// Connects with every option spelled out. The first connection must succeed; later losses are reconnected.
    pub async fn connect_with(server: &str, mut options: ConnectOptions) -> Result<Client, ConnectError> {
        let timeout = options.connect_timeout;
        if options.token.is_none() && options.token_provider.is_none() {
            if let TrustOptions::Auto { data_dir } = &options.trust {
                if quiver_auth::dev_key_exists(data_dir) {
                    // The same identity for the client's whole life: post deduplication keys on it.
                    let sub = options.name.clone().unwrap_or_else(|| format!("dev-{:08x}", rand::random::<u32>()));
                    options.token_provider = Some(TokenProvider::dev(data_dir.clone(), sub));
                }
            }
        }
        let target = tokio::time::timeout(timeout, Target::resolve(server, &options))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        let stop = CancellationToken::new();
        let (posts, jobs) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            target,
            options,
            current: watch::channel(None).0,
            ended: Mutex::new(None),
            stop: stop.clone(),
            rooms: Mutex::new(HashMap::new()),
            next_msg_id: AtomicU64::new(rand::random::<u64>() >> 2),
            posts,
            last_welcome: Mutex::new(placeholder_welcome()),
            subscriptions: Mutex::default(),
            publishers: Mutex::default(),
            clock_offset_us: Arc::new(AtomicI64::new(0)),
        });
        let session =
            tokio::time::timeout(timeout, open_session(&inner)).await.map_err(|_| ConnectError::Timeout(timeout))??;
        *lock(&inner.last_welcome) = session.welcome.clone();
        estimate_clock_offset(&inner, &session).await;
        inner.current.send_replace(Some(session));
        tokio::spawn(supervise(inner.clone()));
        tokio::spawn(send_posts(inner.clone(), jobs));
        Ok(Client { inner, _guard: Arc::new(CloseOnDrop(stop)) })
    }

    /// The latest Welcome: session id, identity, limits.
    pub fn welcome(&self) -> Welcome {
        lock(&self.inner.last_welcome).clone()
    }

    /// The limits the server enforces on this connection.
    pub fn limits(&self) -> Limits {
        self.welcome().limits
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.inner.target.addr
    }

    /// The current QUIC connection (statistics, RTT estimate), if connected.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.inner.current.borrow().as_ref().map(|s| s.conn.clone())
    }

    pub(crate) fn connection_with_id(&self) -> Option<(quinn::Connection, usize)> {
        self.inner.current.borrow().as_ref().map(|s| (s.conn.clone(), s.id))
    }

    /// Now on the server's clock (this machine's clock plus the offset estimated from Ping/Pong), µs since the
    /// Unix epoch.
    pub fn server_clock_us(&self) -> u64 {
        unix_us().saturating_add_signed(self.inner.clock_offset_us.load(Ordering::Relaxed))
    }

    /// Subscribes to a tick channel. Resubscribed on its own after a reconnect.
    pub async fn subscribe(&self, channel: &str) -> Result<TickSubscription, RequestError> {
        let shared = lock(&self.inner.subscriptions)
            .entry(channel.to_string())
            .or_insert_with(|| SubShared::new(channel.to_string()))
            .clone();
        let session = self.session().await?;
        if let Err(err) = subscribe_on(&session, &shared).await {
            lock(&self.inner.subscriptions).remove(channel);
            return Err(err);
        }
        Ok(TickSubscription { shared, client: self.clone() })
    }

    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), RequestError> {
        lock(&self.inner.subscriptions).remove(channel);
        match self.request(RequestBody::Unsubscribe { channel: channel.to_string() }).await? {
            Reply::Unsubscribed { .. } => Ok(()),
            other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Claims the right to publish on a tick channel. Claimed again on its own after a reconnect.
    pub async fn publisher(&self, channel: &str) -> Result<TickPublisher, RequestError> {
        self.publisher_with_max_age(channel, None).await
    }

    /// Like [`Client::publisher`], asking the server to drop ticks of this channel older than `max_age` instead of
    /// sending them late.
    pub async fn publisher_with_max_age(
        &self,
        channel: &str,
        max_age: Option<Duration>,
    ) -> Result<TickPublisher, RequestError> {
        let max_age_ms = max_age.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        let shared = PubShared::new(channel.to_string(), max_age_ms);
        let session = self.session().await?;
        claim_on(&session, &shared).await?;
        lock(&self.inner.publishers).insert(channel.to_string(), shared.clone());
        Ok(TickPublisher { shared, client: self.clone() })
    }

    /// One Ping/Pong round trip on the control stream.
    pub async fn ping(&self) -> Result<Pong, RequestError> {
        let session = self.session().await?;
        let sent = Instant::now();
        let client_time_us = unix_us();
        match session.request(RequestBody::Ping { client_time_us }).await? {
            Reply::Pong { server_time_us, .. } => Ok(Pong { rtt: sent.elapsed(), client_time_us, server_time_us }),
            other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Sends one request on the control stream of the current connection and waits for its reply. Not retried.
    pub async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        self.session().await?.request(body).await
    }

    /// Joins `room`: its events (from now on) arrive through the returned [`Room`].
    pub async fn join(&self, room: &str) -> Result<Room, RequestError> {
        let (shared, events) = RoomShared::new(room.to_string());
        {
            let mut rooms = lock(&self.inner.rooms);
            if rooms.contains_key(room) {
                let failure = quiver_proto::Failure::new(ErrorCode::AlreadyJoined, format!("already in room {room}"));
                return Err(RequestError::Failed(failure));
            }
            rooms.insert(room.to_string(), shared.clone());
        }
        let join = RequestBody::Join(Join { room: room.to_string(), since: None });
        let result = match self.session().await {
            Ok(session) => session.request(join).await.map(|reply| (reply, session.conn.stable_id())),
            Err(err) => Err(err),
        };
        let result = match result {
            Ok((Reply::Joined(joined), conn)) => {
                let number = shared.joined(conn, false, joined);
                tokio::spawn(watch_stream(self.inner.clone(), shared.clone(), number, conn));
                Ok(Room { shared, events, client: self.clone() })
            }
            Ok((other, _)) => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
            Err(err) => Err(err),
        };
        if result.is_err() {
            lock(&self.inner.rooms).remove(room);
        }
        result
    }

    /// Posts `body` to `room` (joined or not); the returned future resolves to the seq it got. The post is queued
    /// when this is called, not when the future is first polled: posts go out in the order of `post` calls. They
    /// are pipelined, retried after a reconnect until acknowledged, and delivered once (the server deduplicates
    /// by `client_msg_id`).
    pub fn post(
        &self,
        room: &str,
        body: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send + 'static {
        let (done, result) = oneshot::channel();
        let client_msg_id = self.inner.next_msg_id.fetch_add(1, Ordering::Relaxed);
        let job = PostJob { room: room.to_string(), client_msg_id, body: body.into(), done };
        let queued = self.inner.posts.send(job);
        let inner = self.inner.clone();
        async move {
            if queued.is_err() {
                return Err(closed(inner.end_reason()));
            }
            result.await.unwrap_or_else(|_| Err(closed(inner.end_reason())))
        }
    }

    /// A room's retained messages after `since`, at most `limit` (fewer when they do not fit one frame: see
    /// `HistoryPage::more`).
    pub async fn history(&self, room: &str, since: Option<u64>, limit: u32) -> Result<HistoryPage, RequestError> {
        match self.request(RequestBody::History { room: room.to_string(), since, limit }).await? {
            Reply::History(page) => Ok(page),
            other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    pub(crate) async fn leave(&self, room: &str) -> Result<(), RequestError> {
        lock(&self.inner.rooms).remove(room);
        match self.request(RequestBody::Leave { room: room.to_string() }).await? {
            Reply::Left { .. } => Ok(()),
            other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    pub(crate) fn room_shared(&self, room: &str) -> Option<Arc<RoomShared>> {
        lock(&self.inner.rooms).get(room).cloned()
    }

    /// Rejoins a room from its last position on the current connection (after a reconnect or a reset).
    pub(crate) async fn rejoin(&self, shared: Arc<RoomShared>) {
        rejoin(&self.inner, shared).await;
    }

    /// Closes the connection with `NoError`, ends the client, and waits (briefly) for the server to learn of it.
    pub async fn close(self) {
        self.inner.end((ErrorCode::NoError, "closed by the application".into()));
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.target.endpoint.wait_idle()).await;
    }

    /// Waits until the client has ended for good (closed, refused on reconnect, or the connection was lost with
    /// reconnection off) and says why.
    pub async fn closed(&self) -> (ErrorCode, String) {
        self.inner.stop.cancelled().await;
        self.end_reason()
    }

    fn end_reason(&self) -> (ErrorCode, String) {
        self.inner.end_reason()
    }

    /// A live session, waiting up to the connect timeout for a reconnect.
    async fn session(&self) -> Result<Arc<Session>, RequestError> {
        let mut current = self.inner.current.subscribe();
        let wait = current.wait_for(|s| s.as_ref().is_some_and(|s| s.close_reason().is_none()));
        tokio::select! {
            result = tokio::time::timeout(self.inner.options.connect_timeout, wait) => match result {
                Ok(Ok(session)) => session.clone().ok_or_else(|| closed(self.end_reason())),
                Ok(Err(_)) => Err(closed(self.end_reason())),
                Err(_) => Err(closed((ErrorCode::Internal, "not connected (reconnecting)".into()))),
            },
            () = self.inner.stop.cancelled() => Err(closed(self.end_reason())),
        }
    }
}

fn placeholder_welcome() -> Welcome {
    Welcome { version: 0, session_id: 0, server_time_us: 0, identity: String::new(), limits: Limits::default() }
}

impl Inner {
    fn end_reason(&self) -> (ErrorCode, String) {
        lock(&self.ended).clone().unwrap_or((ErrorCode::NoError, "client closed".into()))
    }

    fn end(&self, why: (ErrorCode, String)) {
        lock(&self.ended).get_or_insert(why.clone());
        if let Some(session) = self.current.borrow().as_ref() {
            crate::close(&session.conn, why.0, &why.1);
        }
        self.stop.cancel();
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

pub(crate) fn unix_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn subscribe_on(session: &Session, shared: &Arc<SubShared>) -> Result<(), RequestError> {
    match session.request(RequestBody::Subscribe { channel: shared.channel.clone() }).await? {
        Reply::Subscribed { channel_id, .. } => {
            lock(&session.ticks).insert(channel_id, shared.clone());
            Ok(())
        }
        other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
    }
}

async fn claim_on(session: &Session, shared: &PubShared) -> Result<(), RequestError> {
    let body = RequestBody::Publish { channel: shared.channel.clone(), max_age_ms: shared.max_age_ms };
    match session.request(body).await? {
        Reply::Publishing { channel_id, .. } => {
            *lock(&shared.claim) = Some((session.id, channel_id));
            Ok(())
        }
        other => Err(RequestError::UnexpectedReply(format!("{other:?}"))),
    }
}

/// Pings a few times and keeps the offset (server clock minus ours) of the fastest round trip, whose midpoint
/// is the best guess of when the server read its clock.
async fn estimate_clock_offset(inner: &Inner, session: &Session) {
    let mut best: Option<(Duration, i64)> = None;
    for _ in 0..5 {
        let sent_at = Instant::now();
        let client_time_us = unix_us();
        let Ok(Reply::Pong { server_time_us, .. }) = session.request(RequestBody::Ping { client_time_us }).await else {
            return;
        };
        let rtt = sent_at.elapsed();
        let midpoint = client_time_us + (rtt.as_micros() as u64) / 2;
        let offset = server_time_us as i64 - midpoint as i64;
        if best.is_none_or(|(best_rtt, _)| rtt < best_rtt) {
            best = Some((rtt, offset));
        }
    }
    if let Some((rtt, offset)) = best {
        tracing::debug!(offset_us = offset, ?rtt, "clock offset to the server");
        inner.clock_offset_us.store(offset, Ordering::Relaxed);
    }
}

async fn open_session(inner: &Arc<Inner>) -> Result<Arc<Session>, ConnectError> {
    let weak = Arc::downgrade(inner);
    Session::open(&inner.target, &inner.options, inner.clock_offset_us.clone(), move |recv, conn| {
        let Some(inner) = weak.upgrade() else { return };
        let max_frame = lock(&inner.last_welcome).limits.max_frame as usize;
        // The stream reader holds a Client without the close guard: it must not keep the client alive.
        let client = Client { inner, _guard: Arc::new(CloseOnDrop(CancellationToken::new())) };
        tokio::spawn(room::read_stream(client, recv, conn, max_frame));
    })
    .await
}

/// Watches the live connection; when it is lost, reconnects with backoff, then rejoins every room.
async fn supervise(inner: Arc<Inner>) {
    loop {
        let Some(session) = inner.current.borrow().clone() else { return };
        tokio::select! {
            _ = session.conn.closed() => {}
            () = inner.stop.cancelled() => {
                // Every clone was dropped (or close() was called): the connection goes with the client. Its
                // reader tasks hold connection handles, so it would otherwise live on, kept alive by keep-alives.
                inner.end((ErrorCode::NoError, "client dropped".into()));
                return;
            }
        }
        let why = session.close_reason().unwrap_or((ErrorCode::Internal, "connection lost".into()));
        if !inner.options.reconnect {
            inner.end(why);
            return;
        }
        tracing::info!(code = %why.0, reason = %why.1, "connection lost; reconnecting");
        inner.current.send_replace(None);
        let mut attempt = 0u32;
        let session = loop {
            let delay = backoff(&inner.options, attempt);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.stop.cancelled() => return,
            }
            let attempt_timeout = inner.options.connect_timeout;
            match tokio::time::timeout(attempt_timeout, open_session(&inner)).await {
                Ok(Ok(session)) => break session,
                Ok(Err(ConnectError::Refused(failure))) => {
                    tracing::error!(%failure, "server refused the session on reconnect");
                    inner.end((failure.code, failure.message));
                    return;
                }
                Ok(Err(err)) => tracing::info!(%err, attempt, "reconnect failed"),
                Err(_) => tracing::info!(attempt, "reconnect timed out"),
            }
            attempt = attempt.saturating_add(1);
        };
        *lock(&inner.last_welcome) = session.welcome.clone();
        estimate_clock_offset(&inner, &session).await;
        inner.current.send_replace(Some(session.clone()));
        let rooms: Vec<Arc<RoomShared>> = lock(&inner.rooms).values().cloned().collect();
        for shared in rooms {
            rejoin(&inner, shared).await;
        }
        let subscriptions: Vec<Arc<SubShared>> = lock(&inner.subscriptions).values().cloned().collect();
        for shared in subscriptions {
            shared.resync();
            if let Err(err) = subscribe_on(&session, &shared).await {
                tracing::warn!(channel = %shared.channel, %err, "cannot resubscribe");
            }
        }
        let publishers: Vec<Arc<PubShared>> = lock(&inner.publishers).values().cloned().collect();
        for shared in publishers {
            if let Err(err) = claim_on(&session, &shared).await {
                tracing::warn!(channel = %shared.channel, %err, "cannot claim channel again");
            }
        }
    }
}

/// "Equal jitter" exponential backoff: a wait between half and all of a ceiling; attempt 0's ceiling is the base
/// delay, each later one twice the one before, capped.
fn backoff(options: &ConnectOptions, attempt: u32) -> Duration {
    let ceiling = options.reconnect_delay.saturating_mul(1u32 << attempt.min(16)).min(options.reconnect_max_delay);
    ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Rejoins a room from its last position on the current connection. Boxed: a rejoin may start a watchdog that
/// rejoins again.
fn rejoin(inner: &Arc<Inner>, shared: Arc<RoomShared>) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    let inner = inner.clone();
    Box::pin(async move {
        let Some(session) = inner.current.borrow().clone() else { return };
        let since = shared.position();
        match session.request(RequestBody::Join(Join { room: shared.name.clone(), since })).await {
            Ok(Reply::Joined(joined)) => {
                let conn = session.conn.stable_id();
                let number = shared.joined(conn, true, joined);
                tokio::spawn(watch_stream(inner.clone(), shared, number, conn));
            }
            Ok(other) => tracing::warn!(room = %shared.name, ?other, "unexpected reply to Join"),
            // The connection went again: the supervisor rejoins once it is back.
            Err(RequestError::Closed { .. }) => {}
            Err(err) => tracing::warn!(room = %shared.name, %err, "cannot rejoin room"),
        }
    })
}

/// Rejoins when a join's stream never showed up (reset before its Open frame arrived) on a connection that is
/// still the current one. (After a reconnect the supervisor has rejoined already; the stale reply is dropped.)
async fn watch_stream(inner: Arc<Inner>, shared: Arc<RoomShared>, number: u64, conn: usize) {
    tokio::select! {
        () = tokio::time::sleep(room::REPLY_WAIT) => {}
        () = inner.stop.cancelled() => return,
    }
    let still_joined = lock(&inner.rooms).get(&shared.name).is_some_and(|r| Arc::ptr_eq(r, &shared));
    let same_connection = inner.current.borrow().as_ref().is_some_and(|s| s.conn.stable_id() == conn);
    if shared.orphaned(number) && still_joined && same_connection {
        tracing::info!(room = %shared.name, "room stream never arrived; joining again");
        rejoin(&inner, shared).await;
    }
}

/// Sends posts in order, pipelined; after a connection loss re-sends every unacknowledged one, in order, on the
/// next connection.
async fn send_posts(inner: Arc<Inner>, mut jobs: mpsc::UnboundedReceiver<PostJob>) {
    let mut pending: VecDeque<PostJob> = VecDeque::new();
    let mut inflight: VecDeque<(PostJob, oneshot::Receiver<Result<Reply, RequestError>>)> = VecDeque::new();
    let mut current = inner.current.subscribe();
    'connected: loop {
        let session = tokio::select! {
            found = current.wait_for(|s| s.as_ref().is_some_and(|s| s.close_reason().is_none())) => match found {
                Ok(session) => session.clone(),
                Err(_) => None,
            },
            () = inner.stop.cancelled() => None,
        };
        let Some(session) = session else { break };
        loop {
            while let Some(job) = pending.pop_front() {
                let body = RequestBody::Post(Post {
                    room: job.room.clone(),
                    client_msg_id: job.client_msg_id,
                    body: job.body.clone(),
                });
                match session.send(body).await {
                    Ok(reply) => inflight.push_back((job, reply)),
                    Err(RequestError::Closed { .. }) => {
                        pending.push_front(job);
                        requeue(&mut pending, &mut inflight);
                        continue 'connected;
                    }
                    Err(err) => {
                        let _ = job.done.send(Err(err));
                    }
                }
            }
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => pending.push_back(job),
                    None => break 'connected,
                },
                reply = async {
                    match inflight.front_mut() {
                        Some((_, rx)) => rx.await,
                        None => std::future::pending().await,
                    }
                }, if !inflight.is_empty() => {
                    let Some((job, _)) = inflight.pop_front() else { continue };
                    match reply {
                        Ok(Ok(Reply::Posted { seq, .. })) => {
                            let _ = job.done.send(Ok(seq));
                        }
                        Ok(Err(RequestError::Closed { .. })) | Err(_) => {
                            // The connection went: this post and every later one go again, in order.
                            requeue(&mut pending, &mut inflight);
                            pending.push_front(job);
                            continue 'connected;
                        }
                        Ok(Err(err)) => {
                            let _ = job.done.send(Err(err));
                        }
                        Ok(Ok(other)) => {
                            let _ = job.done.send(Err(RequestError::UnexpectedReply(format!("{other:?}"))));
                        }
                    }
                }
                () = inner.stop.cancelled() => break 'connected,
            }
        }
    }
    let why = lock(&inner.ended).clone().unwrap_or((ErrorCode::NoError, "client closed".into()));
    for job in pending.into_iter().chain(inflight.into_iter().map(|(job, _)| job)) {
        let _ = job.done.send(Err(closed(why.clone())));
    }
}

/// Moves every in-flight post back to the front of `pending`, keeping their order.
fn requeue(
    pending: &mut VecDeque<PostJob>,
    inflight: &mut VecDeque<(PostJob, oneshot::Receiver<Result<Reply, RequestError>>)>,
) {
    for (job, _) in inflight.drain(..).rev() {
        pending.push_front(job);
    }
}
