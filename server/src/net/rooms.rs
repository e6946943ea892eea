//! A connection's rooms: one server-opened unidirectional stream per joined room, fed from a bounded
//! [`StreamOutbox`] by a pump task. A room whose outbox overflows has its stream reset with `SlowConsumer`; the
//! rest of the connection is untouched.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use quiver_proto::{ErrorCode, Failure, Limits, Reply};
use quiver_transport::TailProbe;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use web_transport_quinn::{SendStream, Session};

use crate::{
    hub::{JoinRoom, Outbox, RoomHub, SubscriberId},
    session::RoomRequest,
    stats::{bump, ServerStats},
};

/// How long opening a room stream may wait for the client to grant a stream slot.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
    /// The room stream while the pump is idle. A push finding the queue empty writes straight to it (one
    /// task hand-off less on the path of every message: ~20 µs on this VM); the pump takes it to drain a backlog.
    send: Option<SendStream>,
}

impl Queue {
    /// Writes `frame` to the stream now if nothing is queued before it and quinn takes it without waiting.
    /// Returns what is left to queue (`None`: all of it was written).
    fn try_write_direct(&mut self, frame: Bytes) -> Option<Bytes> {
        if !self.frames.is_empty() {
            return Some(frame);
        }
        let send = match self.send.as_mut() {
            Some(send) => send,
            None => return Some(frame),
        };
        // One poll, no waiting: quinn's `write` takes what fits now or returns Pending having taken nothing. The
        // no-op waker is safe because the pump is not waiting on the stream while `send` is parked here; a Pending
        // or short write leaves the rest to the pump, which polls again with its own waker.
        let written = {
            let mut write = std::pin::pin!(send.write(&frame));
            match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(n)) => n,
                // Errors (stream stopped, connection lost) are met again by the pump, which ends the stream.
                Poll::Ready(Err(_)) | Poll::Pending => 0,
            }
        };
        if written == frame.len() {
            None
        } else {
            Some(frame.slice(written..))
        }
    }
}

/// Frames waiting for one room stream, at most `bound` bytes.
#[derive(Debug)]
pub(crate) struct StreamOutbox {
    queue: Mutex<Queue>,
    probe: Arc<TailProbe>,
    wake: Notify,
    overflow: CancellationToken,
    bound: usize,
}

impl StreamOutbox {
    pub(crate) fn new(send: SendStream, bound: usize, probe: Arc<TailProbe>) -> Arc<StreamOutbox> {
        Arc::new(StreamOutbox {
            queue: Mutex::new(Queue { send: Some(send), ..Queue::default() }),
            probe,
            wake: Notify::new(),
            overflow: CancellationToken::new(),
            bound,
        })
    }

    /// No more frames: the pump finishes the stream once the queue is drained.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    /// True once the subscriber fell behind and its stream is (being) reset.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.is_cancelled()
    }
}

impl Outbox for StreamOutbox {
    fn push(&self, frame: Bytes) -> bool {
        if self.overflow.is_cancelled() {
            return false;
        }
        let mut queue = lock(&self.queue);
        if queue.closed {
            // Left already; not an overflow.
            return true;
        }
        if queue.bytes + frame.len() > self.bound {
            drop(queue);
            self.overflow.cancel();
            return false;
        }
        let Some(rest) = queue.try_write_direct(frame) else {
            drop(queue);
            self.probe.sent();
            return true;
        };
        queue.bytes += rest.len();
        queue.frames.push_back(rest);
        drop(queue);
        self.wake.notify_one();
        true
    }

