//! Rooms over the durable store (a real fjall database in a temporary directory), without sockets: a restart keeps
//! epochs, seqs, history and the dedupe window; joins replay from the store in pages with live frames after;
//! retention is in `retention_tests.rs`.

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use quiver_proto::{ErrorCode, Limits, Position, RoomFrame};

use super::{tests::Collect, *};
use crate::{
    store::{Durability, Store},
    Budget,
};

pub(super) fn open(dir: &Path, limits: Limits, budget: Budget) -> LocalRooms {
    LocalRooms::durable(limits, budget, Store::open(dir, Durability::Fsync).unwrap())
}

pub(super) async fn post(hub: &LocalRooms, room: &str, who: &str, id: u64, now_us: u64) -> (Posted, Delivery) {
    let body = Bytes::from(format!("{who}-{id}"));
    hub.post(PostMessage { fenced: None, room, identity: who, client_msg_id: id, body, now_us }).await.unwrap()
}

pub(super) async fn join(hub: &LocalRooms, room: &str, since: Option<Position>, out: &Arc<Collect>) -> Joining {
    let join = JoinRoom { room: room.into(), identity: "ann".into(), since, req_id: 1, outbox: out.clone(), now_us: 1 };
    hub.join(join).await.unwrap()
}

#[tokio::test]
async fn a_restart_keeps_epoch_seq_history_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let member = Collect::new(usize::MAX);
    let joining = join(&hub, "r", None, &member).await;
    let epoch = joining.joined.epoch;
    for id in 1..=5 {
        let (posted, delivery) = post(&hub, "r", "bob", id, 10).await;
        assert_eq!(posted, Posted { seq: id, duplicate: false });
        assert_eq!(delivery.len(), 1, "delivered to the member once stored");
    }
    assert_eq!(member.message_seqs(), [1, 2, 3, 4, 5]);
    drop(joining);
    drop(hub);

    let hub = open(dir.path(), Limits::default(), Budget::default());
    let (retry, delivery) = post(&hub, "r", "bob", 3, 20).await;
    assert_eq!((retry, delivery.len()), (Posted { seq: 3, duplicate: true }, 0), "the original seq, not a copy");
    assert_eq!(post(&hub, "r", "bob", 6, 20).await.0.seq, 6, "seqs go on");
    let back = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 2 }), &back).await;
    assert_eq!((joining.joined.epoch, joining.joined.recovered, joining.joined.last_seq), (epoch, true, 6));
    joining.replay.expect("replayed from the store").run().await;
    assert_eq!(back.message_seqs(), [3, 4, 5, 6]);
    let page = hub.history("r", Some(4), 10, usize::MAX, 30).await.unwrap();
    assert_eq!((page.epoch, page.messages.iter().map(|m| m.seq).collect::<Vec<_>>()), (epoch, vec![5, 6]));
}

/// A post that waited for its room is sequenced after one read later, and is stamped no earlier than it: a restart
/// walks the dedupe window newest first and stops at the first message older than the window, and with the stamps
/// out of seq order it forgot the earlier seqs, still inside the window (post 1 here: its retry got a new seq).
#[tokio::test]
async fn posts_are_stamped_in_seq_order_and_a_restart_remembers_every_one_in_the_window() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { dedupe_window_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    assert_eq!(post(&hub, "r", "bob", 1, 200 * S).await.0.seq, 1);
    assert_eq!(post(&hub, "r", "bob", 2, 50 * S).await.0.seq, 2, "read at 50 s, sequenced after post 1");
    let page = hub.history("r", None, 10, usize::MAX, 200 * S).await.unwrap();
    let times: Vec<u64> = page.messages.iter().map(|m| m.time_us).collect();
    assert_eq!(times, [200 * S, 200 * S], "stamped in seq order");
    drop(hub);
    let hub = open(dir.path(), limits, Budget::default());
    let (retry, _) = post(&hub, "r", "bob", 1, 250 * S).await;
    assert_eq!(retry, Posted { seq: 1, duplicate: true }, "post 1 is 50 s old: inside the 100 s window");
}

