//! `quiver bench rtt`: N clients each send at a fixed rate and time the round trip, over Quiver's tick datagrams
//! (publish, then receive the own tick from the server's fan-out) and Quiver's room stream (post, then receive the
//! own message on the room stream), beside bare quinn datagram and stream echoes and a raw UDP echo.
//!
//! With `compare_websocket` it runs the head-to-head instead: each sender carries ticks and chat on one
//! connection, Quiver's (datagrams and a room stream) and a WebSocket's (one ordered TCP stream, as WebSocket apps
//! do), at the same rates. With `netns` the servers and the clients run in two network namespaces joined by the
//! netns emulator, so TCP and UDP cross the same impaired link.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use quiver_certs::Fingerprint;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    echo,
    namespaces::{self, Progress},
    series::{parse, payload, until_stopped, Report, Schedule, SeriesResult, SharedTally, Tally, RELIABLE_DRAIN_CAP},
    server::{through_relay, QuiverServer},
    websocket, BenchError,
};
use quiver_client::{Client, RoomEvent, TokenProvider, TrustOptions};
use quiver_transport::TransportTuning;

use crate::impair::{Backend, ImpairmentProfile, Relay};

/// Settings of a round-trip run.
#[derive(Debug, Clone)]
pub struct RttConfig {
    /// Concurrent senders per series.
    pub clients: u32,
    /// Messages per second per sender.
    pub rate: f64,
    /// Payload bytes per message (at least 12).
    pub size: usize,
    /// Measured time per series.
    pub duration: Duration,
    /// Time per series before measuring starts.
    pub warmup: Duration,
    /// Impairment applied to every transport (through one relay per target), if any.
    pub profile: Option<ImpairmentProfile>,
    /// An external Quiver server and how to trust it; `None` runs one in-process.
    pub server: Option<(String, TrustOptions)>,
    /// Tokens for an external server (the in-process one is given dev tokens).
    pub token: Option<TokenProvider>,
    /// Transport settings of the in-process Quiver server and the Quiver clients (the baselines keep quinn's).
    pub tuning: TransportTuning,
    /// Run the head-to-head with WebSocket over TCP instead of the five series: ticks at `rate` and chat at
    /// `chat_rate` per sender, on one Quiver connection and on one WebSocket connection. TCP cannot pass the UDP
    /// relay, so an impaired head-to-head needs `netns`.
    pub compare_websocket: bool,
    /// Chat messages per second per sender in the head-to-head.
    pub chat_rate: f64,
    /// Run servers and clients in two network namespaces joined by this emulator backend (Linux, root) instead
    /// of on loopback through the UDP relay. Needs the in-process server.
    pub netns: Option<Backend>,
}

impl RttConfig {
    /// Defaults for everything but what is measured: 1 sender, 200/s, 64 B, 10 s after 1 s, loopback.
    pub fn new() -> RttConfig {
        RttConfig {
            clients: 1,
            rate: 200.0,
            size: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            profile: None,
            server: None,
            token: None,
            tuning: TransportTuning::default(),
            compare_websocket: false,
            chat_rate: 50.0,
            netns: None,
        }
    }

    /// Refuses settings that cannot be run: no senders, a rate or duration of 0, a head-to-head without chat.
    pub fn check(&self) -> Result<(), BenchError> {
        let above_zero = |field: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(BenchError::BadConfig { field, value, expected: "above 0" })
            }
        };
        above_zero("clients", f64::from(self.clients))?;
        above_zero("rate", self.rate)?;
        above_zero("duration", self.duration.as_secs_f64())?;
        if self.compare_websocket {
            above_zero("chat_rate", self.chat_rate)?;
        }
        Ok(())
    }
}

impl Default for RttConfig {
    fn default() -> Self {
        Self::new()
    }
}

struct Targets {
    quiver: QuiverServer,
    udp: SocketAddr,
    quinn: SocketAddr,
    quinn_pin: Fingerprint,
    websocket: SocketAddr,
    _relays: Vec<Relay>,
    _data_dir: tempfile::TempDir,
    stop: CancellationToken,
}

