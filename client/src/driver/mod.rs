//! The client's driver: the only part that owns tasks. It keeps the live connection, reconnects with backoff when
//! it is lost, and puts everything back on the new connection; its parts do the rest: [`rooms`] (joined rooms and
//! their streams), [`ticks`] (subscriptions and claims), [`posts`] (the ordered, re-sent post queue). The
//! decisions are the sans-IO [`crate::state`] types'; every task runs on one [`TaskTracker`] and stops with one
//! [`CancellationToken`], so closing the client stops and awaits all of them.
//!
//! Work runs in spawned tasks: quinn driven from `block_on`'s thread costs about 4x the round trip (measured).

mod calls;
mod connect;
mod handler;
mod posts;
mod rejoin;
mod rooms;
mod streams;
mod supervise;
mod ticks;
mod ticks_resume;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use quiver_proto::{ErrorCode, Limits, Reply, RequestBody, Welcome};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub(crate) use rooms::RoomEntry;
pub use rooms::{EVENT_BUFFER, EVENT_BUFFER_BYTES};
pub(crate) use ticks::{PubEntry, SubEntry};

use crate::{
    clock::unix_us,
    connection::Connection,
    error::{ConnectError, RequestError, TickError},
    link::ConnectionState,
    options::ConnectOptions,
    state::{
        backoff::Backoff,
        clock::{offset_us, ClockSample},
        posts::QueuedPost,
        room::StreamNumber,
    },
    sync::lock,
    target::Target,
    wire::{Link, TransportKind},
};

/// Where a redundant stream's copies go: its room and the stream's number.
type CopyRoute = (Arc<RoomEntry>, StreamNumber);

/// A connection lost after lasting at least this long starts the reconnect delays over from `reconnect_delay`; one
/// lost sooner goes on from where the last delays were.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How long `Client::close` waits for its tasks to stop and for the server to learn of the close.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Live = Connection<Driver>;

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

    /// A handle for a call's detached task (a join, a subscribe, a claim) that does not keep the client running.
    /// A task holding a whole one kept the client (its tasks, its connection, keep-alives and all) alive after the
    /// application gave up the call and dropped every handle, for as long as the server did not answer.
    pub(crate) fn downgrade(&self) -> WeakHandle {
        WeakHandle { driver: self.driver.clone(), guard: Arc::downgrade(&self._guard) }
    }
}

/// [`DriverHandle::downgrade`].
#[derive(Debug)]
pub(crate) struct WeakHandle {
    driver: Arc<Driver>,
    guard: std::sync::Weak<StopOnDrop>,
}

