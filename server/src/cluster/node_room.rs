//! One room as one node of a cluster sees it ([`NodeRoom`]): its local subscribers, where the node stands in the
//! room's order (epoch, last op, last seq), and the delivery of the room's channel to them: in order, gaps in
//! messages filled from the stream, and a reset (subscribers told to rejoin) where the order cannot be kept.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use quiver_proto::{EventKind, Failure, FrameCodec, Limits, RoomEvent, RoomFrame};

use super::{
    broker::{BoxFuture, Broker, ChannelHandler},
    error::Unreachable,
    event::{self, Published},
    keys::RoomKeys,
    scripts,
    stream::{self, Entry},
};
use crate::hub::{lock::lock, Delivery, Outbox, SubscriberId};

mod catch_up;
mod gap;

/// Events a node keeps per room for joins that overlap them (a join's script returns the op it saw; events after
/// it that the node delivered before the joiner was added are given to the joiner from here), and events kept
/// while the room waits for its first join to set where it stands (the newest).
pub(super) const RECENT: usize = 64;

/// Events a room keeps while its gap is filled from the stream (one Redis round trip, unless Redis stalls).
const HELD: usize = 1_024;

/// How long after a Pub/Sub reconnect the node waits for the events Redis had already queued to it before it takes
/// the ones still missing for lost.
const RESUBSCRIBE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a tombstone keeps a left subscription's late join from counting it (`q:{room}:gone:…`): a join delayed
/// in Redis longer than this (a connection's buffered command run after a quarter-hour stall) would count a ghost.
pub(super) const TOMBSTONE_MS: u64 = 15 * 60 * 1_000;

/// Longest pause between two tries of a catch-up's read while Redis does not answer.
pub(super) const CATCH_UP_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(8);
/// The last pause before a failed gap read is tried again (100, 200, 400 ms: four reads in all).
const GAP_READ_RETRY_LAST: std::time::Duration = std::time::Duration::from_millis(400);

/// What every room of the node shares.
pub(super) struct Ctx {
    pub(super) broker: Arc<Broker>,
    pub(super) limits: Limits,
    pub(super) codec: FrameCodec,
    /// TTL of an idle room's keys: history age or dedupe window, whichever is longer; 0 (no age bound): none.
    pub(super) room_ttl_ms: u64,
    /// The next subscription id on this node (a join takes one under its room's join lock: a reconcile that read a
    /// room's subscriptions under that lock knows every later one by its higher id).
    pub(super) next_subscriber: std::sync::atomic::AtomicU64,
}

impl Ctx {
    pub(super) fn unavailable(&self, err: redis::RedisError) -> Failure {
        self.broker.failed(&err);
        Unreachable::Request(err).into()
    }

    pub(super) fn encode(&self, event: RoomEvent) -> Option<Bytes> {
        self.codec.encode_to_vec(&RoomFrame::Event(event)).ok().map(|b| b.freeze())
    }

    /// Ends subscription `sub` of this node in the room's members (idempotent; a subscription not counted gets a
    /// tombstone for [`TOMBSTONE_MS`], so that its join, if it runs later, counts nothing), retrying for as long as
    /// Redis is unreachable and the node runs: a member left behind would look present to everyone, and keep the
    /// room from expiring, for good (nothing else ends it while this node beats). A node that stops is buried
    /// instead, which ends all its subscriptions. A damaged key's `WRONGTYPE` is logged and given up: no retry mends
    /// it.
    pub(super) async fn leave(self: Arc<Self>, room: String, sub: SubscriberId) {
        let keys = RoomKeys::new(&room);
        let node = self.broker.node().to_string();
        for attempt in 0u32.. {
            if self.broker.stopped() {
                return;
            }
            let mut conn = self.broker.conn();
            let done: redis::RedisResult<u64> = scripts::LEAVE_SCRIPT
                .key(&keys.meta)
                .key(&keys.log)
                .key(&keys.members)
                .key(keys.holders(&node))
                .key(keys.gone(&node, sub))
                .arg(sub)
                .arg(crate::now_us().to_string())
                .arg(&keys.events)
                .arg(self.room_ttl_ms)
                .arg(TOMBSTONE_MS)
                .invoke_async(&mut conn)
                .await;
            match done {
                Ok(_) => return,
                // (Tried again for as long as the node ran, one task per subscription, before 2026-12-06.)
                // (Only a damaged key's WRONGTYPE: NOSCRIPT, BUSY, OOM and MISCONF pass, and redis-rs calls them
                // no-retry too.)
                Err(err) if err.code() == Some("WRONGTYPE") => {
                    tracing::error!(%room, sub, %err, "a leave the broker refuses (a damaged room key?): given up");
                    return;
                }
                Err(err) => {
                    if attempt % 20 == 19 {
                        tracing::warn!(%room, sub, %err, attempt, "still cannot record a leave at the broker; retrying");
                    }
                    self.broker.failed(&err);
                    tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt.min(8) + 1))).await;
                }
            }
        }
    }
}

