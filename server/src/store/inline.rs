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

use std::sync::{atomic::Ordering, Arc, Mutex, MutexGuard, TryLockError};

use fjall::PersistMode;

use super::{
    writer::{commit, Job, StoreFailed, WriterStats},
    Keyspaces,
};

/// Batches a committing task writes for others before it leaves the rest to a task of its own (its own work waits
/// meanwhile).
const MAX_ROUNDS: usize = 4;

/// The queue of operations and the right to commit them.
#[derive(Debug)]
pub(super) struct InlineWriter {
    queue: Mutex<Vec<Job>>,
    committer: Mutex<Committer>,
    stats: Arc<WriterStats>,
}

#[derive(Debug)]
struct Committer {
    keyspaces: Keyspaces,
    next_room_id: u64,
    failed: Option<StoreFailed>,
    /// The batch being written (swapped with the queue, so neither allocates per operation).
    jobs: Vec<Job>,
}

impl InlineWriter {
    pub(super) fn new(keyspaces: Keyspaces, next_room_id: u64, stats: Arc<WriterStats>) -> Arc<InlineWriter> {
        let committer = Committer { keyspaces, next_room_id, failed: None, jobs: Vec::new() };
        Arc::new(InlineWriter { queue: Mutex::new(Vec::new()), committer: Mutex::new(committer), stats })
    }

    /// Queues `job` and commits what is queued, unless another task is committing: that one takes it.
    pub(super) fn submit(self: &Arc<Self>, job: Job) {
        self.queue().push(job);
        self.drain();
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

    /// Commits what is queued, round after round while more arrives, as long as nobody else commits. Whatever is
    /// queued after the committer let go is seen by its last look at the queue, or by the next task's `try_lock`.
    fn drain(self: &Arc<Self>) {
        let in_runtime = tokio::runtime::Handle::try_current().ok();
        let mut rounds = 0;
        loop {
            let Some(mut committer) = self.committer() else { return };
            std::mem::swap(&mut *self.queue(), &mut committer.jobs);
            if committer.jobs.is_empty() {
                return;
            }
            self.commit_batch(&mut committer);
            drop(committer);
            if self.queue().is_empty() {
                return;
            }
            rounds += 1;
            if let (true, Some(runtime)) = (rounds >= MAX_ROUNDS, &in_runtime) {
                let writer = Arc::clone(self);
                runtime.spawn(async move { writer.drain() });
                return;
            }
        }
    }

    /// Writes the batch (to the OS, not synced) and tells each operation how it went.
    fn commit_batch(&self, committer: &mut Committer) {
        #[cfg(test)]
        for job in &committer.jobs {
            if let super::writer::Op::Hold(go) = &job.op {
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
        let Committer { keyspaces, next_room_id, jobs, .. } = committer;
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ops = jobs.iter().map(|job| &job.op);
            commit(keyspaces, ops, PersistMode::Buffer, Some(next_room_id), &self.stats)
        }));
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
        std::mem::swap(&mut *self.queue(), &mut committer.jobs);
        if !committer.jobs.is_empty() {
            self.commit_batch(&mut committer);
        }
        if committer.failed.is_none() {
            if let Err(err) = committer.keyspaces.db.persist(PersistMode::SyncAll) {
                tracing::error!(?err, "room store: final sync failed");
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
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use super::super::{tests::append, Commit, Durability, Op, Store};

    fn wait_all(commits: Vec<Commit>) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            for commit in commits {
                let outcome = tokio::time::timeout(Duration::from_secs(10), commit.wait()).await;
                outcome.expect("a queued operation was never committed").unwrap();
            }
        });
    }

    fn seqs(store: &Store, id: u64) -> Vec<u64> {
        store.page(id, 0, u64::MAX, usize::MAX, usize::MAX).unwrap().frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn operations_queued_while_a_commit_runs_are_written_by_it_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Os).unwrap();
        let id = store.allocate_room_id();
        let mut created = store.submit(Op::Create { name: "r".into(), id, epoch: 1 });
        assert!(matches!(created.outcome(), Some(Ok(()))), "nobody else commits: written at once");
        let inline = store.writer.inline().unwrap();
        let stats = store.writer_stats();
        let batches = stats.commits.load(Ordering::Relaxed);
        let held = inline.hold();
        let mut commits: Vec<Commit> = (1..=10).map(|seq| store.submit(append(id, seq, seq))).collect();
        for commit in &mut commits {
            assert!(commit.outcome().is_none(), "queued, not waited for, while another commit runs");
        }
        drop(held);
        inline.drain_now(); // what the committing task does before it lets go
        for commit in &mut commits {
            assert!(matches!(commit.outcome(), Some(Ok(()))));
        }
        assert_eq!(stats.commits.load(Ordering::Relaxed) - batches, 1, "one write for the ten");
        assert_eq!(seqs(&store, id), (1..=10).collect::<Vec<_>>());
    }

    /// The committing task looks at the queue again after it let go: an operation queued just before that is not
    /// left waiting for a next post that may never come.
    #[test]
    fn an_operation_queued_during_the_last_batch_is_committed_without_another_post() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Os).unwrap();
        let id = store.allocate_room_id();
        wait_all(vec![store.submit(Op::Create { name: "r".into(), id, epoch: 1 })]);
        let inline = store.writer.inline().unwrap();
        let (go, hold) = std::sync::mpsc::channel();
        let held = inline.hold();
        let _ = store.submit(Op::Hold(std::sync::Mutex::new(hold))); // queued: the test holds the committer
        drop(held);
        // Another thread commits it, and waits in that batch, holding the committer.
        let committing = std::thread::spawn({
            let inline = inline.clone();
            move || inline.drain_now()
        });
        while !inline.queue().is_empty() {
            std::thread::yield_now();
        }
        let queued = store.submit(append(id, 1, 1));
        go.send(()).unwrap();
        committing.join().unwrap();
        wait_all(vec![queued]);
        assert_eq!(seqs(&store, id), [1]);
    }

    /// Six rooms, each posted into by its own task (as a room's lock orders its posts): four on a runtime of two
    /// threads, two from plain threads, all at once: every post is committed, and stored once, in its room's order.
    #[test]
    fn posts_committed_from_many_threads_at_once_are_all_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Os).unwrap();
        let ids: Vec<u64> = (0..6).map(|_| store.allocate_room_id()).collect();
        let created: Vec<Commit> =
            ids.iter().map(|&id| store.submit(Op::Create { name: format!("r{id}").into(), id, epoch: 1 })).collect();
        wait_all(created);
        let post = |store: &Store, id: u64| (1..=500).map(|seq| store.submit(append(id, seq, seq))).collect::<Vec<_>>();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let commits = std::thread::scope(|scope| {
            let shared = &store;
            let threads: Vec<_> = ids[4..].iter().map(|&id| scope.spawn(move || post(shared, id))).collect();
            let tasks: Vec<_> = ids[..4]
                .iter()
                .map(|&id| {
                    let store = store.clone();
                    runtime.spawn(async move { post(&store, id) })
                })
                .collect();
            let mut commits: Vec<Commit> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
            for task in tasks {
                commits.extend(runtime.block_on(task).unwrap());
            }
            commits
        });
        wait_all(commits);
        assert_eq!(store.writer_stats().appends.load(Ordering::Relaxed), 6 * 500);
        for id in ids {
            assert_eq!(seqs(&store, id), (1..=500).collect::<Vec<_>>(), "room {id}");
        }
        drop(runtime);
    }
}