/// Runs every series one after the other; `progress` hears what is starting.
pub async fn run_rtt(config: RttConfig, progress: impl Fn(&str) + Send + Sync + 'static) -> Result<Report, BenchError> {
    config.check()?;
    namespaces::check(config.profile.as_ref(), config.compare_websocket, config.netns, config.server.is_some())?;
    let progress: Progress = Arc::new(progress);
    let (series, emulator) = match config.netns {
        None => {
            let targets = start_targets(&config, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            let view = targets.view(&config, IpAddr::V4(Ipv4Addr::LOCALHOST));
            let series = run_series(config.clone(), view, progress).await;
            targets.stop.cancel();
            (series?, namespaces::loopback(config.profile.as_ref()))
        }
        Some(backend) => {
            // The link impairs; no relay in the servers' namespace.
            let server_config = RttConfig { profile: None, ..config.clone() };
            let client_config = config.clone();
            namespaces::across(
                &config.profile.clone().unwrap_or_default(),
                backend,
                move |ip| async move { start_targets(&server_config, ip).await },
                move |targets: Targets| async move {
                    let view = targets.view(&client_config, namespaces::CLIENT_BIND);
                    let series = run_series(client_config, view, progress).await;
                    targets.stop.cancel();
                    series
                },
            )
            .await?
        }
    };
    let config_json = serde_json::json!({
        "clients": config.clients,
        "rate_per_client": config.rate,
        "chat_rate_per_client": config.compare_websocket.then_some(config.chat_rate),
        "size": config.size,
        "duration_s": config.duration.as_secs_f64(),
        "warmup_s": config.warmup.as_secs_f64(),
        "profile": config.profile,
        "tuning": config.tuning.name,
        "server": config.server.as_ref().map(|(s, _)| s.clone()).unwrap_or_else(|| "in-process".into()),
        "compare_websocket": config.compare_websocket,
        "emulator": emulator,
    });
    Ok(Report { config: config_json, series })
}

type Runner = fn(RttConfig, Arc<TargetsView>) -> BoxedSeries;
type SingleRunner = fn(&'static str, RttConfig, Arc<TargetsView>) -> SingleSeries;

/// The series of a run, one after the other.
async fn run_series(config: RttConfig, view: TargetsView, progress: Progress) -> Result<Vec<SeriesResult>, BenchError> {
    let view = Arc::new(view);
    let five: [(&'static str, Option<&str>, SingleRunner); 5] = [
        ("udp echo", None, |n, c, t| Box::pin(udp_series(n, c, t))),
        ("quinn datagram echo", None, |n, c, t| Box::pin(quinn_series(n, c, t, false))),
        ("quiver datagram", Some("quinn datagram echo"), |n, c, t| Box::pin(quiver_datagram_series(n, c, t))),
        ("quinn stream echo", None, |n, c, t| Box::pin(quinn_series(n, c, t, true))),
        ("quiver stream", Some("quinn stream echo"), |n, c, t| Box::pin(quiver_stream_series(n, c, t))),
    ];
    let mut series = Vec::new();
    if config.compare_websocket {
        let head_to_head: [(&str, Runner); 2] = [
            ("quiver tick + chat", |c, t| Box::pin(quiver_mixed_series(c, t))),
            ("websocket tick + chat", |c, t| Box::pin(websocket_mixed_series(c, t))),
        ];
        for (name, runner) in head_to_head {
            progress(name);
            series.extend(runner(config.clone(), view.clone()).await?);
        }
        return Ok(series);
    }
    for (name, baseline, runner) in five {
        progress(name);
        let mut result = runner(name, config.clone(), view.clone()).await?;
        result.baseline = baseline.map(str::to_string);
        series.push(result);
    }
    Ok(series)
}

type SingleSeries = std::pin::Pin<Box<dyn std::future::Future<Output = Result<SeriesResult, BenchError>> + Send>>;
type BoxedSeries = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<SeriesResult>, BenchError>> + Send>>;

/// What the series need to know about the targets.
#[derive(Debug)]
struct TargetsView {
    websocket: SocketAddr,
    quiver: QuiverServer,
    udp: SocketAddr,
    quinn: SocketAddr,
    quinn_pin: Fingerprint,
    tuning: TransportTuning,
    /// Where the clients' sockets bind.
    client_ip: IpAddr,
}

impl Targets {
    fn view(&self, config: &RttConfig, client_ip: IpAddr) -> TargetsView {
        TargetsView {
            quiver: self.quiver.clone(),
            udp: self.udp,
            quinn: self.quinn,
            quinn_pin: self.quinn_pin,
            websocket: self.websocket,
            tuning: config.tuning.clone(),
            client_ip,
        }
    }
}

/// Starts the servers, bound to `ip`, and the relays in front of them when the profile asks for them.
async fn start_targets(config: &RttConfig, ip: IpAddr) -> Result<Targets, BenchError> {
    let stop = CancellationToken::new();
    let data_dir = tempfile::tempdir().map_err(BenchError::io("temporary directory"))?;
    let (cert, _) = quiver_certs::dev::load_or_generate(data_dir.path(), std::time::SystemTime::now())?;
    let quinn_pin = cert.fingerprint();
    let (server, token) = (config.server.as_ref(), config.token.as_ref());
    let quiver = QuiverServer::start(server, token, &config.tuning, ip, data_dir.path(), &stop).await?;
    let udp = echo::udp_echo(ip, stop.clone()).await.map_err(BenchError::io("UDP echo"))?;
    let quinn = echo::quinn_echo(ip, cert, stop.clone())?;
    let websocket = echo::websocket_echo(ip, stop.clone()).await.map_err(BenchError::io("WebSocket echo"))?;
    let (profile, max_clients) = (config.profile.as_ref(), config.clients as usize * 2 + 8);
    let (quiver_addr, quiver_relay) = through_relay(profile, quiver.addr, max_clients)?;
    let (udp, udp_relay) = through_relay(profile, udp, max_clients)?;
    let (quinn, quinn_relay) = through_relay(profile, quinn, max_clients)?;
    Ok(Targets {
        quiver: QuiverServer { addr: quiver_addr, ..quiver },
        udp,
        quinn,
        quinn_pin,
        websocket,
        _relays: [quiver_relay, udp_relay, quinn_relay].into_iter().flatten().collect(),
        _data_dir: data_dir,
        stop,
    })
}

/// One kind of message a sender sends: its schedule and where its latencies go.
struct Lane {
    plan: Schedule,
    tally: SharedTally,
}

/// Where every sender waits once it is set up: the schedules start together 200 ms after the last one arrives, so
/// set-up time (seconds for many clients over a lossy link) is never counted as latency.
#[derive(Clone)]
struct Gate {
    barrier: Arc<tokio::sync::Barrier>,
    start: Arc<std::sync::OnceLock<Instant>>,
}

/// A sender's lanes before the start: the tallies now (for its readers), the schedules at [`Lanes::start`].
struct Lanes {
    tallies: Vec<SharedTally>,
    /// Schedules with `start` not yet known; each lane's offset from the common start is in `offsets`.
    plans: Vec<Schedule>,
    offsets: Vec<Duration>,
    gate: Gate,
}

impl Lanes {
    /// Lane `k`'s tally.
    fn tally(&self, k: usize) -> SharedTally {
        self.tallies[k].clone()
    }

    /// Waits until every sender is set up, then returns the lanes with their schedules.
    async fn start(self) -> Vec<Lane> {
        self.gate.barrier.wait().await;
        let start = *self.gate.start.get_or_init(|| Instant::now() + Duration::from_millis(200));
        self.plans
            .into_iter()
            .zip(self.offsets)
            .zip(self.tallies)
            .map(|((plan, offset), tally)| Lane { plan: Schedule { start: start + offset, ..plan }, tally })
            .collect()
    }

    /// [`Lanes::start`] for a single lane.
    async fn start_one(self) -> Schedule {
        let lanes = self.start().await;
        lanes.first().map(|lane| lane.plan).unwrap_or_else(|| unreachable!("measure asks for one lane"))
    }

    /// [`Lanes::start`] for two lanes (ticks and chat).
    async fn start_two(self) -> (Lane, Lane) {
        let mut lanes = self.start().await.into_iter();
        match (lanes.next(), lanes.next()) {
            (Some(first), Some(second)) => (first, second),
            _ => unreachable!("the head-to-head asks for two lanes"),
        }
    }
}

/// A lane to measure: its name, messages per second per sender, and whether its path is reliable (then the run
/// waits for retransmissions, up to [`RELIABLE_DRAIN_CAP`], before counting a message lost).
type LaneSpec<'a> = (&'a str, f64, bool);

/// Runs one sender per client (each given its index, its [`Lanes`], one per [`LaneSpec`] of `lanes`, and a token
/// cancelled once the drain is over) and returns one result per lane. Every sender must reach
/// [`Lanes::start`] or fail.
async fn measure_lanes<F, Fut>(
    config: &RttConfig,
    lanes: &[LaneSpec<'_>],
    sender: F,
) -> Result<Vec<SeriesResult>, BenchError>
where
    F: Fn(u32, Lanes, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let tallies: Vec<SharedTally> = lanes.iter().map(|_| Tally::shared()).collect();
    // A second lane starts half its interval after the first.
    let offsets: Vec<Duration> = lanes
        .iter()
        .enumerate()
        .map(|(k, &(_, rate, _))| if k == 0 { Duration::ZERO } else { Duration::from_secs_f64(0.5 / rate) })
        .collect();
    let plans: Vec<Schedule> = lanes
        .iter()
        .map(|&(_, rate, _)| Schedule::at_rate(rate, config.warmup, config.duration, Instant::now()))
        .collect();
    let gate = Gate {
        barrier: Arc::new(tokio::sync::Barrier::new(config.clients as usize)),
        start: Arc::new(std::sync::OnceLock::new()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for who in 0..config.clients {
        let lanes =
            Lanes { tallies: tallies.clone(), plans: plans.clone(), offsets: offsets.clone(), gate: gate.clone() };
        tasks.spawn(sender(who, lanes, stop.clone()));
    }
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done.map_err(BenchError::from).and_then(|sent| sent) {
            if outcome.is_ok() {
                // The others may be waiting at the gate for this one: stop them.
                tasks.abort_all();
                outcome = Err(err);
            }
        }
    }
    if outcome.is_ok() {
        let drained = Instant::now();
        tokio::time::sleep(namespaces::drain(config.profile.as_ref())).await;
        let pending = || lanes.iter().zip(&tallies).any(|(&(_, _, reliable), t)| reliable && Tally::outstanding(t) > 0);
        while pending() && drained.elapsed() < RELIABLE_DRAIN_CAP {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    outcome
        .map(|()| lanes.iter().zip(&tallies).map(|(&(name, _, _), tally)| Tally::result(tally, name, None)).collect())
}

/// [`measure_lanes`] with one lane at the configured rate.
async fn measure<F, Fut>(config: &RttConfig, name: &str, reliable: bool, sender: F) -> Result<SeriesResult, BenchError>
where
    F: Fn(u32, Lanes, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let results = measure_lanes(config, &[(name, config.rate, reliable)], sender).await?;
    Ok(results.into_iter().next().unwrap_or_else(|| unreachable!("one lane, one result")))
}

/// Sends every message of `plan` with `send`, which must not wait.
async fn send_scheduled(plan: &Schedule, who: u32, tally: &SharedTally, mut send: impl FnMut(u64)) {
    for i in 0..plan.count {
        let origin = plan.due(i).await;
        Tally::sent(tally, plan, who, i, origin);
        send(i);
    }
}

async fn udp_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, BenchError> {
    let size = config.size;
    let (target, client_ip) = (targets.udp, targets.client_ip);
    measure(&config, name, false, |who, lanes, stop| async move {
        let socket = tokio::net::UdpSocket::bind((client_ip, 0)).await.map_err(BenchError::io("UDP client socket"))?;
        let socket = Arc::new(socket);
        socket.connect(target).await.map_err(BenchError::io("UDP client socket"))?;
        let tally = lanes.tally(0);
        let (reader, reader_tally) = (socket.clone(), tally.clone());
        until_stopped(&stop, async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                if let Ok(len) = reader.recv(&mut buf).await {
                    if let Some((w, i)) = parse(&buf[..len]) {
                        Tally::received(&reader_tally, w, i);
                    }
                }
            }
        });
        let plan = lanes.start_one().await;
        for i in 0..plan.count {
            let origin = plan.due(i).await;
            Tally::sent(&tally, &plan, who, i, origin);
            let _ = socket.send(&payload(who, i, size)).await;
        }
        Ok(())
    })
    .await
}

async fn quinn_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
    stream: bool,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, stream, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let tally = lanes.tally(0);
            let mut client_config = quiver_client::quinn_client_config(
                &TrustOptions::Pin(targets.quinn_pin),
                targets.quinn,
                echo::ECHO_ALPN,
            )?;
            // Bare quinn: its default transport settings, not Quiver's.
            client_config.transport_config(Arc::new(quinn::TransportConfig::default()));
            let endpoint = quinn::Endpoint::client(SocketAddr::new(targets.client_ip, 0))
                .map_err(BenchError::io("quinn client endpoint"))?;
            let conn = endpoint.connect_with(client_config, targets.quinn, "localhost")?.await?;
            let reader_tally = tally.clone();
            if stream {
                let (mut send, mut recv) = conn.open_bi().await?;
                until_stopped(&stop, async move {
                    let mut buf = vec![0u8; size];
                    while recv.read_exact(&mut buf).await.is_ok() {
                        if let Some((w, i)) = parse(&buf) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                });
                let plan = lanes.start_one().await;
                for i in 0..plan.count {
                    let origin = plan.due(i).await;
                    Tally::sent(&tally, &plan, who, i, origin);
                    send.write_all(&payload(who, i, size)).await?;
                }
            } else {
                let reader = conn.clone();
                until_stopped(&stop, async move {
                    while let Ok(datagram) = reader.read_datagram().await {
                        if let Some((w, i)) = parse(&datagram) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                });
                let plan = lanes.start_one().await;
                send_scheduled(&plan, who, &tally, |i| {
                    let _ = conn.send_datagram(payload(who, i, size).into());
                })
                .await;
            }
            // Keep the connection through the drain.
            until_stopped(&stop, async move {
                std::future::pending::<()>().await;
                drop((conn, endpoint));
            });
            Ok(())
        }
    })
    .await
}

/// Marks a chat message (in the sender field) on the WebSocket, where ticks and chat share one connection.
const CHAT_BIT: u32 = 1 << 31;

/// The head-to-head's WebSocket side: one WebSocket-over-TCP connection per sender (TCP_NODELAY) carrying ticks and
/// chat as binary messages, echoed by the server; a writer task sends whatever either schedule hands it, as a
/// WebSocket app's outgoing queue does.
async fn websocket_mixed_series(config: RttConfig, targets: Arc<TargetsView>) -> Result<Vec<SeriesResult>, BenchError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let size = config.size.max(12);
    let lanes = [("websocket tick", config.rate, true), ("websocket chat", config.chat_rate, true)];
    measure_lanes(&config, &lanes, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let (queue, mut incoming) = websocket::connect(targets.websocket, &stop).await?;
            let (tick_tally, chat_tally) = (lanes.tally(0), lanes.tally(1));
            until_stopped(&stop, async move {
                while let Some(Ok(message)) = incoming.next().await {
                    match parse(&message.into_data()) {
                        Some((w, i)) if w & CHAT_BIT != 0 => Tally::received(&chat_tally, w & !CHAT_BIT, i),
                        Some((w, i)) => Tally::received(&tick_tally, w, i),
                        None => {}
                    }
                }
            });
            let (ticks, chat) = lanes.start_two().await;
            let send = |lane: &Lane, mark: u32| {
                let queue = queue.clone();
                let (plan, tally) = (lane.plan, lane.tally.clone());
                async move {
                    send_scheduled(&plan, who, &tally, |i| {
                        let _ = queue.send(Message::binary(payload(who | mark, i, size)));
                    })
                    .await
                }
            };
            tokio::join!(send(&ticks, 0), send(&chat, CHAT_BIT));
            Ok(())
        }
    })
    .await
}

