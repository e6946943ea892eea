//! Under `os`, writes a task takes along are made outside the locks of rooms other than its own.

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::Limits;

use super::durable_tests::{join, post};
use super::{tests::Collect, *};
use crate::{
    store::{Durability, Store},
    Budget,
};

/// Under `os` a new room's creation is written once the map of rooms is let go: a creation held in its write (with
/// whatever other rooms' posts were queued, taken along in its batch) does not hold every other room's lookups on
/// the map's lock. Before, the creation was written under that lock: a slow write stopped every room's posts, joins
/// and reads, not only the new room's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_os_room_creation_is_written_outside_the_map_of_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let hub = Arc::new(LocalRooms::durable(Limits::default(), Budget::default(), store.clone()));
    let member = Collect::new(usize::MAX);
    let _joining = join(&hub, "r", None, &member).await;
    post(&hub, "r", "bob", 1, 10).await.1.flush();
    let (go, reached) = store.hold_next_commit();
    // A std channel: with both workers stopped (one in the write, one on the map's lock), no timer would fire.
    let (sequenced, seen) = std::sync::mpsc::channel();
    let creator = tokio::spawn({
        let (hub, sequenced) = (hub.clone(), sequenced.clone());
        async move {
            let (posted, delivery) = post(&hub, "n", "bob", 1, 10).await;
            delivery.flush();
            sequenced.send("n").unwrap();
            posted.seq
        }
    });
    // The creator is held in the write meanwhile (it takes the queued hold along): once it is (a fixed sleep let
    // the poster go first on a loaded machine, and the test passed without the fix).
    reached.recv_timeout(std::time::Duration::from_secs(5)).expect("the creator's write is held");
    let poster = tokio::spawn(async move {
        let body = Bytes::from_static(b"x");
        let message = PostMessage { fenced: None, room: "r", identity: "bob", client_msg_id: 2, body, now_us: 10 };
        let progress = hub.sequence_post(message).await.unwrap();
        sequenced.send("r").unwrap();
        match progress {
            PostProgress::Done((posted, delivery)) => {
                delivery.flush();
                posted.seq
            }
            PostProgress::Committing(commit) => commit.await.unwrap().0.seq,
        }
    });
    let first = seen.recv_timeout(std::time::Duration::from_secs(5));
    assert_eq!(first, Ok("r"), "a post to another room waited on the map of rooms while a creation was held");
    go.send(()).unwrap();
    assert_eq!(creator.await.unwrap(), 1);
    assert_eq!(poster.await.unwrap(), 2);
}
