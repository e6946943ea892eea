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

/// A handler routed while its channel's stray subscription ends is subscribed again and told, and the count a join
/// compares has moved once more by then: a join whose SUBSCRIBE the stray's UNSUBSCRIBE undid read the count after
/// the first move (its SUBSCRIBE confirmed before the UNSUBSCRIBE landed), and when it goes live after the handler
/// was told (nothing caught up then: its room was not live), only a second move tells it to catch up. Before, the
/// count moved once, before the UNSUBSCRIBE, and such a join missed what was published until the SUBSCRIBE again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_subscriptions_end_is_counted_again_once_its_channel_is_subscribed_again() {
    let test = "a_stray_subscriptions_end_is_counted_again_once_its_channel_is_subscribed_again";
    let Some(redis) = super::super::scripts::tests::redis(test) else { return };
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
    let sink = loop {
        if let Some(sink) = lock(&broker.sink).clone() {
            break sink;
        }
        assert!(tokio::time::Instant::now() < deadline, "no Pub/Sub connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    /// Records the count a join compares as it stood when the handler was told.
    struct Told(std::sync::Weak<Broker>, tokio::sync::mpsc::UnboundedSender<(u64, u64)>);
    impl ChannelHandler for Told {
        fn message(self: Arc<Self>, _: Vec<u8>) {}
        fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()> {
            if let Some(broker) = self.0.upgrade() {
                let _ = self.1.send(broker.pubsub_generation());
            }
            Box::pin(async {})
        }
    }
    let (told, mut generations) = tokio::sync::mpsc::unbounded_channel();
    let channel = "q:{routed}:events";
    broker.subscribe(channel, Arc::new(Told(Arc::downgrade(&broker), told))).await.unwrap();
    let before = broker.pubsub_generation();
    let stale = lock(&broker.pubsub_stale).clone();
    broker.clone().unsubscribe_orphan(channel, sink, stale);
    let at = tokio::time::timeout(Duration::from_secs(10), generations.recv()).await.unwrap().unwrap();
    // The first move (before the UNSUBSCRIBE) is what a join that read the count after it holds.
    assert_ne!(at, (before.0, before.1 + 1), "the channel's handler was told with no move after the first");
    assert!(at.1 > before.1 + 1, "{before:?} -> {at:?}");
    broker.retire().await;
}
