//! The writer under `os` durability: the posting task commits itself, because a commit without a sync is a write
//! to the OS of a few µs, cheaper done at once than handed to a thread and back.
//!
//! Two tasks committing at once used to queue on a mutex held across the write: a runtime thread put to sleep and
//! woken tens of µs later. At 100 posters × 8 in flight (`quiver bench post --modes os`) that was the most
//! frequent reason the runtime's threads slept (about 1,600 times a second, `perf` on `sched_switch`). Now a task
//! that finds a commit running leaves its operation queued and goes on; the committing task takes whatever was
//! queued meanwhile into its next batch (flat combining) before it lets go. So the runtime's threads never wait
//! for each other here, and a burst costs one write instead of one each. An operation committed by another task
//! completes its [`super::Commit`] a moment later; the room then delivers the post as it does under `fsync`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, MutexGuard, TryLockError,
};

use fjall::PersistMode;

use super::{
    writer::{commit, Job, StoreFailed, WriterStats, MAX_BATCH},
    Keyspaces,
};

/// Batches a hand-off task writes before it lets the runtime's other tasks run.
const HANDOFF_ROUNDS: usize = 16;

/// What a [`InlineWriter::pass`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Wrote a batch (more may be queued).
    Wrote,
    /// Nothing left for this task.
    Done,
}

/// The queue of operations and the right to commit them.
#[derive(Debug)]
pub(super) struct InlineWriter {
    queue: Mutex<Vec<Job>>,
    committer: Mutex<Committer>,
    stats: Arc<WriterStats>,
    /// A task to commit what is queued is on its way.
    handing_off: AtomicBool,
    /// fjall is close to holding writes back ([`Keyspaces::near_write_stall`], seen after the last commit): commits
    /// leave the runtime's threads for the blocking pool, because fjall's back-pressure sleeps in the committing
    /// thread (100 ms at a time while 4 memtables wait to be flushed), and a runtime thread asleep there holds up
    /// every task it would run.
    near_stall: AtomicBool,
    /// Tests: every commit finds fjall close to its stall, whatever fjall says.
    #[cfg(test)]
    stall_from_now: AtomicBool,
}

#[derive(Debug)]
struct Committer {
    /// Let go of at [`InlineWriter::finish`]: a hand-off task or a commit still holding this writer must not keep
    /// the database (and its lock on the directory) open after the store is dropped.
    keyspaces: Option<Keyspaces>,
    next_room_id: u64,
    failed: Option<StoreFailed>,
    /// The batch being written (swapped with the queue, so neither allocates per operation).
    jobs: Vec<Job>,
}

impl InlineWriter {
    pub(super) fn new(keyspaces: Keyspaces, next_room_id: u64, stats: Arc<WriterStats>) -> Arc<InlineWriter> {
        let committer = Committer { keyspaces: Some(keyspaces), next_room_id, failed: None, jobs: Vec::new() };
        let (queue, committer) = (Mutex::new(Vec::new()), Mutex::new(committer));
        let (handing_off, near_stall) = (AtomicBool::new(false), AtomicBool::new(false));
        Arc::new(InlineWriter {
            queue,
            committer,
            stats,
            handing_off,
            near_stall,
            #[cfg(test)]
            stall_from_now: AtomicBool::new(false),
        })
    }

    /// Queues `job` and commits what is queued, unless another task is committing: that one takes it.
    pub(super) fn submit(self: &Arc<Self>, job: Job) {
        self.queue().push(job);
        self.drain();
    }

