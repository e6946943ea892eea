//! The client's driver: the only part that owns tasks. It keeps the live connection, reconnects with backoff when
//! it is lost, puts rooms, subscriptions and publish claims back on every new connection, sends posts in order
//! (re-sending unacknowledged ones), and reads room streams into their rooms. The decisions are the sans-IO
//! [`crate::state`] types'; every task runs on one [`TaskTracker`] and stops with one [`CancellationToken`], so
//! closing the client stops and awaits all of them.
//!
//! Work runs in spawned tasks: quinn driven from `block_on`'s thread costs about 4x the round trip (measured).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use quiver_proto::{
    ErrorCode, FrameCodec, Join, Limits, Post, Reply, RequestBody, RoomFrame, ServerMsg, TickHeader, Welcome,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::state::backoff::Backoff;
use crate::state::clock::{self, ClockSample};
use crate::state::posts::{PostQueue, QueuedPost};
use crate::state::room::{RoomEvent, RoomState};
use crate::state::ticks::LatestWins;
use crate::{
    connection::{Connection, Handler, Target},
    error::{ConnectError, RequestError, TickError},
    options::ConnectOptions,
};

/// Events buffered per room before its stream's reader stops reading (and the server, after `room_queue_bytes`
/// more, resets the stream as a slow consumer).
pub const EVENT_BUFFER: usize = 1024;

type Live = Connection<Driver>;
type PostDone = oneshot::Sender<Result<u64, RequestError>>;
type PostReply = oneshot::Receiver<Result<Reply, RequestError>>;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What the client keeps per joined room.
#[derive(Debug)]
pub(crate) struct RoomEntry {
    pub(crate) name: String,
    pub(crate) state: Mutex<RoomState>,
    events: mpsc::Sender<RoomEvent>,
}

/// What the client keeps per subscription.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) channel: String,
    pub(crate) state: Mutex<LatestWins>,
    pub(crate) arrived: Notify,
}

/// What the client keeps per publish claim.
#[derive(Debug)]
pub(crate) struct PubEntry {
    pub(crate) channel: String,
    max_age_ms: Option<u32>,
    /// (connection id, channel id on that connection).
    claim: Mutex<Option<(usize, u64)>>,
    next_seq: AtomicU64,
}

/// An application handle on the driver: while one exists the client runs; dropping the last one (the last
/// `Client`, room, subscription or publisher) stops every task and closes the connection.
#[derive(Debug, Clone)]
pub(crate) struct DriverHandle {
    pub(crate) driver: Arc<Driver>,
    _guard: Arc<StopOnDrop>,
}

impl DriverHandle {
    pub(crate) fn new(driver: Arc<Driver>) -> Self {
        let guard = Arc::new(StopOnDrop(driver.stop.clone()));
        DriverHandle { driver, _guard: guard }
    }
}

#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The client's shared state and tasks.
#[derive(Debug)]
pub(crate) struct Driver {
    me: Weak<Driver>,
    pub(crate) target: Target,
    options: ConnectOptions,
    /// The live connection, `None` while reconnecting.
    current: watch::Sender<Option<Arc<Live>>>,
    /// Why the client ended for good (closed by the application, refused, or reconnect disabled).
    ended: Mutex<Option<(ErrorCode, String)>>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    rooms: Mutex<HashMap<String, Arc<RoomEntry>>>,
    subscriptions: Mutex<HashMap<String, Arc<SubEntry>>>,
    publishers: Mutex<HashMap<String, Arc<PubEntry>>>,
    posts: mpsc::UnboundedSender<QueuedPost<PostDone>>,
    next_msg_id: AtomicU64,
    welcome: Mutex<Welcome>,
    /// Server clock minus this machine's clock, in µs, estimated from Ping/Pong at each connect.
    clock_offset_us: AtomicI64,
}

