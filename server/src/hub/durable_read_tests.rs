//! Reads of durable rooms at once, without sockets: requests for a room being loaded share its load, and reads
//! given up on a stalled disk hold a bounded number of the blocking pool's threads.

use std::{sync::Arc, time::Duration};

use quiver_proto::Limits;

use super::{
    durable_tests::{open, post},
    *,
};
use crate::Budget;

/// Requests for a stored room not in memory that arrive together (clients rejoining after a restart) wait for
/// the loads under way (`LOADS_AT_ONCE`) and find the room loaded: it is not read from the store once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_room_being_loaded_share_its_load() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    for id in 1..=1_000 {
        let _ = post(&hub, "r", "bob", id, 10).await; // a load reads them all: long enough to overlap
    }
    drop(hub);
    let hub = Arc::new(open(dir.path(), Limits::default(), Budget::default()));
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (hub, start) = (hub.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                hub.history("r", None, 10, usize::MAX, 20).await.unwrap().messages.len()
            })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap(), 10);
    }
    let loads = hub.store().unwrap().loaded_on.lock().unwrap().len();
    assert!(loads <= super::rooms::LOADS_AT_ONCE, "{loads} loads of one room for 8 requests");
}

/// History requests given up while their reads are stuck (a stalled disk, their connections ended) hold at most
/// `READS_AT_ONCE` of the blocking pool's threads; each held one before, so a client asking and closing again and
/// again took them all. Once the disk answers, History is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_given_up_on_a_stalled_disk_hold_at_most_their_bound_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    for id in 1..=3 {
        let _ = post(&hub, "r", "bob", id, 10).await;
    }
    let gate = || &hub.store().unwrap().read_gate;
    gate().set_closed(true);
    for _ in 0..3 * crate::store::READS_AT_ONCE {
        let given_up =
            tokio::time::timeout(Duration::from_millis(20), hub.history("r", None, 10, usize::MAX, 20)).await;
        assert!(given_up.is_err(), "the disk is stalled");
    }
    // Every read let through reaches the gate: once 8 are there, any more would follow within a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate().reading() < crate::store::READS_AT_ONCE && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stuck = gate().reading();
    gate().set_closed(false); // (before asserting: the test's runtime waits for its blocking threads at its end)
    assert_eq!(stuck, crate::store::READS_AT_ONCE, "reads stuck at once");
    let page = tokio::time::timeout(Duration::from_secs(10), hub.history("r", None, 10, usize::MAX, 20)).await;
    assert_eq!(page.expect("served once the disk answers").unwrap().messages.len(), 3);
}