/// The head-to-head's Quiver side: one connection per sender, ticks published as datagrams on a channel it
/// subscribes to, chat posted into a room it has joined, at the same rates as the WebSocket side.
async fn quiver_mixed_series(config: RttConfig, targets: Arc<TargetsView>) -> Result<Vec<SeriesResult>, BenchError> {
    let size = config.size.max(12);
    let lanes = [("quiver tick", config.rate, false), ("quiver chat", config.chat_rate, true)];
    let mut results = measure_lanes(&config, &lanes, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let client = quiver_client(&targets).await?;
            let name = format!("bench.h2h.{who}.{}", std::process::id());
            let mut subscription = client.subscribe(&name).await.map_err(BenchError::request("subscribe"))?;
            let publisher = client.publisher(&name).await.map_err(BenchError::request("publish"))?;
            let mut room = client.join(&name).await.map_err(BenchError::request("join"))?;
            let tick_tally = lanes.tally(0);
            until_stopped(&stop, async move {
                loop {
                    for tick in subscription.next_batch().await {
                        if let Some((w, i)) = parse(&tick.payload) {
                            Tally::received(&tick_tally, w, i);
                        }
                    }
                }
            });
            let chat_tally = lanes.tally(1);
            until_stopped(&stop, async move {
                while let Some(event) = room.next().await {
                    if let RoomEvent::Message(m) = event {
                        if let Some((w, i)) = parse(&m.body) {
                            Tally::received(&chat_tally, w, i);
                        }
                    }
                }
            });
            let (ticks, chat) = lanes.start_two().await;
            let send_ticks = send_scheduled(&ticks.plan, who, &ticks.tally, |i| {
                if let Err(err) = publisher.send(payload(who, i, size)) {
                    tracing::debug!(%err, "tick not sent");
                }
            });
            // Queued at the call; the acknowledgement is not what is measured.
            let send_chat =
                send_scheduled(&chat.plan, who, &chat.tally, |i| drop(client.post(&name, payload(who, i, size))));
            tokio::join!(send_ticks, send_chat);
            close_after(&stop, client);
            Ok(())
        }
    })
    .await?;
    // Each Quiver series is compared with its WebSocket counterpart.
    for (result, baseline) in results.iter_mut().zip(["websocket tick", "websocket chat"]) {
        result.baseline = Some(baseline.to_string());
    }
    Ok(results)
}

