//! The store's single writer: a thread that takes every operation handed to it, in order, and commits whatever
//! arrived while the previous commit ran as one atomic batch with one fdatasync (group commit). Each operation's
//! [`Commit`] completes when its batch is stored; because batches are committed in the order operations arrived,
//! a completed commit also vouches for everything handed over before it. Retention deletions are the exception:
//! they go to a thread of their own ([`Handle`]), and a deletion never reaches a post not yet stored.
//!
//! A failed commit (a full or failing disk, on either thread) fails every later one too: after an fsync error
//! nobody knows what reached the disk (<https://www.usenix.org/system/files/atc20-rebello.pdf>), so the server
//! stops acknowledging posts until it is restarted and the store recovered from its journal.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};
#[cfg(test)]
use std::sync::{mpsc, Mutex};

use bytes::Bytes;
use fjall::PersistMode;
use tokio::sync::oneshot;

use super::{
    inbox::{Inbox, Worker},
    inline::InlineWriter,
    Durability, Keyspaces,
};

pub(super) use super::batch::commit;

/// Operations per batch at most (what is left waits for the next batch).
pub(super) const MAX_BATCH: usize = 4096;

/// A message to store.
#[derive(Debug)]
pub(crate) struct Append {
    /// The room's id.
    pub id: u64,
    /// The message's seq.
    pub seq: u64,
    /// When it was posted.
    pub time_us: u64,
    /// Its encoded `RoomFrame::Event`, which names its sender and `client_msg_id`: the dedupe window is read back
    /// from the stored messages ([`super::Store::load_room`]), so a post writes nothing else.
    pub frame: Bytes,
}

/// A dedupe entry to keep when retention deletes its message while the dedupe window still remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remembered {
    /// The post's seq.
    pub seq: u64,
    /// When it was posted.
    pub time_us: u64,
    /// The poster's id for it.
    pub client_msg_id: u64,
    /// The poster (shared with the dedupe window's entry: a deletion keeps up to an eighth of a room's bound at
    /// once).
    pub identity: Arc<str>,
}

/// A room's record as a retention deletion writes it. The record (name → id, epoch, last seq) is written when the
/// room is created and with each deletion, not with every post: a room's last seq is the greatest of the
/// recorded one and its newest stored message and dedupe entry ([`super::Store::load_room`]), and a deletion
/// writes the seq it may take away. One write less per post.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// The room's name (the record's key).
    pub name: Arc<str>,
    /// The room's epoch.
    pub epoch: u64,
    /// Every seq up to here was stored before the deletion was planned (the room's last delivered seq).
    pub last_seq: u64,
}

/// What the writer does.
#[derive(Debug)]
pub(crate) enum Op {
    /// Records a new room.
    Create { name: Arc<str>, id: u64, epoch: u64 },
    /// Stores a message.
    Append(Append),
    /// Deletes a room's messages with a seq in `from..before` (retention). Starting where the last deletion
    /// ended keeps each deletion from walking over the tombstones of the ones before. `room` is written with it:
    /// the room's last seq is read from its newest message, and one deleted must be remembered in the record.
    /// `keep`: the deleted posts the dedupe window still remembers (seq ascending), stored as dedupe runs
    /// (`runs.rs`).
    TrimMessages { id: u64, from: u64, before: u64, room: Record, keep: Vec<Remembered> },
    /// Deletes a room's dedupe runs whose last seq is in `from..before` (the window moved on past all of their
    /// entries), writing `room`.
    TrimDedupe { id: u64, from: u64, before: u64, room: Record },
    /// Tests: writes nothing; completes once everything handed over before it is stored.
    #[cfg(test)]
    Barrier,
    /// Writes nothing: completes once everything handed over before it is stored. For a retried post that waits for
    /// its original's commit, or a request that waits for its room's creation: counted in the backlog
    /// (`budget.store_backlog_bytes`), as the posts are.
    RetryWait,
    /// Tests: the writer thread stops here until told to go on (or the sender is dropped), holding every commit
    /// after it; says so first on the second channel, if any (a test then knows the hold is reached, where it slept
    /// and assumed it). Under `os` the task whose batch it is in stops there itself (`inline.rs`).
    #[cfg(test)]
    Hold(Mutex<mpsc::Receiver<()>>, Mutex<Option<mpsc::Sender<()>>>),
}

