//! `quiver bench rtt`: N clients each send at a fixed rate and time the round trip, over Quiver's tick datagrams
//! (publish, then receive the own tick from the server's fan-out) and Quiver's room stream (post, then receive the
//! own message on the room stream), beside bare quinn datagram and stream echoes and a raw UDP echo.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use quiver_certs::Fingerprint;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    echo,
    series::{parse, payload, Report, Schedule, SeriesResult, SharedTally, Tally},
};
use quiver_server::net::transport::TransportTuning;

use crate::{
    impair::{ImpairmentProfile, Relay, RelayConfig},
    Client, ConnectOptions, RoomEvent, TokenProvider, TrustOptions,
};

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
    /// Add a WebSocket-over-TCP echo series (what a WebSocket hub's clients see). TCP cannot pass the UDP relay,
    /// so this is refused with an impairment profile until the netns emulator exists.
    pub compare_websocket: bool,
}

struct Targets {
    quiver: SocketAddr,
    quiver_trust: TrustOptions,
    quiver_token: Option<TokenProvider>,
    udp: SocketAddr,
    quinn: SocketAddr,
    quinn_pin: Fingerprint,
    websocket: SocketAddr,
    _relays: Vec<Relay>,
    _data_dir: Option<tempfile::TempDir>,
    stop: CancellationToken,
}

/// Runs every series one after the other; `progress` hears what is starting.
pub async fn run_rtt(config: RttConfig, progress: impl Fn(&str)) -> Result<Report, String> {
    let rate_ok = config.rate.is_finite() && config.rate > 0.0;
    if config.clients == 0 || !rate_ok || config.duration.is_zero() {
        return Err("clients, rate and duration must be above 0".into());
    }
    if config.compare_websocket && config.profile.is_some() {
        return Err("the WebSocket baseline runs over TCP, which the UDP relay cannot impair: impaired WebSocket \
                    comparisons need the netns emulator (not built yet); run --compare websocket without a profile"
            .into());
    }
    let targets = start_targets(&config).await?;
    let mut series = Vec::new();
    type Runner = fn(&'static str, RttConfig, Arc<TargetsView>) -> BoxedSeries;
    let view = Arc::new(TargetsView {
        quiver: targets.quiver.to_string(),
        quiver_trust: targets.quiver_trust.clone(),
        quiver_token: targets.quiver_token.clone(),
        udp: targets.udp,
        quinn: targets.quinn,
        quinn_pin: targets.quinn_pin,
        websocket: targets.websocket,
        tuning: config.tuning.clone(),
    });
    let plan: [(&'static str, Option<&'static str>, Runner); 5] = [
        ("udp echo", None, |n, c, t| Box::pin(udp_series(n, c, t))),
        ("quinn datagram echo", None, |n, c, t| Box::pin(quinn_series(n, c, t, false))),
        ("quiver datagram", Some("quinn datagram echo"), |n, c, t| Box::pin(quiver_datagram_series(n, c, t))),
        ("quinn stream echo", None, |n, c, t| Box::pin(quinn_series(n, c, t, true))),
        ("quiver stream", Some("quinn stream echo"), |n, c, t| Box::pin(quiver_stream_series(n, c, t))),
    ];
    let websocket: [(&'static str, Option<&'static str>, Runner); 1] =
        [("websocket echo", Some("quiver stream"), |n, c, t| Box::pin(websocket_series(n, c, t)))];
    let extra = if config.compare_websocket { &websocket[..] } else { &[] };
    for (name, baseline, runner) in plan.into_iter().chain(extra.iter().copied()) {
        progress(name);
        let mut result = runner(name, config.clone(), view.clone()).await?;
        result.baseline = baseline.map(str::to_string);
        series.push(result);
    }
    targets.stop.cancel();
    let config_json = serde_json::json!({
        "clients": config.clients,
        "rate_per_client": config.rate,
        "size": config.size,
        "duration_s": config.duration.as_secs_f64(),
        "warmup_s": config.warmup.as_secs_f64(),
        "profile": config.profile,
        "tuning": config.tuning.name,
        "server": config.server.as_ref().map(|(s, _)| s.clone()).unwrap_or_else(|| "in-process".into()),
        "compare_websocket": config.compare_websocket,
    });
    Ok(Report { config: config_json, series })
}

type BoxedSeries = std::pin::Pin<Box<dyn std::future::Future<Output = Result<SeriesResult, String>> + Send>>;

/// What the series need to know about the targets.
#[derive(Debug)]
struct TargetsView {
    websocket: SocketAddr,
    quiver: String,
    quiver_trust: TrustOptions,
    quiver_token: Option<TokenProvider>,
    udp: SocketAddr,
    quinn: SocketAddr,
    quinn_pin: Fingerprint,
    tuning: TransportTuning,
}

async fn start_targets(config: &RttConfig) -> Result<Targets, String> {
    let stop = CancellationToken::new();
    let data_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let (cert, _) = quiver_certs::dev::load_or_generate(data_dir.path(), std::time::SystemTime::now())
        .map_err(|e| e.to_string())?;
    let quinn_pin = cert.fingerprint();
    let (quiver, quiver_trust, quiver_token, data_dir) = match &config.server {
        Some((addr, trust)) => {
            let addr = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr}: no address"))?;
            (addr, trust.clone(), config.token.clone(), data_dir)
        }
        None => {
            let server_config = quiver_server::ServerConfig {
                tuning: config.tuning.clone(),
                ..quiver_server::ServerConfig::dev(
                    "127.0.0.1:0".parse().map_err(|_| "address")?,
                    data_dir.path().into(),
                )
            };
            let server = quiver_server::Server::bind(server_config).map_err(|e| e.to_string())?;
            let addr = server.local_addr();
            tokio::spawn(server.run(stop.clone()));
            let sub = format!("bench-{:08x}", rand::random::<u32>());
            let token = TokenProvider::dev(data_dir.path().to_owned(), sub);
            (addr, TrustOptions::Pin(quinn_pin), Some(token), data_dir)
        }
    };
    let udp = echo::udp_echo(stop.clone()).await.map_err(|e| format!("UDP echo: {e}"))?;
    let quinn = echo::quinn_echo(cert, stop.clone())?;
    let websocket = echo::websocket_echo(stop.clone()).await.map_err(|e| format!("WebSocket echo: {e}"))?;
    let mut relays = Vec::new();
    let mut via = |upstream: SocketAddr| -> Result<SocketAddr, String> {
        match &config.profile {
            Some(profile) if !profile.is_clean() => {
                let relay = Relay::start(RelayConfig {
                    listen: "127.0.0.1:0".parse().map_err(|_| "address")?,
                    upstream,
                    profile: profile.clone(),
                    max_clients: config.clients as usize * 2 + 8,
                })
                .map_err(|e| format!("relay: {e}"))?;
                let addr = relay.local_addr();
                relays.push(relay);
                Ok(addr)
            }
            _ => Ok(upstream),
        }
    };
    let (quiver, udp, quinn) = (via(quiver)?, via(udp)?, via(quinn)?);
    Ok(Targets {
        quiver,
        quiver_trust,
        quiver_token,
        udp,
        quinn,
        quinn_pin,
        websocket,
        _relays: relays,
        _data_dir: Some(data_dir),
        stop,
    })
}

