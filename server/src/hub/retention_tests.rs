//! Retention of durable rooms, without sockets: by count as a room passes its bound (and after a restart), by age
//! in the sweep and when a room is loaded, none without an age bound, and a replay that retention overtakes.

use quiver_proto::{Limits, Position};

use super::{
    durable_tests::{join, open, plans_made, post, written},
    tests::Collect,
    *,
};
use crate::{store::Store, Budget};

/// A resume told it was recovered gets every seq it was promised, or is ended and rejoins: retention deleting the
/// start of its replay range before the replay read it ends the subscription (the client then rejoins from what
/// it got, unrecovered), where the replay used to begin at the next message left, a gap nobody was told of. A
/// replay told it was not recovered goes on past such a jump.
#[tokio::test]
async fn retention_overtaking_a_recovered_replay_ends_the_subscription_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_messages: 8, ..Limits::default() };
    let hub = open(dir.path(), limits, Budget::default());
    for id in 1..=8 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    let epoch = hub.history("r", None, 1, usize::MAX, 10).await.unwrap().epoch;
    let recovered = Collect::new(usize::MAX);
    let resumed = join(&hub, "r", Some(Position { epoch, seq: 0 }), &recovered).await;
    assert_eq!((resumed.joined.recovered, resumed.joined.replay_from), (true, 1));
    let unrecovered = Collect::new(usize::MAX);
    let lost = join(&hub, "r", Some(Position { epoch: epoch ^ 1, seq: 3 }), &unrecovered).await;
    assert!(!lost.joined.recovered, "another epoch");
    // Two more posts pass the bound's slack (8 + 1): the oldest are deleted before either replay reads them.
    for id in 9..=10 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    plans_made(&hub, "r").await; // (the cut is planned on the blocking pool, then made)
    written(hub.store().unwrap()).await;
    assert_eq!(hub.history("r", None, 100, usize::MAX, 10).await.unwrap().messages[0].seq, 3, "1 and 2 deleted");
    resumed.replay.expect("a replay").run().await;
    assert!(recovered.kicked(), "ended: its replay would have begun at 3");
    assert_eq!(recovered.message_seqs(), Vec::<u64>::new(), "nothing past the gap");
    lost.replay.expect("a replay").run().await;
    assert!(!unrecovered.kicked());
    assert_eq!(unrecovered.message_seqs().last(), Some(&10), "the rest, then the live frames");
}

#[tokio::test]
async fn retention_trims_as_the_room_passes_its_bound_and_stays_trimmed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_messages: 10, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    let store = hub.store().unwrap().clone();
    let stored = |store: &Store| store.load_room("r", 10, 0, 0).unwrap().unwrap();
    for id in 1..=11 {
        let _ = post(&hub, "r", "bob", id, 10).await;
    }
    written(&store).await;
    assert_eq!((stored(&store).first_seq, stored(&store).extent.messages), (1, 11), "within the slack of 1/8");
    let _ = post(&hub, "r", "bob", 12, 10).await;
    trimmed_to(&store, "r", 3).await;
    assert_eq!((stored(&store).first_seq, stored(&store).extent.messages), (3, 10), "past it: deleted at once");
    let deletions = store.retention_stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(deletions, 1, "by the retention thread (the metric quiver_store_deletions_total)");
    for id in 13..=30 {
        let _ = post(&hub, "r", "bob", id, 10).await;
        // One deletion per room in flight: the next is planned only once this one is written (and planned on the
        // blocking pool: made, then written).
        plans_made(&hub, "r").await;
        written(&store).await;
    }
    let seqs = |page: HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    // Readers see the count bound at once; the store deletes a run at a time (or in the sweep).
    assert_eq!(seqs(hub.history("r", None, 100, usize::MAX, 10).await.unwrap()), (21..=30).collect::<Vec<_>>());
    written(&store).await;
    hub.sweep(11).await;
    written(&store).await;
    assert_eq!(
        (stored(&store).first_seq, stored(&store).extent.messages),
        (21, 10),
        "a run at a time, and the sweep deletes no more"
    );
    assert_eq!(seqs(hub.history("r", None, 100, usize::MAX, 11).await.unwrap()), (21..=30).collect::<Vec<_>>());
    let epoch = hub.history("r", None, 1, usize::MAX, 11).await.unwrap().epoch;
    drop((hub, store));
    let hub = open(dir.path(), limits, Budget::default());
    assert_eq!(seqs(hub.history("r", None, 100, usize::MAX, 12).await.unwrap()), (21..=30).collect::<Vec<_>>());
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 5 }), &out).await;
    assert!(!joining.joined.recovered, "seq 6 is gone");
    assert_eq!(joining.joined.replay_from, 21);
    joining.replay.expect("the latest").run().await;
    assert_eq!(out.message_seqs(), (21..=30).collect::<Vec<_>>());
    // The dedupe window outlives the messages: a retry of a deleted post (its entry kept by the deletion) and of a
    // retained one (read from its message) get their original seqs after the restart, and after a sweep.
    hub.sweep(12).await;
    written(hub.store().unwrap()).await;
    for (id, seq) in [(3, 3), (25, 25)] {
        let (retry, delivery) = post(&hub, "r", "bob", id, 12).await;
        assert_eq!((retry, delivery.len()), (Posted { seq, duplicate: true }, 0), "post {id}");
    }
    assert_eq!(post(&hub, "r", "bob", 31, 12).await.0, Posted { seq: 31, duplicate: false });
}