#[tokio::test]
async fn a_paged_replay_comes_before_live_frames() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    for id in 1..=600 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    let out = Collect::new(usize::MAX);
    let epoch = join(&hub, "r", None, &Collect::new(usize::MAX)).await.joined.epoch;
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &out).await;
    assert_eq!(joining.joined.replay_from, 1);
    // Posted while the replay has not run yet: held, then sent after it.
    post(&hub, "r", "bob", 601, 10).await.1.flush();
    assert_eq!(out.message_seqs(), Vec::<u64>::new(), "nothing live before the replay");
    joining.replay.expect("a replay").run().await;
    assert_eq!(out.message_seqs(), (1..=601).collect::<Vec<_>>());
    assert!(matches!(out.frames()[0], RoomFrame::Open(_)));
}

#[tokio::test]
async fn an_evicted_room_comes_back_with_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget { max_rooms: 1, ..Budget::default() };
    let hub = open(dir.path(), Limits::default(), budget);
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "a", None, &out).await;
    let _ = post(&hub, "a", "bob", 1, 10).await;
    hub.leave("a", joining.subscriber, 10).await.flush();
    let _ = post(&hub, "b", "bob", 1, 20).await; // evicts a: the server holds one room
    assert_eq!(hub.usage().rooms_evicted, 1);
    let again = join(&hub, "a", None, &Collect::new(usize::MAX)).await;
    assert_eq!((again.joined.epoch, again.joined.last_seq), (joining.joined.epoch, 1), "loaded, not new");
}

/// A room not in memory is read from the store on the blocking pool, not on the runtime's thread (here, the test's
/// own): a load reads the room's whole retained extent, and a peer may have one done again and again (History of a
/// stored room that left memory), which would stall every connection on that thread. So is the first trim's plan of
/// a room whose history aged past the bound (all of it read), for a History and for the sweep's loads.
#[tokio::test]
async fn rooms_are_loaded_and_first_trimmed_off_the_runtimes_threads() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    for (room, id, at) in [("young", 1, 150 * S), ("aged", 1, 10 * S), ("aged", 2, 10 * S), ("old", 1, 10 * S)] {
        let _ = post(&hub, room, "bob", id, at).await;
    }
    drop(hub);
    let hub = open(dir.path(), limits, Budget::default());
    let store = hub.store().unwrap().clone();
    let seqs = |page: HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(hub.history("young", None, 10, usize::MAX, 200 * S).await.unwrap()), [1]);
    assert_eq!(seqs(hub.history("aged", None, 10, usize::MAX, 200 * S).await.unwrap()), [] as [u64; 0], "aged out");
    hub.sweep(200 * S).await; // loads "old", whose history is past the age bound, and trims it
    written(&store).await;
    let stored = |name: &str| store.load_room(name, 0, 0, 0).unwrap().unwrap().extent.messages;
    assert_eq!((stored("young"), stored("aged"), stored("old")), (1, 0, 0), "the aged history was deleted");
    let here = std::thread::current().id();
    let (loaded_on, planned_on) = (store.loaded_on.lock().unwrap().clone(), store.planned_on.lock().unwrap().clone());
    assert_eq!(loaded_on.iter().filter(|on| **on != here).count(), 3, "young, aged and old, off this thread");
    assert_eq!(planned_on.len(), 2, "aged and old: planned as they were loaded");
    assert!(!planned_on.contains(&here), "a loaded room's first trim planned on the runtime's thread");
}

#[tokio::test]
async fn a_loaded_rooms_memory_is_counted_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    for id in 1..=5 {
        let _ = post(&hub, "r", "bob", id, 10).await;
    }
    drop(hub);
    let hub = open(dir.path(), Limits::default(), Budget::default());
    assert_eq!(hub.usage().retained_bytes, 0);
    let _ = post(&hub, "r", "bob", 6, 20).await; // loads the room with its dedupe window of 5
    let held = hub.usage().retained_bytes;
    assert!(held > 0, "the loaded window is counted");
    // The window expires and the room, idle, leaves memory: everything counted is given back, nothing more.
    hub.sweep(20 + 601 * 1_000_000).await;
    assert_eq!((hub.usage().rooms, hub.usage().retained_bytes), (0, 0), "held {held} before");
}

