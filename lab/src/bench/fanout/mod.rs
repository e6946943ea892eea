//! `quiver bench fanout`: one publisher sends ticks at a fixed rate to N subscribers while the same subscriber
//! connections carry a chat load in one room, so any coupling between the reliable and the unreliable path shows.
//! Latencies are one-way, on this host's clock (everything runs in one process).
//!
//! Both sides, Quiver's and (when compared) a WebSocket hub's, run the same `workload` over their own
//! connections; what arrived becomes one side of the `report`.

mod bare_quinn;
mod cpu;
mod quiver;
mod report;
mod udp;
mod websocket;
mod workload;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use quiver_client::{TokenProvider, TrustOptions};
use quiver_transport::TransportTuning;
use tokio_util::sync::CancellationToken;

use super::{
    namespaces::{self, Progress},
    server::{relays_sound, through_relay, QuiverServer},
    BenchError,
};
use crate::impair::{Backend, ImpairmentProfile, Relay};
pub use report::{FanoutReport, FanoutSide, ServerTicks};

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
    /// Measure the baselines first, same subscribers, rate and payload: raw UDP fan-out (one `send_to` per
    /// delivery, and `sendmmsg` batches) and bare quinn datagram fan-out.
    pub baselines: bool,
}

impl FanoutConfig {
    /// Refuses settings that cannot be run: no subscribers, a tick rate or duration of 0, a negative chat rate.
    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |field, value, expected| Err(BenchError::BadConfig { field, value, expected });
        let subscribers = f64::from(self.subscribers);
        if subscribers == 0.0 {
            return bad("subscribers", subscribers, "above 0");
        }
        if !crate::bench::series::rate_in_range(self.rate) {
            return bad("rate", self.rate, crate::bench::rtt::RATE_RANGE);
        }
        if self.duration.is_zero() {
            return bad("duration", 0.0, "above 0");
        }
        if (self.duration.as_secs_f64() * self.rate).round() < 1.0 {
            return bad("rate", self.rate, "a rate and duration that make at least one measured tick");
        }
        if self.chat_rate != 0.0 && !crate::bench::series::rate_in_range(self.chat_rate) {
            return bad("chat_rate", self.chat_rate, "0 (none), or from 0.01 to 100000 per second");
        }
        Ok(())
    }
}

/// Where the fan-out's servers are. They run on a runtime of their own, whose CPU time is theirs (`cpu`).
struct Servers {
    quiver: QuiverServer,
    baselines: Option<Baselines>,
    websocket: Option<SocketAddr>,
    relays: Vec<Relay>,
    _data_dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
    // Last: shut down once the stop token has ended the servers' tasks.
    _runtime: cpu::ServerRuntime,
}

/// The baselines' servers.
struct Baselines {
    udp: SocketAddr,
    udp_batched: SocketAddr,
    quinn: SocketAddr,
    quinn_trust: TrustOptions,
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
    let (Sides { quiver, quiver_no_chat, baselines, websocket }, emulator) = match config.netns {
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
            "baselines": config.baselines,
            "emulator": emulator,
            "server_workers": server_workers(),
        }),
        quiver,
        baselines,
        quiver_no_chat,
        websocket,
    })
}

/// What [`measure_sides`] measured.
struct Sides {
    quiver: FanoutSide,
    quiver_no_chat: Option<FanoutSide>,
    baselines: Vec<FanoutSide>,
    websocket: Option<FanoutSide>,
}

/// Says how far `series` is with connecting its subscribers (every 100th, and the first): over an emulated path a
/// thousand connections take minutes, which the progress bar otherwise spent at one line.
pub(super) fn connecting(progress: &Progress, series: &str, who: u32, subscribers: u32) {
    if who.is_multiple_of(100) {
        progress(&format!("{series}: connecting subscribers ({who} of {subscribers})"));
    }
}

/// Each side in turn, so no two load the machine at once. Raw UDP goes between the other baselines (bare quinn
/// right before it, `sendmmsg` before that) and the Quiver run it is the throughput goal's baseline for (ticks
/// only), so that the ratios printed against it are taken close to it: this VM's speed drifts over minutes (raw
/// UDP's cost per delivery moved 3.7 → 6.8 µs between periods), and sides taken minutes apart carried that drift
/// into the ratio (until 2026-12-07 the chat run came between bare quinn and raw UDP).
async fn measure_sides(config: &FanoutConfig, servers: &Servers, progress: &Progress) -> Result<Sides, BenchError> {
    let mut baselines = Vec::new();
    let mut quiver_no_chat = None;
    if let Some(b) = &servers.baselines {
        baselines.push(udp::measure("raw udp sendmmsg", config, b.udp_batched, progress).await?);
        baselines.push(bare_quinn::measure("bare quinn", config, b.quinn, &b.quinn_trust, progress).await?);
        baselines.insert(0, udp::measure(report::RAW_UDP, config, b.udp, progress).await?);
        if config.chat_rate > 0.0 {
            progress("quiver ticks only (the baselines' load)");
            let ticks_only = FanoutConfig { chat_rate: 0.0, ..config.clone() };
            let side = quiver::measure(&ticks_only, &servers.quiver, progress).await?;
            quiver_no_chat = Some(FanoutSide { name: report::QUIVER_NO_CHAT.into(), ..side });
        }
    }
    let quiver = quiver::measure(config, &servers.quiver, progress).await?;
    let websocket = match servers.websocket {
        Some(hub) => Some(websocket::measure(config, hub, progress).await?),
        None => None,
    };
    relays_sound(&servers.relays)?;
    Ok(Sides { quiver, quiver_no_chat, baselines, websocket })
}