fn schedule(config: &RttConfig, start: Instant) -> Schedule {
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let warmup = (config.warmup.as_secs_f64() * config.rate).round() as u64;
    let count = warmup + (config.duration.as_secs_f64() * config.rate).round() as u64;
    Schedule { start, interval, count, warmup }
}

/// How long replies may still arrive after the last send.
fn drain(config: &RttConfig) -> Duration {
    let path_ms =
        config.profile.as_ref().map_or(0.0, |p| p.up.delay_ms + p.up.jitter_ms + p.down.delay_ms + p.down.jitter_ms);
    Duration::from_millis(1000) + Duration::from_secs_f64(path_ms * 4.0 / 1000.0)
}

/// Runs one sender per client (each given its index, the shared schedule, the tally and a token cancelled once
/// the drain is over) and returns the tally's result.
async fn measure<F, Fut>(config: &RttConfig, name: &str, sender: F) -> Result<SeriesResult, String>
where
    F: Fn(u32, Schedule, SharedTally, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let tally = Tally::shared();
    let stop = CancellationToken::new();
    // Everyone starts together, a little after set-up.
    let start = Instant::now() + Duration::from_millis(200);
    let plan = schedule(config, start);
    let mut tasks = tokio::task::JoinSet::new();
    for who in 0..config.clients {
        tasks.spawn(sender(who, plan, tally.clone(), stop.clone()));
    }
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done.map_err(|e| e.to_string()).and_then(|sent| sent) {
            outcome = Err(err);
        }
    }
    if outcome.is_ok() {
        tokio::time::sleep(drain(config)).await;
    }
    stop.cancel();
    outcome.map(|()| Tally::result(&tally, name, None))
}