#[cfg(unix)] // statvfs
#[tokio::test]
async fn at_the_disk_floor_posts_and_new_rooms_are_refused_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let budget = |disk_min_free_bytes| Budget { disk_min_free_bytes, ..Budget::default() };
    let hub = LocalRooms::durable(Limits::default(), budget(0), store.clone());
    assert_eq!(post(&hub, "r", "bob", 1, 10).await.0.seq, 1);
    drop(hub);
    // A floor no disk has: the real free space is under it, from the start.
    let hub = LocalRooms::durable(Limits::default(), budget(u64::MAX), store.clone());
    assert!(store.disk().full() && store.disk().free_bytes().is_some());
    let refused = |room: &'static str, client_msg_id| {
        let body = Bytes::from_static(b"more");
        hub.post(PostMessage { fenced: None, room, identity: "bob", client_msg_id, body, now_us: 30 })
    };
    let failure = refused("r", 2).await.expect_err("refused at the floor");
    assert_eq!(failure.code, ErrorCode::ServerFull);
    assert!(failure.message.contains("disk_min_free_bytes"), "{}", failure.message);
    // A new room would be stored too (its record): neither a post nor a join creates one.
    assert_eq!(refused("fresh", 1).await.expect_err("no new room").code, ErrorCode::ServerFull);
    let join_fresh = JoinRoom {
        room: "fresh".into(),
        identity: "ann".into(),
        since: None,
        req_id: 1,
        outbox: Collect::new(1),
        now_us: 30,
    };
    assert_eq!(hub.join(join_fresh).await.err().map(|f| f.code), Some(ErrorCode::ServerFull));
    written(&store).await;
    assert!(store.load_room("fresh", 0, 0, 0).unwrap().is_none(), "nothing of it stored");
    assert_eq!(store.disk().refused(), 3);
    // What is stored already is still served: a retry gets its seq, history and joins work, nothing was sequenced.
    let (retry, _) = post(&hub, "r", "bob", 1, 40).await;
    assert_eq!(retry, Posted { seq: 1, duplicate: true });
    let page = hub.history("r", None, 10, usize::MAX, 40).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
    let member = Collect::new(usize::MAX);
    let joining = join(&hub, "r", None, &member).await;
    assert_eq!(joining.joined.last_seq, 1);
    hub.sweep(50).await;
    assert!(store.disk().full(), "still under the floor at the next sweep");
    drop((joining, hub));
    // The floor lowered (turned off here): posts go through again, and seqs go on without a gap.
    let hub = LocalRooms::durable(Limits::default(), budget(0), store.clone());
    assert!(!store.disk().full());
    assert_eq!(post(&hub, "r", "bob", 2, 60).await.0, Posted { seq: 2, duplicate: false });
    assert_eq!(post(&hub, "fresh", "bob", 1, 60).await.0.seq, 1);
}

#[tokio::test]
async fn pipelined_posts_are_sequenced_at_once_and_released_in_order_whichever_commit_is_awaited_first() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let member = Collect::new(usize::MAX);
    let _joining = join(&hub, "r", None, &member).await;
    let go = hold_the_writer(&hub);
    let mut commits = Vec::new();
    for id in 1..=3 {
        let body = Bytes::from(format!("p{id}"));
        let message = PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id: id, body, now_us: 10 };
        let sequenced = tokio::time::timeout(std::time::Duration::from_secs(5), hub.sequence_post(message)).await;
        match sequenced.expect("sequenced without waiting for the held writer").unwrap() {
            PostProgress::Committing(commit) => commits.push(commit),
            PostProgress::Done(_) => panic!("fsync: acknowledged only once stored"),
        }
    }
    assert!(member.message_seqs().is_empty(), "none stored yet");
    go.send(()).unwrap();
    // The last one first: its release delivers every post before it, in order.
    let (third, delivery) = commits.pop().unwrap().await.unwrap();
    assert_eq!((third.seq, delivery.len()), (3, 1), "the member's outbox, once for the three");
    drop(delivery);
    for (seq, commit) in [1, 2].into_iter().zip(commits) {
        let (posted, delivery) = commit.await.unwrap();
        assert_eq!((posted.seq, delivery.len()), (seq, 0), "delivered already");
    }
    assert_eq!(member.message_seqs(), [1, 2, 3]);
}

