//! A subscription's first tick that overtakes the Subscribe's answer.

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, TrustOptions};
use quiver_tests::fakes::{fake_endpoint, tick_before_subscribed};

/// A tick that arrives before the answer to its Subscribe (a live channel's fan-out starts as the server answers,
/// and quinn sends datagram frames ahead of stream frames) is the subscription's first, not dropped. Before, the
/// datagram reader found no route for its channel id and dropped it, counted nowhere: a channel published only
/// when it changes left `latest()` empty until the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_overtakes_its_subscribes_answer_is_delivered() {
    let (dir, endpoint, addr) = fake_endpoint();
    tokio::spawn(tick_before_subscribed(endpoint));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect: false, ..ConnectOptions::default() };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let mut subscription = client.subscribe("prices").await.unwrap();
    let tick = tokio::time::timeout(Duration::from_secs(2), subscription.next()).await;
    let tick = tick.expect("the tick sent before the answer never came").expect("the subscription ended");
    assert_eq!((tick.seq, &tick.payload[..]), (7, &b"first"[..]));
    let stats = subscription.stats();
    assert_eq!((stats.received, stats.lost), (1, 0), "{stats:?}");
    client.close().await;
}
