//! Where a room subscription's events go. The hub only *enqueues* (under the room's lock, which fixes one order
//! per room); the network layer *flushes* (writes to the room stream) after the lock is released, so no hub lock
//! is ever held across a call into quinn.

use std::sync::Arc;

use bytes::Bytes;

/// A subscriber's queue of encoded room frames, bounded by the owner (`Limits::room_queue_bytes`).
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Enqueues one live frame; does no IO. False when the queue is over its bound: the subscriber is then dropped
    /// from the room, and the next [`Outbox::flush`] resets its stream with `SlowConsumer`.
    fn push(&self, frame: Bytes) -> bool;
    /// Enqueues a frame of a join (the stream's Open and the history replay) outside the live bound: a replay is
    /// what the client asked to catch up on, bounded by the history limits, and must not reset the stream before
    /// it starts. The live bound applies to what comes after.
    fn push_replay(&self, frame: Bytes);
    /// Enqueues a live frame the subscriber is behind on through no fault of its own: a message a cluster node's
    /// gap fill read back from the room's stream (Pub/Sub lost it), and the events that waited for the fill. Outside
    /// the live bound, as a replay is (a fill reads at most the room's history): a gap larger than
    /// `room_queue_bytes` overflowed every member of the room at once. Behind a paged replay ([`Outbox::hold`]) it
    /// waits as a live frame does, bound and all. False as [`Outbox::push`]. The default: [`Outbox::push`].
    fn push_catch_up(&self, frame: Bytes) -> bool {
        self.push(frame)
    }
    /// Ends the subscription as if it had overflowed: the next [`Outbox::flush`] resets the stream with
    /// `SlowConsumer` and the client rejoins from its last position (an engine that lost the room's thread: a gap
    /// it cannot fill, a new epoch).
    fn kick(&self);
    /// [`Outbox::kick`] for messages that cannot be delivered: a join's replay that cannot deliver what it promised
    /// (retention deleted part of its range, or the store could not read it back), a cluster event over this node's
    /// `max_frame`. The same rejoin, which learns that messages were missed, told apart from a slow reader in what
    /// the client is told and in the counts.
    fn kick_replay(&self) {
        self.kick();
    }
    /// Writes out what was enqueued, or hands it to whoever writes it. Called by the network layer, never by the
    /// hub, and never under a hub lock.
    fn flush(&self);
    /// From now on, live frames ([`Outbox::push`], still within the live bound) wait behind the replay: a join
    /// whose replay is read from the store in pages holds them until [`Outbox::release_hold`].
    fn hold(&self);
    /// Queues the held live frames after everything pushed so far (the replay is complete).
    fn release_hold(&self);
    /// Completes when the frames queued so far have been handed to the transport (true), or will never be (false:
    /// the stream is gone or was reset). A paged replay reads its next page only then, so a slow reader holds one
    /// page in memory, not the room's history.
    fn drained(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// The outboxes an operation enqueued frames into: flush them (once the hub's locks are released) to send.
#[derive(Debug, Default)]
#[must_use = "frames were enqueued: flush the delivery to send them"]
pub struct Delivery(Vec<Arc<dyn Outbox>>);

impl Delivery {
    /// Adds an outbox that got a frame (or overflowed).
    pub(crate) fn add(&mut self, outbox: Arc<dyn Outbox>) {
        self.0.push(outbox);
    }

    /// Adds every outbox of `other`.
    pub(crate) fn extend(&mut self, other: Delivery) {
        self.0.extend(other.0);
    }

    /// Number of outboxes to flush.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was enqueued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Flushes every outbox: the frames go out on their streams.
    pub fn flush(self) {
        for outbox in self.0 {
            outbox.flush();
        }
    }
}
