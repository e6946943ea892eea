//! Rooms and tick channels as plain state machines fed with requests and the time. No quinn here: room events
//! leave through [`Outbox`]es, which the network layer drains into room streams; ticks through
//! [`ticks::TickSink`]s, which conflate (latest wins) in front of the datagram sender.
//!
//! The connection code talks to rooms only through [`RoomHub`], so a clustered backend (per-room sequence,
//! history and fan-out in Redis, DESIGN.md §6) can replace [`LocalHub`] without touching it.

pub mod conflate;
mod dedupe;
pub mod history;
mod room;
pub mod ticks;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use quiver_proto::{Failure, HistoryPage, Joined, Limits, Position};

pub use dedupe::DedupeWindow;
pub use room::Room;

/// Identifies one subscription of one connection to one room.
pub type SubscriberId = u64;

/// Where a subscriber's room events go: a bounded queue of encoded frames, drained by whoever owns the stream.
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Queues one frame. False when the queue is over its bound: the subscriber is then dropped from the room,
    /// and the owner resets its stream with `SlowConsumer`.
    fn push(&self, frame: Bytes) -> bool;
    /// Queues a frame of a join (the stream's Open and the history replay) outside the live bound: a replay is
    /// what the client asked to catch up on, bounded by the history limits, and must not reset the stream before
    /// it starts. The live bound applies to what comes after.
    fn push_replay(&self, frame: Bytes);
}

/// The acknowledgement of a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    /// The message's seq.
    pub seq: u64,
    /// True when the post was a retry of one already sequenced (`seq` is the original's).
    pub duplicate: bool,
}

/// A join request, as the connection code hands it to the hub.
#[derive(Debug)]
pub struct JoinRoom {
    /// Room name (already validated).
    pub room: String,
    /// The member's identity.
    pub identity: String,
    /// Resume position, if any.
    pub since: Option<Position>,
    /// Where this subscription's events go.
    pub outbox: Arc<dyn Outbox>,
    /// Server time, µs since the Unix epoch.
    pub now_us: u64,
}

/// Access to rooms, whatever backs them.
pub trait RoomHub: Send + Sync + 'static {
    /// Joins a room (creating it on first use); returns the reply and the subscription's id.
    fn join(&self, join: JoinRoom) -> impl Future<Output = Result<(Joined, SubscriberId), Failure>> + Send;
    /// Ends a subscription (idempotent).
    fn leave(&self, room: &str, subscriber: SubscriberId, now_us: u64) -> impl Future<Output = ()> + Send;
    /// Posts a message (creating the room on first use).
    fn post(
        &self,
        room: &str,
        identity: &str,
        client_msg_id: u64,
        body: Bytes,
        now_us: u64,
    ) -> impl Future<Output = Result<Posted, Failure>> + Send;
    /// Reads retained messages; at most `budget` bytes of encoded events.
    fn history(
        &self,
        room: &str,
        since: Option<u64>,
        limit: u32,
        budget: usize,
        now_us: u64,
    ) -> impl Future<Output = HistoryPage> + Send;
}

/// All rooms in this process's memory.
#[derive(Debug)]
pub struct LocalHub {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    limits: Limits,
    next_subscriber: AtomicU64,
}

impl LocalHub {
    /// An empty hub whose rooms follow `limits` (history, dedupe, frame size).
    pub fn new(limits: Limits) -> Self {
        LocalHub { rooms: Mutex::new(HashMap::new()), limits, next_subscriber: AtomicU64::new(1) }
    }

    fn room(&self, name: &str) -> Arc<Mutex<Room>> {
        let mut rooms = lock(&self.rooms);
        // Look up before inserting: `entry` would allocate the name on every post.
        if let Some(room) = rooms.get(name) {
            return room.clone();
        }
        let room = Arc::new(Mutex::new(Room::new(name.to_string(), new_epoch(), &self.limits)));
        rooms.insert(name.to_string(), room.clone());
        room
    }

    fn existing(&self, name: &str) -> Option<Arc<Mutex<Room>>> {
        lock(&self.rooms).get(name).cloned()
    }
}

/// A fresh random epoch; never 0, which stands for "no room" in replies.
fn new_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a room lock is a bug; the room's state is still consistent at every await-free step.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RoomHub for LocalHub {
    async fn join(&self, join: JoinRoom) -> Result<(Joined, SubscriberId), Failure> {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let room = self.room(&join.room);
        let joined = lock(&room).join(id, &join.identity, join.since, join.outbox, join.now_us);
        Ok((joined, id))
    }

    async fn leave(&self, room: &str, subscriber: SubscriberId, now_us: u64) {
        if let Some(room) = self.existing(room) {
            lock(&room).leave(subscriber, now_us);
        }
    }

    async fn post(
        &self,
        room: &str,
        identity: &str,
        client_msg_id: u64,
        body: Bytes,
        now_us: u64,
    ) -> Result<Posted, Failure> {
        let room = self.room(room);
        let posted = lock(&room).post(identity, client_msg_id, body, now_us);
        posted
    }

    async fn history(&self, room: &str, since: Option<u64>, limit: u32, budget: usize, now_us: u64) -> HistoryPage {
        match self.existing(room) {
            Some(r) => lock(&r).history(since, limit as usize, budget, now_us),
            None => HistoryPage { room: room.to_string(), epoch: 0, messages: Vec::new(), more: false },
        }
    }
}

#[cfg(test)]
mod tests;
