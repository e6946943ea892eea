//! Retention cuts: where a room's history is cut by count, bytes and age, bounded per deletion, and the deletion
//! written in the background.

use super::{
    tests::{block_on, filled, frame_len},
    Durability, Extent, Op, Record, Retention, Store, MAX_TRIM_MESSAGES,
};

#[test]
fn retention_cuts_by_count_bytes_and_age_and_deletes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = filled(&store, 10);
    let l = frame_len();
    let extent = Extent { messages: 10, bytes: 10 * l };
    let keep = |max_messages, max_bytes, max_age_us| Retention { max_messages, max_bytes, max_age_us };
    let plan = |r: Retention, now| store.plan_trim(id, 1, u64::MAX, extent, &r, now).unwrap();
    assert_eq!(plan(keep(4, u64::MAX, u64::MAX), 10), (7, Extent { messages: 4, bytes: 4 * l }, Some(7)));
    assert_eq!(plan(keep(100, 5 * l + 5, u64::MAX), 10), (6, Extent { messages: 5, bytes: 5 * l }, Some(6)));
    assert_eq!(plan(keep(100, u64::MAX, 3), 10), (7, Extent { messages: 4, bytes: 4 * l }, Some(7)));
    assert_eq!(plan(keep(100, u64::MAX, 3), 100), (11, Extent::default(), None), "all too old");
    let room = |last_seq| Record { name: "r".into(), epoch: 7, last_seq };
    let _ = store.submit(Op::TrimMessages { id, from: 1, before: 7, room: room(10), keep: Vec::new() });
    block_on(store.retention_barrier().wait()).unwrap();
    let loaded = store.load_room("r", 10, u64::MAX, 100).unwrap().unwrap();
    assert_eq!((loaded.first_seq, loaded.last_seq, loaded.extent.messages), (7, 10, 4));
    assert_eq!(loaded.dedupe.iter().map(|e| e.2).collect::<Vec<_>>(), [7, 8, 9, 10], "read from the messages");
    // Everything deleted: the seq goes on from the one the last deletion recorded, never from 0 again.
    let _ = store.submit(Op::TrimMessages { id, from: 7, before: 11, room: room(10), keep: Vec::new() });
    let _ = store.submit(Op::TrimDedupe { id, from: 9, before: 11, room: room(10) });
    block_on(store.retention_barrier().wait()).unwrap();
    drop(store);
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let loaded = store.load_room("r", 10, u64::MAX, 100).unwrap().unwrap();
    assert_eq!((loaded.first_seq, loaded.last_seq, loaded.extent.messages, loaded.epoch), (11, 10, 0, 7));
    assert!(loaded.dedupe.is_empty());
}

/// A room whose bounds were lowered far is cut down a bounded deletion at a time ([`MAX_TRIM_MESSAGES`]): one
/// deletion of everything past the new bound held the store's journal, and every post behind it, for seconds.
#[test]
fn one_retention_cut_deletes_at_most_max_trim_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let n = MAX_TRIM_MESSAGES + 100;
    let id = filled(&store, n);
    let l = frame_len();
    let extent = Extent { messages: n, bytes: n * l };
    let keep = Retention { max_messages: 10, max_bytes: u64::MAX, max_age_us: u64::MAX };
    let (cut, left, first_time_us) = store.plan_trim(id, 1, n, extent, &keep, n).unwrap();
    assert_eq!((cut, left.messages), (MAX_TRIM_MESSAGES + 1, 100), "the first cut stops at the bound on one deletion");
    assert_eq!(first_time_us, Some(MAX_TRIM_MESSAGES + 1));
    let (cut, left, _) = store.plan_trim(id, cut, n, left, &keep, n).unwrap();
    assert_eq!((cut, left.messages), (n - 9, 10), "the next one goes on to the bound");
}
