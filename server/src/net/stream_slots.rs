//! The room streams a connection has open (their pumps still running), and the wait of a Join for one to end when
//! the connection has as many as it may.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// How long a Join may wait for a left room's stream to be written out when the connection has
/// [`super::Connection::max_streams`] of them: a client that leaves and joins in one burst (its pumps have not ended
/// yet) waits microseconds; one whose left streams are not read is refused after this (well within
/// [`LEFT_STREAM_GRACE`](crate::net::rooms::LEFT_STREAM_GRACE), after which they are reset).
const STREAM_SLOT_WAIT: Duration = Duration::from_secs(1);

/// The room streams whose pump still runs, and a signal each time one ends.
#[derive(Debug, Default)]
pub(super) struct StreamSlots {
    pub(super) open: AtomicUsize,
    pub(super) freed: tokio::sync::Notify,
}

impl StreamSlots {
    /// Waits (at most [`STREAM_SLOT_WAIT`]) until fewer than `max` streams are open; false if none came free.
    pub(super) async fn wait_below(&self, max: usize) -> bool {
        let deadline = tokio::time::Instant::now() + STREAM_SLOT_WAIT;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the count is read: a stream ending in between is not missed.
            freed.as_mut().enable();
            if self.open.load(Ordering::Acquire) < max {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}
