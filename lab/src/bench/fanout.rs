//! `quiver bench fanout`: one publisher sends ticks at a fixed rate to N subscribers while the same subscriber
//! connections carry a chat load in one room, so any coupling between the reliable and the unreliable path shows.
//! Latencies are one-way, on this host's clock (everything runs in one process).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    namespaces::{self, Progress},
    series::{parse, payload, times, until_stopped, Schedule, RELIABLE_DRAIN_CAP},
    server::{through_relay, QuiverServer},
    websocket, BenchError,
};
use quiver_client::{
    latency::{LatencyRecorder, LatencySummary},
    RoomEvent, TokenProvider, TrustOptions,
};
use quiver_transport::TransportTuning;

use crate::impair::{Backend, ImpairmentProfile, Relay};

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
    /// Run the same workload through a WebSocket hub too (one TCP connection per client, ticks and chat on it).
    pub compare_websocket: bool,
    /// Run the server and the clients in two network namespaces joined by this emulator backend (Linux, root).
    pub netns: Option<Backend>,
}

impl FanoutConfig {
    /// Refuses settings that cannot be run: no subscribers, a tick rate or duration of 0, a negative chat rate.
    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |field, value, expected| Err(BenchError::BadConfig { field, value, expected });
        let subscribers = f64::from(self.subscribers);
        if subscribers == 0.0 {
            return bad("subscribers", subscribers, "above 0");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("rate", self.rate, "above 0");
        }
        if self.duration.is_zero() {
            return bad("duration", 0.0, "above 0");
        }
        if !(self.chat_rate.is_finite() && self.chat_rate >= 0.0) {
            return bad("chat_rate", self.chat_rate, "0 or above");
        }
        Ok(())
    }
}

/// The outcome of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Settings.
    pub config: serde_json::Value,
    /// Quiver's numbers.
    #[serde(flatten)]
    pub quiver: FanoutSide,
    /// The WebSocket hub's numbers, when compared.
    pub websocket: Option<FanoutSide>,
}

/// One transport's fan-out numbers.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSide {
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
    /// Human-readable summary; with a WebSocket side, its rows follow with Quiver's p50 and p99 as a ratio of it.
    pub fn table(&self) -> String {
        let row = |name: &str, l: &LatencySummary, delivered: f64, vs: Option<&LatencySummary>| {
            let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
            let vs =
                vs.map(|b| format!("  {}, {}", times(ratio(l.p50_us, b.p50_us)), times(ratio(l.p99_us, b.p99_us))));
            format!(
                "{name:<16} {:>9} {:>10.2} {:>8} {:>8} {:>8} {:>9} {:>9}{}\n",
                l.count,
                delivered,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                vs.unwrap_or_default()
            )
        };
        let ws = self.websocket.as_ref();
        let mut out = format!(
            "{:<16} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}{}\n",
            "(µs)",
            "count",
            "deliv.%",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            if ws.is_some() { "  quiver ÷ websocket (p50, p99)" } else { "" }
        );
        let q = &self.quiver;
        out += &row("quiver ticks", &q.tick_latency, q.delivered_pct, ws.map(|w| &w.tick_latency));
        out += &row("quiver chat", &q.chat_latency, q.chat_delivered_pct, ws.map(|w| &w.chat_latency));
        if let Some(w) = ws {
            out += &row("websocket ticks", &w.tick_latency, w.delivered_pct, None);
            out += &row("websocket chat", &w.chat_latency, w.chat_delivered_pct, None);
        }
        out += &format!("stale-dropped Quiver ticks: {:.3} %\n", q.stale_pct);
        out
    }
}

/// Send times of the measured messages and what arrived, for one side of a fan-out run.
#[derive(Debug, Default)]
struct Recorder {
    tick_origins: HashMap<u64, Instant>,
    chat_origins: HashMap<u64, Instant>,
    tick_latency: LatencyRecorder,
    chat_latency: LatencyRecorder,
    ticks: u64,
    chat: u64,
    stale: u64,
}

type SharedRecorder = Arc<Mutex<Recorder>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tick or chat message, as a fan-out receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tick,
    Chat,
}

