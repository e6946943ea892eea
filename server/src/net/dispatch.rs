//! Carries out a connection's room and tick requests: asks the connection's [`ConnectionState`] (which decides,
//! without IO), calls the hubs, and does the IO they return: opening and flushing room streams, offering ticks,
//! telling the datagram reader about new claims. Every hub call returns before anything here touches quinn.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use quiver_proto::{copies::CopyQueue, ErrorCode, Failure, Limits, Post, Reply, ServerMsg};
use quiver_transport::TailProbe;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    hub::{
        ticks::TickHub, ConnectionState, Delivery, Fenced, JoinRoom, PostFence, PostMessage, PostProgress, Posted,
        RoomHub,
    },
    net::{
        clock::{next_expiry_look, until_expired, EXPIRY_LOOK},
        mailbox::Mailbox,
        rooms::{pump, Kicked, OutboxCopies, StreamOutbox},
        ticks::ConnectionTicks,
        wire::Wire,
    },
    session::{ControlSession, RoomRequest, TickRequest},
    shares::NetworkShare,
    stats::{bump, ServerStats},
};

use super::stream_slots::StreamSlots;

/// How long opening a room stream may wait for the client to grant a stream slot.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection's rooms and ticks: its protocol state and the IO behind it.
#[derive(Debug)]
pub(super) struct Connection<R: RoomHub> {
    conn: Wire,
    state: ConnectionState<Arc<StreamOutbox>>,
    rooms: Arc<R>,
    ticks: Arc<dyn TickHub>,
    datagrams: ConnectionTicks,
    room_queue_bytes: usize,
    probe: Arc<TailProbe>,
    stats: Arc<ServerStats>,
    /// Room streams that fell behind, from their pumps.
    kicked: Arc<Mailbox<Kicked>>,
    pumps: TaskTracker,
    /// Commits of posts sequenced from their datagram copies.
    commits: TaskTracker,
    /// Room streams whose pump still runs: joined rooms, and left ones still being written out. At most
    /// [`Connection::max_streams`], whatever stream credit the client grants (a peer that never reads its streams
    /// and joins and leaves in a loop would otherwise keep a stream and its queue per cycle).
    open_streams: Arc<StreamSlots>,
    /// `max_rooms` + 1: a room left and joined again overlaps its old stream's end with the new one (the client's
    /// own stream limit is the same).
    max_streams: usize,
    stop: CancellationToken,
    /// Refuses the connection's later posts after one was refused as `Unavailable`, until it comes again (so
    /// that a client retrying it keeps its own posts in the order it made them).
    fence: Arc<PostFence>,
    /// Posts taken so far (their order, for `fence`).
    posts_taken: u64,
    /// Where copies of redundant rooms' frames wait for the probe timer; `None`: redundancy is not granted.
    copies: Option<Arc<Mutex<CopyQueue>>>,
    /// Slots given to redundant room streams so far (a slot is never reused on the connection).
    slots: u64,
    /// Post copies read by the datagram reader, until the control loop takes them.
    post_copies: Option<Arc<Mailbox<PostCopy>>>,
    /// The server's shutdown, and when the session's token expires (µs since the Unix epoch: the wall clock, as
    /// `exp` is): a Join waiting for a stream stops at either.
    shutdown: CancellationToken,
    expires_us: Option<u64>,
    /// Rooms [`Connection::close`] took from the state and has not left yet: a close cut short (its future dropped
    /// at a leave) leaves them to [`Drop`].
    leaving: Vec<(String, crate::hub::SubscriberId)>,
}

/// Post copies waiting for the control loop, at most (more are dropped: the requests carry the posts anyway).
const POST_COPY_QUEUE: usize = 16;

/// A post's reply: now, or once its commit completes.
pub(super) enum Answer {
    Now(Reply),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Failure>> + Send>>),
}

/// A post's copy from the datagram reader: the frames' first request number and the frames.
pub(super) type PostCopy = (u64, Vec<Bytes>);

