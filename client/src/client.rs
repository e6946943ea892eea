//! The application's handle on a session: [`Client`]. It reconnects with jittered exponential backoff, rejoins
//! every room from its last position and re-sends unacknowledged posts (the server deduplicates them), so the
//! application sees a continuous event stream or an explicit `Resumed { recovered: false }`.

use std::{future::Future, net::SocketAddr, time::Duration};

use bytes::Bytes;
use quiver_proto::{ErrorCode, HistoryPage, Limits, Reply, RequestBody, Welcome};
use tokio_util::sync::CancellationToken;

use crate::{
    driver::{Driver, DriverHandle, CLOSE_WAIT},
    ConnectError, ConnectOptions, ConnectionState, JoinOptions, RequestError, Room, TickPublisher, TickSubscription,
    TrustOptions,
};

/// A Quiver session that survives connection loss. Cheap to clone; dropping the last clone (and every [`Room`],
/// [`TickSubscription`] and [`TickPublisher`]) closes it and stops its tasks.
#[derive(Debug, Clone)]
pub struct Client {
    handle: DriverHandle,
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

impl Client {
    /// Connects to `server` (`host:port`; several separated by commas: the nodes of a cluster, every address of
    /// each raced and the first to answer used; a reconnect races them again, the lost one last, and resumes every
    /// room from its position on whichever node answers), trusting its certificate as `trust` says, and opens the
    /// session.
    pub async fn connect(server: &str, trust: TrustOptions) -> Result<Client, ConnectError> {
        Client::connect_with(server, ConnectOptions { trust, ..ConnectOptions::default() }).await
    }

    /// Connects with every option spelled out. The first connection must succeed; later losses are reconnected.
    pub async fn connect_with(server: &str, options: ConnectOptions) -> Result<Client, ConnectError> {
        Ok(Client { handle: DriverHandle::new(Driver::connect(server, options).await?) })
    }

    /// The link's state, as a watch: `borrow()` for now, `changed().await` for the next change (connected,
    /// reconnecting with the attempt, the last error and the time to the next try, closed with the reason).
    pub fn state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.handle.driver.state.subscribe()
    }

    /// The latest Welcome: session id, identity, limits.
    pub fn welcome(&self) -> Welcome {
        self.handle.driver.welcome()
    }

    /// The name this client says in Hello: [`ConnectOptions::name`](crate::ConnectOptions::name), or the one it
    /// chose for itself without one (`guest-…`). The identity the server gave it is [`Client::welcome`]'s (a
    /// token's subject, where the server requires tokens).
    pub fn name(&self) -> String {
        self.handle.driver.options.name.clone().unwrap_or_default()
    }

    /// The limits the server enforces on this connection.
    pub fn limits(&self) -> Limits {
        self.welcome().limits
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.handle.driver.target().addr
    }