pub(super) struct Sub {
    pub(super) identity: String,
    pub(super) outbox: Arc<dyn Outbox>,
    /// Events up to this op reached the subscriber in its join's reply and replay.
    pub(super) after_op: u64,
}

#[derive(Default)]
pub(super) struct NodeState {
    /// Delivering: the node knows where the room stands (set by the first join).
    pub(super) live: bool,
    pub(super) epoch: u64,
    pub(super) last_op: u64,
    pub(super) last_seq: u64,
    /// The op and time (µs, as stored) of the message at `last_seq`: which message it was, for a Redis that came
    /// back with other history under the same seqs (`rollback`). `None` when the node does not know it (the room
    /// went live through a join after its last message, and the join read no message at that seq).
    pub(super) last_message: Option<(u64, u64)>,
    pub(super) subscribers: HashMap<SubscriberId, Sub>,
    /// The last events delivered (op, frame).
    pub(super) recent: VecDeque<(u64, Bytes)>,
    /// The newest events that arrived while the room was not live.
    pub(super) pending: VecDeque<Published>,
    /// The epoch and op of the newest event that reached this node (delivered, dropped or pending): a join that
    /// sets the room live behind it must find every event since in `pending`.
    pub(super) seen: (u64, u64),
    /// A gap is being filled from the stream: the events that arrive meanwhile wait in `held`, in order, and are
    /// applied after it (the node's Pub/Sub reader does not wait for the fill: other rooms go on).
    pub(super) filling: bool,
    /// Events that arrived during the fill, the newest [`HELD`] (an event dropped here is a gap like one Pub/Sub
    /// lost: filled from the stream, or the room reset for a presence event).
    pub(super) held: VecDeque<Published>,
    /// Counts resets: a fill or catch-up begun before one leaves the room's new position (set by the next join)
    /// alone.
    pub(super) generation: u64,
    /// Counts Pub/Sub reconnects' catch-ups: one still retrying its read gives way to a later one.
    pub(super) catch_ups: u64,
    /// The position the last catch-up's rollback check compares Redis with, until Redis answered it: a later
    /// catch-up takes it over (its own position may hold what was delivered after Redis went back).
    pub(super) unchecked: Option<crate::cluster::rollback::Delivered>,
    /// Delivering what a gap fill read from the stream, or the events held behind it: the subscribers are behind on
    /// them through no fault of their own, and get them outside the live bound ([`Outbox::push_catch_up`]).
    pub(super) catching_up: bool,
}

/// What an event means for where the node stands in the room's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Delivered already.
    Skip,
    /// The very next event.
    Deliver,
    /// Messages up to this seq are missing: read them from the stream first.
    Fill(u64),
    /// Events are missing that the stream does not hold (presence), or the order is broken.
    Lost,
}

impl NodeState {
    /// Whether `published` is of the epoch the room left before this node went live in its new one: a join's
    /// script can see the new epoch before the node's Pub/Sub reader has the old epoch's last events (two
    /// connections). Pub/Sub keeps the scripts' order, so until the channel brings the live epoch's first event,
    /// an event of the epoch it brought last was published before the switch: delivered to the old subscriptions
    /// or not, it is not news, and taking it for a newer epoch reset the room a second time. (A Redis that really
    /// went back to that epoch drops the Pub/Sub connection first, and the reconnect's rollback check sees it.)
    pub(super) fn straggler(&self, published: &Published) -> bool {
        self.live && published.epoch != self.epoch && self.seen.0 == published.epoch
    }

