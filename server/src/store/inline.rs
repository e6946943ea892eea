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
        Arc::new(InlineWriter { queue, committer, stats, handing_off, near_stall })
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
            Err(_) => while self.pass() == Pass::Wrote {},
        }
    }

    /// Tests: takes fjall for close to its write stall until the next commit looks again.
    #[cfg(test)]
    pub(super) fn assume_near_stall(&self) {
        self.near_stall.store(true, Ordering::Relaxed);
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
                while writer.pass() == Pass::Wrote {}
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
                    blocking.spawn_blocking(move || while writer.pass() == Pass::Wrote {});
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
        self.near_stall.store(keyspaces.near_write_stall(), Ordering::Relaxed);
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

    /// An `os` store with room "r" created (its id returned).
    fn with_room() -> (tempfile::TempDir, std::sync::Arc<Store>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Os).unwrap();
        let id = store.allocate_room_id();
        wait_all(vec![store.submit(Op::Create { name: "r".into(), id, epoch: 1 })]);
        (dir, store, id)
    }

    /// [`with_room`], with a `Hold` queued behind a committer that let go: whoever commits next stops in that batch
    /// until `go` is sent.
    fn hold_queued() -> (tempfile::TempDir, std::sync::Arc<Store>, u64, std::sync::mpsc::Sender<()>) {
        let (dir, store, id) = with_room();
        let (go, _) = store.hold_next_commit();
        (dir, store, id, go)
    }

    /// A post handed over under its room's lock is only queued; its poster writes it once it let go, and a wait or
    /// a drop of its commit writes it too (nothing queued is left unwritten).
    #[test]
    fn a_queued_post_is_written_by_its_poster_or_by_a_wait() {
        let (_dir, store, id) = with_room();
        let mut queued = store.submit_queued(append(id, 1, 1));
        assert!(queued.outcome().is_none(), "only queued");
        assert!(seqs(&store, id).is_empty());
        queued.write_queued();
        assert!(matches!(queued.outcome(), Some(Ok(()))), "written by its poster");
        wait_all(vec![store.submit_queued(append(id, 2, 2))]);
        assert_eq!(seqs(&store, id), [1, 2]);
        drop(store.submit_queued(append(id, 3, 3)));
        assert_eq!(seqs(&store, id), [1, 2, 3], "written when its commit is dropped");
    }

    /// The committing task looks at the queue again after it let go: an operation queued just before that is not
    /// left waiting for a next post that may never come.
    #[test]
    fn an_operation_queued_during_the_last_batch_is_committed_without_another_post() {
        let (_dir, store, id, go) = hold_queued();
        let inline = store.writer.inline().unwrap();
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

    /// A poster writes one batch (it may hold its room's lock); what was queued during it is committed by a task
    /// of its own, without another post.
    #[test]
    fn what_is_queued_during_a_posters_batch_is_committed_by_a_task_of_its_own() {
        let (_dir, store, id, go) = hold_queued();
        let inline = store.writer.inline().unwrap();
        // A poster on the runtime commits it with its own operation, and waits in that batch.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let poster = runtime.spawn({
            let store = store.clone();
            async move { drop(store.submit(Op::Barrier)) }
        });
        while !inline.queue().is_empty() {
            std::thread::yield_now();
        }
        let queued = store.submit(append(id, 1, 1));
        go.send(()).unwrap();
        runtime.block_on(poster).unwrap();
        wait_all(vec![queued]);
        assert_eq!(seqs(&store, id), [1]);
        drop(runtime);
    }

    /// Six rooms, each posted into by its own task (as a room's lock orders its posts): four on a runtime of two
    /// threads, two from plain threads, all at once. Every post is stored once, and a barrier after a room's posts
    /// completes only after all of them did (batches are written in the order their operations were queued).
    #[test]
    fn posts_committed_from_many_threads_at_once_are_all_stored_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Os).unwrap();
        let ids: Vec<u64> = (0..6).map(|_| store.allocate_room_id()).collect();
        let created: Vec<Commit> =
            ids.iter().map(|&id| store.submit(Op::Create { name: format!("r{id}").into(), id, epoch: 1 })).collect();
        wait_all(created);
        let post = |store: &Store, id: u64| {
            let posts: Vec<Commit> = (1..=500).map(|seq| store.submit(append(id, seq, seq))).collect();
            (posts, store.submit(Op::Barrier))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let posted = std::thread::scope(|scope| {
            let shared = &store;
            let threads: Vec<_> = ids[4..].iter().map(|&id| scope.spawn(move || post(shared, id))).collect();
            let tasks: Vec<_> = ids[..4]
                .iter()
                .map(|&id| {
                    let store = store.clone();
                    runtime.spawn(async move { post(&store, id) })
                })
                .collect();
            let mut posted: Vec<_> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
            posted.extend(tasks.into_iter().map(|task| runtime.block_on(task).unwrap()));
            posted
        });
        for (mut posts, barrier) in posted {
            wait_all(vec![barrier]);
            for commit in &mut posts {
                assert!(matches!(commit.outcome(), Some(Ok(()))), "a barrier completed before a post queued before it");
            }
        }
        assert_eq!(store.writer_stats().appends.load(Ordering::Relaxed), 6 * 500);
        for id in ids {
            assert_eq!(seqs(&store, id), (1..=500).collect::<Vec<_>>(), "room {id}");
        }
        drop(runtime);
    }

    /// Close to fjall's write stall (whose back-pressure sleeps in the committing thread), a poster on the runtime
    /// leaves the commit to the blocking pool: its runtime thread goes on while the commit waits.
    #[test]
    fn near_fjalls_write_stall_a_poster_leaves_the_commit_to_the_blocking_pool() {
        let (_dir, store, id) = with_room();
        let (go, stopped) = store.hold_next_commit(); // the next commit waits in its batch
        store.writer.inline().unwrap().assume_near_stall();
        let returned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Releases the held commit once the poster has gone on, or after 5 s (so that a poster stuck in the commit
        // fails the test rather than hanging it).
        let releaser = std::thread::spawn({
            let returned = returned.clone();
            move || {
                stopped.recv().unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !returned.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let went_on = returned.load(Ordering::Relaxed);
                go.send(()).unwrap();
                went_on
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let commit = runtime.block_on(async {
            let commit = store.submit(append(id, 1, 1));
            returned.store(true, Ordering::Relaxed);
            commit
        });
        assert!(releaser.join().unwrap(), "the poster's thread waited in the commit");
        wait_all(vec![commit]);
        assert_eq!(seqs(&store, id), [1]);
    }

    /// A task still holding the writer when the store is dropped (a hand-off task between two batches, a commit
    /// not dropped yet) does not keep the database open: a server started on the directory right after finds it
    /// free (`quiver bench restart` failed now and then with "the store is open in another server or process").
    #[test]
    fn a_dropped_store_lets_go_of_its_database_whoever_still_holds_its_writer() {
        let (dir, store, id) = with_room();
        let held = store.writer.inline().unwrap().clone();
        drop(store);
        let store = Store::open(dir.path(), Durability::Os).expect("the database was let go of");
        assert!(store.load_room("r", 0, u64::MAX, 10).unwrap().is_some());
        // What reaches the dropped store's writer now is refused, not taken as stored.
        let (job, mut refused) = super::Job::new(append(id, 1, 1));
        held.submit(job);
        let err = refused.outcome().expect("answered at once").expect_err("stored after the drop");
        assert!(err.to_string().contains("the store is closed"), "{err}");
        assert!(store.page(id, 0, u64::MAX, 10, usize::MAX).unwrap().frames.is_empty());
    }
}