    /// The current QUIC connection (statistics, RTT estimate), if connected.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.handle.driver.quic()
    }

    /// The transport of the current connection (QUIC, or the WebSocket fallback), if connected.
    pub fn transport(&self) -> Option<crate::TransportKind> {
        self.handle.driver.transport()
    }

    /// Now on the server's clock (this machine's clock plus the offset estimated from Ping/Pong), µs since the
    /// Unix epoch.
    pub fn server_clock_us(&self) -> u64 {
        self.handle.driver.server_clock_us()
    }

    /// Subscribes to a tick channel. Resubscribed on its own after a reconnect (also when the connection drops
    /// before the server's answer: the subscribe is sent again on the next connection).
    pub async fn subscribe(&self, channel: &str) -> Result<TickSubscription, RequestError> {
        self.handle.driver.subscribe(channel, self.handle.downgrade()).await
    }

    /// Claims the right to publish on a tick channel. Claimed again on its own after a reconnect (the claim, too, is
    /// sent again if the connection drops before its answer). A second publisher
    /// of a channel shares the first's claim, max age and tick numbering.
    pub async fn publisher(&self, channel: &str) -> Result<TickPublisher, RequestError> {
        self.publisher_with_max_age(channel, None).await
    }

    /// Like [`Client::publisher`], asking the server to drop ticks of this channel older than `max_age` instead of
    /// sending them late (in whole milliseconds, rounded up: at least 1 ms).
    pub async fn publisher_with_max_age(
        &self,
        channel: &str,
        max_age: Option<Duration>,
    ) -> Result<TickPublisher, RequestError> {
        // Whole milliseconds, rounded up (the server refuses 0: a max age below 1 ms asks for 1 ms).
        let max_age_ms = max_age.map(|d| u32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u32::MAX).max(1));
        self.handle.driver.publisher(channel, max_age_ms, self.handle.downgrade()).await
    }

    /// One Ping/Pong round trip on the control stream.
    pub async fn ping(&self) -> Result<Pong, RequestError> {
        let (reply, sent, client_time_us) = self.handle.driver.ping().await?;
        match reply {
            Reply::Pong { server_time_us, .. } => Ok(Pong { rtt: sent.elapsed(), client_time_us, server_time_us }),
            other => Err(RequestError::unexpected(other)),
        }
    }

    /// Sends one request on the control stream of the current connection and waits for its reply. Not retried.
    /// For requests the client does not track: a raw `Join`, `Subscribe` or `Publish` here is unknown to it (the
    /// server opens a room stream the client then stops; the server ends that membership 5 s later, and a
    /// [`Client::join`] of the room meanwhile is refused `AlreadyJoined`), so use the typed methods for those. A
    /// raw `Post` refused `Unavailable` (a cluster's broker unreachable) holds the connection's later posts back
    /// until the same post is sent again (the server keeps a connection's posts in order across such a refusal):
    /// the typed [`Client::post`]s then wait, retried, until it is, or until the next connection. A future given
    /// up leaves its entry among the requests awaiting a reply until the reply or the connection's end.
    pub async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        self.handle.driver.request(body).await
    }

    /// Joins `room`: its events (from now on) arrive through the returned [`Room`]. A Join whose connection drops
    /// before the answer is sent again on the next connection (up to three connections in all), so a reconnect
    /// of a moment does not fail it.
    pub async fn join(&self, room: &str) -> Result<Room, RequestError> {
        self.join_with(room, JoinOptions::default()).await
    }

    /// Joins `room` with `options`: from a position, with redundant delivery (see [`JoinOptions`]).
    pub async fn join_with(&self, room: &str, options: JoinOptions) -> Result<Room, RequestError> {
        // The join runs on a task of its own: if this future is dropped before it returns, `leaving` tells the
        // join, and the room it may have joined meanwhile is left (its `Room` dropped).
        let leaving = CancellationToken::new();
        let given_up = leaving.clone().drop_guard();
        let (handle, room) = (self.handle.downgrade(), room.to_string());
        let joined = self
            .handle
            .driver
            .detached(move |driver| async move {
                let (entry, events, read) = driver.join(&room, options, leaving).await?;
                Ok(Room { entry, events, handle: handle.upgrade()?, read })
            })
            .await;
        given_up.disarm();
        joined
    }

    /// Joins `room` from `position` (a [`Room::position`] stored by an earlier session: a bot or a chat that
    /// restarts). Messages after it are replayed, none up to it is delivered again, and the first event is
    /// `Resumed { recovered }`: `false` when the server no longer holds everything after `position` (trimmed
    /// history, or another epoch), so what follows is the room's latest messages, not all that was missed.
    pub async fn join_from(&self, room: &str, position: quiver_proto::Position) -> Result<Room, RequestError> {
        self.join_with(room, JoinOptions { since: Some(position), redundant: false }).await
    }

    /// Posts `body` to `room` (joined or not); the returned future resolves to the seq it got. The post is queued
    /// when this is called, not when the future is first polled: posts go out in the order of `post` calls. They
    /// are pipelined, retried after a reconnect until acknowledged, and delivered once (the server deduplicates
    /// by `client_msg_id`) as long as the server still remembers the first attempt: within its dedupe window
    /// (`dedupe_window_s`, 600 s by default, and the room's newest `dedupe_max_entries` posts). A post whose
    /// first attempt was stored but whose reply was lost, retried after a reconnect that took longer than that,
    /// is stored twice.
    pub fn post(
        &self,
        room: &str,
        body: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send + 'static {
        self.handle.driver.post(room, None, body.into())
    }

    /// [`Client::post`] with your own `client_msg_id`, for posts that must not be doubled across processes: a
    /// script that re-runs after a crash, a service that retries from its own outbox. The server answers a post
    /// whose `(identity, client_msg_id)` it has already sequenced (within `Limits::dedupe_window_s`) with the
    /// original seq and delivers nothing again. The identity must be the same each time: a token's `sub`, or a
    /// fixed `ConnectOptions::name` with dev tokens. Ids this client draws for [`Client::post`] start at a random
    /// point, so they do not meet yours in practice.
    pub fn post_with_id(
        &self,
        room: &str,
        client_msg_id: u64,
        body: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send + 'static {
        self.handle.driver.post(room, Some(client_msg_id), body.into())
    }

    /// A room's retained messages after `since`, at most `limit` (fewer when they do not fit one frame: see
    /// `HistoryPage::more`). Asked again on the next connection if the connection drops before the answer.
    pub async fn history(&self, room: &str, since: Option<u64>, limit: u32) -> Result<HistoryPage, RequestError> {
        match self.handle.driver.read(RequestBody::History { room: room.to_string(), since, limit }).await? {
            Reply::History(page) => Ok(page),
            other => Err(RequestError::unexpected(other)),
        }
    }

    /// Closes the connection with `NoError`, ends the client, and waits (briefly) for its tasks to stop and the
    /// server to learn of it.
    pub async fn close(self) {
        self.handle.driver.end((ErrorCode::NoError, "closed by the application".into()));
        let _ = tokio::time::timeout(CLOSE_WAIT, self.handle.driver.tasks.wait()).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, self.handle.driver.target().endpoint.wait_idle()).await;
    }

    /// Waits until the client has ended for good (closed, refused on reconnect, or the connection was lost with
    /// reconnection off) and says why.
    pub async fn closed(&self) -> (ErrorCode, String) {
        self.handle.driver.stop.cancelled().await;
        self.handle.driver.end_reason()
    }
}
