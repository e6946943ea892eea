//! A join's replay read from the durable store in pages: the next page is read only once the joiner's stream took
//! the previous one, so a replay holds one page in memory however long the history and however slow the reader.
//! Live frames wait in the joiner's outbox meanwhile (within its live bound) and follow the last page.

use std::sync::Arc;

use super::{room::ReplayRange, Outbox};
use crate::store::Store;

/// Messages per page at most.
const PAGE_MESSAGES: usize = 256;
/// Bytes of frames per page at most (a single bigger message still makes a page).
const PAGE_BYTES: usize = 256 << 10;

/// The replay of one join, to run on its own task: it writes the replay page by page into the joiner's outbox,
/// then lets the held live frames follow.
#[must_use = "the joiner's live frames are held until the replay runs"]
pub struct Replay(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

impl Replay {
    /// A replay carried out by `task` (another engine's paged read), which must end with
    /// [`Outbox::release_hold`] and a flush.
    pub fn new(task: impl std::future::Future<Output = ()> + Send + 'static) -> Replay {
        Replay(Box::pin(task))
    }

    /// A replay of `range` of `room` from the durable store.
    pub(super) fn from_store(store: Arc<Store>, room: String, range: ReplayRange, outbox: Arc<dyn Outbox>) -> Replay {
        Replay::new(from_store(store, room, range, outbox))
    }

    /// Writes the replay, then lets the held live frames follow.
    pub async fn run(self) {
        self.0.await
    }
}

async fn from_store(store: Arc<Store>, room: String, range: ReplayRange, outbox: Arc<dyn Outbox>) {
    let ReplayRange { room_id, mut after, upto, recovered } = range;
    while after < upto {
        // On the blocking pool: a page not in the cache is read from disk (up to 256 KiB), which must not hold up
        // the runtime's threads (every connection's tasks).
        let reading = store.clone();
        let read = tokio::task::spawn_blocking(move || reading.page(room_id, after, upto, PAGE_MESSAGES, PAGE_BYTES));
        let page = match read.await {
            Ok(Ok(page)) => page,
            // Not a kick: the rejoin would read the same damaged record again, and again.
            Ok(Err(err)) => {
                tracing::error!(room = %room, %err, "replay read failed; the replay stops here");
                break;
            }
            Err(err) => {
                tracing::error!(room = %room, %err, "replay read did not finish; the replay stops here");
                break;
            }
        };
        // Not the next seq: retention deleted some of the range meanwhile (or all of the rest: an empty page). A
        // joiner told it was not recovered knows it missed messages: its replay goes on past the jump.
        if recovered && page.frames.first().is_none_or(|first| first.seq != after + 1) {
            // Ended as an overflowed subscription (`SlowConsumer`): the client rejoins from what it got, which is
            // no longer recoverable, so it learns that it missed messages.
            outbox.kick();
            outbox.flush();
            return;
        }
        let Some(last) = page.frames.last() else { break };
        after = last.seq;
        for stored in page.frames {
            outbox.push_replay(stored.frame);
        }
        outbox.flush();
        if !outbox.drained().await {
            return; // the stream is gone
        }
    }
    outbox.release_hold();
    outbox.flush();
}
