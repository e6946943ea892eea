//! The store's backlog: posts handed to the writer and not committed yet. A healthy disk keeps it to a commit's
//! worth (a few hundred posts at most), but a disk that stalls (a hung volume, a cloud disk throttled) keeps every
//! post taken meanwhile in memory, in the writer's queue and in its room, with its connection's task waiting, and
//! connections that close and come back take more: nothing bounded it. `Budget::store_backlog_bytes` does now: past
//! it, new posts are refused with `Unavailable` (nothing was done; the client library retries the same post later,
//! so it is sequenced once) until the store catches up. A retry of a post still waiting for its commit waits as a
//! barrier in the writer's queue, counted here too, and is refused the same way at the bound; one of a post already
//! stored gets its seq at once.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// What a post in the backlog is counted as besides its frame: the writer's job, the room's pending entry, the
/// commit's channel (about what they allocate).
pub(super) const POST_OVERHEAD: u64 = 256;

/// Bytes of posts waiting for their commit, and the bound on them.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicU64,
    /// 0: no bound.
    limit: AtomicU64,
    refused: AtomicU64,
}

/// A post's share of the backlog, given back when its job is let go of (answered, or dropped unwritten).
#[derive(Debug)]
pub(super) struct BacklogBytes {
    backlog: Arc<Backlog>,
    bytes: u64,
}

impl Drop for BacklogBytes {
    fn drop(&mut self) {
        self.backlog.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Backlog {
    /// Counts `bytes` until the returned share is dropped.
    pub(super) fn hold(self: &Arc<Self>, bytes: u64) -> BacklogBytes {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        BacklogBytes { backlog: Arc::clone(self), bytes }
    }

    /// Bounds the backlog at `limit` bytes (0: no bound).
    pub(crate) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes of posts waiting for their commit now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Posts refused for the bound so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Why a new post is refused now, counting it; `None` while the backlog is under its bound.
    pub fn refuse(&self) -> Option<String> {
        let (bytes, limit) = (self.bytes(), self.limit.load(Ordering::Relaxed));
        if limit == 0 || bytes < limit {
            return None;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(format!(
            "the room store is behind ({} KiB of posts waiting for the disk, budget.store_backlog_bytes {} KiB): \
             nothing was done; retry later",
            bytes >> 10,
            limit >> 10
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_are_refused_from_the_bound_until_their_shares_are_given_back() {
        let backlog = Arc::new(Backlog::default());
        let held = backlog.hold(1_000);
        assert_eq!(backlog.refuse(), None, "no bound set: never refused");
        backlog.set_limit(1_500);
        assert_eq!(backlog.refuse(), None, "under the bound");
        let more = backlog.hold(500);
        let why = backlog.refuse().expect("at the bound");
        assert!(why.contains("store_backlog_bytes") && why.contains("retry later"), "{why}");
        assert_eq!(backlog.refused(), 1);
        drop(held);
        assert_eq!(backlog.bytes(), 500);
        assert_eq!(backlog.refuse(), None, "under it again");
        drop(more);
        assert_eq!(backlog.bytes(), 0);
    }
}
