//! Reads of the store for requests (History and replay pages), on the blocking pool and bounded in number; and
//! whether the store has closed, for those that outlive it.

use std::sync::Arc;

use super::Store;

/// Set when the store has closed (its last field dropped).
#[derive(Debug, Default)]
pub(crate) struct Closed(pub(super) Arc<std::sync::atomic::AtomicBool>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Reads of History and replay pages on the blocking pool at once, at most ([`Store::read_off_runtime`]). A page
/// in the cache takes microseconds, one from disk up to 256 KiB of reading; what the bound is for is a stalled disk.
pub(crate) const READS_AT_ONCE: usize = 8;

impl Store {
    /// Runs `read` (a History page or a replay page: [`Store::page`]) on the blocking pool, at most
    /// [`READS_AT_ONCE`] at once. The turn is held by the read itself, on its thread: a request given up while its
    /// read is stuck (a stalled disk, its connection ended) does not let another start beside it. Before, each such
    /// read kept one of the blocking pool's 512 threads however many were stuck: a client asking for History and
    /// closing, again and again, took them all on a stalled disk, and room loads, the sweep's checks and reads of
    /// pages in the cache waited behind them (a review's find; room loads had their bound already, `LOADS_AT_ONCE`).
    pub(crate) async fn read_off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let turn = self.reads.clone().acquire_owned().await.ok(); // (never closed)
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            read()
        })
        .await
    }
}