impl WeakHandle {
    /// The handle again, or `Closed` when the application dropped every one meanwhile (the client has ended).
    pub(crate) fn upgrade(&self) -> Result<DriverHandle, RequestError> {
        match self.guard.upgrade() {
            Some(guard) => Ok(DriverHandle { driver: self.driver.clone(), _guard: guard }),
            None => Err(RequestError::closed((ErrorCode::NoError, "client dropped".into()))),
        }
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
    /// The servers the client was given (resolved again, and raced, at each reconnect).
    server: String,
    /// Where the current (or last) connection goes.
    target: Mutex<Arc<Target>>,
    pub(crate) options: ConnectOptions,
    /// The live connection, `None` while reconnecting.
    current: watch::Sender<Option<Arc<Live>>>,
    /// Why the client ended for good (closed by the application, refused, or reconnect disabled).
    ended: Mutex<Option<(ErrorCode, String)>>,
    /// The link as the application sees it.
    pub(crate) state: watch::Sender<ConnectionState>,
    reconnects: AtomicU64,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    rooms: rooms::Rooms,
    ticks: ticks::Ticks,
    posts: mpsc::UnboundedSender<QueuedPost<posts::PostDone>>,
    next_msg_id: AtomicU64,
    /// Posts queued or awaiting their reply (`ConnectOptions::max_queued_posts`).
    queued_posts: Arc<std::sync::atomic::AtomicUsize>,
    /// Room streams accepted so far, over every connection: a later stream is a newer one.
    room_streams: AtomicU64,
    /// Redundant room streams by (connection, slot): where their datagram copies go.
    copy_slots: Mutex<HashMap<(usize, u64), CopyRoute>>,
    welcome: Mutex<Welcome>,
    /// Server clock minus this machine's clock, in µs, estimated from Ping/Pong at each connect.
    clock_offset_us: AtomicI64,
    /// `Transport::Auto` needed the WebSocket the last time: the reconnect tries it and QUIC at once.
    websocket_first: AtomicBool,
    /// The runtime the client was connected on: a `Room` dropped outside it still leaves through it.
    runtime: tokio::runtime::Handle,
}

/// Clock Pings per connection, one after the other: the fastest round trip's answer gives the server clock's offset
/// ([`offset_us`]). The first is waited for before the connection is handed out, the others are not.
const CLOCK_PINGS: usize = 5;

impl Driver {
    async fn open(&self, link: Link) -> Result<Arc<Live>, ConnectError> {
        let websocket = link.kind() == TransportKind::WebSocket;
        let opened = Connection::open(link, &self.options, self.me.clone(), &self.tasks).await?;
        if self.options.transport == crate::Transport::Auto {
            // Remembered until the next connection (once a session opened over it): after a WebSocket win the
            // reconnect tries the WebSocket and QUIC at once, after a QUIC win QUIC first again.
            self.websocket_first.store(websocket, Ordering::Relaxed);
        }
        Ok(opened)
    }

    /// Where the current (or last) connection goes.
    pub(crate) fn target(&self) -> Arc<Target> {
        lock(&self.target).clone()
    }

    /// A new connection is up (`reconnect`: not the client's first): its Welcome and clock offset are noted, then
    /// it becomes the current one. False, and nothing published, for a reconnect's connection closed at its first
    /// clock Ping (one the server would not take, a crash): not handed to the application, or counted as a
    /// reconnect, and the next one is tried. (The first connection is published all the same: the supervisor then
    /// reconnects from it. One closed during the later Pings was published and is reconnected from.)
    ///
    /// Only the clock's first Ping is waited for ([`CLOCK_PINGS`]): the others refine the offset in the background
    /// once the connection is handed out (a connect used to wait for all five round trips, half a second at 100 ms
    /// of RTT).
    async fn connected(&self, connection: Arc<Live>, reconnect: bool) -> bool {
        let mut samples = Vec::with_capacity(CLOCK_PINGS);
        self.clock_samples(&connection, 1, &mut samples, true).await;
        if reconnect && connection.is_done() {
            return false;
        }
        // Closed by the application meanwhile: `end` found no connection to close, and published now, the supervisor
        // would rejoin its rooms on it before it saw the end (until 2026-12-07, a review's find). Closed here, with
        // the client's end, or nobody would: its reader tasks hold it.
        if reconnect && self.stop.is_cancelled() {
            let why = lock(&self.ended).clone().unwrap_or((ErrorCode::NoError, "the client closed".into()));
            connection.link.close(why.0, &why.1);
            return false;
        }
        *lock(&self.welcome) = connection.welcome.clone();
        self.note_clock_offset(&samples);
        if let (Some(me), false) = (self.me.upgrade(), samples.is_empty()) {
            let live = connection.clone();
            self.spawn(async move {
                me.clock_samples(&live, CLOCK_PINGS - 1, &mut samples, false).await;
                // Only for the connection still current: a reconnect's own first sample is newer.
                if me.current.borrow().as_ref().is_some_and(|current| Arc::ptr_eq(current, &live)) {
                    me.note_clock_offset(&samples);
                }
            });
        }
        let session_id = connection.welcome.session_id;
        self.current.send_replace(Some(connection));
        let reconnects = match reconnect {
            true => self.reconnects.fetch_add(1, Ordering::Relaxed) + 1,
            false => self.reconnects.load(Ordering::Relaxed),
        };
        let reconnects = u32::try_from(reconnects).unwrap_or(u32::MAX);
        self.set_state(ConnectionState::Connected { session_id, reconnects });
        true
    }

