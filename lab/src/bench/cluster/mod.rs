//! `quiver bench cluster`: what Redis costs. One run starts its own `redis-server` (persistence off), a single
//! node without a broker (rooms in memory: the strictest baseline) and three nodes on the Redis, all in this
//! process, and measures side by side:
//!
//! - the Redis round trip (PING), the unit of the echo goal;
//! - room echo: a message posted on one node until a member receives it, on the single node (poster and reader on
//!   it) and across nodes (poster on node A, reader on node B); one message every `echo_interval`, latency from
//!   the post call;
//! - posts/s: `posters` connections (spread over the nodes) posting closed-loop with `in_flight` posts each into
//!   `rooms` rooms, on the single node and through Redis;
//! - tick fan-out: one publisher on node A at `tick_rate`, `subscribers` connections spread over the three nodes,
//!   beside the same fan-out on the single node (one-way latency from the publisher's send time).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use quiver_client::{
    latency::{LatencyRecorder, LatencySummary},
    RoomEvent,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{series::Schedule, BenchError};

mod nodes;
mod report;

use nodes::{redis_error, Node, RedisProcess};

/// What `quiver bench cluster` runs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Echoed messages per series (the first tenth is warm-up).
    pub echoes: u32,
    /// Time between echoed messages.
    pub echo_interval: Duration,
    /// Posting connections in the throughput series.
    pub posters: u32,
    /// Rooms they post into.
    pub rooms: u32,
    /// Posts each poster keeps in flight.
    pub in_flight: u32,
    /// Measured time of each throughput series (after one second of warm-up).
    pub duration: Duration,
    /// Tick subscribers (connections) in the fan-out series.
    pub subscribers: u32,
    /// Ticks per second the publisher sends.
    pub tick_rate: u32,
    /// Body and tick payload bytes.
    pub size: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            echoes: 1_000,
            echo_interval: Duration::from_millis(5),
            posters: 100,
            rooms: 100,
            in_flight: 8,
            duration: Duration::from_secs(5),
            subscribers: 300,
            tick_rate: 60,
            size: 64,
        }
    }
}

/// A tick fan-out series.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    /// Ticks received / (ticks sent × subscribers), in %.
    pub delivered_pct: f64,
    /// Publisher send → subscriber receipt.
    pub latency: LatencySummary,
    /// Ticks that arrived and were let go of by a subscription's backlog (its reader fell behind), warm-up
    /// included: not delivered, and not in the percentiles.
    pub superseded: u64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Redis PING round trips, one every `echo_interval` like the echoes (the goal's unit: a Redis woken from
    /// idle for each, as in the echo series).
    pub redis_rtt: LatencySummary,
    /// Redis PING round trips back to back (a busy Redis).
    pub redis_rtt_hot: LatencySummary,
    /// Room echo on the single node.
    pub echo_single: LatencySummary,
    /// Room echo through Redis with poster and reader on one node of the cluster (node A -> node A).
    pub echo_redis: LatencySummary,
    /// Room echo across nodes (poster on A, reader on B).
    pub echo_cross: LatencySummary,
    /// Acknowledged posts per second on the single node.
    pub posts_single_per_s: f64,
    /// Acknowledged posts per second through Redis, posters spread over three nodes.
    pub posts_cluster_per_s: f64,
    /// Posts refused (an error returned) in the measured windows of the two posts series:
    /// one node, three nodes. Not 0: the posts/s figure is not the path's throughput, and its goal is not judged.
    pub posts_failed: [u64; 2],
    /// The Redis process's CPU use during that series, % of one core (NaN where /proc is missing).
    pub redis_cpu_pct: f64,
    /// Tick fan-out on the single node.
    pub fanout_single: FanoutRow,
    /// Tick fan-out with the subscribers spread over three nodes.
    pub fanout_cluster: FanoutRow,
    /// The configuration's numbers, for the table.
    pub posters: u32,
    /// Rooms posted into.
    pub rooms: u32,
    /// Tick subscribers.
    pub subscribers: u32,
}