/// The store failed to write; nothing is acknowledged until the server restarts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the room store failed to write ({0}); posts are refused until the server is restarted")]
pub struct StoreFailed(pub(super) Arc<str>);

/// Completes when an operation is stored.
#[derive(Debug)]
pub struct Commit {
    done: oneshot::Receiver<Result<(), StoreFailed>>,
    /// Under `os`, an operation queued by [`Handle::submit_queued`] and not written yet: [`Commit::write_queued`]
    /// (or a wait) writes it.
    queued: Option<Arc<InlineWriter>>,
}

impl Commit {
    /// The outcome, if the commit is complete already (under `os`, unless another task was committing when it was
    /// handed over: that one writes it a moment later).
    pub fn outcome(&mut self) -> Option<Result<(), StoreFailed>> {
        match self.done.try_recv() {
            Ok(result) => {
                self.queued = None; // written: nothing left for this commit to write
                Some(result)
            }
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreFailed("the writer stopped".into()))),
        }
    }

    /// Under `os`, writes what is queued (this operation among it) now, unless another task is writing: that one
    /// takes it. Called by the caller of `submit_queued` once it let go of its room's lock; a wait does it too,
    /// so a queued operation is never left unwritten by a waiter.
    pub fn write_queued(&mut self) {
        if let Some(inline) = self.queued.take() {
            inline.drain();
        }
    }

    /// Waits until the operation is stored with the configured durability.
    pub async fn wait(mut self) -> Result<(), StoreFailed> {
        self.wait_mut().await
    }

    /// [`Commit::wait`], keeping the commit: a wait dropped before it completes can be taken up again. Not to be
    /// waited for again once it completed.
    pub async fn wait_mut(&mut self) -> Result<(), StoreFailed> {
        self.write_queued();
        match (&mut self.done).await {
            Ok(result) => result,
            Err(_) => Err(StoreFailed("the writer stopped".into())),
        }
    }
}

impl Drop for Commit {
    /// A queued operation nobody waits for is written all the same (by the next post otherwise).
    fn drop(&mut self) {
        self.write_queued();
    }
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) op: Op,
    done: Option<oneshot::Sender<Result<(), StoreFailed>>>,
    /// A post's share of the store's backlog, given back as the job is let go of.
    backlog: Option<super::backlog::BacklogBytes>,
}

impl Job {
    /// A job for `op`, and the [`Commit`] it answers.
    pub(super) fn new(op: Op) -> (Job, Commit) {
        let (done, commit) = oneshot::channel();
        (Job { op, done: Some(done), backlog: None }, Commit { done: commit, queued: None })
    }