#[tokio::test]
async fn a_room_nobody_uses_is_trimmed_by_age_too() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    for id in 1..=3 {
        let _ = post(&hub, "old", "bob", id, 10).await;
    }
    // More aged rooms than a sweep loads (2): the walk takes them over the next sweeps, none skipped.
    let others = ["old-1", "old-2", "old-3", "old-4"];
    for room in others {
        let _ = post(&hub, room, "bob", 1, 20).await;
    }
    let _ = post(&hub, "young", "bob", 1, 150 * S).await;
    drop(hub);
    // After a restart neither room is in memory; only the sweep's walk over the store finds them.
    let hub = open(dir.path(), limits, Budget::default());
    let store = hub.store().unwrap().clone();
    let stored = |name: &str| store.load_room(name, 0, 0, 0).unwrap().unwrap().extent.messages;
    assert_eq!((stored("old"), stored("young"), hub.usage().rooms), (3, 1, 0));
    hub.sweep(200 * S).await;
    written(&store).await;
    assert_eq!(stored("old"), 0, "past the age bound: deleted although nobody used the room");
    assert_eq!(stored("young"), 1, "50 s old: kept");
    for t in 201..=205 {
        hub.sweep(t * S).await;
        written(&store).await;
    }
    assert_eq!(others.map(stored), [0; 4], "every aged room, in the sweeps after");
    assert_eq!(stored("young"), 1);
    for t in 206..=207 {
        hub.sweep(t * S).await;
    }
    assert_eq!(hub.usage().rooms, 0, "out of memory again once their deletions are stored");
    let (posted, _) = post(&hub, "old", "bob", 9, 208 * S).await;
    assert_eq!(posted.seq, 4, "same room, seqs go on");
}

/// A room loaded from the store with history past the age bound is trimmed by its first user: History and a
/// resume see only what is within the bound, not what the sweep's walk over stored rooms has not reached yet.
#[tokio::test]
async fn a_room_loaded_with_aged_history_serves_none_of_it() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    for id in 1..=3 {
        let _ = post(&hub, "old", "bob", id, 10).await;
    }
    let _ = post(&hub, "old", "bob", 4, 150 * S).await;
    let epoch = hub.history("old", None, 1, usize::MAX, 150 * S).await.unwrap().epoch;
    drop(hub);
    let hub = open(dir.path(), limits, Budget::default());
    let seqs = |page: HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(hub.history("old", None, 10, usize::MAX, 200 * S).await.unwrap()), [4], "1–3 are 200 s old");
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "old", Some(Position { epoch, seq: 0 }), &out).await;
    assert!(!joining.joined.recovered, "seq 1 is past the age bound");
}