impl<R: RoomHub> Connection<R> {
    /// Starts the connection's datagram tasks. `copies`: the connection's copy queue, where redundancy is granted.
    pub(super) fn start(
        conn: &Wire,
        limits: &Limits,
        (rooms, ticks): (Arc<R>, Arc<dyn TickHub>),
        probe: Arc<TailProbe>,
        copies: Option<Arc<Mutex<CopyQueue>>>,
        (stats, share): (Arc<ServerStats>, Option<NetworkShare>),
        shutdown: CancellationToken,
    ) -> Self {
        let post_copies = Mailbox::new(POST_COPY_QUEUE);
        let datagrams = ConnectionTicks::start(conn, ticks.clone(), limits, post_copies.clone(), stats.clone());
        // Unbounded, but at most one kick per joined room.
        let kicked = Mailbox::new(usize::MAX);
        Connection {
            conn: conn.clone(),
            state: match share {
                Some(share) => ConnectionState::new(limits.clone()).with_share(share),
                None => ConnectionState::new(limits.clone()),
            },
            rooms,
            ticks,
            datagrams,
            room_queue_bytes: limits.room_queue_bytes as usize,
            probe,
            stats,
            kicked,
            pumps: TaskTracker::new(),
            commits: TaskTracker::new(),
            open_streams: Arc::default(),
            max_streams: (limits.max_rooms as usize).saturating_add(1),
            stop: CancellationToken::new(),
            fence: Arc::default(),
            posts_taken: 0,
            copies,
            slots: 0,
            post_copies: Some(post_copies),
            shutdown,
            expires_us: None,
            leaving: Vec::new(),
        }
    }

