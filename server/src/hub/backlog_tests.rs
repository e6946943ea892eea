//! The store's backlog bound (`budget.store_backlog_bytes`), without sockets: a stalled writer (a hung disk) no
//! longer takes every post into memory.

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::{ErrorCode, Limits};

use super::{
    durable_tests::{open, written},
    *,
};
use crate::Budget;

/// Bob's post `client_msg_id` to room `r`, as a future of its own (to spawn).
fn post(hub: &Arc<LocalRooms>, client_msg_id: u64) -> impl Future<Output = Result<(Posted, Delivery), Failure>> {
    let hub = Arc::clone(hub);
    async move {
        let body = Bytes::from(format!("post {client_msg_id}"));
        hub.post(PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id, body, now_us: 10 }).await
    }
}

/// Holds `store`'s writer (a stalled disk) until the sender returned is sent to.
fn stall(store: &crate::store::Store) -> std::sync::mpsc::Sender<()> {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    drop(store.submit(crate::store::Op::Hold(std::sync::Mutex::new(wait), std::sync::Mutex::new(None))));
    go
}

/// A hub on `dir` with `limits` and `budget`, room `r` made and stored by Bob's post 1, then its store stalled: the
/// hub, its store and the sender that lets the store go.
async fn stalled_after_a_post(
    dir: &std::path::Path,
    limits: Limits,
    budget: Budget,
) -> (Arc<LocalRooms>, Arc<crate::store::Store>, std::sync::mpsc::Sender<()>) {
    let hub = Arc::new(open(dir, limits, budget));
    post(&hub, 1).await.expect("the room made and stored").1.flush();
    let store = hub.store().unwrap().clone();
    let go = stall(&store);
    (hub, store, go)
}

/// Waits (at most 5 s) until `store`'s backlog is no longer `before` bytes: what was handed to the writer is there.
async fn backlog_moved(store: &crate::store::Store, before: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.backlog().bytes() == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Posts wait for a stalled store until the backlog reaches its bound; then new posts are refused `Unavailable`
/// (nothing sequenced: no seq taken, nothing stored), and so are retries of posts still waiting (each a barrier in
/// the store's queue, counted in the backlog: retries during a stall queued barriers without a bound). Once the
/// store moves, everything taken is stored, seqs without a gap, retries get their seqs, and posts are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_backlog_bound_posts_are_refused_until_the_store_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget { store_backlog_bytes: 1_500, ..Budget::default() };
    let (hub, store, go) = stalled_after_a_post(dir.path(), Limits::default(), budget).await;
    let mut waiting = Vec::new();
    let mut id = 1;
    while store.backlog().bytes() < 1_500 && id < 100 {
        id += 1;
        let before = store.backlog().bytes();
        waiting.push(tokio::spawn(post(&hub, id)));
        // Each post handed to the (stalled) writer before the next is made.
        backlog_moved(&store, before).await;
    }
    let taken = id;
    assert!((3..100).contains(&taken), "the bound was reached after {taken} posts");
    let refused = tokio::time::timeout(std::time::Duration::from_secs(2), post(&hub, taken + 1)).await;
    let refused = refused.expect("answered at once, not taken to wait").expect_err("refused at the bound");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    assert!(refused.message.contains("store_backlog_bytes"), "{}", refused.message);
    assert_eq!(store.backlog().refused(), 1);
    // A retry of a post taken before the bound, still waiting, is refused too (it would wait in the store's queue,
    // and clients reconnecting during a stall would queue retries without end); once the store moved, it gets its
    // original's seq.
    // Under the bound, a retry's wait counts in it.
    store.backlog().set_limit(0);
    let before = store.backlog().bytes();
    let waiting_retry = tokio::spawn(post(&hub, taken));
    backlog_moved(&store, before).await;
    assert_eq!(store.backlog().bytes(), before + 256, "a retry's barrier is counted");
    store.backlog().set_limit(1_500);
    let refused = post(&hub, taken).await.expect_err("a waiting post's retry refused at the bound");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    assert!(refused.message.contains(&format!("is seq {taken}, still waiting")), "{}", refused.message);
    go.send(()).unwrap();
    for post in waiting {
        post.await.unwrap().expect("stored once the store moved").1.flush();
    }
    let (retried, _) = waiting_retry.await.unwrap().expect("the retry taken under the bound answered");
    assert_eq!(retried, Posted { seq: taken, duplicate: true });
    let (retried, _) = post(&hub, taken).await.expect("the retry answered");
    assert_eq!(retried, Posted { seq: taken, duplicate: true });
    assert_eq!(store.backlog().bytes(), 0, "every share given back");
    let (next, _) = post(&hub, taken + 1).await.expect("taken again");
    assert_eq!(next.seq, taken + 1, "the refused post took no seq");
    let page = hub.history("r", None, 1_000, usize::MAX, 20).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=taken + 1).collect::<Vec<_>>());
}

