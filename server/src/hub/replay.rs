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

/// The replay of one join, to run on its own task.
#[derive(Debug)]
#[must_use = "the joiner's live frames are held until the replay runs"]
pub struct Replay {
    pub(super) store: Arc<Store>,
    pub(super) room: String,
    pub(super) range: ReplayRange,
    pub(super) outbox: Arc<dyn Outbox>,
}

impl Replay {
    /// Writes the replay page by page, then lets the held live frames follow.
    pub async fn run(self) {
        let ReplayRange { room_id, mut after, upto } = self.range;
        while after < upto {
            let page = match self.store.page(room_id, after, upto, PAGE_MESSAGES, PAGE_BYTES) {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(room = %self.room, %err, "replay read failed; the replay stops here");
                    break;
                }
            };
            // Empty: retention deleted the rest meanwhile (the member sees a jump in seqs, as after a trim).
            let Some(last) = page.frames.last() else { break };
            after = last.seq;
            for stored in page.frames {
                self.outbox.push_replay(stored.frame);
            }
            self.outbox.flush();
            if !self.outbox.drained().await {
                return; // the stream is gone
            }
        }
        self.outbox.release_hold();
        self.outbox.flush();
    }
}