#[tokio::test]
async fn history_max_age_0_keeps_history_of_any_age() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 0, ..Limits::default() };
    let hub = open(dir.path(), limits.clone(), Budget::default());
    let _ = post(&hub, "kept", "bob", 1, 10).await;
    let _ = post(&hub, "unloaded", "bob", 1, 10).await;
    drop(hub);
    let hub = open(dir.path(), limits, Budget::default());
    let _ = post(&hub, "kept", "bob", 2, 20).await; // in memory; "unloaded" is not
    for t in [1_000_000, 1_000_001] {
        hub.sweep(t * S).await;
    }
    let store = hub.store().unwrap().clone();
    written(&store).await;
    let stored = |name: &str| store.load_room(name, 0, 0, 0).unwrap().unwrap().extent.messages;
    assert_eq!((stored("kept"), stored("unloaded")), (2, 1), "no age bound: nothing deleted");
}

/// A room whose last retention deletion is stored may leave memory at once: before, the finished deletion kept it
/// in memory until the next sweep took notice, and a new room meanwhile found no room to evict (`ServerFull`).
#[tokio::test]
async fn a_room_whose_deletion_is_stored_can_be_evicted_before_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_messages: 4, ..Limits::default() };
    let hub = open(dir.path(), limits, Budget { max_rooms: 2, ..Budget::default() });
    for id in 1..=6 {
        post(&hub, "trimmed", "bob", id, 10).await.1.flush();
    }
    plans_made(&hub, "trimmed").await;
    written(hub.store().unwrap()).await;
    let member = Collect::new(usize::MAX);
    let _joined = join(&hub, "busy", None, &member).await;
    // The only room without members is the trimmed one: it makes room for a third.
    post(&hub, "third", "bob", 1, 20).await.1.flush();
    assert_eq!(hub.usage().rooms_evicted, 1);
}

/// A durable room read only through History stays loaded like one that is joined or posted to: a client paging
/// its history read the room (its dedupe window, up to megabytes) back from the store on every page, since the
/// sweep took a room never joined or posted to for idle since 1970.
#[tokio::test]
async fn a_room_read_through_history_stays_loaded_between_pages() {
    read_through_history_after_a_post_at(990).await; // its dedupe entry is in the window at 1,000 s
}

/// The same for a quiet room, whose dedupe window is empty (its last post older than the window): it left memory at
/// the next sweep, a second after it was read, and every page read it back from the store.
#[tokio::test]
async fn a_quiet_room_read_through_history_stays_loaded_between_pages() {
    read_through_history_after_a_post_at(0).await; // out of the dedupe window by 1,000 s
}

/// A room posted to at `posted_s`, read through History at 1,000 s after a restart: loaded, kept a second later,
/// unloaded once idle for 100 s.
async fn read_through_history_after_a_post_at(posted_s: u64) {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    post(&hub, "r", "bob", 1, posted_s * S).await.1.flush();
    drop(hub);
    let hub = open(dir.path(), Limits::default(), Budget::default());
    assert_eq!(hub.usage().rooms, 0);
    hub.history("r", None, 10, usize::MAX, 1_000 * S).await.unwrap();
    assert_eq!(hub.usage().rooms, 1, "loaded to be read");
    hub.sweep(1_001 * S).await;
    assert_eq!(hub.usage().rooms, 1, "read a second ago: not idle");
    hub.sweep(1_100 * S).await;
    assert_eq!(hub.usage().rooms, 0, "idle for 100 s: unloaded");
}

/// Waits (up to 10 s) until room `name`'s oldest stored message is `first_seq`: a post's retention cut is planned
/// on the blocking pool and made after.
async fn trimmed_to(store: &Store, name: &str, first_seq: u64) {
    for _ in 0..1_000 {
        written(store).await;
        if store.load_room(name, 0, 0, 0).unwrap().is_some_and(|room| room.first_seq == first_seq) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("room {name} was not trimmed to {first_seq}");
}

/// A post that takes its room past its bound has the retention cut planned on the blocking pool, off the room's
/// lock: the plan reads the store, and under the lock, on the runtime's thread (the poster's), a slow disk held
/// every post and join of the room, and the thread, for as long as the read took. Posts meanwhile are taken.
#[tokio::test]
async fn a_posts_retention_read_is_made_off_the_runtimes_threads() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_messages: 8, ..Limits::default() };
    let hub = open(dir.path(), limits, Budget::default());
    let store = hub.store().unwrap().clone();
    for id in 1..=9 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    written(&store).await;
    store.planned_on.lock().unwrap().clear();
    for id in 10..=11 {
        post(&hub, "r", "bob", id, 10).await.1.flush(); // 10 is past the bound's slack (8 + 1)
    }
    trimmed_to(&store, "r", 3).await;
    let planned_on = store.planned_on.lock().unwrap().clone();
    assert_eq!(planned_on.len(), 1, "one plan for the cut: {planned_on:?}");
    assert!(!planned_on.contains(&std::thread::current().id()), "planned on the runtime's thread, under the lock");
    let page = hub.history("r", None, 100, usize::MAX, 10).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (4..=11).collect::<Vec<_>>(), "the newest 8");
}