impl Driver {
    /// Resolves `server`, opens the first connection (which must succeed) and starts the client's tasks.
    pub(crate) async fn connect(server: &str, options: ConnectOptions) -> Result<Arc<Driver>, ConnectError> {
        let options = options.with_dev_tokens();
        let timeout = options.connect_timeout;
        let target = tokio::time::timeout(timeout, Target::resolve(server, &options))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        let (posts, queued) = mpsc::unbounded_channel();
        let driver = Arc::new_cyclic(|me| Driver {
            me: me.clone(),
            target,
            options,
            current: watch::channel(None).0,
            ended: Mutex::new(None),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            rooms: Mutex::default(),
            subscriptions: Mutex::default(),
            publishers: Mutex::default(),
            posts,
            next_msg_id: AtomicU64::new(rand::random::<u64>() >> 2),
            welcome: Mutex::new(Welcome {
                version: 0,
                session_id: 0,
                server_time_us: 0,
                identity: String::new(),
                limits: Limits::default(),
            }),
            clock_offset_us: AtomicI64::new(0),
        });
        let first = tokio::time::timeout(timeout, driver.open()).await.map_err(|_| ConnectError::Timeout(timeout));
        match first {
            Ok(Ok(connection)) => driver.connected(connection).await,
            Ok(Err(err)) | Err(err) => {
                driver.stop.cancel();
                return Err(err);
            }
        }
        driver.tasks.spawn(driver.clone().supervise());
        driver.tasks.spawn(driver.clone().send_posts(queued));
        Ok(driver)
    }

    async fn open(&self) -> Result<Arc<Live>, ConnectError> {
        Connection::open(&self.target, &self.options, self.me.clone(), &self.tasks).await
    }

    /// A new connection is up: its Welcome and clock offset are noted, then it becomes the current one.
    async fn connected(&self, connection: Arc<Live>) {
        *lock(&self.welcome) = connection.welcome.clone();
        self.estimate_clock_offset(&connection).await;
        self.current.send_replace(Some(connection));
    }

    pub(crate) fn welcome(&self) -> Welcome {
        lock(&self.welcome).clone()
    }

    /// The current QUIC connection, if connected.
    pub(crate) fn quic(&self) -> Option<quinn::Connection> {
        self.current.borrow().as_ref().map(|c| c.quic.clone())
    }

    /// Now on the server's clock, µs since the Unix epoch.
    pub(crate) fn server_clock_us(&self) -> u64 {
        unix_us().saturating_add_signed(self.clock_offset_us.load(Ordering::Relaxed))
    }

    pub(crate) fn end_reason(&self) -> (ErrorCode, String) {
        lock(&self.ended).clone().unwrap_or((ErrorCode::NoError, "client closed".into()))
    }

    /// Ends the client for good: closes the connection with `why` and stops every task.
    pub(crate) fn end(&self, why: (ErrorCode, String)) {
        lock(&self.ended).get_or_insert(why.clone());
        if let Some(connection) = self.current.borrow().as_ref() {
            quiver_transport::close::close(&connection.quic, why.0, &why.1);
        }
        self.stop.cancel();
        self.tasks.close();
    }