    /// Queues `job` for [`InlineWriter::drain`], which the caller runs once it holds no lock.
    pub(super) fn queue_only(&self, job: Job) {
        self.queue().push(job);
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committer(&self) -> Option<MutexGuard<'_, Committer>> {
        match self.committer.try_lock() {
            Ok(committer) => Some(committer),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Commits what is queued now (the caller's own operation among it), unless another task is committing:
    /// that one takes it. The caller may hold a lock (its room's, for a barrier; the map of rooms, for a new room),
    /// so it writes one batch; what was queued meanwhile goes to a task of its own.
    pub(super) fn drain(self: &Arc<Self>) {
        let runtime = tokio::runtime::Handle::try_current();
        if let (true, Ok(runtime)) = (self.near_stall.load(Ordering::Relaxed), &runtime) {
            return self.hand_off(runtime);
        }
        if self.pass() == Pass::Done || self.queue().is_empty() {
            return;
        }
        match runtime {
            Ok(runtime) => self.hand_off(&runtime),
            // Outside a runtime (tests, tools): on until the queue is empty or another thread commits.
            Err(_) => self.write_all(),
        }
    }

    /// Writes batch after batch until the queue is empty or another task holds the committer (on a thread that
    /// may block: the blocking pool, or outside a runtime).
    fn write_all(&self) {
        while self.pass() == Pass::Wrote {}
    }

    /// Tests: takes fjall for close to its write stall until the next commit looks again.
    #[cfg(test)]
    pub(super) fn assume_near_stall(&self) {
        self.near_stall.store(true, Ordering::Relaxed);
    }

    /// Tests: every commit from now on finds fjall close to its stall.
    #[cfg(test)]
    pub(super) fn stall_from_now(&self) {
        self.stall_from_now.store(true, Ordering::Relaxed);
    }

    /// Starts a task that commits what is queued, unless one is on its way (it looks at the queue when it runs).
    fn hand_off(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if self.handing_off.swap(true, Ordering::AcqRel) {
            return;
        }
        let writer = Arc::downgrade(self);
        if self.near_stall.load(Ordering::Relaxed) {
            runtime.spawn_blocking(move || {
                let Some(writer) = writer.upgrade() else { return };
                writer.handing_off.store(false, Ordering::Release);
                writer.write_all();
            });
            return;
        }
        let blocking = runtime.clone();
        runtime.spawn(async move {
            let Some(writer) = writer.upgrade() else { return };
            // From here on, what is queued after this task's last look is handed off again.
            writer.handing_off.store(false, Ordering::Release);
            let mut rounds = 0;
            while writer.pass() == Pass::Wrote {
                // Close to fjall's stall since it began (a steady load keeps this loop going): the rest is written
                // on the blocking pool, as a hand-off made now would be.
                if writer.near_stall.load(Ordering::Relaxed) {
                    blocking.spawn_blocking(move || writer.write_all());
                    return;
                }
                rounds += 1;
                if rounds % HANDOFF_ROUNDS == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    /// One batch of what is queued, written by this task unless another holds the committer. Whoever holds it
    /// looks at the queue again after letting go, so that an operation queued by a task whose `try_lock` failed
    /// meanwhile is not left waiting: `Done` means the queue was seen empty after letting go, or another task holds
    /// the committer (and will look after letting go).
    fn pass(&self) -> Pass {
        loop {
            match self.committer().map(|mut committer| self.take_and_commit(&mut committer)) {
                None => return Pass::Done,
                Some(true) => return Pass::Wrote,
                // Found nothing while holding the committer: a task that queued just then may have found it
                // taken and left its operation to this one.
                Some(false) if self.queue().is_empty() => return Pass::Done,
                Some(false) => {}
            }
        }
    }

    /// Commits what is queued (at most [`MAX_BATCH`] operations) as one batch, for the holder of the committer;
    /// true if there was anything.
    fn take_and_commit(&self, committer: &mut Committer) -> bool {
        if !committer.jobs.is_empty() {
            // Left by a panic between taking a batch and answering it: nobody knows what was written.
            let failure = StoreFailed("a commit was interrupted".into());
            tracing::error!(%failure, "room store commit failed");
            self.stats.failed.store(true, Ordering::Relaxed);
            committer.failed = Some(failure.clone());
            committer.jobs.iter_mut().for_each(|job| job.answer(Err(failure.clone())));
            committer.jobs.clear();
        }
        {
            let mut queue = self.queue();
            if queue.len() <= MAX_BATCH {
                std::mem::swap(&mut *queue, &mut committer.jobs);
            } else {
                committer.jobs.extend(queue.drain(..MAX_BATCH));
            }
        }
        if committer.jobs.is_empty() {
            return false;
        }
        self.commit_batch(committer);
        true
    }

    /// Writes the batch (to the OS, not synced) and tells each operation how it went.
    fn commit_batch(&self, committer: &mut Committer) {
        #[cfg(test)]
        for job in &committer.jobs {
            if let super::writer::Op::Hold(go, reached) = &job.op {
                reached.lock().ok().and_then(|mut reached| reached.take()).map(|reached| reached.send(()));
                let _ = go.lock().map(|go| go.recv());
            }
        }
        let result = self.write(committer);
        for job in committer.jobs.iter_mut() {
            job.answer(result.clone());
        }
        committer.jobs.clear();
    }

    fn write(&self, committer: &mut Committer) -> Result<(), StoreFailed> {
        if let Some(failure) = &committer.failed {
            return Err(failure.clone());
        }
        if self.stats.failed.load(Ordering::Relaxed) {
            // The retention thread failed to write: nothing is acknowledged any more either.
            let failure = StoreFailed("a retention deletion failed to write".into());
            committer.failed = Some(failure.clone());
            return Err(failure);
        }
        // A panic in the commit (fjall's own checks) fails the store like an error, as the writer thread's does:
        // the post's task would die with it, and the room deliver the post, without knowing it was stored, with
        // the next one's commit.
        let Committer { keyspaces: Some(keyspaces), next_room_id, jobs, .. } = committer else {
            return Err(StoreFailed("the store is closed".into()));
        };
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ops = jobs.iter().map(|job| &job.op);
            commit(keyspaces, ops, PersistMode::Buffer, Some(next_room_id), &self.stats)
        }));
        let near_stall = keyspaces.near_write_stall();
        #[cfg(test)]
        let near_stall = near_stall || self.stall_from_now.load(Ordering::Relaxed);
        self.near_stall.store(near_stall, Ordering::Relaxed);
        let committed = match committed {
            Ok(result) => result.map_err(|err| format!("{err:?}")),
            Err(_) => Err("the commit panicked".to_string()),
        };
        committed.map_err(|detail| {
            let failure = StoreFailed(detail.into());
            tracing::error!(%failure, "room store commit failed");
            self.stats.failed.store(true, Ordering::Relaxed);
            committer.failed = Some(failure.clone());
            failure
        })
    }

    /// At shutdown: commits what is still queued, then syncs.
    pub(super) fn finish(&self) {
        let mut committer = self.committer.lock().unwrap_or_else(|p| p.into_inner());
        while self.take_and_commit(&mut committer) {}
        if let (None, Some(keyspaces)) = (&committer.failed, &committer.keyspaces) {
            if let Err(err) = keyspaces.db.persist(PersistMode::SyncAll) {
                tracing::error!(?err, "room store: final sync failed");
            }
        }
        committer.keyspaces = None;
    }

    /// The process exits without the clean close: nothing is committed (or acknowledged) from here on, and the
    /// writes so far are synced. True if the sync worked.
    pub(super) fn seal(&self) -> bool {
        let mut committer = self.committer.lock().unwrap_or_else(|p| p.into_inner());
        committer.failed = Some(StoreFailed("the server is exiting".into()));
        let Some(keyspaces) = committer.keyspaces.as_ref() else { return false };
        match keyspaces.db.persist(PersistMode::SyncAll) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(?err, "room store: the sync before exiting failed");
                false
            }
        }
    }

    /// Tests: holds the committer as a committing task does, until the guard is dropped.
    #[cfg(test)]
    pub(super) fn hold(&self) -> impl Drop + '_ {
        self.committer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tests: what a committing task does when it lets go.
    #[cfg(test)]
    pub(super) fn drain_now(self: &Arc<Self>) {
        self.drain();
    }
}

#[cfg(test)]
#[path = "inline_tests.rs"]
mod tests;
