//! The driver's rooms: kicks and their rejoins, and the wait for a full room to be read.

use super::*;

/// Kicks on one connection while a rejoin for one runs are answered by one more rejoin after it, not one each;
/// on another connection, and after the rejoins are done, a kick starts one anew.
#[test]
fn kicks_while_a_rejoin_runs_make_one_more() {
    let rooms = Rooms::default();
    let Ok(Added::New(entry, _received)) = rooms.add("r", false, CancellationToken::new()) else {
        panic!("a new room")
    };
    assert!(entry.kick_rejoin(1));
    assert!((0..1_000).all(|_| !entry.kick_rejoin(1)), "the same kick again: no rejoin more now");
    assert!(!entry.kick_rejoined(2), "(another connection's)");
    assert!(entry.kick_rejoined(1), "one more rejoin for the kicks that came meanwhile");
    assert!(!entry.kick_rejoined(1), "then done");
    assert!(entry.kick_rejoin(1), "a kick after the rejoins: a rejoin of its own");
    assert!(!entry.kick_rejoin(1));
    assert!(entry.kick_rejoin(2), "a kick on the next connection");
}

/// A kicked room that the application does not read: the wait for it to be read ends with its connection
/// (the next connection rejoins the room), and otherwise once the application reads.
#[tokio::test]
async fn the_wait_for_a_full_room_to_be_read_ends_with_its_connection() {
    let rooms = Rooms::default();
    let Ok(Added::New(entry, mut received)) = rooms.add("r", false, CancellationToken::new()) else {
        panic!("a new room")
    };
    let event = || RoomEvent::MemberJoined { member: "bob".into() };
    (0..EVENT_BUFFER).for_each(|_| entry.events.try_send(event()).unwrap());
    let stop = CancellationToken::new();
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn({
        let (entry, stop) = (entry.clone(), stop.clone());
        async move {
            entry
                .has_room(&stop, async move {
                    let _ = closed.await;
                })
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the room is full and nobody reads it");
    drop(close);
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
    assert!(!waited.expect("ended with the connection").unwrap(), "not read: no rejoin");

    let read = tokio::spawn({
        let entry = entry.clone();
        async move { entry.has_room(&stop, std::future::pending()).await }
    });
    assert!(received.recv().await.is_some());
    assert!(tokio::time::timeout(std::time::Duration::from_secs(5), read).await.unwrap().unwrap(), "read");
}
