//! The server's protocol state, without IO: rooms, tick channels, presence, history, and each connection's own
//! state ([`ConnectionState`]). Everything here is plain Rust fed with requests and the time, and **returns what to
//! send**; only `net/` touches quinn. No lock taken here is ever held across a call into quinn:
//!
//! - A room sequences a post under its lock and pushes the event's frame into each subscriber's [`Outbox`] (a
//!   bounded queue: enqueueing is not IO). It returns a [`Delivery`], the outboxes that got frames; the caller
//!   flushes them (writes to the room streams) after the room's lock is released. Enqueueing under the lock keeps
//!   one order per room; writing after it keeps quinn out of the lock.
//! - A tick channel stamps its seq under its lock and returns a [`ticks::Fanout`]: the tick and a shared snapshot of
//!   its subscribers, which the caller offers the tick to once the lock is released.
//!
//! The network layer reaches rooms and ticks only through the [`RoomHub`] and [`ticks::TickHub`] traits, so a
//! clustered engine (sequence, history and fan-out in Redis, DESIGN.md §6) can replace [`LocalRooms`] and
//! [`ticks::LocalTicks`] without touching it.

pub mod conflate;
pub mod connection;
mod dedupe;
mod fence;
pub mod history;
pub(crate) mod lock;
mod members;
mod outbox;
mod release;
mod replay;
mod room;
mod rooms;
pub mod ticks;

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use quiver_proto::{Failure, HistoryPage, Joined, Position};

pub use connection::ConnectionState;
pub use dedupe::DedupeWindow;
pub use fence::{Fenced, PostFence};
pub(crate) use history::STORED_OVERHEAD;
pub use lock::assert_unlocked;
pub use outbox::{Delivery, Outbox};
pub use replay::Replay;
pub(crate) use room::fit_members;
pub use room::{Posting, ReplayRange, Room};
pub use rooms::{LocalRooms, RoomUsage};

/// Identifies one subscription of one connection to one room.
pub type SubscriberId = u64;

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
    /// The Join's `req_id`, repeated in its reply and its stream's Open frame ([`quiver_proto::Joined::req_id`]).
    pub req_id: u64,
    /// Where this subscription's events go.
    pub outbox: Arc<dyn Outbox>,
    /// Server time, µs since the Unix epoch.
    pub now_us: u64,
}

/// A post request, as the connection code hands it to the hub.
#[derive(Debug)]
pub struct PostMessage<'a> {
    /// Room name (already validated).
    pub room: &'a str,
    /// The poster's identity.
    pub identity: &'a str,
    /// The poster's id for the post (deduplication key with `identity`).
    pub client_msg_id: u64,
    /// Payload (already within `max_body`).
    pub body: Bytes,
    /// Server time, µs since the Unix epoch.
    pub now_us: u64,
    /// The poster's connection's fence and the post's place among its posts; `None` outside a connection.
    pub fenced: Option<Fenced<'a>>,
}

/// A successful join: the reply (also the stream's Open frame, already queued in the outbox), the subscription's
/// id, and what to flush.
#[derive(Debug)]
pub struct Joining {
    /// The Join's outcome.
    pub joined: Joined,
    /// The new subscription.
    pub subscriber: SubscriberId,
    /// The joiner's outbox (Open and replay) and the members' outboxes (its join event).
    pub delivery: Delivery,
    /// The replay to run (on its own task) after flushing, when it is read from a store in pages; the joiner's
    /// live frames wait for it.
    pub replay: Option<Replay>,
}

/// A post's commit to wait for (`RoomHub::sequence_post`): completes with the post's outcome (whichever of a
/// connection's is awaited first, its members get the posts in seq order). Dropped before it completes, the post is
/// still released to the room's members once stored. Fails with `Unavailable` only on a broker (the post was
/// refused after it was queued: the engine noted it on the post's [`PostFence`], but for a sender that failed).
pub type PostCommit = std::pin::Pin<Box<dyn Future<Output = Result<(Posted, Delivery), Failure>> + Send>>;

/// A post sequenced: done, or stored once its commit completes.
#[allow(missing_debug_implementations)] // a boxed future
pub enum PostProgress {
    /// Acknowledged now (in memory, `os` durability, a duplicate already stored, or an engine that waits itself).
    Done((Posted, Delivery)),
    /// Sequenced; acknowledged once this completes.
    Committing(PostCommit),
}

/// Access to rooms, whatever backs them. Every method returns the [`Delivery`] its events made; the caller flushes
/// it.
pub trait RoomHub: Send + Sync + 'static {
    /// Joins a room (creating it on first use).
    fn join(&self, join: JoinRoom) -> impl Future<Output = Result<Joining, Failure>> + Send;
    /// Ends a subscription (idempotent).
    fn leave(&self, room: &str, subscriber: SubscriberId, now_us: u64) -> impl Future<Output = Delivery> + Send;
    /// Posts a message (creating the room on first use).
    fn post(&self, post: PostMessage<'_>) -> impl Future<Output = Result<(Posted, Delivery), Failure>> + Send;
    /// Sequences a post and, where the engine can, returns before its commit completes, so that a connection
    /// goes on reading the posts it pipelines and the store's group commit (or the broker's pipeline: the post
    /// queued in order, sequenced by Redis) takes them together. Default: `post`.
    fn sequence_post(&self, post: PostMessage<'_>) -> impl Future<Output = Result<PostProgress, Failure>> + Send {
        async move { self.post(post).await.map(PostProgress::Done) }
    }
    /// Reads retained messages; at most `budget` bytes of encoded events (`Unavailable` when the engine cannot
    /// be reached).
    fn history(
        &self,
        room: &str,
        since: Option<u64>,
        limit: u32,
        budget: usize,
        now_us: u64,
    ) -> impl Future<Output = Result<HistoryPage, Failure>> + Send;
    /// Drops what retention no longer allows, and rooms left with no members and nothing retained (the server
    /// calls it every `Budget::sweep_interval_ms`).
    fn sweep(&self, now_us: u64) -> impl Future<Output = ()> + Send;
    /// Rooms held and bytes retained, for `/metrics` (none known: zeros).
    fn room_usage(&self) -> RoomUsage {
        RoomUsage::default()
    }
    /// Whether the engine can serve now (`/readyz`): a broker that is unreachable says why.
    fn health(&self) -> Result<(), &'static str> {
        Ok(())
    }
    /// The durable store rooms live in, if this process has one (`/readyz` checks it).
    fn durable_store(&self) -> Option<std::sync::Arc<crate::store::Store>> {
        None
    }
}

#[cfg(test)]
mod backlog_tests;
#[cfg(test)]
mod durable_read_tests;
#[cfg(test)]
mod durable_tests;
#[cfg(test)]
mod os_tests;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod tests;
