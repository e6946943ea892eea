//! Requests that let go (Leave, Unsubscribe, Unpublish) refused for their rate.

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, TrustOptions};
use quiver_tests::fakes::{fake_endpoint, refuses_each_first_release};

/// What the fake saw, by request kind.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>;

/// A client of [`refuses_each_first_release`] (`then_close`: see there; the client then does not reconnect), what
/// the fake saw, and the data directory the client's trust is in.
async fn client_of_a_refusing_server(then_close: bool) -> (Client, Seen, tempfile::TempDir) {
    let (dir, endpoint, addr) = fake_endpoint();
    let seen = Seen::default();
    tokio::spawn(refuses_each_first_release(endpoint, seen.clone(), then_close));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect: !then_close, ..ConnectOptions::default() };
    (Client::connect_with(&addr, options).await.unwrap(), seen, dir)
}

/// A Leave, an Unsubscribe and an Unpublish refused `RateLimited` (over the server's rate: nothing done) are sent
/// again after a pause, and a join of the room (a subscribe, a claim of the channel) meanwhile waits for them. Before,
/// the client forgot the room (the subscription, the claim) at once and the call returned the refusal (a dropped
/// handle's: nothing), while the server kept it until the connection ended: presence listing the member and the next
/// join refused `AlreadyJoined`; a subscription or claim counted against the connection's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_lets_go_refused_for_its_rate_is_sent_again() {
    let (client, seen, _dir) = client_of_a_refusing_server(false).await;
    let calls = async {
        let left = client.join("r").await.unwrap().leave().await;
        assert!(left.is_ok(), "{left:?}");
        // A subscribe (a claim) of the channel made while the refused one waits for its pause goes after it.
        let soon = || tokio::time::sleep(Duration::from_millis(30));
        let subscription = client.subscribe("c").await.unwrap();
        let (unsubscribed, again) = tokio::join!(subscription.unsubscribe(), async {
            soon().await;
            client.subscribe("c").await
        });
        assert!(unsubscribed.is_ok() && again.is_ok(), "{unsubscribed:?} {:?}", again.err());
        let publisher = client.publisher("p").await.unwrap();
        let (unpublished, claim) = tokio::join!(publisher.unpublish(), async {
            soon().await;
            client.publisher("p").await
        });
        assert!(unpublished.is_ok() && claim.is_ok(), "{unpublished:?} {:?}", claim.err());
        // Dropped instead: the background Leave, and a join of the room after it.
        drop(client.join("r").await.unwrap());
        // (Held until `seen` is read: dropped here, its own Leave raced the read.)
        client.join("r").await.expect("joined after the background Leave")
    };
    let _last = tokio::time::timeout(Duration::from_secs(20), calls).await.expect("every call answered");
    let seen = seen.lock().unwrap().iter().filter(|k| **k != "other").copied().collect::<Vec<_>>();
    let subscribed = ["subscribe", "unsubscribe", "unsubscribe", "subscribe"];
    let claimed = ["publish", "unpublish", "unpublish", "publish"];
    let expected = [&["join", "leave", "leave"][..], &subscribed, &claimed, &["join", "leave", "join"]].concat();
    assert_eq!(seen, expected);
    client.close().await;
}

/// A Leave refused for its rate on a connection that then ends is done (the membership went with the connection):
/// `leave()` answers `Ok`, as for any Leave whose connection ends under it, not the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_refused_for_its_rate_on_a_connection_that_ends_is_done() {
    let (client, seen, _dir) = client_of_a_refusing_server(true).await;
    let room = client.join("r").await.unwrap();
    let left = tokio::time::timeout(Duration::from_secs(10), room.leave()).await.expect("the leave is answered");
    assert!(left.is_ok(), "{left:?}");
    assert_eq!(seen.lock().unwrap().iter().filter(|k| **k == "leave").count(), 1);
}