    /// Where `published` stands: every op must follow the last one delivered, every message the last seq.
    pub(super) fn next(&self, published: &Published) -> Next {
        let (op, seq) = (published.op, published.event.seq);
        if op <= self.last_op {
            return Next::Skip;
        }
        match published.event.kind {
            EventKind::Message { .. } if seq == self.last_seq + 1 && op == self.last_op + 1 => Next::Deliver,
            EventKind::Message { .. } if seq > self.last_seq + 1 => Next::Fill(seq - 1),
            EventKind::Message { .. } => Next::Lost,
            _ if seq > self.last_seq => Next::Fill(seq),
            _ if seq == self.last_seq && op == self.last_op + 1 => Next::Deliver,
            _ => Next::Lost,
        }
    }
}

/// How far a room's subscription on this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    Unsubscribed,
    Subscribed,
    /// Taken out of the node's map: look it up again.
    Removed,
}

/// A room as one node sees it.
pub(super) struct NodeRoom {
    pub(super) name: String,
    pub(super) keys: RoomKeys,
    pub(super) ctx: Arc<Ctx>,
    /// Joins (and the subscription to the room's channel) one at a time.
    pub(super) channel: Arc<tokio::sync::Mutex<Channel>>,
    pub(super) state: Mutex<NodeState>,
}

impl NodeRoom {
    /// Ends every local subscription (clients are told to rejoin from their position) and waits for the next join
    /// to set the room's position afresh.
    pub(super) fn reset(&self, state: &mut NodeState, why: &str) -> Delivery {
        tracing::warn!(room = %self.name, subscribers = state.subscribers.len(), why, "room subscriptions reset");
        let mut delivery = Delivery::default();
        for (id, sub) in state.subscribers.drain() {
            sub.outbox.kick();
            delivery.add(sub.outbox);
            tokio::spawn(self.ctx.clone().leave(self.name.clone(), id));
        }
        state.live = false;
        state.recent.clear();
        state.pending.clear();
        // Events held for a gap fill arrived before anything from now on: the next join finds them first. The fill
        // under way ends without applying anything (`generation`): it no longer holds the room's events back.
        for held in std::mem::take(&mut state.held) {
            keep(&mut state.pending, RECENT, held);
        }
        state.filling = false;
        state.generation += 1;
        delivery
    }

    /// Delivers the next event (`state.next` said `Deliver`) to every subscriber that joined before it.
    pub(super) fn deliver(&self, state: &mut NodeState, op: u64, event: RoomEvent, delivery: &mut Delivery) {
        let message = matches!(event.kind, EventKind::Message { .. });
        let seq = event.seq;
        state.last_op = op;
        if message {
            state.last_seq = seq;
            state.last_message = Some((op, event.time_us));
        }
        let Some(frame) = self.ctx.encode(event) else {
            // (Another node took the post under a larger `max_frame`.) Skipped in silence, it was a gap its members
            // here were never told of: they are dropped as if slow, and each rejoins from its last position, whose
            // replay leaves the frame out and says `recovered: false` (`replay::contiguous`).
            tracing::error!(
                room = %self.name,
                op,
                "a room event does not fit this node's max_frame: its members here rejoin, told they missed it"
            );
            let passed: Vec<SubscriberId> =
                state.subscribers.iter().filter(|(_, sub)| sub.after_op < op).map(|(id, _)| *id).collect();
            // And a join under way whose script ran before it must not pass over it either: with the recent events
            // gone, one that overlaps them is refused (`Unavailable`) and retried, its replay read from the stream.
            state.recent.clear();
            for id in passed {
                if let Some(sub) = state.subscribers.remove(&id) {
                    sub.outbox.kick_replay();
                    delivery.add(sub.outbox);
                    tokio::spawn(self.ctx.clone().leave(self.name.clone(), id));
                }
            }
            return;
        };
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back((op, frame.clone()));
        let mut overflowed = Vec::new();
        for (id, sub) in &state.subscribers {
            if sub.after_op >= op {
                continue;
            }
            let pushed = match state.catching_up {
                true => sub.outbox.push_catch_up(frame.clone()),
                false => sub.outbox.push(frame.clone()),
            };
            if !pushed {
                overflowed.push(*id);
            }
            delivery.add(sub.outbox.clone());
        }
        for id in overflowed {
            if state.subscribers.remove(&id).is_some() {
                tracing::debug!(room = %self.name, subscriber = id, "slow consumer dropped");
                tokio::spawn(self.ctx.clone().leave(self.name.clone(), id));
            }
        }
    }

