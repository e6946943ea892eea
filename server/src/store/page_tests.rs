//! Pages of a room's history: bounded by count, bytes and `upto`, and contiguous.

use crate::store::{
    key,
    tests::{filled, frame_len},
    Durability, Page, Store,
};

#[test]
fn pages_stop_at_the_limit_the_budget_and_upto() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let id = filled(&store, 10);
    let seqs = |page: Page| (page.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), page.more);
    assert_eq!(seqs(store.page(id, 0, 10, 3, usize::MAX).unwrap()), (vec![1, 2, 3], true));
    let budget = 2 * frame_len() as usize + 5;
    assert_eq!(seqs(store.page(id, 0, 10, 100, budget).unwrap()), (vec![1, 2], true), "2 frames and a half");
    assert_eq!(seqs(store.page(id, 0, 10, 100, 1).unwrap()), (vec![1], true), "one frame always fits");
    assert_eq!(seqs(store.page(id, 8, 9, 100, usize::MAX).unwrap()), (vec![9], false), "never past upto");
    assert_eq!(seqs(store.page(id, 10, 10, 100, usize::MAX).unwrap()), (vec![], false));
    assert_eq!(seqs(store.page(id + 1, 0, 10, 100, usize::MAX).unwrap()), (vec![], false), "rooms apart");
}

/// A page read while a retention deletion is applied (no snapshot) can find seqs past the cut with some of those
/// before it gone: the page ends before the gap, so the next one starts with it, where replays and History look
/// for one (a replay that was told `recovered` used to deliver across it, missing what was in between).
#[test]
fn a_page_ends_before_a_gap_in_the_seqs_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let id = filled(&store, 10);
    // As a deletion half applied leaves it: 1–3 still there, 4–6 gone, 7–10 kept.
    for seq in 4..=6 {
        store.keyspaces.messages.remove(key(id, seq)).unwrap();
    }
    let seqs = |page: Page| (page.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), page.more);
    assert_eq!(seqs(store.page(id, 0, 10, 100, usize::MAX).unwrap()), (vec![1, 2, 3], true));
    assert_eq!(seqs(store.page(id, 3, 10, 100, usize::MAX).unwrap()), (vec![7, 8, 9, 10], false), "starts at it");
}