/// A new durable room whose first user gave up waiting for its creation to be stored (its connection ended)
/// settles once the creation is stored, and may leave memory like any other: it stayed in memory for good.
#[tokio::test]
async fn a_new_room_whose_first_user_gave_up_settles_once_its_creation_is_stored() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let store = hub.store().unwrap().clone();
    let (go, hold) = std::sync::mpsc::channel::<()>();
    drop(store.submit(crate::store::Op::Hold(std::sync::Mutex::new(hold), std::sync::Mutex::new(None))));
    let member = tests::Collect::new(usize::MAX);
    let joining = join(&hub, "r", None, &member);
    assert!(tokio::time::timeout(std::time::Duration::from_millis(100), joining).await.is_err(), "gave up");
    drop(go); // the creation is stored now
    written(&store).await;
    assert_eq!(hub.usage().rooms, 1);
    hub.sweep(100 * S).await;
    assert_eq!(hub.usage().rooms, 0, "settled, without members and idle: out of memory");
}

/// The sweep's retention cut of a room in memory is planned on the blocking pool, off the room's lock: planned
/// under it on a runtime thread, a slow or stalled disk held every post and join of the room, and the runtime's
/// threads they ran on, for as long as the read took.
#[tokio::test]
async fn the_sweeps_retention_reads_are_made_off_the_runtimes_threads() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits, Budget::default());
    for (id, at) in [(1, 10 * S), (2, 150 * S)] {
        let _ = post(&hub, "r", "bob", id, at).await;
    }
    let store = hub.store().unwrap().clone();
    written(&store).await;
    store.planned_on.lock().unwrap().clear();
    hub.sweep(200 * S).await; // message 1 is past the age bound
    written(&store).await;
    assert_eq!(store.load_room("r", 0, 0, 0).unwrap().unwrap().extent.messages, 1, "the aged message was deleted");
    let planned_on = store.planned_on.lock().unwrap().clone();
    assert!(!planned_on.is_empty(), "the sweep planned the cut");
    assert!(!planned_on.contains(&std::thread::current().id()), "planned on the runtime's thread, under the lock");
}

/// A room with more aged history than one deletion takes (`store::MAX_TRIM_MESSAGES`) is cut down to its bound at
/// every sweep until it is: for a room with members the sweep took the last deletion for unstored until a trim let
/// it go (every other sweep cut nothing).
#[tokio::test]
async fn aged_history_beyond_one_deletion_is_cut_at_every_sweep() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, history_max_messages: 20_000, ..Limits::default() };
    let store = Store::open(dir.path(), crate::store::Durability::Os).unwrap();
    let hub = LocalRooms::durable(limits, Budget::default(), store);
    let aged = 2 * crate::store::MAX_TRIM_MESSAGES + 50;
    for id in 1..=aged {
        let _ = post(&hub, "old", "bob", id, 10 * S).await;
    }
    let member = Collect::new(usize::MAX);
    let _joined = join(&hub, "old", None, &member).await;
    let _ = post(&hub, "old", "bob", aged + 1, 150 * S).await;
    let store = hub.store().unwrap().clone();
    let stored = || store.load_room("old", 0, 0, 0).unwrap().unwrap().extent.messages;
    for (since, (t, left)) in [(200, aged + 1 - 4_096), (201, aged + 1 - 2 * 4_096), (202, 1)].into_iter().enumerate() {
        hub.sweep(t * S).await;
        written(&store).await;
        assert_eq!(stored(), left + since as u64, "sweep at {t} s: one deletion's worth");
        // Posts between the sweeps are left after the cuts.
        let _ = post(&hub, "old", "bob", aged + 1 + t, 150 * S).await;
    }
}