/// Runs every series; `progress` hears what runs.
pub async fn run_cluster(config: ClusterConfig, progress: impl Fn(&str)) -> Result<ClusterReport, BenchError> {
    for (field, value, least) in [
        ("posters", config.posters, 1),
        ("rooms", config.rooms, 1),
        ("subscribers", config.subscribers, 1),
        ("echoes", config.echoes, 10),
        ("tick_rate", config.tick_rate, 1),
        // (None in flight posted nothing, and the posts goal was judged on a run that measured none.)
        ("in_flight", config.in_flight, 1),
    ] {
        if value < least {
            let expected = if least == 1 { "at least 1" } else { "at least 10" };
            return Err(BenchError::BadConfig { field, value: f64::from(value), expected });
        }
    }
    if config.duration < Duration::from_secs(1) {
        let (value, expected) = (config.duration.as_secs_f64(), "at least 1 s");
        return Err(BenchError::BadConfig { field: "duration", value, expected });
    }
    if config.echo_interval < Duration::from_millis(1) {
        let (value, expected) = (config.echo_interval.as_secs_f64() * 1e3, "at least 1 ms");
        return Err(BenchError::BadConfig { field: "echo_interval_ms", value, expected });
    }
    if f64::from(config.tick_rate) > crate::bench::series::MAX_RATE {
        let (value, expected) = (f64::from(config.tick_rate), "at most 100000 per second, as the other benches");
        return Err(BenchError::BadConfig { field: "tick_rate", value, expected });
    }
    progress("starting redis-server and 4 nodes (1 alone, 3 on the Redis)");
    let redis = RedisProcess::start().await?;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let single = Node::start(None, &stop).await?;
    let mut cluster = Vec::new();
    for _ in 0..3 {
        let node = Node::start(Some(&redis.url), &stop).await?;
        node.ready().await?;
        cluster.push(node);
    }
    progress("Redis round trips");
    let redis_rtt_hot = redis_rtt(&redis, Duration::ZERO).await?;
    let redis_rtt = redis_rtt(&redis, config.echo_interval).await?;
    progress("room echo on one node");
    let echo_single = echo(&single, &single, &config).await?;
    progress("room echo through Redis on one node");
    let echo_redis = echo(&cluster[0], &cluster[0], &config).await?;
    progress("room echo across nodes");
    let echo_cross = echo(&cluster[0], &cluster[1], &config).await?;
    progress(&format!("posts/s on one node: {} posters, {} rooms", config.posters, config.rooms));
    let (posts_single_per_s, failed_single, _) = throughput(&[&single], &config, || None).await?;
    progress(&format!("posts/s through Redis: {} posters over 3 nodes, {} rooms", config.posters, config.rooms));
    // Redis' CPU over the measured window only (not the posters' connects and closes around it).
    let (posts_cluster_per_s, failed_cluster, redis_cpu_s) =
        throughput(&cluster.iter().collect::<Vec<_>>(), &config, || redis.cpu_s()).await?;
    let redis_cpu_pct = redis_cpu_s.map_or(f64::NAN, |spent| 100.0 * spent / config.duration.as_secs_f64());
    progress(&format!("tick fan-out on one node: {} subscribers", config.subscribers));
    let fanout_single = fanout(&single, &[&single], &config).await?;
    progress(&format!("tick fan-out over 3 nodes: {} subscribers", config.subscribers));
    let fanout_cluster = fanout(&cluster[0], &cluster.iter().collect::<Vec<_>>(), &config).await?;
    for node in &cluster {
        if let Some(broker) = &node.broker {
            broker.retire().await;
        }
    }
    Ok(ClusterReport {
        redis_rtt,
        redis_rtt_hot,
        echo_single,
        echo_redis,
        echo_cross,
        posts_single_per_s,
        posts_cluster_per_s,
        posts_failed: [failed_single, failed_cluster],
        redis_cpu_pct,
        fanout_single,
        fanout_cluster,
        posters: config.posters,
        rooms: config.rooms,
        subscribers: config.subscribers,
    })
}

/// PING round trips, one every `pace` (zero: back to back).
async fn redis_rtt(redis: &RedisProcess, pace: Duration) -> Result<LatencySummary, BenchError> {
    let mut conn = redis.connection().await.map_err(redis_error)?;
    let mut recorder = LatencyRecorder::default();
    // A serial probe (each PING waits for the one before), so timed from its own send: timed from the schedule,
    // one slow reply would be charged again to every later PING, which a pipelined client would not wait for.
    let mut next = tokio::time::Instant::now();
    for i in 0..1_100 {
        if !pace.is_zero() {
            next += pace;
            tokio::time::sleep_until(next).await;
        }
        let started = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(redis_error)?;
        if i >= 100 {
            recorder.record(started.elapsed());
        }
    }
    Ok(recorder.summary())
}

