//! `quiver bench fanout`: one publisher sends ticks at a fixed rate to N subscribers while the same subscriber
//! connections carry a chat load in one room, so any coupling between the reliable and the unreliable path shows.
//! Latencies are one-way, on this host's clock (everything runs in one process).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::series::{parse, payload, Schedule};
use crate::{
    impair::{ImpairmentProfile, Relay, RelayConfig},
    latency::{LatencyRecorder, LatencySummary},
    Client, ConnectOptions, RoomEvent, TokenProvider, TrustOptions,
};

/// Settings of a fan-out run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Subscribers (each its own connection).
    pub subscribers: u32,
    /// Ticks per second from the publisher.
    pub rate: f64,
    /// Tick payload bytes (at least 12).
    pub size: usize,
    /// Chat messages per second posted into the room, in total, by the subscribers in turn.
    pub chat_rate: f64,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring.
    pub warmup: Duration,
    /// Impairment between every client and the server, if any.
    pub profile: Option<ImpairmentProfile>,
    /// An external Quiver server and how to trust it; `None` runs one in-process.
    pub server: Option<(String, TrustOptions)>,
    /// Tokens for an external server (the in-process one is given dev tokens).
    pub token: Option<TokenProvider>,
}

/// The outcome of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Settings.
    pub config: serde_json::Value,
    /// Ticks the publisher sent (measured part).
    pub ticks_sent: u64,
    /// Share of (tick, subscriber) pairs delivered, percent.
    pub delivered_pct: f64,
    /// Share of arrivals dropped as stale (after a newer tick), percent.
    pub stale_pct: f64,
    /// One-way tick latency, publisher's scheduled send to a subscriber's receipt.
    pub tick_latency: LatencySummary,
    /// Chat messages posted (measured part).
    pub chat_sent: u64,
    /// Share of (message, member) pairs delivered, percent.
    pub chat_delivered_pct: f64,
    /// One-way chat latency, scheduled post to each member's receipt.
    pub chat_latency: LatencySummary,
}

impl FanoutReport {
    /// Human-readable summary.
    pub fn table(&self) -> String {
        let row = |name: &str, l: &LatencySummary, delivered: f64| {
            format!(
                "{name:<8} {:>9} {:>10.2} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
                l.count, delivered, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            )
        };
        let mut out = format!(
            "{:<8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
            "(µs)", "count", "deliv.%", "p50", "p90", "p99", "p99.9", "max"
        );
        out += &row("ticks", &self.tick_latency, self.delivered_pct);
        out += &row("chat", &self.chat_latency, self.chat_delivered_pct);
        out += &format!("stale-dropped ticks: {:.3} %\n", self.stale_pct);
        out
    }
}

