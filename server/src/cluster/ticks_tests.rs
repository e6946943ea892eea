//! The cluster tick relay's wire format across versions.

use super::*;

/// The version before sent no `received_us`: its ticks are taken (undated), and it takes ours (it reads the
/// fields it knows and ignores the last): a rolling upgrade keeps ticks crossing both ways.
#[test]
fn relayed_ticks_cross_between_this_version_and_the_one_before() {
    #[derive(serde::Serialize)]
    struct Before<'a> {
        origin: &'a str,
        sent_time_us: u64,
        max_age_us: Option<u64>,
        payload: &'a [u8],
    }
    let old =
        postcard::to_allocvec(&Before { origin: "a", sent_time_us: 7, max_age_us: Some(50), payload: b"xy" }).unwrap();
    let (tick, dated) = Relayed::decode(&old).unwrap();
    assert_eq!(
        (tick.origin.as_str(), tick.sent_time_us, tick.max_age_us, &tick.payload[..]),
        ("a", 7, Some(50), &b"xy"[..])
    );
    assert!(!dated);
    let new = Relayed {
        origin: "b".into(),
        sent_time_us: 8,
        max_age_us: None,
        payload: b"z".to_vec(),
        received_us: 1_800_000_000_000_000,
    };
    let bytes = postcard::to_allocvec(&new).unwrap();
    let (tick, dated) = Relayed::decode(&bytes).unwrap();
    assert!(dated && tick.received_us == new.received_us && tick.payload == b"z");
    let read_before: RelayedBefore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((read_before.origin.as_str(), read_before.sent_time_us, &read_before.payload[..]), ("b", 8, &b"z"[..]));
}

/// The Pub/Sub reader waits for every handler's `resubscribed` before it reads a message: the interest reload
/// (Redis reads, each allowed the request timeout) ran there and held every room's delivery behind a slow Redis.
#[tokio::test]
async fn the_interest_reload_leaves_the_pubsub_reader_at_once() {
    // A "Redis" that takes connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = crate::cluster::broker::BrokerConfig {
        url: format!("redis://{addr}"),
        presence_expiry: std::time::Duration::from_secs(10),
        heartbeat: std::time::Duration::from_secs(1),
        request_timeout: std::time::Duration::from_secs(2),
        allow_eviction: false,
    };
    let broker = Broker::new(config).unwrap();
    let ticks = ClusterTicks::new(broker.clone(), 16);
    let resubscribed = Arc::new(Control(ticks.inner.clone())).resubscribed();
    let done = tokio::time::timeout(std::time::Duration::from_millis(500), resubscribed).await;
    assert!(done.is_ok(), "the reader waited for the reload");
    holder.abort(); // (the reload's retries end with the test's runtime)
}
