//! The store's single writer: a thread that takes every operation handed to it, in order, and commits whatever
//! arrived while the previous commit ran as one atomic batch with one fsync (group commit). Each operation's
//! [`Commit`] completes when its batch is stored; because batches are committed in the order operations arrived,
//! a completed commit also vouches for everything handed over before it.
//!
//! A failed commit (a full or failing disk) fails every later one too: after an fsync error nobody knows what
//! reached the disk (<https://www.usenix.org/system/files/atc20-rebello.pdf>), so the server stops acknowledging
//! posts until it is restarted and the store recovered from its journal.

#[cfg(test)]
use std::sync::mpsc;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
};

use bytes::Bytes;
use fjall::PersistMode;
use tokio::sync::oneshot;

use super::{key, Durability, Keyspaces};

/// Operations per batch at most (what is left waits for the next batch).
const MAX_BATCH: usize = 4096;

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
    /// The poster.
    pub identity: String,
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
    /// Every seq up to here was handed to the writer before the deletion (so it is stored once the deletion is).
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
    /// `keep`: the deleted posts the dedupe window still remembers, stored as dedupe entries.
    TrimMessages { id: u64, from: u64, before: u64, room: Record, keep: Vec<Remembered> },
    /// Deletes a room's dedupe entries with a seq in `from..before` (the window moved on), writing `room`.
    TrimDedupe { id: u64, from: u64, before: u64, room: Record },
    /// Writes nothing: completes once everything handed over before it is stored.
    Barrier,
    /// Tests: the writer thread stops here until told to go on (or the sender is dropped), holding every commit
    /// after it.
    #[cfg(test)]
    Hold(Mutex<mpsc::Receiver<()>>),
}

/// The store failed to write; nothing is acknowledged until the server restarts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the room store failed to write ({0}); posts are refused until the server is restarted")]
pub struct StoreFailed(Arc<str>);

/// Completes when an operation is stored.
#[derive(Debug)]
pub struct Commit(oneshot::Receiver<Result<(), StoreFailed>>);

impl Commit {
    /// The outcome, if the commit is complete already (always, when the store commits inline).
    pub fn outcome(&mut self) -> Option<Result<(), StoreFailed>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreFailed("the writer stopped".into()))),
        }
    }

    /// Waits until the operation is stored with the configured durability.
    pub async fn wait(mut self) -> Result<(), StoreFailed> {
        self.wait_mut().await
    }

    /// [`Commit::wait`], keeping the commit: a wait dropped before it completes can be taken up again. Not to be
    /// waited for again once it completed.
    pub async fn wait_mut(&mut self) -> Result<(), StoreFailed> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(_) => Err(StoreFailed("the writer stopped".into())),
        }
    }
}

#[derive(Debug)]
struct Job {
    op: Op,
    done: Option<oneshot::Sender<Result<(), StoreFailed>>>,
}

/// What the writer did so far.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches committed (each with one fsync under `Durability::Fsync`).
    pub commits: AtomicU64,
    /// Messages stored.
    pub appends: AtomicU64,
    /// Time each batch took to commit (with its fsync under `Durability::Fsync`).
    pub commit_us: crate::metrics::Histogram,
    /// A commit failed: nothing is acknowledged any more until a restart (`/readyz` says so).
    pub failed: std::sync::atomic::AtomicBool,
}

/// The writer: a thread's inbox (`fsync`), or, with `os` durability, the caller itself: a commit without a sync is a
/// write to the OS of a few µs, cheaper done at once than handed to a thread and back. Dropping it lets the thread
/// finish what it has, sync, and exit.
#[derive(Debug)]
pub(super) struct Handle {
    /// The writer thread's inbox (`fsync`); `None` when callers commit themselves.
    inbox: Option<Arc<Inbox>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    inline: Option<Mutex<Inline>>,
    pub(super) stats: Arc<WriterStats>,
}