impl Recorder {
    fn received(recorder: &SharedRecorder, kind: Kind, payload: &[u8]) {
        let now = Instant::now();
        let Some((_, i)) = parse(payload) else { return };
        let mut r = lock(recorder);
        let r = &mut *r;
        let (origins, latency, count) = match kind {
            Kind::Tick => (&r.tick_origins, &mut r.tick_latency, &mut r.ticks),
            Kind::Chat => (&r.chat_origins, &mut r.chat_latency, &mut r.chat),
        };
        if let Some(origin) = origins.get(&i) {
            latency.record(now - *origin);
            *count += 1;
        }
    }

    /// Every chat message (and, when they are reliable, every tick) reached every subscriber.
    fn reliable_complete(recorder: &SharedRecorder, subscribers: u32, ticks_reliable: bool) -> bool {
        let r = lock(recorder);
        let n = u64::from(subscribers);
        let chat_done = r.chat >= r.chat_origins.len() as u64 * n;
        chat_done && (!ticks_reliable || r.ticks >= r.tick_origins.len() as u64 * n)
    }

    fn side(recorder: &SharedRecorder, subscribers: u32) -> FanoutSide {
        let r = lock(recorder);
        let n = u64::from(subscribers);
        let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        let (ticks_sent, chat_sent) = (r.tick_origins.len() as u64, r.chat_origins.len() as u64);
        FanoutSide {
            ticks_sent,
            delivered_pct: pct(r.ticks, ticks_sent * n),
            stale_pct: pct(r.stale, r.ticks + r.stale),
            tick_latency: r.tick_latency.summary(),
            chat_sent,
            chat_delivered_pct: pct(r.chat, chat_sent * n),
            chat_latency: r.chat_latency.summary(),
        }
    }
}

/// Where the fan-out's servers are.
struct Servers {
    quiver: QuiverServer,
    websocket: Option<SocketAddr>,
    _relay: Option<Relay>,
    _data_dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

/// Runs the fan-out benchmark against an in-process server, or the external one `config.server` names; with
/// `compare_websocket`, the same workload through a WebSocket hub too.
pub async fn run_fanout(
    config: FanoutConfig,
    progress: impl Fn(&str) + Send + Sync + 'static,
) -> Result<FanoutReport, BenchError> {
    config.check()?;
    namespaces::check(config.profile.as_ref(), config.compare_websocket, config.netns, config.server.is_some())?;
    let progress: Progress = Arc::new(progress);
    let ((quiver, websocket), emulator) = match config.netns {
        None => {
            let servers = start_servers(&config, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            (measure_sides(&config, &servers, &progress).await?, namespaces::loopback(config.profile.as_ref()))
        }
        Some(backend) => {
            let server_config = FanoutConfig { profile: None, ..config.clone() };
            let client_config = config.clone();
            namespaces::across(
                &config.profile.clone().unwrap_or_default(),
                backend,
                move |ip| async move { start_servers(&server_config, ip).await },
                move |servers: Servers| async move { measure_sides(&client_config, &servers, &progress).await },
            )
            .await?
        }
    };
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
            "compare_websocket": config.compare_websocket,
            "emulator": emulator,
        }),
        quiver,
        websocket,
    })
}

async fn measure_sides(
    config: &FanoutConfig,
    servers: &Servers,
    progress: &Progress,
) -> Result<(FanoutSide, Option<FanoutSide>), BenchError> {
    let quiver = measure_quiver(config, servers, progress).await?;
    let websocket = match servers.websocket {
        Some(hub) => Some(measure_websocket(config, hub, progress).await?),
        None => None,
    };
    Ok((quiver, websocket))
}

/// The Quiver server (unless external), the WebSocket hub (when compared), bound to `ip`, and the UDP relay in
/// front of Quiver when the profile asks for one.
async fn start_servers(config: &FanoutConfig, ip: IpAddr) -> Result<Servers, BenchError> {
    let stop = CancellationToken::new();
    let data_dir = tempfile::tempdir().map_err(BenchError::io("temporary directory"))?;
    let (server, token, tuning) = (config.server.as_ref(), config.token.as_ref(), &TransportTuning::default());
    let quiver = QuiverServer::start(server, token, tuning, ip, data_dir.path(), &stop).await?;
    let max_clients = config.subscribers as usize + 4;
    let (addr, relay) = through_relay(config.profile.as_ref(), quiver.addr, max_clients)?;
    let websocket = if config.compare_websocket {
        Some(websocket_hub(ip, stop.clone()).await.map_err(BenchError::io("WebSocket hub"))?)
    } else {
        None
    };
    Ok(Servers {
        quiver: QuiverServer { addr, ..quiver },
        websocket,
        _relay: relay,
        _data_dir: data_dir,
        _stop: stop.drop_guard(),
    })
}