    /// A live connection, waiting up to the connect timeout for a reconnect.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, RequestError> {
        let mut current = self.current.subscribe();
        let wait = current.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()));
        tokio::select! {
            found = tokio::time::timeout(self.options.connect_timeout, wait) => match found {
                Ok(Ok(connection)) => connection.clone().ok_or_else(|| RequestError::closed(self.end_reason())),
                Ok(Err(_)) => Err(RequestError::closed(self.end_reason())),
                Err(_) => Err(RequestError::closed((ErrorCode::Internal, "not connected (reconnecting)".into()))),
            },
            () = self.stop.cancelled() => Err(RequestError::closed(self.end_reason())),
        }
    }

    /// One request on the current connection. Not retried.
    pub(crate) async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        self.live().await?.request(body).await
    }

    /// Joins `room`; its events arrive on the returned receiver.
    pub(crate) async fn join(&self, room: &str) -> Result<(Arc<RoomEntry>, mpsc::Receiver<RoomEvent>), RequestError> {
        let (events, received) = mpsc::channel(EVENT_BUFFER);
        let entry = Arc::new(RoomEntry { name: room.to_string(), state: Mutex::new(RoomState::new()), events });
        {
            let mut rooms = lock(&self.rooms);
            if rooms.contains_key(room) {
                let failure = quiver_proto::Failure::new(ErrorCode::AlreadyJoined, format!("already in room {room}"));
                return Err(RequestError::Failed(failure));
            }
            rooms.insert(room.to_string(), entry.clone());
        }
        let joined = self.request(RequestBody::Join(Join { room: room.to_string(), since: None })).await;
        match joined {
            Ok(Reply::Joined(joined)) => {
                lock(&entry.state).replied(&joined);
                Ok((entry, received))
            }
            other => {
                lock(&self.rooms).remove(room);
                Err(match other {
                    Ok(reply) => RequestError::unexpected(reply),
                    Err(err) => err,
                })
            }
        }
    }

    pub(crate) async fn leave(&self, room: &str) -> Result<(), RequestError> {
        lock(&self.rooms).remove(room);
        match self.request(RequestBody::Leave { room: room.to_string() }).await? {
            Reply::Left { .. } => Ok(()),
            other => Err(RequestError::unexpected(other)),
        }
    }

    /// Queues a post now; the future resolves to its seq.
    pub(crate) fn post(
        &self,
        room: &str,
        body: Bytes,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send + 'static {
        let (done, outcome) = oneshot::channel();
        let client_msg_id = self.next_msg_id.fetch_add(1, Ordering::Relaxed);
        let queued = self.posts.send(QueuedPost { room: room.to_string(), client_msg_id, body, done });
        let me = self.me.clone();
        let why = move || me.upgrade().map_or((ErrorCode::NoError, "client closed".into()), |d| d.end_reason());
        async move {
            if queued.is_err() {
                return Err(RequestError::closed(why()));
            }
            outcome.await.unwrap_or_else(|_| Err(RequestError::closed(why())))
        }
    }

    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Arc<SubEntry>, RequestError> {
        let entry = lock(&self.subscriptions)
            .entry(channel.to_string())
            .or_insert_with(|| {
                Arc::new(SubEntry { channel: channel.to_string(), state: Mutex::default(), arrived: Notify::new() })
            })
            .clone();
        let subscribed = match self.live().await {
            Ok(connection) => subscribe_on(&connection, &entry).await,
            Err(err) => Err(err),
        };
        if let Err(err) = subscribed {
            lock(&self.subscriptions).remove(channel);
            return Err(err);
        }
        Ok(entry)
    }

    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), RequestError> {
        lock(&self.subscriptions).remove(channel);
        match self.request(RequestBody::Unsubscribe { channel: channel.to_string() }).await? {
            Reply::Unsubscribed { .. } => Ok(()),
            other => Err(RequestError::unexpected(other)),
        }
    }

    pub(crate) async fn publisher(
        &self,
        channel: &str,
        max_age_ms: Option<u32>,
    ) -> Result<Arc<PubEntry>, RequestError> {
        let entry = Arc::new(PubEntry {
            channel: channel.to_string(),
            max_age_ms,
            claim: Mutex::new(None),
            next_seq: AtomicU64::new(1),
        });
        claim_on(&*self.live().await?, &entry).await?;
        lock(&self.publishers).insert(channel.to_string(), entry.clone());
        Ok(entry)
    }

    /// The largest tick payload that fits one datagram on the current connection.
    pub(crate) fn max_payload(&self) -> Result<usize, TickError> {
        let quic = self.quic().ok_or(TickError::NotConnected)?;
        let max = quic.max_datagram_size().ok_or(TickError::Unsupported)?;
        // The limit counts the largest header, so it does not shift as seqs and ids grow.
        Ok(max.saturating_sub(TickHeader::MAX_LEN))
    }

    /// Sends one tick of `publisher`; returns the publisher's own seq for it. Never waits.
    pub(crate) fn send_tick(&self, publisher: &PubEntry, payload: Bytes) -> Result<u64, TickError> {
        let (quic, connection) = {
            let current = self.current.borrow();
            let connection = current.as_ref().ok_or(TickError::NotConnected)?;
            (connection.quic.clone(), connection.id)
        };
        let channel_id = match *lock(&publisher.claim) {
            Some((claimed_on, id)) if claimed_on == connection => id,
            _ => return Err(TickError::NotConnected),
        };
        let max_payload = quic.max_datagram_size().ok_or(TickError::Unsupported)?.saturating_sub(TickHeader::MAX_LEN);
        if payload.len() > max_payload {
            return Err(TickError::TooLarge { size: payload.len(), max_payload });
        }
        let seq = publisher.next_seq.fetch_add(1, Ordering::Relaxed);
        let header = TickHeader { channel_id, seq, sent_time_us: self.server_clock_us() };
        let mut datagram = BytesMut::with_capacity(header.encoded_len() + payload.len());
        header.encode(&mut datagram).map_err(|_| TickError::Unsupported)?;
        datagram.put_slice(&payload);
        quic.send_datagram(datagram.freeze()).map_err(|err| match err {
            quinn::SendDatagramError::TooLarge => TickError::TooLarge { size: payload.len(), max_payload },
            quinn::SendDatagramError::ConnectionLost(_) => TickError::NotConnected,
            _ => TickError::Unsupported,
        })?;
        Ok(seq)
    }

    /// Pings a few times and keeps the offset of the fastest round trip.
    async fn estimate_clock_offset(&self, connection: &Live) {
        let mut samples = Vec::with_capacity(5);
        for _ in 0..5 {
            let started = Instant::now();
            let sent_us = unix_us();
            let Ok(Reply::Pong { server_time_us, .. }) =
                connection.request(RequestBody::Ping { client_time_us: sent_us }).await
            else {
                return;
            };
            samples.push(ClockSample { sent_us, rtt: started.elapsed(), server_us: server_time_us });
        }
        if let Some(offset) = clock::offset_us(&samples) {
            tracing::debug!(offset_us = offset, "clock offset to the server");
            self.clock_offset_us.store(offset, Ordering::Relaxed);
        }
    }

    /// Watches the live connection; when it is lost, reconnects with backoff and puts everything back.
    async fn supervise(self: Arc<Self>) {
        loop {
            let Some(connection) = self.current.borrow().clone() else { return };
            tokio::select! {
                _ = connection.quic.closed() => {}
                () = self.stop.cancelled() => {
                    // Every handle was dropped (or close() was called): the connection goes with the client.
                    self.end((ErrorCode::NoError, "client dropped".into()));
                    return;
                }
            }
            let why = connection.close_reason().unwrap_or((ErrorCode::Internal, "connection lost".into()));
            if !self.options.reconnect {
                self.end(why);
                return;
            }
            tracing::info!(code = %why.0, reason = %why.1, "connection lost; reconnecting");
            self.current.send_replace(None);
            let mut backoff = Backoff::new(self.options.reconnect_delay, self.options.reconnect_max_delay);
            let connection = loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay(rand::random())) => {}
                    () = self.stop.cancelled() => return,
                }
                match tokio::time::timeout(self.options.connect_timeout, self.open()).await {
                    Ok(Ok(connection)) => break connection,
                    Ok(Err(ConnectError::Refused(failure))) => {
                        tracing::error!(%failure, "server refused the session on reconnect");
                        self.end((failure.code, failure.message));
                        return;
                    }
                    Ok(Err(err)) => tracing::info!(%err, attempt = backoff.attempts(), "reconnect failed"),
                    Err(_) => tracing::info!(attempt = backoff.attempts(), "reconnect timed out"),
                }
            };
            self.connected(connection.clone()).await;
            self.restore(&connection).await;
        }
    }

    /// Puts rooms (from their positions), subscriptions and claims back on a new connection.
    async fn restore(&self, connection: &Live) {
        let rooms: Vec<Arc<RoomEntry>> = lock(&self.rooms).values().cloned().collect();
        for entry in rooms {
            self.rejoin_on(connection, &entry).await;
        }
        let subscriptions: Vec<Arc<SubEntry>> = lock(&self.subscriptions).values().cloned().collect();
        for entry in subscriptions {
            lock(&entry.state).resync();
            if let Err(err) = subscribe_on(connection, &entry).await {
                tracing::warn!(channel = %entry.channel, %err, "cannot resubscribe");
            }
        }
        let publishers: Vec<Arc<PubEntry>> = lock(&self.publishers).values().cloned().collect();
        for entry in publishers {
            if let Err(err) = claim_on(connection, &entry).await {
                tracing::warn!(channel = %entry.channel, %err, "cannot claim channel again");
            }
        }
    }

    /// Joins a room again from its position (after a reconnect, or a slow-consumer kick).
    async fn rejoin_on(&self, connection: &Live, entry: &RoomEntry) {
        let since = lock(&entry.state).position();
        match connection.request(RequestBody::Join(Join { room: entry.name.clone(), since })).await {
            Ok(Reply::Joined(joined)) => lock(&entry.state).replied(&joined),
            Ok(other) => tracing::warn!(room = %entry.name, ?other, "unexpected reply to Join"),
            // The connection went again: the supervisor rejoins once it is back.
            Err(RequestError::Closed { .. }) => {}
            Err(err) => tracing::warn!(room = %entry.name, %err, "cannot rejoin room"),
        }
    }

    /// Sends posts in order, pipelined; after a connection loss re-sends every unacknowledged one, in order, on the
    /// next connection.
    async fn send_posts(self: Arc<Self>, mut queued: mpsc::UnboundedReceiver<QueuedPost<PostDone>>) {
        let mut posts: PostQueue<PostDone, PostReply> = PostQueue::default();
        let mut current = self.current.subscribe();
        'connected: loop {
            let connection = tokio::select! {
                found = current.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none())) => match found {
                    Ok(connection) => connection.clone(),
                    Err(_) => None,
                },
                () = self.stop.cancelled() => None,
            };
            let Some(connection) = connection else { break };
            loop {
                while let Some(post) = posts.next_to_send() {
                    let body = RequestBody::Post(Post {
                        room: post.room.clone(),
                        client_msg_id: post.client_msg_id,
                        body: post.body.clone(),
                    });
                    match connection.send(body).await {
                        Ok(reply) => posts.sent(post, reply),
                        Err(RequestError::Closed { .. }) => {
                            posts.unsent(post);
                            posts.requeue();
                            continue 'connected;
                        }
                        Err(err) => {
                            let _ = post.done.send(Err(err));
                        }
                    }
                }
                tokio::select! {
                    post = queued.recv() => match post {
                        Some(post) => posts.push(post),
                        None => break 'connected,
                    },
                    reply = async {
                        match posts.oldest_reply() {
                            Some(reply) => reply.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let outcome = match reply {
                            Ok(Ok(Reply::Posted { seq, .. })) => Ok(seq),
                            Ok(Ok(other)) => Err(RequestError::unexpected(other)),
                            Ok(Err(RequestError::Closed { .. })) | Err(_) => {
                                // The connection went: this post and every later one go again, in order.
                                posts.requeue();
                                continue 'connected;
                            }
                            Ok(Err(err)) => Err(err),
                        };
                        if let Some(post) = posts.answered() {
                            let _ = post.done.send(outcome);
                        }
                    }
                    () = self.stop.cancelled() => break 'connected,
                }
            }
        }
        let why = self.end_reason();
        for post in posts.drain() {
            let _ = post.done.send(Err(RequestError::closed(why.clone())));
        }
    }

    /// The room entry named `room`, if it is joined.
    fn room(&self, room: &str) -> Option<Arc<RoomEntry>> {
        lock(&self.rooms).get(room).cloned()
    }

    /// Room for one event in a room's channel: at once when there is room, else when the application reads or
    /// the client stops; `None` when the room's handle is gone or the client stopped.
    async fn reserve<'a>(&self, events: &'a mpsc::Sender<RoomEvent>) -> Option<mpsc::Permit<'a, RoomEvent>> {
        match events.try_reserve() {
            Ok(permit) => Some(permit),
            Err(mpsc::error::TrySendError::Closed(())) => None,
            Err(mpsc::error::TrySendError::Full(())) => tokio::select! {
                permit = events.reserve() => permit.ok(),
                () = self.stop.cancelled() => None,
            },
        }
    }

    /// Reads one room stream: its Open frame says which room it carries and where it starts; then its events,
    /// until the stream ends (finished, reset, or its connection closed: closing the client closes it) or a newer
    /// stream of the room replaces it. An event is made from its frame under the room's state lock with room in the
    /// room's channel already reserved, so events leave in the order the state produced them, even while a
    /// rejoin's stream replaces an older one.
    async fn read_room_stream(self: Arc<Self>, mut recv: quinn::RecvStream) {
        let codec = FrameCodec::new(self.welcome().limits.max_frame as usize);
        let mut buf = BytesMut::new();
        let open = match next_frame(&codec, &mut recv, &mut buf).await {
            Ok(Some(RoomFrame::Open(open))) => open,
            Ok(None) | Err(StreamEnd::Reset(_)) => return, // reset before it said anything: a Kicked follows
            other => {
                tracing::warn!(?other, "room stream did not start with Open");
                let _ = recv.stop(quiver_transport::close::quic_code(ErrorCode::ProtocolViolation));
                return;
            }
        };
        let Some(entry) = self.room(&open.room) else {
            // Left meanwhile.
            let _ = recv.stop(quiver_transport::close::quic_code(ErrorCode::NoError));
            return;
        };
        let Some(permit) = self.reserve(&entry.events).await else { return };
        let stream = {
            let mut state = lock(&entry.state);
            let (stream, resumed) = state.open(&open);
            if let Some(resumed) = resumed {
                permit.send(resumed);
            }
            stream
        };
        loop {
            match next_frame(&codec, &mut recv, &mut buf).await {
                Ok(Some(RoomFrame::Event(event))) => {
                    let Some(permit) = self.reserve(&entry.events).await else { return };
                    let mut state = lock(&entry.state);
                    match state.event(stream, event) {
                        Some(event) => permit.send(event),
                        None if state.current_stream() != stream => return, // replaced by a rejoin
                        None => {}                                          // delivered before a resume
                    }
                }
                Ok(Some(RoomFrame::Open(_))) => {
                    tracing::warn!(room = %entry.name, "second Open on a room stream");
                    return;
                }
                Ok(None) => return, // finished: the room was left
                Err(StreamEnd::Reset(code)) => {
                    // A slow consumer's reset is followed by Kicked on the control stream, which rejoins.
                    tracing::debug!(room = %entry.name, %code, "room stream reset");
                    return;
                }
                Err(StreamEnd::Other(err)) => {
                    tracing::debug!(room = %entry.name, %err, "room stream ended");
                    return;
                }
            }
        }
    }
}