    pub(crate) fn welcome(&self) -> Welcome {
        lock(&self.welcome).clone()
    }

    /// The current QUIC connection, if connected over QUIC.
    pub(crate) fn quic(&self) -> Option<quinn::Connection> {
        self.current.borrow().as_ref().and_then(|c| c.link.quic().cloned())
    }

    /// The current connection's transport, if connected.
    pub(crate) fn transport(&self) -> Option<TransportKind> {
        self.current.borrow().as_ref().map(|c| c.link.kind())
    }

    /// Now on the server's clock, µs since the Unix epoch.
    pub(crate) fn server_clock_us(&self) -> u64 {
        unix_us().saturating_add_signed(self.clock_offset_us.load(Ordering::Relaxed))
    }

    pub(crate) fn end_reason(&self) -> (ErrorCode, String) {
        lock(&self.ended).clone().unwrap_or((ErrorCode::NoError, "client closed".into()))
    }

    /// Publishes `state`, unless the client has ended: `Closed` is the last state, whatever a task still running
    /// when it ended reports.
    fn set_state(&self, state: ConnectionState) {
        self.state.send_if_modified(|current| {
            if matches!(current, ConnectionState::Closed { .. }) || self.stop.is_cancelled() {
                return false;
            }
            *current = state;
            true
        });
    }

    /// Ends the client for good: closes the connection with `why` and stops every task.
    pub(crate) fn end(&self, why: (ErrorCode, String)) {
        let why = lock(&self.ended).get_or_insert(why).clone();
        self.state.send_if_modified(|state| {
            if matches!(state, ConnectionState::Closed { .. }) {
                return false;
            }
            *state = ConnectionState::Closed { code: why.0, reason: why.1.clone() };
            true
        });
        if let Some(connection) = self.current.borrow().as_ref() {
            connection.link.close(why.0, &why.1);
        }
        self.stop.cancel();
        self.tasks.close();
    }