/// Runs `task` until `stop` is cancelled (readers, and keeping connections open through the drain).
fn until_stopped(stop: &CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Sends every message of `plan` with `send`, which must not wait.
async fn send_scheduled(plan: &Schedule, who: u32, tally: &SharedTally, mut send: impl FnMut(u64)) {
    for i in 0..plan.count {
        let origin = plan.due(i).await;
        Tally::sent(tally, plan, who, i, origin);
        send(i);
    }
}

async fn udp_series(name: &'static str, config: RttConfig, targets: Arc<TargetsView>) -> Result<SeriesResult, String> {
    let size = config.size;
    let target = targets.udp;
    measure(&config, name, |who, plan, tally, stop| async move {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?);
        socket.connect(target).await.map_err(|e| e.to_string())?;
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
) -> Result<SeriesResult, String> {
    let size = config.size.max(12);
    measure(&config, name, |who, plan, tally, stop| {
        let targets = targets.clone();
        async move {
            let mut client_config =
                crate::quinn_client_config(&TrustOptions::Pin(targets.quinn_pin), targets.quinn, echo::ECHO_ALPN)
                    .map_err(|e| e.to_string())?;
            // Bare quinn: its default transport settings, not Quiver's.
            client_config.transport_config(Arc::new(quinn::TransportConfig::default()));
            let endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "address")?).map_err(|e| e.to_string())?;
            let conn = endpoint
                .connect_with(client_config, targets.quinn, "localhost")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("quinn echo: {e}"))?;
            let reader_tally = tally.clone();
            if stream {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                until_stopped(&stop, async move {
                    let mut buf = vec![0u8; size];
                    while recv.read_exact(&mut buf).await.is_ok() {
                        if let Some((w, i)) = parse(&buf) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                });
                for i in 0..plan.count {
                    let origin = plan.due(i).await;
                    Tally::sent(&tally, &plan, who, i, origin);
                    send.write_all(&payload(who, i, size)).await.map_err(|e| e.to_string())?;
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

/// WebSocket over TCP: one connection per sender, binary messages echoed (the reliable path a WebSocket hub
/// offers; ticks would share this one ordered stream).
async fn websocket_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let size = config.size.max(12);
    measure(&config, name, |who, plan, tally, stop| {
        let targets = targets.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(targets.websocket).await.map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let url = format!("ws://{}/", targets.websocket);
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.map_err(|e| format!("WebSocket: {e}"))?;
            let (mut sink, mut stream) = ws.split();
            let reader_tally = tally.clone();
            until_stopped(&stop, async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Some((w, i)) = parse(&message.into_data()) {
                        Tally::received(&reader_tally, w, i);
                    }
                }
            });
            for i in 0..plan.count {
                let origin = plan.due(i).await;
                Tally::sent(&tally, &plan, who, i, origin);
                sink.send(Message::binary(payload(who, i, size))).await.map_err(|e| e.to_string())?;
            }
            // Keep the connection through the drain.
            until_stopped(&stop, async move {
                std::future::pending::<()>().await;
                drop(sink);
            });
            Ok(())
        }
    })
    .await
}

async fn quiver_client(targets: &TargetsView) -> Result<Client, String> {
    let options = ConnectOptions {
        trust: targets.quiver_trust.clone(),
        token_provider: targets.quiver_token.clone(),
        tuning: targets.tuning.clone(),
        ..ConnectOptions::default()
    };
    Client::connect_with(&targets.quiver, options).await.map_err(|e| format!("quiver: {e}"))
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
) -> Result<SeriesResult, String> {
    let size = config.size.max(12);
    measure(&config, name, |who, plan, tally, stop| {
        let targets = targets.clone();
        async move {
            let client = quiver_client(&targets).await?;
            let channel = format!("bench.rtt.{who}.{}", std::process::id());
            let mut subscription = client.subscribe(&channel).await.map_err(|e| e.to_string())?;
            let publisher = client.publisher(&channel).await.map_err(|e| e.to_string())?;
            let reader_tally = tally.clone();
            until_stopped(&stop, async move {
                loop {
                    let tick = subscription.next().await;
                    if let Some((w, i)) = parse(&tick.payload) {
                        Tally::received(&reader_tally, w, i);
                    }
                }
            });
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
) -> Result<SeriesResult, String> {
    let size = config.size.max(12);
    measure(&config, name, |who, plan, tally, stop| {
        let targets = targets.clone();
        async move {
            let client = quiver_client(&targets).await?;
            let room_name = format!("bench.rtt.{who}.{}", std::process::id());
            let mut room = client.join(&room_name).await.map_err(|e| e.to_string())?;
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
            // Queued at the call; the acknowledgement is not what is measured.
            send_scheduled(&plan, who, &tally, |i| drop(client.post(&room_name, payload(who, i, size)))).await;
            close_after(&stop, client);
            Ok(())
        }
    })
    .await
}

/// Writes a report as JSON.
pub fn write_json(report: &impl serde::Serialize, path: &PathBuf) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