impl Handler for Driver {
    type Route = Arc<SubEntry>;

    fn tick(&self, route: &Arc<SubEntry>, header: TickHeader, payload: Bytes) {
        let accepted = lock(&route.state).on_tick(header, payload, self.server_clock_us());
        if accepted {
            route.arrived.notify_waiters();
        }
    }

    fn room_stream(&self, _connection: usize, recv: quinn::RecvStream) {
        if let Some(me) = self.me.upgrade() {
            self.tasks.spawn(me.read_room_stream(recv));
        }
    }

    fn pushed(&self, connection: usize, msg: ServerMsg) {
        match msg {
            ServerMsg::Kicked { room: Some(room), code: ErrorCode::SlowConsumer, reason } => {
                tracing::info!(%room, %reason, "fell behind in a room; resuming it");
                let current = self.current.borrow().clone().filter(|c| c.id == connection);
                let (Some(current), Some(entry), Some(me)) = (current, self.room(&room), self.me.upgrade()) else {
                    return;
                };
                self.tasks.spawn(async move { me.rejoin_on(&current, &entry).await });
            }
            ServerMsg::Kicked { room, code, reason } => tracing::warn!(?room, %code, %reason, "kicked"),
            ServerMsg::GoAway { code, reason } => tracing::info!(%code, %reason, "server is going away"),
            ServerMsg::Error(failure) => tracing::warn!(%failure, "server error"),
            ServerMsg::Reply { .. } => {}
        }
    }
}