/// Jobs handed to the writer thread. A plain queue the writer swaps with its own emptied one, so that handing over a
/// job allocates nothing (a channel allocated a block of jobs, over a kilobyte, every 31 posts, and glibc
/// consolidated its free lists at each), and the thread is woken only when it waits.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<Queued>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Queued {
    jobs: Vec<Job>,
    /// False once the handle is dropped: the writer commits what it has and exits.
    closed: bool,
    /// The writer waits for `ready`.
    waiting: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` (dropped, and its commit told the writer stopped, once closed).
    fn push(&self, job: Job) {
        let mut queued = self.lock();
        if queued.closed {
            return;
        }
        queued.jobs.push(job);
        if std::mem::take(&mut queued.waiting) {
            drop(queued);
            self.ready.notify_one();
        }
    }

    /// Waits for jobs and moves them all into `batch` (empty); false once closed and drained.
    fn take(&self, batch: &mut Vec<Job>) -> bool {
        let mut queued = self.lock();
        while queued.jobs.is_empty() && !queued.closed {
            queued.waiting = true;
            queued = self.ready.wait(queued).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::swap(&mut queued.jobs, batch);
        !batch.is_empty()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

/// What the writer keeps between commits when callers commit themselves.
#[derive(Debug)]
struct Inline {
    keyspaces: Keyspaces,
    next_room_id: u64,
    failed: Option<StoreFailed>,
}

impl Handle {
    pub(super) fn start(keyspaces: Keyspaces, durability: Durability, next_room_id: u64) -> std::io::Result<Handle> {
        let mode = match durability {
            Durability::Os | Durability::Memory => PersistMode::Buffer,
            Durability::Fsync => PersistMode::SyncAll,
        };
        let stats = Arc::new(WriterStats::default());
        if mode == PersistMode::Buffer {
            let inline = Inline { keyspaces, next_room_id, failed: None };
            return Ok(Handle { inbox: None, thread: Mutex::new(None), inline: Some(Mutex::new(inline)), stats });
        }
        let (counted, inbox) = (stats.clone(), Arc::new(Inbox::default()));
        let jobs = Arc::clone(&inbox);
        let thread = std::thread::Builder::new()
            .name("quiver-store-writer".into())
            .spawn(move || run(keyspaces, &jobs, mode, next_room_id, &counted))?;
        Ok(Handle { inbox: Some(inbox), thread: Mutex::new(Some(thread)), inline: None, stats })
    }

    pub(super) fn submit(&self, op: Op) -> Commit {
        let (done, commit) = oneshot::channel();
        match &self.inline {
            Some(inline) => {
                let _ = done.send(self.commit_now(inline, &op));
            }
            // Once the writer is gone (shutdown) the job is dropped: its commit reports it.
            None => {
                if let Some(inbox) = &self.inbox {
                    inbox.push(Job { op, done: Some(done) });
                }
            }
        }
        Commit(commit)
    }

    /// Commits `op` as its own batch, written to the OS but not synced.
    fn commit_now(&self, inline: &Mutex<Inline>, op: &Op) -> Result<(), StoreFailed> {
        let mut inline = inline.lock().unwrap_or_else(|p| p.into_inner());
        let inline = &mut *inline;
        if let Some(failure) = &inline.failed {
            return Err(failure.clone());
        }
        let committed = commit(&inline.keyspaces, [op], PersistMode::Buffer, &mut inline.next_room_id, &self.stats);
        committed.map_err(|err| {
            let failure = StoreFailed(format!("{err:?}").into());
            tracing::error!(%failure, "room store commit failed");
            self.stats.failed.store(true, Ordering::Relaxed);
            inline.failed = Some(failure.clone());
            failure
        })
    }
}

impl Drop for Handle {
    /// Lets the writer commit what it was handed, sync, and exit, and waits for it.
    fn drop(&mut self) {
        if let Some(inbox) = &self.inbox {
            inbox.close();
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        if let Some(inline) = &self.inline {
            let inline = inline.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = inline.keyspaces.db.persist(PersistMode::SyncAll) {
                tracing::error!(?err, "room store: final sync failed");
            }
        }
    }
}

/// Closes the inbox when the writer thread ends, also by a panic: the jobs still queued are dropped, so their
/// commits report that the writer stopped instead of waiting forever, and the store counts as failed.
struct Stopped<'a> {
    inbox: &'a Inbox,
    stats: &'a WriterStats,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut queued = self.inbox.lock();
        queued.closed = true;
        let left = std::mem::take(&mut queued.jobs);
        drop(queued);
        if std::thread::panicking() {
            self.stats.failed.store(true, Ordering::Relaxed);
            tracing::error!(jobs = left.len(), "room store writer panicked: nothing is acknowledged any more");
        }
    }
}

fn run(keyspaces: Keyspaces, inbox: &Inbox, mode: PersistMode, mut next_room_id: u64, stats: &WriterStats) {
    let mut failed: Option<StoreFailed> = None;
    let mut jobs: Vec<Job> = Vec::new();
    // Declared after `jobs`, so dropped before it: the store counts as failed before any commit hears of it.
    let _stopped = Stopped { inbox, stats };
    while inbox.take(&mut jobs) {
        // In chunks of at most MAX_BATCH, in order; the queue is cleared once, not shifted per chunk.
        let mut start = 0;
        while start < jobs.len() {
            let end = jobs.len().min(start + MAX_BATCH);
            let batch = &mut jobs[start..end];
            #[cfg(test)]
            for job in batch.iter() {
                if let Op::Hold(go) = &job.op {
                    let _ = go.lock().map(|go| go.recv());
                }
            }
            let result = match &failed {
                Some(failure) => Err(failure.clone()),
                None => commit(&keyspaces, batch.iter().map(|job| &job.op), mode, &mut next_room_id, stats)
                    .map_err(|err| StoreFailed(format!("{err:?}").into())),
            };
            if let (Err(failure), None) = (&result, &failed) {
                stats.failed.store(true, Ordering::Relaxed);
                tracing::error!(%failure, "room store commit failed");
                failed = Some(failure.clone());
            }
            for job in batch.iter_mut() {
                if let Some(done) = job.done.take() {
                    let _ = done.send(result.clone());
                }
            }
            start = end;
        }
        jobs.clear();
        // A backlog (a stalled disk) is not kept allocated: this queue and the inbox's trade places.
        if jobs.capacity() > 4 * MAX_BATCH {
            jobs = Vec::new();
        }
    }
    if failed.is_none() {
        if let Err(err) = keyspaces.db.persist(PersistMode::SyncAll) {
            tracing::error!(?err, "room store: final sync failed");
        }
    }
}

/// Writes one batch: the messages and dedupe entries, the records of rooms created or trimmed, the room id counter
/// when rooms were created, and the deletions retention asked for.
fn commit<'a>(
    ks: &Keyspaces,
    ops: impl IntoIterator<Item = &'a Op>,
    mode: PersistMode,
    next_room_id: &mut u64,
    stats: &WriterStats,
) -> Result<(), fjall::Error> {
    let mut batch = ks.db.batch().durability(Some(mode));
    let mut rooms: HashMap<u64, (&Arc<str>, u64, u64)> = HashMap::new();
    let mut next = *next_room_id;
    let mut writes = 0usize;
    let mut appends = 0;
    for op in ops {
        match op {
            Op::Create { name, id, epoch } => {
                rooms.entry(*id).or_insert((name, *epoch, 0));
                next = next.max(id + 1);
            }
            Op::Append(a) => {
                let mut message = Vec::with_capacity(8 + a.frame.len());
                message.extend_from_slice(&a.time_us.to_be_bytes());
                message.extend_from_slice(&a.frame);
                batch.insert(&ks.messages, key(a.id, a.seq), message);
                writes += 1;
                appends += 1;
            }
            Op::TrimMessages { id, from, before, room, keep } => {
                // The record must cover every seq the deletion takes away (the last seq is read from the newest
                // stored message, which this may delete).
                debug_assert!(room.last_seq.saturating_add(1) >= *before, "{room:?} below {before}");
                for kept in keep {
                    let mut dedupe = Vec::with_capacity(16 + kept.identity.len());
                    dedupe.extend_from_slice(&kept.time_us.to_be_bytes());
                    dedupe.extend_from_slice(&kept.client_msg_id.to_be_bytes());
                    dedupe.extend_from_slice(kept.identity.as_bytes());
                    batch.insert(&ks.dedupe, key(*id, kept.seq), dedupe);
                }
                writes += keep.len() + remove(&mut batch, &ks.messages, *id, *from, *before);
                note(&mut rooms, *id, room);
            }
            Op::TrimDedupe { id, from, before, room } => {
                writes += remove(&mut batch, &ks.dedupe, *id, *from, *before);
                note(&mut rooms, *id, room);
            }
            Op::Barrier => {}
            #[cfg(test)]
            Op::Hold(_) => {}
        }
    }
    for (id, (name, epoch, last_seq)) in rooms {
        let mut record = [0u8; 24];
        record[..8].copy_from_slice(&id.to_be_bytes());
        record[8..16].copy_from_slice(&epoch.to_be_bytes());
        record[16..].copy_from_slice(&last_seq.to_be_bytes());
        batch.insert(&ks.rooms, name.as_bytes(), record);
        writes += 1;
    }
    if next != *next_room_id {
        batch.insert(&ks.meta, "next_room_id", next.to_be_bytes());
        writes += 1;
    }
    if writes == 0 {
        return Ok(()); // barriers only: what they wait for is in earlier batches, already stored
    }
    let start = std::time::Instant::now();
    batch.commit()?;
    stats.commit_us.observe_since(start);
    *next_room_id = next;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.appends.fetch_add(appends, Ordering::Relaxed);
    Ok(())
}

/// Notes room `id`'s record, as a deletion carries it, among the records the batch writes (the newest last seq).
fn note<'a>(rooms: &mut HashMap<u64, (&'a Arc<str>, u64, u64)>, id: u64, room: &'a Record) {
    let record = rooms.entry(id).or_insert((&room.name, room.epoch, room.last_seq));
    record.2 = record.2.max(room.last_seq);
}

/// Adds to `batch` the deletion of room `id`'s keys with a seq in `from..before` in `keyspace`; returns how many. A
/// read error (a damaged old block) ends the deletion there instead of failing the batch: other rooms' posts are
/// in it.
fn remove(batch: &mut fjall::OwnedWriteBatch, keyspace: &fjall::Keyspace, id: u64, from: u64, before: u64) -> usize {
    let mut removed = 0;
    for guard in keyspace.range(key(id, from)..key(id, before)) {
        let Ok(key) = guard.key() else {
            tracing::error!(room_id = id, "room store: retention stopped at an unreadable key");
            break;
        };
        batch.remove(keyspace, key);
        removed += 1;
    }
    removed
}
