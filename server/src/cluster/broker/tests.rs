//! The broker against a real `redis-server`.

use std::time::Duration;

use super::*;

/// A broker on the Redis at `url` (30 s expiry, 1 s heartbeat, 2 s request timeout), once its Pub/Sub connection
/// is up; and that connection.
async fn connected(url: &str) -> (Arc<Broker>, PubSubSink) {
    let config = BrokerConfig {
        url: url.to_string(),
        presence_expiry: Duration::from_secs(30),
        heartbeat: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    broker.connect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sink = lock(&broker.sink).clone();
        if let Some(sink) = sink {
            return (broker, sink);
        }
        assert!(tokio::time::Instant::now() < deadline, "no Pub/Sub connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A subscription nothing on this node routes (a join given up while its SUBSCRIBE was on its way) is ended when
/// its first message comes; before, Redis sent the room's every event to the node for nothing until the next
/// Pub/Sub reconnect, days away in a healthy cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_nothing_routes_ends_at_its_first_message() {
    let test = "a_subscription_nothing_routes_ends_at_its_first_message";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let (broker, mut sink) = connected(&redis.url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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
    let (broker, sink) = connected(&redis.url).await;
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

/// A TCP relay to the Redis at `upstream` whose replies each arrive `delay` late (a slow or congested link to
/// Redis); its address.
async fn slow_replies(upstream: &str, delay: Duration) -> String {
    let upstream = upstream.trim_start_matches("redis://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let ((mut client_read, mut client_write), (mut server_read, mut server_write)) =
                (client.into_split(), server.into_split());
            tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
            let (late, mut replies) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut server_read, &mut buf).await {
                    let _ = late.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
                }
            });
            tokio::spawn(async move {
                while let Some((due, bytes)) = replies.recv().await {
                    tokio::time::sleep_until(due).await;
                    if tokio::io::AsyncWriteExt::write_all(&mut client_write, &bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

/// On a slow link to Redis a live node's beats follow each other at the pace of one reply, not two: the query for
/// silent nodes (each heartbeat, once the node has beaten for an expiry) runs beside the beats. Before, the next beat
/// waited for it, so that a node's stamps were two replies apart and more, past what the settings' check allows for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_slow_link_the_beats_do_not_wait_for_the_query_for_silent_nodes() {
    let test = "on_a_slow_link_the_beats_do_not_wait_for_the_query_for_silent_nodes";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let delay = Duration::from_secs(1);
    let config = BrokerConfig {
        url: slow_replies(&redis.url, delay).await,
        presence_expiry: Duration::from_millis(800),
        heartbeat: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    broker.connect();
    let node = broker.node().to_string();
    // The node's stamps (Redis' clock at each beat), from past the first expiry of beats on (the queries run by then).
    let mut stamps: Vec<u64> = Vec::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let stamp: Option<u64> =
            redis::cmd("ZSCORE").arg(crate::cluster::keys::NODES).arg(&node).query(&mut redis.conn).unwrap();
        if let Some(stamp) = stamp.filter(|s| start.elapsed() > Duration::from_secs(3) && stamps.last() != Some(s)) {
            stamps.push(stamp);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gaps: Vec<u64> = stamps.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(gaps.len() >= 3, "too few beats to judge: {stamps:?}");
    // One reply apart (1 s), with this machine's slack; two replies apart is 2 s.
    assert!(gaps.iter().all(|gap| *gap < 1_500), "the beats waited for the query: gaps of {gaps:?} ms");
    broker.retire().await;
}

/// A Pub/Sub connection closed soon after it was made is made again after the backoff's pause, not at once: each
/// one starts a catch-up per live room and a presence repair. Here Redis closes every Pub/Sub connection for 3 s
/// (`CLIENT KILL TYPE pubsub` every 5 ms, as an output buffer limit a slow node hits again does); before, the node
/// reconnected hundreds of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_connection_lost_soon_after_it_was_made_is_made_again_after_a_pause() {
    let test = "a_pubsub_connection_lost_soon_after_it_was_made_is_made_again_after_a_pause";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let (broker, _sink) = connected(&redis.url).await;
    struct Quiet;
    impl ChannelHandler for Quiet {
        fn message(self: Arc<Self>, _: Vec<u8>) {}
        fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }
    // (A connection with no channel subscribed is not one of the Pub/Sub clients the kills name.)
    broker.subscribe("q:{kept}:events", Arc::new(Quiet)).await.unwrap();
    let before = broker.pubsub_connections();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut redis.conn).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let made = broker.pubsub_connections() - before;
    // 100 ms doubling to 2 s: about 5 in 3 s, and a few more for the connections the kills missed.
    assert!(made <= 12, "{made} Pub/Sub connections made in 3 s of kills");
    assert!(made >= 2, "{made}: the kills were not seen");
    broker.retire().await;
}

/// A node is not ready before it has read INFO: a Redis that may evict keys is never reported ready, not even
/// between the first beat and the INFO check that follows it (on this slow link, two replies of 300 ms). Before,
/// `/readyz` answered 200 in that window, and a load balancer could add the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_not_ready_before_it_has_read_info() {
    let test = "a_node_is_not_ready_before_it_has_read_info";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let mut set =
        |key: &str, value: &str| redis::cmd("CONFIG").arg("SET").arg(key).arg(value).query::<()>(&mut redis.conn);
    set("maxmemory", "100mb").unwrap();
    set("maxmemory-policy", "allkeys-lru").unwrap();
    let config = BrokerConfig {
        url: slow_replies(&redis.url, Duration::from_millis(300)).await,
        presence_expiry: Duration::from_secs(30),
        heartbeat: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    broker.connect();
    let start = tokio::time::Instant::now();
    let mut last = Ok(());
    while start.elapsed() < Duration::from_secs(4) {
        last = broker.ready();
        assert!(last.is_err(), "ready against a Redis that may evict keys, {:?} in", start.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(last.is_err_and(|why| why.contains("evict")), "{last:?}");
    broker.retire().await;
}

/// A PING the broker answers with an error (`-LOADING` while Redis loads a snapshot, `-NOPERM` under an ACL) shows
/// the Pub/Sub connection alive: it is kept (taken for dead, each beat would make it again, every room's catch-up
/// and presence repair with it, for as long as the load lasted). A guard: it holds because the PING's reply is read
/// as a `Value`, where an error reply is `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_ping_answered_with_an_error_keeps_the_connection() {
    let test = "a_pubsub_ping_answered_with_an_error_keeps_the_connection";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    redis::cmd("ACL").arg("SETUSER").arg("default").arg("-ping").query::<()>(&mut redis.conn).unwrap();
    let config = BrokerConfig {
        url: redis.url.clone(),
        presence_expiry: Duration::from_secs(30),
        heartbeat: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    broker.connect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lock(&broker.sink).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no Pub/Sub connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = broker.pubsub_connections();
    tokio::time::sleep(Duration::from_secs(1)).await; // five beats, each with its PING
    assert_eq!(broker.pubsub_connections(), before, "the Pub/Sub connection was made again");
    broker.retire().await;
}

/// Redis that lost this node's latest beats (a failover to a lagging replica behind an address that keeps the
/// Pub/Sub connection's session) has the Pub/Sub connection made again: a new one is what runs each live room's
/// rollback check, catch-up and presence repair. Before, only the burials were put off, and a rollback that
/// dropped no connection went unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_heartbeat_makes_the_pubsub_connection_again() {
    let test = "a_lost_heartbeat_makes_the_pubsub_connection_again";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let (broker, _sink) = connected(&redis.url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stamp = |redis: &mut super::super::scripts::tests::Redis| -> Option<u64> {
        redis::cmd("ZSCORE").arg(crate::cluster::keys::NODES).arg(&broker.node).query(&mut redis.conn).unwrap()
    };
    // Two beats in: the second one knows the first's time.
    let first = loop {
        if let Some(first) = stamp(&mut redis) {
            break first;
        }
        assert!(tokio::time::Instant::now() < deadline, "no beat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while stamp(&mut redis) == Some(first) {
        assert!(tokio::time::Instant::now() < deadline, "no second beat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = broker.pubsub_connections();
    // Redis "back from older data": the node's stamp as it was a minute before.
    let _: i64 = redis::cmd("ZADD")
        .arg(crate::cluster::keys::NODES)
        .arg(first - 60_000)
        .arg(&broker.node)
        .query(&mut redis.conn)
        .unwrap();
    while broker.pubsub_connections() == connections {
        assert!(tokio::time::Instant::now() < deadline, "the Pub/Sub connection was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.retire().await;
}

/// The Redis reached becomes another one without dropping this node's connections (a failover behind an address
/// that keeps sessions: here the same Redis made a replica of another and promoted again, its replication id
/// changed): the Pub/Sub connection is made again, for the rooms' rollback checks, whether or not this node's
/// latest beat was lost. Before, only a lost beat did it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_redis_behind_the_same_connection_makes_the_pubsub_connection_again() {
    let test = "another_redis_behind_the_same_connection_makes_the_pubsub_connection_again";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let Some(other) = super::super::scripts::tests::redis(test) else { return };
    let (broker, _sink) = connected(&redis.url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !broker.info_read.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(tokio::time::Instant::now() < deadline, "INFO never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = broker.pubsub_connections();
    let port = other.url.rsplit(':').next().unwrap().to_string();
    let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(&port).query(&mut redis.conn).unwrap();
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut redis.conn).unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never synced: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut redis.conn).unwrap();
    while broker.pubsub_connections() == connections {
        assert!(tokio::time::Instant::now() < deadline, "the Pub/Sub connection was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.retire().await;
}
