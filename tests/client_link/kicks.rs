//! Kicks from a room: a `SlowConsumer` kick rejoins the room (even one right behind the Join's reply), a kick for
//! another reason ends it.

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, TrustOptions};
use quiver_tests::fakes::{fake_endpoint, kicked_with_its_join};

/// A `Kicked` (`SlowConsumer`) that arrives right behind its room's Join reply, before the join has taken the
/// reply, still makes the client rejoin: the room goes on. Before, the kick was dropped as one for a join still
/// on its way, and the room stayed silent (its stream reset) until the next reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_right_behind_the_joins_reply_is_not_lost() {
    let (dir, endpoint, addr) = fake_endpoint();
    let (joins_tx, mut joins) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(kicked_with_its_join(endpoint, joins_tx, quiver_proto::ErrorCode::SlowConsumer));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    let mut room = client.join("r").await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match room.next().await {
                Some(quiver_client::RoomEvent::Message(m)) => break m.body,
                Some(_) => {}
                None => panic!("the room ended"),
            }
        }
    })
    .await
    .expect("the room rejoined after the kick");
    assert_eq!(message, bytes::Bytes::from("after the kick"));
    assert_eq!((joins.recv().await.is_some(), joins.recv().await.is_some()), (true, true), "joined, then rejoined");
    client.close().await;
    server.abort();
}

/// A `Kicked` for a room with a code other than `SlowConsumer` (its stream reset with it) ends the room with the
/// server's code and reason: the room's reader gets `None`, and no rejoin is tried. Before, the kick was only logged
/// and the reader waited for ever on the ended stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_for_another_reason_ends_the_room_with_it() {
    let (dir, endpoint, addr) = fake_endpoint();
    let (joins_tx, mut joins) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(kicked_with_its_join(endpoint, joins_tx, quiver_proto::ErrorCode::PermissionDenied));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let client = Client::connect_with(&addr, ConnectOptions { trust, ..ConnectOptions::default() }).await.unwrap();
    let mut room = client.join("r").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = room.next().await {
            assert!(!matches!(event, quiver_client::RoomEvent::Message(_)), "{event:?}");
        }
    });
    ended.await.expect("the room ended with the kick");
    assert_eq!(room.end_reason(), Some((quiver_proto::ErrorCode::PermissionDenied, "dropped".to_string())));
    assert!(joins.recv().await.is_some());
    assert!(joins.try_recv().is_err(), "not joined again");
    client.close().await;
    server.abort();
}