    /// A live connection, waiting up to the connect timeout for a reconnect.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, RequestError> {
        let mut current = self.current.subscribe();
        // (Not one whose control stream ended: a draining server's, about to close.)
        let wait = current.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_done()));
        tokio::select! {
            found = tokio::time::timeout(self.options.connect_timeout, wait) => match found {
                Ok(Ok(connection)) => connection.clone().ok_or_else(|| RequestError::closed(self.end_reason())),
                Ok(Err(_)) => Err(RequestError::closed(self.end_reason())),
                Err(_) => Err(RequestError::NotConnected(self.options.connect_timeout)),
            },
            () = self.stop.cancelled() => Err(RequestError::closed(self.end_reason())),
        }
    }

    /// Queues a post now (with the caller's `client_msg_id`, or the next of this client's own); the future resolves
    /// to its seq.
    pub(crate) fn post(
        &self,
        room: &str,
        client_msg_id: Option<u64>,
        body: Bytes,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send + 'static {
        let (done, outcome) = oneshot::channel();
        let (slot, before) = posts::QueuedSlot::take(&self.queued_posts);
        let max = self.options.max_queued_posts;
        let full = max > 0 && before >= max;
        let queued = match full {
            true => Ok(()), // not queued: the slot goes back as it drops
            false => {
                let client_msg_id = client_msg_id.unwrap_or_else(|| self.next_msg_id.fetch_add(1, Ordering::Relaxed));
                let done = posts::PostDone::new(done, slot);
                self.posts.send(QueuedPost { room: room.to_string(), client_msg_id, body, done }).map_err(drop)
            }
        };
        let me = self.me.clone();
        let why = move || me.upgrade().map_or((ErrorCode::NoError, "client closed".into()), |d| d.end_reason());
        async move {
            if full {
                return Err(RequestError::QueueFull { max });
            }
            if queued.is_err() {
                return Err(RequestError::closed(why()));
            }
            outcome.await.unwrap_or_else(|_| Err(RequestError::closed(why())))
        }
    }

    /// The largest tick payload that fits one datagram on the current connection.
    pub(crate) fn max_payload(&self) -> Result<usize, TickError> {
        self.ended_tick_error()?;
        let link = self.current.borrow().as_ref().map(|c| c.link.clone());
        ticks::max_payload(&link.ok_or(TickError::NotConnected)?)
    }

    /// Sends one tick of `publisher` on the current connection; returns the publisher's own seq for it.
    pub(crate) fn send_tick(&self, publisher: &PubEntry, payload: Bytes) -> Result<u64, TickError> {
        if let Some((code, reason)) = publisher.end_reason() {
            return Err(TickError::Ended { code, reason });
        }
        self.ended_tick_error()?;
        let connection = self.current.borrow().clone().ok_or(TickError::NotConnected)?;
        ticks::send_tick(&connection, publisher, payload, self.server_clock_us())
    }

    /// [`TickError::Ended`] with the client's end reason once the client ended (closed, or given up reconnecting):
    /// its last connection, closed, still names the publisher's claim, and a send on it said `NotConnected`, which a
    /// publisher retries for ever.
    fn ended_tick_error(&self) -> Result<(), TickError> {
        if !self.stop.is_cancelled() {
            return Ok(());
        }
        let (code, reason) = self.end_reason();
        Err(TickError::Ended { code, reason })
    }

    /// The clock offset of the fastest round trip in `samples`, if any.
    fn note_clock_offset(&self, samples: &[ClockSample]) {
        if let Some(offset) = offset_us(samples) {
            tracing::debug!(offset_us = offset, samples = samples.len(), "clock offset to the server");
            self.clock_offset_us.store(offset, Ordering::Relaxed);
        }
    }

    /// Pings `count` times, one after the other, adding each answer to `samples`. A server that does not answer
    /// within `connect_timeout` in all (or a client closed meanwhile) leaves the samples so far: a connect or a
    /// reconnect never waits on them for longer. `unused`: nothing else writes on the connection yet, so a Ping not
    /// written within that time means a server that takes nothing, and the connection is closed; on a connection in
    /// use (the later Pings) the write waits its turn behind the application's, however long, and closes nothing.
    async fn clock_samples(&self, connection: &Live, count: usize, samples: &mut Vec<ClockSample>, unused: bool) {
        let deadline = tokio::time::Instant::now() + self.options.connect_timeout;
        let write_deadline = unused.then_some(deadline);
        for _ in 0..count {
            let started = Instant::now();
            let sent_us = unix_us();
            let ping = connection.send(RequestBody::Ping { client_time_us: sent_us });
            let pending = tokio::select! {
                sent = async {
                    match write_deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, ping).await,
                        None => Ok(ping.await),
                    }
                } => match sent {
                    Ok(Ok(pending)) => pending,
                    Ok(Err(_)) => break,
                    Err(_) => {
                        // Its write may have been cut short, half a frame on the control stream: nothing more can
                        // follow it there. (A server that takes no 20 bytes within connect_timeout is gone anyway.)
                        let reason = "the server took no clock Ping within connect_timeout; reconnecting";
                        connection.link.close(ErrorCode::Unavailable, reason);
                        return;
                    }
                },
                () = self.stop.cancelled() => return,
            };
            let reply = tokio::select! {
                reply = tokio::time::timeout_at(deadline, crate::connection::reply(pending)) => reply,
                () = self.stop.cancelled() => return,
            };
            let Ok(Ok(Reply::Pong { server_time_us, .. })) = reply else {
                tracing::debug!(answered = samples.len(), "the server did not answer every clock Ping");
                break;
            };
            samples.push(ClockSample { sent_us, rtt: started.elapsed(), server_us: server_time_us });
        }
    }
}
