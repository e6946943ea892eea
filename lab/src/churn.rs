//! A load that churns what a server must not keep: every connection is new, joins rooms no one used before, posts
//! into new room names, subscribes to and claims new tick channels, then leaves. `scripts/soak.sh` runs it against
//! a release server and watches the server's memory (docs/security.md, "Soak"): whatever the server holds for
//! these names must be returned or bounded by its budget.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use quiver_client::{Client, ConnectOptions};
use tokio::{task::JoinSet, time::Instant};

/// What one churn run does.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// Server address (host:port).
    pub server: String,
    /// How to connect (trust and tokens); reconnection is turned off: every connection is a new one.
    pub connect: ConnectOptions,
    /// Connections churning at once.
    pub workers: usize,
    /// How long to churn.
    pub duration: Duration,
    /// Size of each post's body.
    pub body_bytes: usize,
    /// Each worker opens at most one connection per this interval (stays under the server's per-address rate).
    pub connection_interval: Duration,
}

/// What a churn run did, counted as it goes.
#[derive(Debug, Default)]
pub struct ChurnCounters {
    /// Connections opened and closed.
    pub connections: AtomicU64,
    /// Rooms joined (each a new name).
    pub joins: AtomicU64,
    /// Posts acknowledged.
    pub posts: AtomicU64,
    /// Tick channels subscribed to (and unsubscribed from).
    pub subscribes: AtomicU64,
    /// Tick channels claimed for publishing (and released when the connection closed).
    pub claims: AtomicU64,
    /// Failures, by what failed and why.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl ChurnCounters {
    /// One line: the counts so far.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let errors: u64 = crate::sync::lock(&self.errors).values().sum();
        format!(
            "{} connections, {} joins, {} posts, {} subscribes, {} claims, {errors} errors",
            get(&self.connections),
            get(&self.joins),
            get(&self.posts),
            get(&self.subscribes),
            get(&self.claims)
        )
    }

    fn error(&self, what: &str, err: impl std::fmt::Display) {
        *crate::sync::lock(&self.errors).entry(format!("{what}: {err}")).or_default() += 1;
    }
}

/// How long past its duration a churn waits for a connection's requests before giving them up.
const OVERTIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Churns until `options.duration` has passed (and at most 10 s more: `OVERTIME`); `counters` fill as it goes (read them for progress).
pub async fn churn(options: ChurnOptions, counters: Arc<ChurnCounters>) {
    let deadline = Instant::now() + options.duration;
    let body = Bytes::from(vec![b'x'; options.body_bytes]);
    let mut workers = JoinSet::new();
    for worker in 0..options.workers {
        let (options, counters, body) = (options.clone(), counters.clone(), body.clone());
        workers.spawn(async move {
            let mut round = 0u64;
            while Instant::now() < deadline {
                let next = Instant::now() + options.connection_interval;
                let prefix = format!("soak-{:08x}-{worker}-{round}", rand::random::<u32>());
                // A server that keeps the connection alive but stops answering (the requests have no deadline of
                // their own) must not keep the churn past its duration: it ends by itself.
                let connection = one_connection(&options, &prefix, &body, &counters);
                if tokio::time::timeout_at(deadline + OVERTIME, connection).await.is_err() {
                    counters.error("connection", format!("unfinished {OVERTIME:?} after the churn's end; given up"));
                    break;
                }
                round += 1;
                tokio::time::sleep_until(next.min(deadline)).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// One connection's worth of new names: 2 rooms joined (2 posts each), 4 rooms posted into without joining, 8
/// channels subscribed and unsubscribed, 2 claimed with a few ticks.
async fn one_connection(options: &ChurnOptions, prefix: &str, body: &Bytes, counters: &ChurnCounters) {
    let connect = ConnectOptions { reconnect: false, ..options.connect.clone() };
    let client = match Client::connect_with(&options.server, connect).await {
        Ok(client) => client,
        Err(err) => return counters.error("connect", err),
    };
    for k in 0..2 {
        match client.join(&format!("{prefix}-joined{k}")).await {
            Ok(room) => {
                counters.joins.fetch_add(1, Ordering::Relaxed);
                for _ in 0..2 {
                    match room.post(body.clone()).await {
                        Ok(_) => counters.posts.fetch_add(1, Ordering::Relaxed),
                        Err(err) => return counters.error("post", err),
                    };
                }
                if let Err(err) = room.leave().await {
                    counters.error("leave", err);
                }
            }
            Err(err) => counters.error("join", err),
        }
    }
    for k in 0..4 {
        match client.post(&format!("{prefix}-posted{k}"), body.clone()).await {
            Ok(_) => counters.posts.fetch_add(1, Ordering::Relaxed),
            Err(err) => return counters.error("post", err),
        };
    }
    for k in 0..8 {
        match client.subscribe(&format!("{prefix}-sub{k}")).await {
            Ok(subscription) => {
                counters.subscribes.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = subscription.unsubscribe().await {
                    counters.error("unsubscribe", err);
                }
            }
            Err(err) => counters.error("subscribe", err),
        }
    }
    for k in 0..2 {
        match client.publisher(&format!("{prefix}-pub{k}")).await {
            Ok(publisher) => {
                counters.claims.fetch_add(1, Ordering::Relaxed);
                for _ in 0..3 {
                    if let Err(err) = publisher.send(&b"tick"[..]) {
                        counters.error("tick", err);
                    }
                }
            }
            Err(err) => counters.error("publish", err),
        }
    }
    client.close().await;
    counters.connections.fetch_add(1, Ordering::Relaxed);
}