/// A slow consumer dropped within a released batch leaves with the seq of the last message before its
/// `MemberLeft`, not the batch's last (which the others had not been sent yet).
#[tokio::test]
async fn a_slow_consumer_dropped_in_a_released_batch_leaves_at_the_frame_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let member = Collect::new(usize::MAX);
    let _member = join(&hub, "r", None, &member).await;
    let slow = Collect::new(25); // its own MemberJoined fits, a message does not
    let join_slow =
        JoinRoom { room: "r".into(), identity: "sam".into(), since: None, req_id: 1, outbox: slow, now_us: 1 };
    let _slow = hub.join(join_slow).await.unwrap();
    let mut commits = held_posts(&hub, 1..=3).await;
    drop(commits.pop().unwrap().await.unwrap()); // the last releases all three
    let events: Vec<(u64, String)> = member
        .frames()
        .into_iter()
        .filter_map(|f| match f {
            RoomFrame::Event(e) => Some(match e.kind {
                quiver_proto::EventKind::Message { .. } => (e.seq, "message".to_string()),
                quiver_proto::EventKind::MemberJoined { member } => (e.seq, format!("+{member}")),
                quiver_proto::EventKind::MemberLeft { member } => (e.seq, format!("-{member}")),
            }),
            _ => None,
        })
        .collect();
    let left_at = events.iter().position(|(_, what)| what == "-sam").expect("sam dropped");
    assert!(left_at + 1 < events.len(), "dropped before the batch's last message, which follows: {events:?}");
    let before = events[..left_at].iter().rev().find(|(_, what)| what == "message").map_or(0, |(seq, _)| *seq);
    assert_eq!(events[left_at].0, before, "the seq of the last message before it: {events:?}");
}

/// A commit that releases many posts into a room of many members hands each member's outbox over once, not once
/// per post: 20 posts into 50 members made 1,000 outbox handles (and 1,000 flushes) under the room's lock.
#[tokio::test]
async fn a_released_batch_hands_each_outbox_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let members: Vec<_> = (0..50).map(|_| Collect::new(usize::MAX)).collect();
    let mut joined = Vec::new();
    for member in &members {
        joined.push(join(&hub, "r", None, member).await);
    }
    let mut commits = held_posts(&hub, 1..=20).await;
    let (_, delivery) = commits.pop().unwrap().await.unwrap(); // the last releases all twenty
    assert_eq!(delivery.len(), 50, "each member's outbox once");
    assert!(members.iter().all(|m| m.message_seqs() == (1..=20).collect::<Vec<_>>()));
}

#[tokio::test]
async fn a_post_whose_commit_nobody_waits_for_is_still_delivered_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let member = Collect::new(usize::MAX);
    let _joining = join(&hub, "r", None, &member).await;
    let message = PostMessage {
        fenced: None,
        room: "r",
        identity: "bob",
        client_msg_id: 1,
        body: Bytes::from_static(b"x"),
        now_us: 10,
    };
    let go = hold_the_writer(&hub);
    let sequenced = tokio::time::timeout(std::time::Duration::from_secs(5), hub.sequence_post(message)).await;
    let sequenced = sequenced.expect("sequenced without waiting for the held writer").unwrap();
    let PostProgress::Committing(commit) = sequenced else { panic!("not stored yet") };
    drop(commit); // the poster's connection ended
    go.send(()).unwrap();
    let store = hub.store().unwrap().clone();
    written(&store).await;
    for _ in 0..100 {
        if member.message_seqs() == [1] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(member.message_seqs(), [1], "released by the dropped wait's own task");
    assert_eq!(hub.history("r", None, 10, usize::MAX, 20).await.unwrap().messages.len(), 1);
}