    /// Tells the job's [`Commit`] how it went.
    pub(super) fn answer(&mut self, result: Result<(), StoreFailed>) {
        self.backlog = None; // answered: no longer waiting
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

/// What the writer did so far.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches committed (each with one fdatasync under `Durability::Fsync`).
    pub commits: AtomicU64,
    /// Messages stored.
    pub appends: AtomicU64,
    /// Time each batch took to commit (with its fdatasync under `Durability::Fsync`).
    pub commit_us: crate::metrics::Histogram,
    /// A commit failed: nothing is acknowledged any more until a restart (`/readyz` says so).
    pub failed: std::sync::atomic::AtomicBool,
}

/// The writer: a thread (`fsync`), or, with `os` durability, the callers themselves (`inline.rs`): a commit
/// without a sync is a write to the OS of a few µs, cheaper done at once than handed to a thread and back.
/// Retention deletions go to a thread of their own in both modes: a deletion may take thousands of keys, and done
/// inline or in the writer's group commit it held back every post meanwhile (bench post: `os` acks up to 370 ms late, once per sweep). Dropping
/// the handle lets the threads finish what they have, sync, and exit.
#[derive(Debug)]
pub(super) struct Handle {
    /// The writer thread (`fsync`); `None` when callers commit themselves.
    writer: Option<Worker>,
    /// The writer under `os`: callers commit themselves (`inline.rs`).
    inline: Option<Arc<InlineWriter>>,
    /// Deletions (retention), written to the OS without a sync of their own: the next post's fsync covers them (one
    /// journal), and one lost in a crash only leaves its messages to the next deletion.
    retention: Worker,
    /// The writer's counters; its `failed` is every thread's.
    pub(super) stats: Arc<WriterStats>,
    /// The retention thread's (its commits are deletions, not posts).
    pub(super) retention_stats: Arc<WriterStats>,
    /// Posts handed over and not committed yet (`Budget::store_backlog_bytes`).
    pub(super) backlog: Arc<super::Backlog>,
}

impl Handle {
    pub(super) fn start(keyspaces: Keyspaces, durability: Durability, next_room_id: u64) -> std::io::Result<Handle> {
        let mode = match durability {
            Durability::Os | Durability::Memory => PersistMode::Buffer,
            // fdatasync(2): the data and the metadata reading it back needs (its blocks, the file's size), not the
            // file's times; as PostgreSQL syncs its WAL on Linux. Commit p50 about 30 µs lower than fsync
            // here (`quiver bench post --posters 1`, five pairs).
            Durability::Fsync => PersistMode::SyncData,
        };
        let (stats, retention_stats) = (Arc::new(WriterStats::default()), Arc::new(WriterStats::default()));
        let retention = {
            let (keyspaces, failed, counted) = (keyspaces.clone(), stats.clone(), retention_stats.clone());
            // Deletions create no rooms: the id counter is the writer's alone.
            // One deletion per batch: fjall holds its journal's lock while a batch is written, and a post's commit
            // must not wait behind many rooms' deletions merged into one.
            Worker::spawn("quiver-store-retention", move |inbox| {
                run(keyspaces, inbox, PersistMode::Buffer, None, 1, &counted, &failed.failed);
            })?
        };
        if mode == PersistMode::Buffer {
            let inline = InlineWriter::new(keyspaces, next_room_id, stats.clone());
            let backlog = Arc::default();
            return Ok(Handle { writer: None, inline: Some(inline), retention, stats, retention_stats, backlog });
        }
        let counted = stats.clone();
        let writer = Worker::spawn("quiver-store-writer", move |inbox| {
            run(keyspaces, inbox, mode, Some(next_room_id), MAX_BATCH, &counted, &counted.failed);
        })?;
        Ok(Handle { writer: Some(writer), inline: None, retention, stats, retention_stats, backlog: Arc::default() })
    }

    /// A job for `op`, a post counted in the backlog until it is let go of, and a retry's wait too (during a stall,
    /// clients that reconnect and retry would otherwise queue barriers without a bound).
    fn job(&self, op: Op) -> (Job, Commit) {
        let bytes = match &op {
            Op::Append(append) => Some(append.frame.len() as u64 + super::backlog::POST_OVERHEAD),
            Op::RetryWait => Some(super::backlog::POST_OVERHEAD),
            _ => None,
        };
        let (mut job, commit) = Job::new(op);
        job.backlog = bytes.map(|bytes| self.backlog.hold(bytes));
        (job, commit)
    }

    /// Hands `op` over: a deletion to the retention thread, anything else to the writer (or commits it at once).
    pub(super) fn submit(&self, op: Op) -> Commit {
        let deletion = matches!(op, Op::TrimMessages { .. } | Op::TrimDedupe { .. });
        let (job, commit) = self.job(op);
        match (deletion, &self.inline, &self.writer) {
            (true, _, _) => self.retention.push(job),
            (false, Some(inline), _) => inline.submit(job),
            // Once the writer is gone (shutdown) the job is dropped: its commit reports it.
            (false, None, Some(writer)) => writer.push(job),
            (false, None, None) => {}
        }
        commit
    }

    /// [`Handle::submit`], but under `os` the operation is only queued: the caller writes it with
    /// [`Commit::write_queued`] once it holds no lock (a room's lock held across the write put the room's other
    /// posters' threads to sleep).
    pub(super) fn submit_queued(&self, op: Op) -> Commit {
        let Some(inline) = &self.inline else { return self.submit(op) };
        let (job, mut commit) = self.job(op);
        inline.queue_only(job);
        commit.queued = Some(inline.clone());
        commit
    }