/// Sends ticks (`publish`) and chat messages (`post(poster, payload)`, the subscribers in turn) on schedule,
/// recording the measured ones' send times, then waits for stragglers.
async fn drive(
    config: &FanoutConfig,
    recorder: &SharedRecorder,
    start_at: Instant,
    ticks_reliable: bool,
    mut publish: impl FnMut(Vec<u8>) + Send,
    mut post: impl FnMut(usize, Vec<u8>) + Send,
) {
    let plan = |rate| Schedule::at_rate(rate, config.warmup, config.duration, start_at);
    let tick_plan = plan(config.rate);
    // No chat: an empty schedule (any interval).
    let chat_plan = if config.chat_rate > 0.0 {
        plan(config.chat_rate)
    } else {
        Schedule { start: start_at, interval: Duration::from_secs(1), count: 0, warmup: 0 }
    };
    let size = config.size;
    let ticks = async {
        for i in 0..tick_plan.count {
            let origin = tick_plan.due(i).await;
            if i >= tick_plan.warmup {
                lock(recorder).tick_origins.insert(i, origin);
            }
            publish(payload(0, i, size));
        }
    };
    let subscribers = config.subscribers as usize;
    let chat = async {
        if config.chat_rate <= 0.0 {
            return;
        }
        for i in 0..chat_plan.count {
            let origin = chat_plan.due(i).await;
            if i >= chat_plan.warmup {
                lock(recorder).chat_origins.insert(i, origin);
            }
            post((i % subscribers as u64) as usize, payload(0, i, 64));
        }
    };
    tokio::join!(ticks, chat);
    let drained = Instant::now();
    tokio::time::sleep(namespaces::drain(config.profile.as_ref())).await;
    // Reliable deliveries still being retransmitted are waited for (up to a cap), not counted lost.
    while !Recorder::reliable_complete(recorder, config.subscribers, ticks_reliable)
        && drained.elapsed() < RELIABLE_DRAIN_CAP
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When sending starts, called once every connection is set up (over an impaired link that takes seconds for
/// many clients; a schedule fixed before would count the set-up as latency).
fn start_time() -> Instant {
    Instant::now() + Duration::from_millis(200)
}

async fn measure_quiver(
    config: &FanoutConfig,
    servers: &Servers,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    let tuning = TransportTuning::default();
    let connect = || servers.quiver.connect(&tuning);
    // Names of this run only, so runs against a shared server do not see each other's traffic.
    let run_id = rand::random::<u32>();
    let channel = format!("bench.fanout.{run_id:08x}");
    let chat_room = format!("bench.fanout.{run_id:08x}.chat");
    progress("quiver: connecting subscribers");
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    let mut subscribers = Vec::new();
    for _ in 0..config.subscribers {
        let client = connect().await?;
        let mut subscription = client.subscribe(&channel).await.map_err(BenchError::request("subscribe"))?;
        let mut room = client.join(&chat_room).await.map_err(BenchError::request("join"))?;
        let (recorder, stop) = (recorder.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ticks = subscription.next_batch() => for tick in ticks {
                        Recorder::received(&recorder, Kind::Tick, &tick.payload);
                    },
                    event = room.next() => match event {
                        Some(RoomEvent::Message(m)) => Recorder::received(&recorder, Kind::Chat, &m.body),
                        Some(_) => {}
                        None => return,
                    },
                    () = stop.cancelled() => {
                        lock(&recorder).stale += subscription.stats().stale_dropped;
                        return;
                    }
                }
            }
        });
        subscribers.push(client);
    }
    let publisher_client = connect().await?;
    let publisher = publisher_client.publisher(&channel).await.map_err(BenchError::request("publish"))?;
    progress("quiver: measuring");
    drive(
        config,
        &recorder,
        start_time(),
        false,
        |tick| drop(publisher.send(tick)),
        |who, message| drop(subscribers[who].post(&chat_room, message)),
    )
    .await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Recorder::side(&recorder, config.subscribers))
}