/// Worker threads of the servers' runtime: half the cores (at least one). The clients' runtime has a worker per
/// core besides; a worker per core for the servers too put twice as many busy threads as cores on this 2-vCPU
/// machine, and the kernel's time slices then showed up as latency: Quiver's tick p50/p99 at 1,000 subscribers
/// 21–25/66–78 ms with two server workers, 15–17/44–50 ms with one (and 15 → 12.5 µs of server CPU per delivery).
fn server_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The Quiver server (unless external), the baselines' servers (unless left out) and the WebSocket hub (when
/// compared), bound to `ip` on the servers' own runtime, and UDP relays in front of them when the profile asks
/// for them.
async fn start_servers(config: &FanoutConfig, ip: IpAddr) -> Result<Servers, BenchError> {
    let stop = CancellationToken::new();
    let data_dir = crate::bench::private_tempdir(None).map_err(BenchError::io("temporary directory"))?;
    // Started on the current runtime's thread: in the netns emulator, that thread is in the servers' namespace
    // and the runtime's threads are born there too.
    let runtime = cpu::ServerRuntime::new(server_workers()).map_err(BenchError::io("the servers' runtime"))?;
    let on_server = runtime.handle();
    let (server, token, dir, quiver_stop) =
        (config.server.clone(), config.token.clone(), data_dir.path().to_owned(), stop.clone());
    let quiver = on_server
        .spawn(async move {
            let tuning = TransportTuning::default();
            QuiverServer::start(server.as_ref(), token.as_ref(), &tuning, ip, &dir, &quiver_stop).await
        })
        .await??;
    // Every client has a socket of its own, and the relay forgets none within a run (a minute idle at the least):
    // Quiver's relay carries two runs
    // (with chat, then ticks only) of `subscribers` + 2 clients each.
    let (profile, max_clients) = (config.profile.as_ref(), 2 * (config.subscribers as usize + 4));
    let mut relays = Vec::new();
    let mut relayed = |addr| -> Result<SocketAddr, BenchError> {
        let (addr, relay) = through_relay(profile, addr, max_clients)?;
        relays.extend(relay);
        Ok(addr)
    };
    let quiver = {
        let addr = relayed(quiver.addr)?;
        quiver.reached_at(addr)?
    };
    let baselines = if config.baselines {
        let (cert, _) = quiver_certs::dev::load_or_generate(data_dir.path(), std::time::SystemTime::now())?;
        let quinn_trust = TrustOptions::Pin(cert.fingerprint());
        let stop = stop.clone();
        let (udp, udp_batched, quinn) = on_server
            .spawn(async move {
                let io = BenchError::io("raw UDP fan-out server");
                let udp = udp::server(ip, false, stop.clone()).await.map_err(io)?;
                let io = BenchError::io("raw UDP fan-out server");
                let udp_batched = udp::server(ip, true, stop.clone()).await.map_err(io)?;
                Ok::<_, BenchError>((udp, udp_batched, bare_quinn::server(ip, cert, stop)?))
            })
            .await??;
        Some(Baselines { udp: relayed(udp)?, udp_batched: relayed(udp_batched)?, quinn: relayed(quinn)?, quinn_trust })
    } else {
        None
    };
    let websocket = if config.compare_websocket {
        let stop = stop.clone();
        let hub = on_server.spawn(async move { websocket::hub(ip, stop).await }).await?;
        Some(hub.map_err(BenchError::io("WebSocket hub"))?)
    } else {
        None
    };
    Ok(Servers {
        quiver,
        baselines,
        websocket,
        relays,
        _data_dir: data_dir,
        _stop: stop.drop_guard(),
        _runtime: runtime,
    })
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
            baselines: true,
        };
        assert!(config.check().is_ok(), "no chat is fine");
        let err = FanoutConfig { subscribers: 0, ..config.clone() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "subscribers", .. }), "{err:?}");
        let err = FanoutConfig { chat_rate: -1.0, ..config.clone() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "chat_rate", .. }), "{err:?}");
        assert_eq!(err.to_string(), "chat_rate must be 0 (none), or from 0.01 to 100000 per second, got -1");
        let err = FanoutConfig { rate: 1e7, ..config.clone() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "rate", .. }), "{err:?}");
        let err = FanoutConfig { duration: Duration::ZERO, ..config }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "duration", .. }), "{err:?}");
    }
}
