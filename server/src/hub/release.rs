//! A durable post between its sequencing and its commit: waited for by its poster (`RoomHub::sequence_post`), and
//! released to the room's members when stored even if nobody waits any more (the poster's connection ended):
//! otherwise the stored post would sit undelivered in the room, and keep the room in memory, until a later post.

use std::sync::{atomic::AtomicU64, Arc};

use super::{
    lock::lock,
    rooms::{store_failure, Shared},
    PostCommit, PostProgress, Posted,
};
use crate::{hub::room::TrimInput, store::Commit};

/// The hub's counts a post waiting for its commit updates once it settles.
#[derive(Clone)]
pub(super) struct Counts {
    /// Retained bytes (a failed post gives its dedupe entry back).
    pub(super) retained: Arc<AtomicU64>,
    /// Rooms that may have become evictable (a room without members once its last post is stored): a new room
    /// refused at `max_rooms` meanwhile looks again at once, not after the refusal's throttle.
    pub(super) freed: Arc<AtomicU64>,
}

/// A sequenced post waiting for its commit.
pub(super) struct Release {
    shared: Shared,
    posted: Posted,
    now_us: u64,
    counts: Counts,
    /// Taken when waited for to the end; still here when dropped early.
    commit: Option<Commit>,
}

impl Release {
    fn new(shared: Shared, posted: Posted, (commit, counts): (Commit, Counts), now_us: u64) -> Release {
        Release { shared, posted, now_us, counts, commit: Some(commit) }
    }

    /// A sequenced post's progress once its room's lock is let go: under `os` it is written now (the room's other
    /// posters do not wait for the write) and delivered at once, unless another task's batch took it along;
    /// otherwise its commit is waited for.
    pub(super) fn progress(
        shared: Shared,
        posted: Posted,
        (mut commit, counts): (Commit, Counts),
        now_us: u64,
    ) -> Result<PostProgress, quiver_proto::Failure> {
        commit.write_queued();
        if let Some(outcome) = commit.outcome() {
            return settle(&shared, posted, outcome, (now_us, &counts)).map(PostProgress::Done);
        }
        Ok(PostProgress::Committing(Release::new(shared, posted, (commit, counts), now_us).wait()))
    }

    /// Waits for the commit; then the post (and any before it) is delivered, or on a store failure dropped.
    pub(super) fn wait(mut self) -> PostCommit {
        Box::pin(async move {
            let outcome = match self.commit.as_mut() {
                Some(commit) => commit.wait_mut().await,
                None => Ok(()),
            };
            self.commit = None; // waited for to the end: nothing left for `drop`
            settle(&self.shared, self.posted, outcome, (self.now_us, &self.counts))
        })
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(commit) = self.commit.take() else { return };
        let (shared, posted, now_us, counts) =
            (Arc::clone(&self.shared), self.posted, self.now_us, self.counts.clone());
        // Outside a runtime (a test's teardown) there is nothing left to deliver to.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok((_, delivery)) = settle(&shared, posted, commit.wait().await, (now_us, &counts)) {
                    delivery.flush();
                }
            });
        }
    }
}

/// Delivers a stored post (and any before it), or drops it if the store failed.
fn settle(
    shared: &Shared,
    posted: Posted,
    outcome: Result<(), crate::store::StoreFailed>,
    (now_us, counts): (u64, &Counts),
) -> Result<(Posted, super::Delivery), quiver_proto::Failure> {
    let retained = &*counts.retained;
    match outcome {
        Ok(()) => {
            let mut slot = lock(shared);
            let delivery = slot.room.release(posted.seq, now_us);
            if slot.room.evictable() {
                counts.freed.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            let due = slot.room.take_due_plan();
            drop(slot);
            plan_due(shared, due, now_us);
            Ok((posted, delivery))
        }
        Err(failed) => {
            // A retry waited for its original's commit, which may have been stored in an earlier batch: the
            // original's own settle aborts it if it failed.
            if !posted.duplicate {
                let mut slot = lock(shared);
                let before = slot.room.retained_bytes();
                slot.room.abort(posted.seq);
                // (A room removed meanwhile gave all its bytes back when it was.)
                if !slot.removed {
                    super::rooms::account(retained, before, slot.room.retained_bytes());
                }
                if slot.room.evictable() {
                    counts.freed.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            }
            Err(store_failure(failed))
        }
    }
}

/// A retention cut a post's delivery found due ([`crate::hub::Room::take_due_plan`]), planned on the blocking pool
/// (off the room's lock and the runtime's threads: the plan reads the store), then made under the lock. Outside a
/// runtime (a test's teardown) planned here. A room removed meanwhile is left alone: it is not the room in memory.
pub(super) fn plan_due(shared: &Shared, due: Option<TrimInput>, now_us: u64) {
    let Some(input) = due else { return };
    let shared = Arc::clone(shared);
    let apply = move |plan| {
        let mut slot = lock(&shared);
        if !slot.removed {
            slot.room.due_planned(plan, now_us);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(async move {
            apply(input.plan_off_runtime().await);
        })),
        Err(_) => apply(input.plan()),
    }
}