/// First byte of a hub message: a tick goes to everyone else, a chat message to everyone.
const HUB_TICK: u8 = 0;
const HUB_CHAT: u8 = 1;

/// The WebSocket side: the same subscribers, publisher and chat posters, each its own WebSocket connection to a
/// minimal hub, ticks and chat sharing the connection as in WebSocket apps.
async fn measure_websocket(
    config: &FanoutConfig,
    hub: SocketAddr,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    progress("websocket: connecting subscribers");
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    let mut posters = Vec::new();
    for _ in 0..config.subscribers {
        let (queue, mut incoming) = websocket::connect(hub, &stop).await?;
        let recorder = recorder.clone();
        until_stopped(&stop, async move {
            while let Some(Ok(message)) = incoming.next().await {
                match message.into_data().split_first() {
                    Some((&HUB_TICK, rest)) => Recorder::received(&recorder, Kind::Tick, rest),
                    Some((&HUB_CHAT, rest)) => Recorder::received(&recorder, Kind::Chat, rest),
                    _ => {}
                }
            }
        });
        posters.push(queue);
    }
    let (publisher, mut publisher_incoming) = websocket::connect(hub, &stop).await?;
    // The hub sends chat to the publisher's connection too: read it, or TCP backpressure would stall the hub's
    // task for that connection, and with it the ticks it reads.
    until_stopped(&stop, async move { while let Some(Ok(_)) = publisher_incoming.next().await {} });
    let framed = |kind: u8, mut body: Vec<u8>| {
        body.insert(0, kind);
        Message::binary(body)
    };
    progress("websocket: measuring");
    drive(
        config,
        &recorder,
        start_time(),
        true,
        |tick| drop(publisher.send(framed(HUB_TICK, tick))),
        |who, message| drop(posters[who].send(framed(HUB_CHAT, message))),
    )
    .await;
    stop.cancel();
    Ok(Recorder::side(&recorder, config.subscribers))
}

/// A minimal WebSocket hub on `ip` (one channel, one room): each binary message is forwarded to every other
/// connection (a tick, first byte 0) or to every connection (a chat message, first byte 1), through one
/// broadcast queue; a connection that falls 4096 messages behind loses the oldest, as a hub's bounded client
/// queue would. Until `stop`.
async fn websocket_hub(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let (hub, _) = tokio::sync::broadcast::channel::<(u64, Message)>(4096);
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of descriptors and the like: do not spin.
                        tracing::warn!(%err, "WebSocket hub: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            next_id += 1;
            let (id, hub, mut feed, stop) = (next_id, hub.clone(), hub.subscribe(), stop.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (mut sink, mut incoming) = ws.split();
                loop {
                    tokio::select! {
                        message = incoming.next() => match message {
                            Some(Ok(message)) if message.is_binary() => { let _ = hub.send((id, message)); }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        forwarded = feed.recv() => match forwarded {
                            Ok((from, message)) => {
                                let chat = message.clone().into_data().first() == Some(&HUB_CHAT);
                                if (from != id || chat) && sink.send(message).await.is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_out_of_range_is_named() {
        let config = FanoutConfig {
            subscribers: 1,
            rate: 10.0,
            size: 64,
            chat_rate: 0.0,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            profile: None,
            server: None,
            token: None,
            compare_websocket: false,
            netns: None,
        };
        assert!(config.check().is_ok(), "no chat is fine");
        let err = FanoutConfig { subscribers: 0, ..config.clone() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "subscribers", .. }), "{err:?}");
        let err = FanoutConfig { chat_rate: -1.0, ..config.clone() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "chat_rate", .. }), "{err:?}");
        assert_eq!(err.to_string(), "chat_rate must be 0 or above, got -1");
        let err = FanoutConfig { duration: Duration::ZERO, ..config }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "duration", .. }), "{err:?}");
    }
}