/// One message every `echo_interval`, posted on `from`, until the member on `to` has it.
async fn echo(from: &Node, to: &Node, config: &ClusterConfig) -> Result<LatencySummary, BenchError> {
    let room = format!("echo-{:08x}", rand::random::<u32>());
    let poster = from.connect().await?;
    let reader = to.connect().await?;
    let mut joined = BenchError::answered("join", reader.join(&room)).await?;
    let mut recorder = LatencyRecorder::default();
    let body = vec![b'e'; config.size];
    let warmup = config.echoes / 10;
    // A serial probe (each echo waits for the one before), so timed from its own send, as the PINGs above.
    let mut next = tokio::time::Instant::now();
    for i in 0..config.echoes {
        next += config.echo_interval;
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let posted = BenchError::answered("post", poster.post(&room, body.clone()));
        // Timed when the message arrives, whether before or after the post's acknowledgement (read after it, an
        // echo that arrived first was timed at the acknowledgement: a one-node echo, whose two come together,
        // more often than a cross-node one). Posts go one at a time into a room of their own: the next message
        // is this one.
        let arrived = async {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), joined.next()).await {
                    Ok(Some(RoomEvent::Message(m))) => break Ok((m.seq, started.elapsed())),
                    Ok(Some(_)) => {}
                    _ => break Err(BenchError::io("echo")(std::io::Error::other("a posted message never arrived"))),
                }
            }
        };
        let (seq, (got, elapsed)) = tokio::try_join!(posted, arrived)?;
        if got != seq {
            let why = format!("the echo room delivered seq {got} where the post was given {seq}");
            return Err(BenchError::io("echo")(std::io::Error::other(why)));
        }
        if i >= warmup {
            recorder.record(elapsed);
        }
    }
    poster.close().await;
    reader.close().await;
    Ok(recorder.summary())
}