/// Posts stored while the sweep read its plan off the room's lock do not make the plan stale: they are left after
/// the cut. Before, any post delivered during the read had the plan thrown away, so a busy room was never cut by
/// age (and, its plan having failed once, not by count either).
#[tokio::test]
async fn a_sweep_plan_read_while_posts_are_stored_still_cuts() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let hub = open(dir.path(), limits, Budget::default());
    for id in 1..=10 {
        let _ = post(&hub, "r", "bob", id, 10 * S).await;
    }
    let store = hub.store().unwrap().clone();
    let input = hub.with_loaded("r", |r| r.trim_input(200 * S)).unwrap().expect("aged: the sweep plans a cut");
    for id in 11..=13 {
        let _ = post(&hub, "r", "bob", id, 200 * S).await; // during the plan's read
    }
    let plan = tokio::task::spawn_blocking(move || input.plan()).await.unwrap().expect("the read succeeds");
    hub.with_loaded("r", |r| {
        r.planned(plan);
        r.trim_with(200 * S, false);
    });
    written(&store).await;
    let stored = store.load_room("r", 0, 0, 0).unwrap().unwrap();
    assert_eq!((stored.first_seq, stored.extent.messages), (11, 3), "the aged ten cut, the three since kept");
}

/// Two rooms with aged history that one sweep's walk loads at `max_rooms`: each is trimmed as it is loaded. Loaded
/// for retention a room is not touched (idle since 1970), and the second load evicted the first, untrimmed, every
/// round, though an idle room of users' stood beside it; now the first's deletion in flight keeps it in memory.
#[tokio::test]
async fn aged_rooms_loaded_at_max_rooms_are_each_trimmed() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, ..Limits::default() };
    let budget = Budget { max_rooms: 2, ..Budget::default() };
    let hub = open(dir.path(), limits.clone(), budget.clone());
    for room in ["a", "b"] {
        let _ = post(&hub, room, "bob", 1, 10 * S).await;
    }
    drop(hub);
    let hub = open(dir.path(), limits, budget);
    let _ = post(&hub, "c", "bob", 1, 150 * S).await; // a room in memory, idle and younger
    hub.sweep(200 * S).await;
    let store = hub.store().unwrap().clone();
    written(&store).await;
    let stored = |name: &str| store.load_room(name, 0, 0, 0).unwrap().unwrap().extent.messages;
    assert_eq!((stored("a"), stored("b"), stored("c")), (0, 0, 1), "both aged rooms trimmed in one sweep");
}

/// A room the sweep's walk loads from the store for its aged history is trimmed there, off its lock: its first user
/// does not plan a cut again under the room's lock, on a runtime thread. Before, the room stayed marked untrimmed,
/// and a join or post after the sweep read up to a deletion's worth of messages (4 MiB) there.
#[tokio::test]
async fn a_room_the_walk_loaded_is_not_planned_again_under_its_lock_at_first_use() {
    const S: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { history_max_age_s: 100, history_max_messages: 20_000, ..Limits::default() };
    let aged = crate::store::MAX_TRIM_MESSAGES + 50;
    {
        let store = Store::open(dir.path(), crate::store::Durability::Os).unwrap();
        let hub = LocalRooms::durable(limits.clone(), Budget::default(), store.clone());
        for id in 1..=aged {
            let _ = post(&hub, "old", "bob", id, 10 * S).await;
        }
        written(&store).await;
    }
    // Restarted: the room is in the store only, and the walk finds it.
    let store = Store::open(dir.path(), crate::store::Durability::Os).unwrap();
    let hub = LocalRooms::durable(limits, Budget::default(), store.clone());
    hub.sweep(200 * S).await;
    written(&store).await;
    let stored = store.load_room("old", 0, 0, 0).unwrap().unwrap().extent.messages;
    assert_eq!(stored, aged - crate::store::MAX_TRIM_MESSAGES, "the walk loaded it and cut one deletion's worth");
    store.planned_on.lock().unwrap().clear();
    let _ = post(&hub, "old", "bob", aged + 1, 200 * S).await;
    let planned_on = store.planned_on.lock().unwrap().clone();
    assert!(!planned_on.contains(&std::thread::current().id()), "planned under the room's lock: {planned_on:?}");
}
