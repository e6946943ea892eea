//! The broker against a real `redis-server`.

use std::time::Duration;

use super::*;

/// A subscription nothing on this node routes (a join given up while its SUBSCRIBE was on its way) is ended when
/// its first message comes; before, Redis sent the room's every event to the node for nothing until the next
/// Pub/Sub reconnect, days away in a healthy cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_nothing_routes_ends_at_its_first_message() {
    let test = "a_subscription_nothing_routes_ends_at_its_first_message";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let config = BrokerConfig {
        url: redis.url.clone(),
        presence_expiry: Duration::from_secs(30),
        heartbeat: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    broker.connect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sink = loop {
        if let Some(sink) = lock(&broker.sink).clone() {
            break sink;
        }
        assert!(tokio::time::Instant::now() < deadline, "no Pub/Sub connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let channel = "q:{stray}:events";
    sink.subscribe(channel).await.unwrap();
    let mut subscribers = move || -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut redis.conn).unwrap();
        if count > 0 {
            let _: i64 = redis::cmd("PUBLISH").arg(channel).arg("an event").query(&mut redis.conn).unwrap();
        }
        count
    };
    assert_eq!(subscribers(), 1, "subscribed, with nothing routing it");
    while subscribers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stray subscription stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.retire().await;
}