#[tokio::test]
async fn posts_whose_messages_were_deleted_are_recognised_after_a_restart_from_their_packed_runs() {
    // Deletions of about 250 messages (an eighth of 2,000) keep their dedupe entries in runs of 128; the window's
    // count bound (2,500) falls inside a run.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_messages: 2_000, dedupe_max_entries: 2_500, ..Limits::default() };
    let open_os =
        || LocalRooms::durable(limits.clone(), Budget::default(), Store::open(dir.path(), Durability::Os).unwrap());
    let hub = open_os();
    for id in 1..=3_000 {
        let who = if id % 2 == 0 { "ann" } else { "bob" };
        assert_eq!(post(&hub, "r", who, id, 10).await.0.seq, id);
        plans_made(&hub, "r").await;
    }
    written(hub.store().unwrap()).await;
    let stored = hub.store().unwrap().load_room("r", 10, u64::MAX, usize::MAX).unwrap().unwrap();
    assert!(stored.first_seq > 600, "two deletions or more: first seq {}", stored.first_seq);
    let window: Vec<u64> = stored.dedupe.iter().map(|e| e.2).collect();
    // Runs the window forgot whole may be deleted already (by the last deletion, if the one before it was done by
    // then): the window starts at or before the 2,500th newest post.
    let first = window.first().copied().unwrap_or(0);
    assert!((1..=501).contains(&first), "the window keeps the 2,500 newest posts: it starts at {first}");
    assert_eq!(window, (first..=3_000).collect::<Vec<_>>(), "every post, in order, once: runs then messages");
    hub.sweep(11).await;
    written(hub.store().unwrap()).await;
    drop(hub);
    let hub = open_os();
    for id in [501, 511, 638, 639, 1_000, 2_999] {
        let who = if id % 2 == 0 { "ann" } else { "bob" };
        let (retry, delivery) = post(&hub, "r", who, id, 12).await;
        assert_eq!((retry, delivery.len()), (Posted { seq: id, duplicate: true }, 0), "post {id}");
    }
    // Past the window's 2,500 newest: a new post.
    assert_eq!(post(&hub, "r", "bob", 499, 12).await.0, Posted { seq: 3_001, duplicate: false });
}

/// Under `os` a post is written after its room's lock is let go: a post held in its write does not hold the
/// room's other posters on the lock (their runtime threads slept on it, `perf` on `sched_switch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_os_post_is_written_outside_its_rooms_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let hub = Arc::new(LocalRooms::durable(Limits::default(), Budget::default(), store.clone()));
    let member = Collect::new(usize::MAX);
    let _joining = join(&hub, "r", None, &member).await;
    post(&hub, "r", "bob", 1, 10).await.1.flush();
    let (go, _) = store.hold_next_commit();
    // A std channel: with both workers stopped (one in the write, one on the lock), no timer would fire.
    let (sequenced, seen) = std::sync::mpsc::channel();
    let posters: Vec<_> = [2, 3]
        .into_iter()
        .map(|id| {
            let (hub, sequenced) = (hub.clone(), sequenced.clone());
            tokio::spawn(async move {
                let body = Bytes::from_static(b"x");
                let message =
                    PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id: id, body, now_us: 10 };
                let progress = hub.sequence_post(message).await.unwrap();
                sequenced.send(id).unwrap();
                let (posted, delivery) = match progress {
                    PostProgress::Done(done) => done,
                    PostProgress::Committing(commit) => commit.await.unwrap(),
                };
                delivery.flush();
                posted.seq
            })
        })
        .collect();
    // One poster writes both (or its own) and stops in that batch; the other is sequenced meanwhile.
    let first = seen.recv_timeout(std::time::Duration::from_secs(5));
    assert!(first.is_ok(), "a post waited for the room's lock while another post was held in its write");
    go.send(()).unwrap();
    let mut seqs = Vec::new();
    for poster in posters {
        seqs.push(poster.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(member.message_seqs(), [1, 2, 3]);
}

/// Posts `ids` (bob's, to room "r") while the store's writer is held, so that one commit stores them all, then lets
/// it go: their commits, in order (none is acknowledged before it is stored).
async fn held_posts(hub: &LocalRooms, ids: std::ops::RangeInclusive<u64>) -> Vec<PostCommit> {
    let go = hold_the_writer(hub);
    let mut commits = Vec::new();
    for id in ids {
        let body = Bytes::from(format!("p{id}"));
        let message = PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id: id, body, now_us: 10 };
        match hub.sequence_post(message).await.unwrap() {
            PostProgress::Committing(commit) => commits.push(commit),
            PostProgress::Done(_) => panic!("fsync: acknowledged only once stored"),
        }
    }
    go.send(()).unwrap();
    commits
}