type Origins = Arc<Mutex<HashMap<u64, Instant>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the fan-out benchmark against an in-process server, or the external one `config.server` names.
pub async fn run_fanout(config: FanoutConfig, progress: impl Fn(&str)) -> Result<FanoutReport, String> {
    let rate_ok =
        config.rate.is_finite() && config.rate > 0.0 && config.chat_rate.is_finite() && config.chat_rate >= 0.0;
    if config.subscribers == 0 || !rate_ok || config.duration.is_zero() {
        return Err("subscribers, rate and duration must be above 0".into());
    }
    let stop = CancellationToken::new();
    let _stop_server = stop.clone().drop_guard();
    let data_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let (mut target, trust, token) = match &config.server {
        Some((addr, trust)) => {
            let resolved = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr}: no address"))?;
            (resolved, trust.clone(), config.token.clone())
        }
        None => {
            let addr = "127.0.0.1:0".parse().map_err(|_| "address")?;
            let server = quiver_server::Server::bind(quiver_server::ServerConfig::dev(addr, data_dir.path().into()))
                .map_err(|e| e.to_string())?;
            let pin = server.fingerprint();
            let local = server.local_addr();
            tokio::spawn(server.run(stop.clone()));
            let dev = TokenProvider::dev(data_dir.path().to_owned(), format!("bench-{:08x}", rand::random::<u32>()));
            (local, TrustOptions::Pin(pin), Some(dev))
        }
    };
    // Names of this run only, so runs against a shared server do not see each other's traffic.
    let run_id = rand::random::<u32>();
    let channel = format!("bench.fanout.{run_id:08x}");
    let chat_room = format!("bench.fanout.{run_id:08x}.chat");
    let _relay = match &config.profile {
        Some(profile) if !profile.is_clean() => {
            let relay = Relay::start(RelayConfig {
                listen: "127.0.0.1:0".parse().map_err(|_| "address")?,
                upstream: target,
                profile: profile.clone(),
                max_clients: config.subscribers as usize + 4,
            })
            .map_err(|e| format!("relay: {e}"))?;
            target = relay.local_addr();
            Some(relay)
        }
        _ => None,
    };
    let connect = || async {
        let options =
            ConnectOptions { trust: trust.clone(), token_provider: token.clone(), ..ConnectOptions::default() };
        Client::connect_with(&target.to_string(), options).await.map_err(|e| e.to_string())
    };
    progress("connecting subscribers");
    let start_at = Instant::now() + Duration::from_secs(1) + Duration::from_millis(20 * u64::from(config.subscribers));
    let tick_plan = plan(config.rate, &config, start_at);
    let chat_plan = plan(config.chat_rate.max(f64::MIN_POSITIVE), &config, start_at);
    let tick_origins: Origins = Arc::default();
    let chat_origins: Origins = Arc::default();
    let tick_latency = Arc::new(Mutex::new(LatencyRecorder::default()));
    let chat_latency = Arc::new(Mutex::new(LatencyRecorder::default()));
    let delivered = Arc::new(Mutex::new((0u64, 0u64, 0u64))); // ticks, stale, chat
    let mut subscribers = Vec::new();
    for _ in 0..config.subscribers {
        let client = connect().await?;
        let mut subscription = client.subscribe(&channel).await.map_err(|e| e.to_string())?;
        let mut room = client.join(&chat_room).await.map_err(|e| e.to_string())?;
        let (t_origins, c_origins) = (tick_origins.clone(), chat_origins.clone());
        let (t_lat, c_lat, counts, stop) =
            (tick_latency.clone(), chat_latency.clone(), delivered.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    tick = subscription.next() => {
                        let now = Instant::now();
                        let Some((_, i)) = parse(&tick.payload) else { continue };
                        if let Some(origin) = lock(&t_origins).get(&i).copied() {
                            lock(&t_lat).record(now - origin);
                            lock(&counts).0 += 1;
                        }
                    }
                    event = room.next() => match event {
                        Some(RoomEvent::Message(m)) => {
                            let now = Instant::now();
                            let Some((_, i)) = parse(&m.body) else { continue };
                            if let Some(origin) = lock(&c_origins).get(&i).copied() {
                                lock(&c_lat).record(now - origin);
                                lock(&counts).2 += 1;
                            }
                        }
                        Some(_) => {}
                        None => return,
                    },
                    () = stop.cancelled() => {
                        lock(&counts).1 += subscription.stats().stale_dropped;
                        return;
                    }
                }
            }
        });
        subscribers.push(client);
    }
    let publisher_client = connect().await?;
    let publisher = publisher_client.publisher(&channel).await.map_err(|e| e.to_string())?;
    progress("measuring");
    let size = config.size;
    let ticks = {
        let origins = tick_origins.clone();
        tokio::spawn(async move {
            for i in 0..tick_plan.count {
                let origin = tick_plan.due(i).await;
                if i >= tick_plan.warmup {
                    lock(&origins).insert(i, origin);
                }
                let _ = publisher.send(payload(0, i, size));
            }
            publisher
        })
    };
    let chat = {
        let origins = chat_origins.clone();
        let posters = subscribers.clone();
        let chat_room = chat_room.clone();
        let enabled = config.chat_rate > 0.0;
        tokio::spawn(async move {
            if !enabled {
                return;
            }
            for i in 0..chat_plan.count {
                let origin = chat_plan.due(i).await;
                if i >= chat_plan.warmup {
                    lock(&origins).insert(i, origin);
                }
                let poster = &posters[(i % posters.len() as u64) as usize];
                drop(poster.post(&chat_room, payload(0, i, 64)));
            }
        })
    };
    let _publisher = ticks.await.map_err(|e| e.to_string())?;
    chat.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (tick_count, stale, chat_count) = *lock(&delivered);
    let ticks_sent = lock(&tick_origins).len() as u64;
    let chat_sent = lock(&chat_origins).len() as u64;
    let n = u64::from(config.subscribers);
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let tick_summary = lock(&tick_latency).summary();
    let chat_summary = lock(&chat_latency).summary();
    Ok(FanoutReport {
        config: serde_json::json!({
            "subscribers": config.subscribers,
            "rate": config.rate,
            "size": config.size,
            "chat_rate": config.chat_rate,
            "duration_s": config.duration.as_secs_f64(),
            "warmup_s": config.warmup.as_secs_f64(),
            "profile": config.profile,
            "server": config.server.as_ref().map(|(s, _)| s.clone()).unwrap_or_else(|| "in-process".into()),
        }),
        ticks_sent,
        delivered_pct: pct(tick_count, ticks_sent * n),
        stale_pct: pct(stale, tick_count + stale),
        tick_latency: tick_summary,
        chat_sent,
        chat_delivered_pct: pct(chat_count, chat_sent * n),
        chat_latency: chat_summary,
    })
}

fn plan(rate: f64, config: &FanoutConfig, start: Instant) -> Schedule {
    let warmup = (config.warmup.as_secs_f64() * rate).round() as u64;
    let count = warmup + (config.duration.as_secs_f64() * rate).round() as u64;
    Schedule { start, interval: Duration::from_secs_f64(1.0 / rate), count, warmup }
}