async fn subscribe_on(connection: &Live, entry: &Arc<SubEntry>) -> Result<(), RequestError> {
    match connection.request(RequestBody::Subscribe { channel: entry.channel.clone() }).await? {
        Reply::Subscribed { channel_id, .. } => {
            connection.route(channel_id, entry.clone());
            Ok(())
        }
        other => Err(RequestError::unexpected(other)),
    }
}

async fn claim_on(connection: &Live, entry: &PubEntry) -> Result<(), RequestError> {
    let body = RequestBody::Publish { channel: entry.channel.clone(), max_age_ms: entry.max_age_ms };
    match connection.request(body).await? {
        Reply::Publishing { channel_id, .. } => {
            *lock(&entry.claim) = Some((connection.id, channel_id));
            Ok(())
        }
        other => Err(RequestError::unexpected(other)),
    }
}

/// How a room stream ended, when it did not finish cleanly.
#[derive(Debug)]
enum StreamEnd {
    Reset(ErrorCode),
    Other(String),
}

async fn next_frame(
    codec: &FrameCodec,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<Option<RoomFrame>, StreamEnd> {
    loop {
        match codec.decode::<RoomFrame>(buf) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(StreamEnd::Other("stream ended inside a frame".into())),
            Err(quinn::ReadError::Reset(code)) => {
                return Err(StreamEnd::Reset(quiver_transport::close::from_quic_code(code)))
            }
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
    }
}

/// How long `Client::close` waits for the server to learn of the close.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);