async fn quiver_client(targets: &TargetsView) -> Result<Client, BenchError> {
    targets.quiver.connect(&targets.tuning).await
}

/// Keeps `client` connected through the drain, then closes it.
fn close_after(stop: &CancellationToken, client: Client) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        client.close().await;
    });
}

async fn quiver_datagram_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, false, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let tally = lanes.tally(0);
            let client = quiver_client(&targets).await?;
            let channel = format!("bench.rtt.{who}.{}", std::process::id());
            let mut subscription = client.subscribe(&channel).await.map_err(BenchError::request("subscribe"))?;
            let publisher = client.publisher(&channel).await.map_err(BenchError::request("publish"))?;
            let reader_tally = tally.clone();
            // Every accepted tick, not only the newest: a tick superseded on arrival still arrived.
            until_stopped(&stop, async move {
                loop {
                    for tick in subscription.next_batch().await {
                        if let Some((w, i)) = parse(&tick.payload) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                }
            });
            let plan = lanes.start_one().await;
            send_scheduled(&plan, who, &tally, |i| {
                if let Err(err) = publisher.send(payload(who, i, size)) {
                    tracing::debug!(%err, "tick not sent");
                }
            })
            .await;
            close_after(&stop, client);
            Ok(())
        }
    })
    .await
}