    /// Handles `published` where the node stands: delivers it, skips it, or resets the room's subscriptions when
    /// the order cannot be kept. `Fill` is returned to the caller (reading the stream is async).
    pub(super) fn apply(
        &self,
        state: &mut NodeState,
        published: Published,
        delivery: &mut Delivery,
    ) -> Option<(u64, Published)> {
        if published.epoch != state.epoch {
            delivery.extend(self.reset(state, "the room started a new epoch (its history was lost)"));
            return None;
        }
        match state.next(&published) {
            Next::Skip => None,
            Next::Deliver => {
                self.deliver(state, published.op, published.event, delivery);
                None
            }
            Next::Fill(upto) => Some((upto, published)),
            Next::Lost => {
                delivery.extend(self.reset(state, "events missed that the stream does not hold"));
                None
            }
        }
    }

    /// One event of the room's channel, handled at once: delivered, skipped, kept (the room is not live yet, or a
    /// gap is being filled), or, where messages are missing, the start of a gap fill on a task of its own.
    fn on_event(self: Arc<Self>, payload: Vec<u8>) {
        let published = match event::parse(&payload) {
            Ok(published) => published,
            Err(err) => {
                tracing::warn!(room = %self.name, %err, "skipped");
                return;
            }
        };
        let mut delivery = Delivery::default();
        let fill = {
            let mut state = lock(&self.state);
            if state.straggler(&published) {
                return;
            }
            state.seen = match state.seen {
                (epoch, op) if epoch == published.epoch => (epoch, op.max(published.op)),
                _ => (published.epoch, published.op),
            };
            if !state.live {
                keep(&mut state.pending, RECENT, published);
                return;
            }
            if state.filling {
                keep(&mut state.held, HELD, published);
                return;
            }
            let fill = self.apply(&mut state, published, &mut delivery);
            state.filling = fill.is_some();
            fill.map(|fill| (fill, state.generation))
        };
        delivery.flush();
        if let Some(((upto, published), generation)) = fill {
            tokio::spawn(self.fill_then_apply(upto, published, generation));
        }
    }

    /// Fills the gap before `published` (messages up to `upto`) from the stream, applies `published`, then the
    /// events held meanwhile, in order, filling again where another gap shows. Ends at once where the room was
    /// reset meanwhile (`generation` moved on).
    async fn fill_then_apply(self: Arc<Self>, mut upto: u64, mut published: Published, generation: u64) {
        loop {
            self.fill(upto).await;
            let mut delivery = Delivery::default();
            let next = {
                let mut state = lock(&self.state);
                if state.generation != generation {
                    return;
                }
                // Still a gap after the fill: the stream could not close it.
                state.catching_up = true;
                if state.live && self.apply(&mut state, published, &mut delivery).is_some() {
                    delivery.extend(self.reset(&mut state, "a gap the stream could not fill"));
                }
                self.apply_held(&mut state, &mut delivery)
            };
            delivery.flush();
            match next {
                Some(fill) => (upto, published) = fill,
                None => return,
            }
        }
    }

    /// Applies the events held during a fill, in order, up to the first that needs a fill of its own (returned:
    /// `filling` stays set for it); with none, the room's fill slot is free again.
    /// They arrived while the room waited for the fill: caught up on outside the live bound.
    fn apply_held(&self, state: &mut NodeState, delivery: &mut Delivery) -> Option<(u64, Published)> {
        let mut next = None;
        state.catching_up = true;
        while let Some(held) = state.held.pop_front() {
            if let Some(fill) = self.apply(state, held, delivery) {
                next = Some(fill);
                break;
            }
        }
        state.catching_up = false;
        state.filling = next.is_some();
        next
    }
}

impl ChannelHandler for NodeRoom {
    fn message(self: Arc<Self>, payload: Vec<u8>) {
        self.on_event(payload);
    }

    fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.on_resubscribed())
    }
}

/// Appends `published` to `queue`, dropping the oldest beyond `max`.
fn keep(queue: &mut VecDeque<Published>, max: usize, published: Published) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(published);
}

/// A fresh random epoch (the scripts get its decimal text); never 0.
pub(super) fn new_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
#[path = "node_room_tests.rs"]
mod tests;
