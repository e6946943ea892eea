//! The `os` writer's tests: flat combining, hand-offs, and the move to the blocking pool near fjall's stall.

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

/// A `Hold` operation not yet queued: its job, its commit, the sender that lets it go on and the receiver that hears
/// when its batch stopped there.
fn hold_job() -> (super::Job, Commit, std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>) {
    let (go, hold) = std::sync::mpsc::channel();
    let (reached, stopped) = std::sync::mpsc::channel();
    let op = Op::Hold(std::sync::Mutex::new(hold), std::sync::Mutex::new(Some(reached)));
    let (job, commit) = super::Job::new(op);
    (job, commit, go, stopped)
}

/// A hand-off task that finds fjall close to its stall after one of its batches (a steady load keeps it going)
/// writes the rest on the blocking pool: the runtime's thread runs its other tasks while the next batch waits.
#[test]
fn a_hand_off_task_near_the_stall_moves_the_rest_to_the_blocking_pool() {
    let (_dir, store, _id) = with_room();
    let inline = store.writer.inline().unwrap().clone();
    let (first, first_commit, go_first, first_stopped) = hold_job();
    let (second, second_commit, go_second, second_stopped) = hold_job();
    inline.queue_only(first);
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The first batch runs on the runtime's thread (fjall is clear); while it is held, the second is queued and
    // fjall is taken for close to its stall from then on. Then: whether the runtime's thread ticks while the second
    // batch is held (5 s at most, so that a thread stuck in it fails the test rather than hanging it).
    let releaser = std::thread::spawn({
        let (inline, ticks, finished) = (inline.clone(), ticks.clone(), finished.clone());
        move || {
            first_stopped.recv().unwrap();
            inline.queue_only(second);
            inline.stall_from_now();
            go_first.send(()).unwrap();
            second_stopped.recv().unwrap();
            let (from, deadline) = (ticks.load(Ordering::Relaxed), std::time::Instant::now() + Duration::from_secs(5));
            while ticks.load(Ordering::Relaxed) < from + 3 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let runtime_went_on = ticks.load(Ordering::Relaxed) >= from + 3;
            go_second.send(()).unwrap();
            finished.store(true, Ordering::Relaxed);
            runtime_went_on
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        inline.hand_off(&tokio::runtime::Handle::current());
        while !finished.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ticks.fetch_add(1, Ordering::Relaxed);
        }
    });
    assert!(releaser.join().unwrap(), "the second batch was written on the runtime's thread");
    wait_all(vec![first_commit, second_commit]);
}