/// During a stall a room takes more posts than its dedupe window holds (`dedupe_max_entries`); a retry of the first,
/// still waiting for its commit, is still known: it gets its original's seq once the store moves, and is stored
/// once. The count bound forgot it before, and the retry was sequenced anew and stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_post_waiting_past_the_dedupe_count_is_still_known() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { dedupe_max_entries: 2, ..Limits::default() };
    let (hub, store, go) = stalled_after_a_post(dir.path(), limits, Budget::default()).await;
    let mut waiting = Vec::new();
    for id in 2..=6 {
        let before = store.backlog().bytes();
        waiting.push(tokio::spawn(post(&hub, id)));
        backlog_moved(&store, before).await;
    }
    // Post 2 is seq 2, waiting; four more came after it, past the window's two. Its retry waits for the same
    // commit (a barrier in the store's queue, counted in the backlog) before the store moves.
    let before = store.backlog().bytes();
    let retry = tokio::spawn(post(&hub, 2));
    backlog_moved(&store, before).await;
    assert_eq!(store.backlog().bytes(), before + 256, "the retry waits for its original's commit");
    go.send(()).unwrap();
    for post in waiting {
        post.await.unwrap().expect("stored once the store moved").1.flush();
    }
    let (retried, _) = retry.await.unwrap().expect("the retry answered");
    assert_eq!(retried, Posted { seq: 2, duplicate: true });
    let page = hub.history("r", None, 1_000, usize::MAX, 20).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>(), "stored once");
}

/// While the store stalls, a room just made stays unsettled (its creation not stored), and each request to it waits
/// for the creation behind a barrier in the store's queue: counted in the backlog, and past its bound refused
/// `Unavailable` at once. Before, these barriers were not counted: clients that gave up, reconnected and asked again
/// queued one each, without a bound, for as long as the stall lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_rooms_creation_count_in_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget { store_backlog_bytes: 1_500, ..Budget::default() };
    let (hub, store, go) = stalled_after_a_post(dir.path(), Limits::default(), budget).await;
    let post_new = |hub: &Arc<LocalRooms>, client_msg_id: u64| {
        let hub = Arc::clone(hub);
        async move {
            let body = Bytes::from_static(b"hi");
            hub.post(PostMessage { fenced: None, room: "new", identity: "bob", client_msg_id, body, now_us: 10 }).await
        }
    };
    // Each post to the new room waits for its creation, given up after a moment (a client that went).
    let mut asked = 0;
    let refused = loop {
        asked += 1;
        assert!(asked < 100, "never refused: {} bytes of backlog", store.backlog().bytes());
        match tokio::time::timeout(std::time::Duration::from_millis(20), post_new(&hub, asked)).await {
            Err(_) => continue,
            Ok(Err(refused)) => break refused,
            Ok(Ok(posted)) => panic!("answered while the store stalls: {:?}", posted.0),
        }
    };
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    assert!(refused.message.contains("store_backlog_bytes"), "{}", refused.message);
    assert!((3..100).contains(&asked), "refused after {asked} waits");
    go.send(()).unwrap();
    written(&store).await; // (the waits given up leave with the writer's next batch)
    let posted = tokio::time::timeout(std::time::Duration::from_secs(5), post_new(&hub, 1_000)).await;
    let (posted, delivery) = posted.expect("answered").expect("taken once the store moved");
    delivery.flush();
    assert_eq!(posted, Posted { seq: 1, duplicate: false }, "the posts given up took no seq");
    written(&store).await;
    assert_eq!(store.backlog().bytes(), 0, "every wait given back");
}