async fn quiver_stream_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, true, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let tally = lanes.tally(0);
            let client = quiver_client(&targets).await?;
            let room_name = format!("bench.rtt.{who}.{}", std::process::id());
            let mut room = client.join(&room_name).await.map_err(BenchError::request("join"))?;
            let reader_tally = tally.clone();
            until_stopped(&stop, async move {
                while let Some(event) = room.next().await {
                    if let RoomEvent::Message(m) = event {
                        if let Some((w, i)) = parse(&m.body) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                }
            });
            let plan = lanes.start_one().await;
            // Queued at the call; the acknowledgement is not what is measured.
            send_scheduled(&plan, who, &tally, |i| drop(client.post(&room_name, payload(who, i, size)))).await;
            close_after(&stop, client);
            Ok(())
        }
    })
    .await
}

/// Writes a report as JSON.
pub fn write_json(report: &impl serde::Serialize, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).map_err(|source| BenchError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(clients: u32) -> RttConfig {
        RttConfig {
            clients,
            rate: 1000.0,
            duration: Duration::from_millis(20),
            warmup: Duration::ZERO,
            ..RttConfig::new()
        }
    }

    #[tokio::test]
    async fn schedules_start_once_every_sender_is_set_up() {
        let started = Instant::now();
        let lanes = [("a", 1000.0, true), ("b", 500.0, false)];
        let results = measure_lanes(&config(3), &lanes, |who, lanes, _stop| async move {
            // A slow set-up (sender 2 takes 300 ms to connect) must not count as latency for anyone.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(who) + 100)).await;
            let lanes = lanes.start().await;
            assert!(lanes[0].plan.start >= started + Duration::from_millis(300 + 200), "start before set-up ended");
            assert_eq!(lanes[1].plan.start - lanes[0].plan.start, Duration::from_millis(1), "half of b's interval");
            for lane in &lanes {
                send_scheduled(&lane.plan, who, &lane.tally, |i| Tally::received(&lane.tally, who, i)).await;
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!((results[0].sent, results[1].sent), (60, 30));
        assert!(results[0].latency.max_us < 50_000, "{:?}", results[0]);
    }

    #[tokio::test]
    async fn a_setting_out_of_range_is_named() {
        let err = run_rtt(RttConfig { rate: 0.0, ..config(1) }, |_| {}).await.unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "rate", .. }), "{err:?}");
        assert_eq!(err.to_string(), "rate must be above 0, got 0");
        let err = RttConfig { clients: 0, ..config(1) }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "clients", .. }), "{err:?}");
        let head_to_head = RttConfig { compare_websocket: true, chat_rate: f64::NAN, ..config(1) };
        let err = head_to_head.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "chat_rate", .. }), "{err:?}");
        assert!(RttConfig { chat_rate: 0.0, ..config(1) }.check().is_ok(), "chat rate only matters head to head");
    }

    #[tokio::test]
    async fn a_sender_that_fails_before_the_start_stops_the_others() {
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            measure(&config(3), "x", true, |who, lanes, _stop| async move {
                if who == 1 {
                    return Err(BenchError::io("connecting")(std::io::ErrorKind::ConnectionRefused.into()));
                }
                lanes.start_one().await;
                Ok(())
            }),
        )
        .await
        .expect("the others waited forever at the gate");
        let err = outcome.unwrap_err();
        assert!(matches!(err, BenchError::Io { doing: "connecting", .. }), "{err:?}");
    }
}