    /// Arms the token's expiry once the session knows it (after Hello): `timer`, the control loop's (which ends the
    /// connection then, once [`Self::token_expired`] agrees), and the connection's own (a Join waiting for a stream
    /// stops at it). True once armed.
    pub(super) fn arm_expiry(
        &mut self,
        session: &ControlSession,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> bool {
        if let (None, Some(exp)) = (self.expires_us, session.expires_us()) {
            timer.reset(next_expiry_look(exp, EXPIRY_LOOK));
            self.expires_us = Some(exp);
        }
        self.expires_us.is_some()
    }

    /// Whether the session's token expired, on the wall clock (not on the timer's: see [`next_expiry_look`]).
    pub(super) fn token_expired(&self) -> bool {
        self.expires_us.is_some_and(|exp| super::now_us() >= exp)
    }

    /// When the control loop's timer looks at the wall clock again for a token that has not expired yet.
    pub(super) fn next_expiry_look(&self) -> Option<tokio::time::Instant> {
        self.expires_us.map(|exp| next_expiry_look(exp, EXPIRY_LOOK))
    }

    /// Completes when the connection is about to end (the server shuts down, the token expires, or the connection
    /// is closed already), with the refusal of a request that would wait past that: `Unavailable`, which clients
    /// retry (a rejoin, once they reconnected). The control loop then ends the connection as it does. Without the
    /// close among them, a client gone while its request waited (for a stalled store, say) kept its task, its slot
    /// among its address's connections and its memberships until the wait ended.
    async fn ending(&self) -> Failure {
        let expired = async {
            match self.expires_us {
                Some(exp) => until_expired(exp).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = self.shutdown.cancelled() => "the server is shutting down",
            () = expired => "the access token expired",
            () = self.conn.closed() => "the connection closed",
        };
        Failure::new(ErrorCode::Unavailable, format!("{why}; join again once reconnected"))
    }

    /// True when this connection's redundant joins get copies (`transport.copies` above 0).
    pub(super) fn grants_copies(&self) -> bool {
        self.copies.is_some()
    }

    /// True when a Join would wait for a left room's stream to end first ([`STREAM_SLOT_WAIT`]).
    pub(super) fn at_stream_limit(&self) -> bool {
        self.open_streams.open.load(Ordering::Acquire) >= self.max_streams
    }

    /// The server's counters.
    pub(super) fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Runs `task` (a copied post's commit) as one of the connection's own: its close waits for it (for a while).
    pub(super) fn spawn_commit(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.commits.spawn(task);
    }

    /// The post copies the datagram reader passes on, for the control loop (once; `None` after).
    pub(super) fn take_post_copies(&mut self) -> Option<Arc<Mailbox<PostCopy>>> {
        self.post_copies.take()
    }

    /// The connection's tail-loss probe, for reliable data written elsewhere (control replies).
    pub(super) fn probe(&self) -> &TailProbe {
        &self.probe
    }

    /// Carries out one room request and returns the reply.
    pub(super) async fn room(
        &mut self,
        identity: &str,
        (req_id, request): (u64, RoomRequest),
        now_us: u64,
    ) -> Result<Reply, Failure> {
        match request {
            RoomRequest::Join(join) => {
                let hold = self.state.may_join(&join.room)?;
                // Both waits end with the connection: a shutdown or the token's expiry does not wait for them. A
                // Join that need not wait is served whatever (first in the select), as it was before.
                let free = tokio::select! {
                    biased;
                    free = self.open_streams.wait_below(self.max_streams) => free,
                    failure = self.ending() => return Err(failure),
                };
                if !free {
                    let reason = "the streams of rooms left are still being written out; read them, or retry shortly";
                    return Err(Failure::new(ErrorCode::TooManyRooms, reason));
                }
                let opened = tokio::select! {
                    biased;
                    opened = tokio::time::timeout(OPEN_STREAM_TIMEOUT, self.conn.open_uni()) => opened,
                    failure = self.ending() => return Err(failure),
                };
                let send = match opened {
                    Ok(Ok(send)) => send,
                    Ok(Err(err)) => {
                        return Err(Failure::new(ErrorCode::Internal, format!("cannot open stream: {err}")))
                    }
                    Err(_) => {
                        return Err(Failure::new(ErrorCode::TooManyRooms, "client grants no stream for another room"))
                    }
                };
                let room: Arc<str> = Arc::from(join.room.as_str());
                let copies = match (&self.copies, join.redundant) {
                    (Some(queue), true) => {
                        self.slots += 1;
                        OutboxCopies::new(self.slots, queue.clone())
                    }
                    _ => None,
                };
                let probe = (self.probe.clone(), copies);
                let outbox = StreamOutbox::new(room, send, self.room_queue_bytes, probe, self.stats.clone());
                let pumped = pump(outbox.clone(), self.kicked.clone(), self.stop.clone(), self.stats.clone());
                let open_streams = self.open_streams.clone();
                open_streams.open.fetch_add(1, Ordering::AcqRel);
                self.pumps.spawn(async move {
                    pumped.await;
                    open_streams.open.fetch_sub(1, Ordering::AcqRel);
                    open_streams.freed.notify_waiters();
                });
                let request = JoinRoom {
                    room: join.room.clone(),
                    identity: identity.to_string(),
                    since: join.since,
                    req_id,
                    outbox: outbox.clone(),
                    now_us,
                };
                // Not past the connection's end either: a room to load or create may wait for the store (a stalled
                // disk), and the token's expiry and a shutdown do not wait for it (nor for a broker).
                let joined = tokio::select! {
                    biased;
                    joined = self.rooms.join(request) => joined,
                    failure = self.ending() => Err(failure),
                };
                match joined {
                    Ok(joining) => {
                        joining.delivery.flush();
                        if let Some(replay) = joining.replay {
                            // Given up when the connection ends: a store read that never returns (a stalled disk)
                            // must not hold the connection's close, and its slot, for ever.
                            let stop = self.stop.clone();
                            self.pumps.spawn(async move {
                                tokio::select! {
                                    () = replay.run() => {}
                                    () = stop.cancelled() => {}
                                }
                            });
                        }
                        self.state.joined(join.room, joining.subscriber, outbox, hold);
                        ServerStats::add(&self.stats.room_members, 1);
                        Ok(Reply::Joined(joining.joined))
                    }
                    Err(failure) => {
                        outbox.close();
                        Err(failure)
                    }
                }
            }
            RoomRequest::Leave { room } => {
                let left = self.state.leave(&room)?;
                ServerStats::add(&self.stats.room_members, -1);
                left.outbox.close();
                self.rooms.leave(&room, left.subscriber, now_us).await.flush();
                Ok(Reply::Left { room })
            }
            RoomRequest::Post(post) => match self.post(identity, post, now_us).await? {
                Answer::Now(reply) => Ok(reply),
                Answer::Later(reply) => reply.await,
            },
            RoomRequest::History { room, since, limit } => {
                let budget = self.state.history_budget();
                // (A store read that never returns does not hold the connection past its end.)
                // (Biased: a read that is ready at once never polls the close, which takes quinn's connection lock.)
                tokio::select! {
                    biased;
                    page = self.rooms.history(&room, since, limit, budget, now_us) => page.map(Reply::History),
                    failure = self.ending() => Err(failure),
                }
            }
        }
    }

    /// Sequences a post; its reply comes now, or once the store's commit completes (`Answer::Later`), in which
    /// case the connection may go on with its next posts meanwhile.
    pub(super) async fn post(&mut self, identity: &str, post: Post, now_us: u64) -> Result<Answer, Failure> {
        self.posts_taken += 1;
        let order = self.posts_taken;
        self.fence.pass(order, &post.room, post.client_msg_id)?;
        let arrived = std::time::Instant::now();
        let fenced = Some(Fenced { fence: &self.fence, order });
        let message = PostMessage {
            room: &post.room,
            identity,
            client_msg_id: post.client_msg_id,
            body: post.body,
            now_us,
            fenced,
        };
        let refused = move |fence: &PostFence, failure: &Failure, room: &str, id: u64| {
            if failure.code == ErrorCode::Unavailable {
                fence.refused(order, room, id);
            }
        };
        // Not past the connection's end: a post to a room to load or create may wait for the store. (Dropped there,
        // a post the broker may have sequenced is answered to the client's retry, same `client_msg_id`, as the
        // duplicate it is.)
        // Biased: a post sequenced at once (nearly all) never polls the close, which takes quinn's connection lock.
        let sequenced = tokio::select! {
            biased;
            sequenced = self.rooms.sequence_post(message) => sequenced,
            failure = self.ending() => Err(failure),
        };
        let progress = match sequenced {
            Ok(progress) => progress,
            Err(failure) => {
                refused(&self.fence, &failure, &post.room, post.client_msg_id);
                return Err(failure);
            }
        };
        let (stats, id) = (self.stats.clone(), post.client_msg_id);
        let answer = move |room: String, (posted, delivery): (Posted, Delivery)| {
            delivery.flush();
            stats.post_delivery.observe_since(arrived);
            bump(if posted.duplicate { &stats.posts_duplicate } else { &stats.posts });
            Reply::Posted { room, seq: posted.seq, duplicate: posted.duplicate }
        };
        let room = post.room;
        Ok(match progress {
            PostProgress::Done(done) => Answer::Now(answer(room, done)),
            PostProgress::Committing(commit) => {
                let fence = self.fence.clone();
                Answer::Later(Box::pin(async move {
                    match commit.await {
                        Ok(done) => Ok(answer(room, done)),
                        Err(failure) => {
                            // Noted already where the engine refused it (a broker's queue); again here for others.
                            refused(&fence, &failure, &room, id);
                            Err(failure)
                        }
                    }
                }))
            }
        })
    }

    /// The session speaks protocol `version` (its Hello's): what its channel ids look like.
    pub(super) fn speaks(&mut self, version: u32) {
        self.state.speaks(version);
    }

    /// Carries out one tick request and returns the reply.
    pub(super) fn tick(&mut self, request: TickRequest) -> Result<Reply, Failure> {
        match request {
            TickRequest::Subscribe { channel } => {
                let (hub, sink, stats) = (&self.ticks, &self.datagrams.sink, &self.stats);
                // Called only for a new subscription (a repeated Subscribe answers the same id): counted here.
                let channel_id = self.state.subscribe(&channel, |id| {
                    // (The hub opens the sink's slot for `id`, at the channel's seq, as it adds the subscriber.)
                    let subscribed = hub.subscribe(&channel, id, sink.clone()).inspect_err(|_| sink.remove(id));
                    subscribed.inspect(|_| ServerStats::add(&stats.subscriptions, 1))
                })?;
                self.datagrams.set_claims(self.state.claims());
                Ok(Reply::Subscribed { channel, channel_id })
            }
            TickRequest::Unsubscribe { channel } => {
                let (channel_id, subscriber) = self.state.unsubscribe(&channel)?;
                self.ticks.unsubscribe(&channel, subscriber);
                self.datagrams.sink.remove(channel_id);
                ServerStats::add(&self.stats.subscriptions, -1);
                Ok(Reply::Unsubscribed { channel })
            }
            TickRequest::Publish { channel, max_age_ms } => {
                let hub = &self.ticks;
                let claim = self.state.claim(&channel, max_age_ms, |max_age_us| hub.claim(&channel, max_age_us))?;
                self.datagrams.set_claims(self.state.claims());
                if let (false, Some(max_age_us)) = (claim.new, claim.max_age_us) {
                    if claim.previous_max_age_us != Some(max_age_us) {
                        self.ticks.set_max_age(&channel, claim.previous_max_age_us, max_age_us);
                    }
                }
                Ok(Reply::Publishing { channel, channel_id: claim.channel_id })
            }
            TickRequest::Unpublish { channel } => {
                let (_, max_age_us, hold) = self.state.unclaim_held(&channel, std::time::Instant::now())?;
                // The reader still takes the channel's datagrams for a grace (ticks sent before the Unpublish, read
                // after it: `UNPUBLISH_GRACE`), for the channel's subscribers; the connection's claim goes now.
                self.datagrams.set_claims(self.state.claims());
                // The hub's claim goes once the grace is over: within it such a tick is stamped on the channel. (A
                // channel without subscribers here was removed at once, and its ticks for subscribers on other
                // nodes never left this one: until 2026-12-08, a review's find.) Its place in the network's share
                // goes with it, so that channels lingering for their grace are bounded as held ones are.
                let (ticks, name) = (self.ticks.clone(), channel.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(crate::hub::connection::UNPUBLISH_GRACE).await;
                    ticks.release(&name, max_age_us);
                    drop(hold);
                });
                Ok(Reply::Unpublished { channel })
            }
        }
    }

    /// Waits for a room stream that fell behind (cancel-safe: nothing is lost when another event wins a select).
    pub(super) async fn next_kicked(&self) -> Kicked {
        self.kicked.pop().await
    }

    /// Every kick that is already waiting (before a request is served, so that a rejoin after a kick is never
    /// answered `AlreadyJoined`).
    pub(super) async fn pending_kicks(&mut self, now_us: u64) -> Vec<ServerMsg> {
        let mut out = Vec::new();
        while let Some(kicked) = self.kicked.try_pop() {
            out.extend(self.kick(kicked, now_us).await);
        }
        out
    }

    /// Forgets a room whose stream fell behind; returns the `Kicked` to push to the client, or `None` when that
    /// subscription was not current any more.
    pub(super) async fn kick(&mut self, (room, outbox): Kicked, now_us: u64) -> Option<ServerMsg> {
        let gone = self.state.kicked(&room, |joined| Arc::ptr_eq(&joined.outbox, &outbox))?;
        ServerStats::add(&self.stats.room_members, -1);
        // The room dropped the subscription when it overflowed; leaving again is a no-op kept for other hubs.
        self.rooms.leave(&room, gone.subscriber, now_us).await.flush();
        let reason = match outbox.overflow_cause() {
            crate::net::rooms::Overflow::StoppedByClient => format!(
                "room {room}: this client stopped the room's stream and sent no Leave within {} s; rejoin from your \
                 last seq",
                crate::net::rooms::LEFT_STREAM_GRACE.as_secs()
            ),
            crate::net::rooms::Overflow::ReplayCutShort => format!(
                "room {room}: messages cannot be delivered on this stream (the history your join asked to catch up on \
                 is no longer readable: deleted by retention meanwhile, or the store could not read it; or a message \
                 is over this node's max_frame); rejoin from your last seq: you will be told messages were missed"
            ),
            crate::net::rooms::Overflow::RoomReset => format!(
                "room {room}: the server lost this room's thread (a new epoch, or events it could not fill in); \
                 rejoin from your last seq: you will be told whether messages were missed"
            ),
            crate::net::rooms::Overflow::SlowReader => {
                format!("room {room} fell behind by more than room_queue_bytes; rejoin from your last seq")
            }
        };
        Some(ServerMsg::Kicked { room: Some(room.to_string()), code: ErrorCode::SlowConsumer, reason })
    }
}

mod close;

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