/// Three messages of 300 bytes to room "r" (over a `max_frame` of 200 once the hub is opened again with it).
pub(super) async fn post_long_messages(hub: &LocalRooms) {
    for id in 1..=3 {
        let body = Bytes::from(vec![b'x'; 300]);
        let message = PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id: id, body, now_us: 10 };
        hub.post(message).await.unwrap().1.flush();
    }
}

/// Stops `hub`'s store writer (every commit after this waits) until the returned sender says go.
fn hold_the_writer(hub: &LocalRooms) -> std::sync::mpsc::Sender<()> {
    let (go, wait) = std::sync::mpsc::channel();
    drop(hub.store().unwrap().submit(crate::store::Op::Hold(std::sync::Mutex::new(wait), std::sync::Mutex::new(None))));
    go
}

/// Waits until everything handed to the store so far, posts and retention deletions, is written.
pub(super) async fn written(store: &crate::store::Store) {
    store.submit(crate::store::Op::Barrier).wait().await.unwrap();
    store.retention_barrier().wait().await.unwrap();
}

/// Waits (up to 10 s) until no retention cut of room `name` is being planned: a post past the room's bound plans it
/// on the blocking pool, which a test posting back to back on one thread does not yield to.
pub(super) async fn plans_made(hub: &LocalRooms, name: &str) {
    for _ in 0..1_000 {
        if !hub.with_loaded(name, |room| room.due_planning()).unwrap_or(false) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("room {name}'s retention plan was not made");
}

/// History that cannot be read back is an error, not an empty or endless page: a client paging from its last seq
/// got `messages: []` with `more: true` for stored messages over a lowered `max_frame`, and asked again forever.
#[tokio::test]
async fn stored_messages_that_cannot_be_read_back_fail_the_history_request() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    post_long_messages(&hub).await;
    drop(hub);
    let hub = open(dir.path(), Limits { max_frame: 200, ..Limits::default() }, Budget::default());
    let failure = hub.history("r", None, 10, usize::MAX, 20).await.unwrap_err();
    assert_eq!(failure.code, ErrorCode::Internal, "{failure:?}");
    assert!(failure.message.contains("message 1 of room r"), "{}", failure.message);
    // A room that does not exist still has an empty history.
    let page = hub.history("nobody", None, 10, usize::MAX, 20).await.unwrap();
    assert!((page.epoch, page.messages.len(), page.more) == (0, 0, false));
}

/// Over `retained_bytes`, a durable room gives up no dedupe entry (a retry of a forgotten post would be stored
/// again, and the forgetting was written to the store, so after a restart too): rooms without members are unloaded
/// instead, which loses nothing (their window is read back from the store). Before, every room, members or not,
/// forgot its oldest dedupe entries.
#[tokio::test]
async fn over_the_memory_budget_durable_rooms_forget_no_retried_post() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget { retained_bytes: 2_048, ..Budget::default() };
    let hub = open(dir.path(), Limits::default(), budget.clone());
    let member = Collect::new(usize::MAX);
    let joining = join(&hub, "busy", None, &member).await;
    for id in 1..=100 {
        post(&hub, "quiet", "bob", id, 10).await.1.flush();
        post(&hub, "busy", "bob", id, 10).await.1.flush();
    }
    for room in ["busy", "quiet"] {
        let (retry, delivery) = post(&hub, room, "bob", 1, 20).await;
        assert_eq!(delivery.len(), 0);
        assert_eq!(retry, Posted { seq: 1, duplicate: true }, "{room}: the first post, retried");
    }
    drop(joining);
    drop(hub);
    let hub = open(dir.path(), Limits::default(), budget);
    for room in ["busy", "quiet"] {
        let (retry, delivery) = post(&hub, room, "bob", 2, 30).await;
        assert_eq!(delivery.len(), 0);
        assert_eq!(retry, Posted { seq: 2, duplicate: true }, "{room}: after a restart");
    }
}