/// Acknowledged posts per second, `posters` connections spread over `nodes`, each keeping `in_flight` posts; the
/// posts that failed in the measured window; and how much `cpu` (seconds so far, when it can tell) grew over it.
async fn throughput(
    nodes: &[&Node],
    config: &ClusterConfig,
    cpu: impl Fn() -> Option<f64>,
) -> Result<(f64, u64, Option<f64>), BenchError> {
    let mut clients = Vec::new();
    for i in 0..config.posters {
        clients.push(Arc::new(nodes[i as usize % nodes.len()].connect().await?));
    }
    let prefix = format!("posts-{:08x}", rand::random::<u32>());
    let counted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let names: Arc<Vec<String>> = Arc::new((0..config.rooms).map(|r| format!("{prefix}-{r}")).collect());
    let (posters, in_flight, rooms) = (config.posters, config.in_flight, config.rooms);
    for (poster, client) in (0..posters).zip(&clients) {
        for slot in 0..in_flight {
            let (client, counted, counting, stop) = (client.clone(), counted.clone(), counting.clone(), stop.clone());
            let (failed, names) = (failed.clone(), names.clone());
            let post_loop = crate::bench::PostLoop { poster, slot, posters, in_flight };
            let body = vec![b'p'; config.size];
            tasks.spawn(async move {
                for n in 0.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let room = &names[post_loop.room(n, rooms) as usize];
                    // Ended with the run: a node or Redis that stops answering (the client retries a post until it
                    // is acknowledged) must not hold the bench for ever.
                    let posted = tokio::select! {
                        posted = client.post(room, body.clone()) => posted,
                        () = stop.cancelled() => return,
                    };
                    let counter = if posted.is_ok() { &counted } else { &failed };
                    if counting.load(Ordering::Relaxed) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if posted.is_err() {
                        // (A refusal comes at once: not a busy loop.)
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu();
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(config.duration).await;
    counting.store(false, Ordering::Relaxed);
    let cpu_spent = cpu_before.zip(cpu()).map(|(before, after)| after - before);
    let posts = counted.load(Ordering::Relaxed);
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let clients = clients.into_iter().filter_map(|client| Arc::try_unwrap(client).ok());
    futures_util::future::join_all(clients.map(quiver_client::Client::close)).await;
    let failed = failed.load(Ordering::Relaxed);
    Ok((posts as f64 / config.duration.as_secs_f64(), failed, cpu_spent))
}

/// A subscriber's latencies, merged into everyone's when its task ends or is dropped.
struct MergedOnDrop {
    mine: LatencyRecorder,
    into: Arc<Mutex<LatencyRecorder>>,
}

impl Drop for MergedOnDrop {
    fn drop(&mut self) {
        if let Ok(mut all) = self.into.lock() {
            all.merge(&self.mine);
        }
    }
}

/// One publisher on `publisher_node`, `subscribers` spread over `nodes`.
async fn fanout(publisher_node: &Node, nodes: &[&Node], config: &ClusterConfig) -> Result<FanoutRow, BenchError> {
    let channel = format!("ticks-{:08x}", rand::random::<u32>());
    let base = tokio::time::Instant::now();
    let recorder = Arc::new(Mutex::new(LatencyRecorder::default()));
    let received = Arc::new(AtomicU64::new(0));
    let superseded = Arc::new(AtomicU64::new(0));
    // A second of ticks first warms every path up (and lets interest cross to the other nodes).
    let warmup = u64::from(config.tick_rate);
    let measured = u64::from(config.tick_rate) * config.duration.as_secs().max(1);
    let mut subscribers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.subscribers {
        let client = nodes[i as usize % nodes.len()].connect().await?;
        let mut subscription = BenchError::answered("subscribe", client.subscribe(&channel)).await?;
        let (recorder, received, superseded) = (recorder.clone(), received.clone(), superseded.clone());
        tasks.spawn(async move {
            // Merged when the task ends, or is aborted at the end marker's deadline: the slowest subscribers'
            // latencies count too (their ticks count as delivered).
            let mut mine = MergedOnDrop { mine: LatencyRecorder::default(), into: recorder };
            let mine = &mut mine.mine;
            // Every tick that arrived, not only the newest of those waiting (`next`): a subscriber task woken late
            // would otherwise leave its oldest, slowest ticks out of the percentiles and the delivered share.
            // (Ticks a subscription's backlog let go of, its task more than the backlog behind, are counted, and
            // the run says so: they are neither delivered nor in the percentiles.)
            let mut let_go = 0;
            'batches: while let Some(ticks) = subscription.next_batch().await {
                let now = subscription.counts().superseded;
                superseded.fetch_add(now.saturating_sub(let_go), Ordering::Relaxed);
                let_go = now;
                for tick in ticks {
                    // The tick's number leads its payload, then its scheduled time (µs after `base`: the publisher is
                    // in this process); an empty payload is the end marker.
                    let field = |at: usize| {
                        tick.payload.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
                    };
                    let (Some(n), Some(scheduled_us)) = (field(0), field(8)) else { break 'batches };
                    if (warmup..warmup + measured).contains(&n) {
                        // From the schedule, not the publisher's send stamp: a stalled publisher's late ticks count
                        // their wait (no coordinated omission).
                        let scheduled = base + Duration::from_micros(scheduled_us);
                        mine.record(tokio::time::Instant::now().saturating_duration_since(scheduled));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        subscribers.push(client);
    }
    let publisher_client = publisher_node.connect().await?;
    let publisher = BenchError::answered("publish", publisher_client.publisher(&channel)).await?;
    let interval = Duration::from_secs(1) / config.tick_rate.max(1);
    let mut payload = vec![b't'; config.size.max(16)];
    let schedule =
        Schedule { start: tokio::time::Instant::now() + interval, interval, count: warmup + measured, warmup };
    let mut measured_sent = 0;
    for n in 0..warmup + measured {
        let Some(scheduled) = schedule.due(n).await else { break };
        measured_sent += u64::from(n >= warmup);
        let scheduled_us = u64::try_from(scheduled.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX);
        payload[..8].copy_from_slice(&n.to_be_bytes());
        payload[8..16].copy_from_slice(&scheduled_us.to_be_bytes());
        let _ = publisher.send(payload.clone());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The end marker (an empty payload), sent until every subscriber task has ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tasks.is_empty() && Instant::now() < deadline {
        let _ = publisher.send(Vec::new());
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await {}
    }
    if !tasks.is_empty() {
        tracing::warn!(subscribers = tasks.len(), "subscribers still reading 5 s after the last tick: stopped");
    }
    let superseded = superseded.load(Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    publisher_client.close().await;
    futures_util::future::join_all(subscribers.into_iter().map(quiver_client::Client::close)).await;
    // Ticks the publisher never sent (it fell too far behind its schedule) count as lost: a stalled publisher's run
    // is not judged as a clean, shorter one.
    if measured_sent < measured {
        tracing::warn!(sent = measured_sent, scheduled = measured, "the publisher fell behind: the rest counts lost");
    }
    let expected = measured * u64::from(config.subscribers);
    let delivered_pct = 100.0 * received.load(Ordering::Relaxed) as f64 / expected.max(1) as f64;
    let latency = recorder.lock().map(|r| r.summary()).unwrap_or_else(|p| p.into_inner().summary());
    Ok(FanoutRow { delivered_pct, latency, superseded })
}

#[cfg(test)]
mod tests;