    /// Under `os`: nothing is committed from here on, and what was written is synced (true if it was). The
    /// process is exiting without the clean close.
    pub(super) fn seal(&self) -> bool {
        self.inline.as_ref().is_some_and(|inline| inline.seal())
    }

    /// Tests: the writer under `os`.
    #[cfg(test)]
    pub(super) fn inline(&self) -> Option<&Arc<InlineWriter>> {
        self.inline.as_ref()
    }

    /// Completes once every deletion handed over before it is written.
    #[cfg(test)]
    pub(super) fn retention_barrier(&self) -> Commit {
        let (job, commit) = Job::new(Op::Barrier);
        self.retention.push(job);
        commit
    }
}

impl Drop for Handle {
    /// Lets the threads commit what they were handed, sync, and exit, and waits for them.
    fn drop(&mut self) {
        if let Some(writer) = &self.writer {
            writer.stop();
        }
        self.retention.stop();
        if let Some(inline) = &self.inline {
            inline.finish();
        }
    }
}

/// Closes the inbox when a store thread ends, also by a panic: the jobs still queued are dropped, so their commits
/// report that the writer stopped instead of waiting forever, and the store counts as failed.
struct Stopped<'a> {
    inbox: &'a Inbox,
    failed: &'a AtomicBool,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut queued = self.inbox.lock();
        queued.closed = true;
        let left = std::mem::take(&mut queued.jobs);
        drop(queued);
        if std::thread::panicking() {
            self.failed.store(true, Ordering::Relaxed);
            tracing::error!(jobs = left.len(), "room store thread panicked: nothing is acknowledged any more");
        }
    }
}

/// A store thread's loop: commits what arrived while the last batch was written in batches of at most `max_batch`
/// operations. `next_room_id` is the writer's (rooms are created through it alone); `failed` is shared by every
/// store thread: once one failed to write, none commits any more.
fn run(
    keyspaces: Keyspaces,
    inbox: &Inbox,
    mode: PersistMode,
    mut next_room_id: Option<u64>,
    max_batch: usize,
    stats: &WriterStats,
    failed: &AtomicBool,
) {
    let mut failure: Option<StoreFailed> = None;
    let mut jobs: Vec<Job> = Vec::new();
    // Declared after `jobs`, so dropped before it: the store counts as failed before any commit hears of it.
    let _stopped = Stopped { inbox, failed };
    while inbox.take(&mut jobs) {
        // In chunks of at most `max_batch`, in order; the queue is cleared once, not shifted per chunk.
        let mut start = 0;
        while start < jobs.len() {
            let end = jobs.len().min(start + max_batch);
            let batch = &mut jobs[start..end];
            #[cfg(test)]
            for job in batch.iter() {
                if let Op::Hold(go, reached) = &job.op {
                    reached.lock().ok().and_then(|mut reached| reached.take()).map(|reached| reached.send(()));
                    let _ = go.lock().map(|go| go.recv());
                }
            }
            if failure.is_none() && failed.load(Ordering::Relaxed) {
                failure = Some(StoreFailed("another store thread failed to write".into()));
            }
            let result = match &failure {
                Some(failure) => Err(failure.clone()),
                None => commit(&keyspaces, batch.iter().map(|job| &job.op), mode, next_room_id.as_mut(), stats)
                    .map_err(|err| StoreFailed(format!("{err:?}").into())),
            };
            if let (Err(err), None) = (&result, &failure) {
                failed.store(true, Ordering::Relaxed);
                tracing::error!(failure = %err, "room store commit failed");
                failure = Some(err.clone());
            }
            for job in batch.iter_mut() {
                job.answer(result.clone());
            }
            start = end;
        }
        jobs.clear();
        // A backlog (a stalled disk) is not kept allocated: this queue and the inbox's trade places.
        if jobs.capacity() > 4 * MAX_BATCH {
            jobs = Vec::new();
        }
    }
    if failure.is_none() && !failed.load(Ordering::Relaxed) {
        if let Err(err) = keyspaces.db.persist(PersistMode::SyncAll) {
            tracing::error!(?err, "room store: final sync failed");
        }
    }
}