    fn push_replay(&self, frame: Bytes) {
        lock(&self.queue).frames.push_back(frame);
        self.wake.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the pump does next, decided under the queue's lock.
enum Next {
    /// Write this backlog (the stream is taken from the outbox meanwhile).
    Drain(Vec<Bytes>, SendStream),
    /// Nothing queued: wait for a push.
    Wait,
    /// The room was left and everything is written, or the stream is gone.
    Done,
}

fn next(outbox: &StreamOutbox) -> Next {
    let mut queue = lock(&outbox.queue);
    if queue.frames.is_empty() {
        if !queue.closed {
            return Next::Wait;
        }
        if let Some(mut send) = queue.send.take() {
            let _ = send.finish();
        }
        return Next::Done;
    }
    let Some(send) = queue.send.take() else { return Next::Done };
    queue.bytes = 0;
    Next::Drain(queue.frames.drain(..).collect(), send)
}

/// Moves queued frames from `outbox` to the room stream until the room is left (finish), the subscriber
/// overflows (reset with `SlowConsumer`), the connection ends, or `stop` is cancelled. Between backlogs the
/// stream is parked in the outbox for direct writes.
async fn pump(outbox: Arc<StreamOutbox>, stop: CancellationToken, stats: Arc<ServerStats>) {
    let mut send = loop {
        let (batch, mut send) = match next(&outbox) {
            Next::Drain(batch, send) => (batch, send),
            Next::Done => return,
            Next::Wait => {
                tokio::select! {
                    () = outbox.wake.notified() => continue,
                    () = outbox.overflow.cancelled() => match lock(&outbox.queue).send.take() {
                        Some(send) => break send,
                        None => return,
                    },
                    () = stop.cancelled() => return drop(lock(&outbox.queue).send.take()),
                }
            }
        };
        for frame in batch {
            tokio::select! {
                written = send.write_chunk(frame) => if written.is_err() { return },
                () = outbox.overflow.cancelled() => break,
                () = stop.cancelled() => return,
            }
        }
        outbox.probe.sent();
        if outbox.overflowed() {
            break send;
        }
        lock(&outbox.queue).send = Some(send);
    };
    bump(&stats.slow_consumer_resets);
    let _ = send.reset(ErrorCode::SlowConsumer.to_u32());
}

#[derive(Debug)]
struct JoinedRoom {
    subscriber: SubscriberId,
    outbox: Arc<StreamOutbox>,
}

/// The rooms one connection has joined.
#[derive(Debug)]
pub(crate) struct ConnectionRooms<H> {
    hub: Arc<H>,
    limits: Limits,
    joined: HashMap<String, JoinedRoom>,
    probe: Arc<TailProbe>,
    stats: Arc<ServerStats>,
    pumps: TaskTracker,
    stop: CancellationToken,
}

impl<H: RoomHub> ConnectionRooms<H> {
    pub(crate) fn new(hub: Arc<H>, limits: Limits, probe: Arc<TailProbe>, stats: Arc<ServerStats>) -> Self {
        ConnectionRooms {
            hub,
            limits,
            joined: HashMap::new(),
            probe,
            stats,
            pumps: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The connection's tail-loss probe, for reliable data written elsewhere (control replies).
    pub(crate) fn probe(&self) -> &TailProbe {
        &self.probe
    }

    /// Carries out one room request and returns the reply.
    pub(crate) async fn handle(
        &mut self,
        conn: &Session,
        identity: &str,
        request: RoomRequest,
        now_us: u64,
    ) -> Result<Reply, Failure> {
        match request {
            RoomRequest::Join(join) => {
                if let Some(existing) = self.joined.get(&join.room) {
                    if !existing.outbox.overflowed() {
                        return Err(Failure::new(ErrorCode::AlreadyJoined, format!("already in room {}", join.room)));
                    }
                    // Reset for falling behind: this join is the client resuming; the old subscription is gone.
                    self.leave(&join.room, now_us).await;
                }
                if self.joined.len() >= self.limits.max_rooms as usize {
                    return Err(Failure::new(
                        ErrorCode::TooManyRooms,
                        format!("at most {} rooms per connection", self.limits.max_rooms),
                    ));
                }
                let send = match tokio::time::timeout(OPEN_STREAM_TIMEOUT, conn.open_uni()).await {
                    Ok(Ok(send)) => send,
                    Ok(Err(err)) => {
                        return Err(Failure::new(ErrorCode::Internal, format!("cannot open stream: {err}")))
                    }
                    Err(_) => {
                        return Err(Failure::new(ErrorCode::TooManyRooms, "client grants no stream for another room"))
                    }
                };
                let outbox = StreamOutbox::new(send, self.limits.room_queue_bytes as usize, self.probe.clone());
                self.pumps.spawn(pump(outbox.clone(), self.stop.clone(), self.stats.clone()));
                let request = JoinRoom {
                    room: join.room.clone(),
                    identity: identity.to_string(),
                    since: join.since,
                    outbox: outbox.clone(),
                    now_us,
                };
                match self.hub.join(request).await {
                    Ok((joined, subscriber)) => {
                        self.joined.insert(join.room, JoinedRoom { subscriber, outbox });
                        Ok(Reply::Joined(joined))
                    }
                    Err(failure) => {
                        outbox.close();
                        Err(failure)
                    }
                }
            }
            RoomRequest::Leave { room } => {
                if self.leave(&room, now_us).await {
                    Ok(Reply::Left { room })
                } else {
                    Err(Failure::new(ErrorCode::NotJoined, format!("not in room {room}")))
                }
            }
            RoomRequest::Post(post) => {
                let posted = self.hub.post(&post.room, identity, post.client_msg_id, post.body, now_us).await?;
                Ok(Reply::Posted { room: post.room, seq: posted.seq, duplicate: posted.duplicate })
            }
            RoomRequest::History { room, since, limit } => {
                // Leave room in the frame for the reply's own fields.
                let budget = (self.limits.max_frame as usize).saturating_sub(1024);
                Ok(Reply::History(self.hub.history(&room, since, limit, budget, now_us).await))
            }
        }
    }

    async fn leave(&mut self, room: &str, now_us: u64) -> bool {
        let Some(joined) = self.joined.remove(room) else { return false };
        joined.outbox.close();
        self.hub.leave(room, joined.subscriber, now_us).await;
        true
    }

    /// Leaves every room (the connection is ending) and stops the pumps.
    pub(crate) async fn leave_all(&mut self, now_us: u64) {
        let rooms: Vec<String> = self.joined.keys().cloned().collect();
        for room in rooms {
            self.leave(&room, now_us).await;
        }
        self.stop.cancel();
        self.pumps.close();
        self.pumps.wait().await;
    }
}
