//! `quiver bench rtt`: N clients each send at a fixed rate and time the round trip, over Quiver's tick datagrams
//! (publish, then receive the own tick from the server's fan-out) and Quiver's room stream (post, then receive the
//! own message on the room stream), beside bare quinn datagram and stream echoes and a raw UDP echo.
//!
//! With `compare_websocket` it runs the head-to-head instead: each sender carries ticks and chat on one
//! connection, Quiver's (datagrams and a room stream) and a WebSocket's (one ordered TCP stream, as WebSocket apps
//! do), at the same rates. With `netns` the servers and the clients run in two network namespaces joined by the
//! netns emulator, so TCP and UDP cross the same impaired link.
//!
//! A run starts its `targets`, then runs the series of `layers` or of `head_to_head` one after the other; every
//! series runs its senders through `lanes`, and the Quiver senders share the pieces in `quiver`.

mod head_to_head;
mod lanes;
mod layers;
mod quiver;
mod targets;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use quiver_client::{TokenProvider, TrustOptions};
use quiver_transport::TransportTuning;

use super::{
    namespaces::{self, Progress},
    series::{Report, SeriesResult},
    BenchError,
};
use crate::impair::{Backend, ImpairmentProfile};
use targets::{Targets, TargetsView};

/// Settings of a round-trip run.
#[derive(Debug, Clone)]
pub struct RttConfig {
    /// Concurrent senders per series.
    pub clients: u32,
    /// Messages per second per sender.
    pub rate: f64,
    /// Payload bytes per message (at least 12).
    pub size: usize,
    /// Measured time per series (over all its rounds).
    pub duration: Duration,
    /// Rounds the series run in (at least 1): each series measures `duration / rounds` per round, and the rounds
    /// alternate the series' order (forward, then backward), so that a slow stretch of a noisy machine falls on
    /// every series alike rather than on whichever ran then. A series' rounds are merged into one result.
    pub rounds: u32,
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
    /// Run the head-to-head with WebSocket over TCP instead of the six series: ticks at `rate` and chat at
    /// `chat_rate` per sender, on one Quiver connection and on one WebSocket connection. TCP cannot pass the UDP
    /// relay, so an impaired head-to-head needs `netns`.
    pub compare_websocket: bool,
    /// Chat messages per second per sender in the head-to-head.
    pub chat_rate: f64,
    /// Run servers and clients in two network namespaces joined by this emulator backend (Linux, root) instead
    /// of on loopback through the UDP relay. Needs the in-process server.
    pub netns: Option<Backend>,
}

/// What a bench's rates may be ([`crate::bench::series::rate_in_range`]).
pub(crate) const RATE_RANGE: &str = "from 0.01 to 100000 per second";

impl RttConfig {
    /// Defaults for everything but what is measured: 1 sender, 200/s, 64 B, 10 s after 1 s, loopback.
    pub fn new() -> RttConfig {
        RttConfig {
            clients: 1,
            rate: 200.0,
            size: 64,
            duration: Duration::from_secs(10),
            rounds: 1,
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
        if !crate::bench::series::rate_in_range(self.rate) {
            return Err(BenchError::BadConfig { field: "rate", value: self.rate, expected: RATE_RANGE });
        }
        if self.compare_websocket && !crate::bench::series::rate_in_range(self.chat_rate) {
            return Err(BenchError::BadConfig { field: "chat_rate", value: self.chat_rate, expected: RATE_RANGE });
        }
        above_zero("duration", self.duration.as_secs_f64())?;
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            let expected = ROUNDS_RANGE;
            return Err(BenchError::BadConfig { field: "rounds", value: f64::from(self.rounds), expected });
        }
        if (self.round_duration().as_secs_f64() * self.rate).round() < 1.0 {
            let expected = "a rate and duration that make at least one measured message per round";
            return Err(BenchError::BadConfig { field: "rate", value: self.rate, expected });
        }
        Ok(())
    }

    /// The measured time of each round of a series.
    pub fn round_duration(&self) -> Duration {
        self.duration / self.rounds.max(1)
    }
}

/// The most rounds a run is split into.
pub(crate) const MAX_ROUNDS: u32 = 100;
const ROUNDS_RANGE: &str = "from 1 to 100";

impl Default for RttConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs every series one after the other; `progress` hears what is starting.
pub async fn run_rtt(config: RttConfig, progress: impl Fn(&str) + Send + Sync + 'static) -> Result<Report, BenchError> {
    config.check()?;
    namespaces::check(config.profile.as_ref(), config.compare_websocket, config.netns, config.server.is_some())?;
    let progress: Progress = Arc::new(progress);
    let (series, emulator) = match config.netns {
        None => {
            let targets = Targets::start(&config, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            let view = targets.view(&config, IpAddr::V4(Ipv4Addr::LOCALHOST));
            let series = run_series(config.clone(), view, progress).await;
            let sound = targets.stop();
            (series.and_then(|series| sound.map(|()| series))?, namespaces::loopback(config.profile.as_ref()))
        }
        Some(backend) => {
            // The link impairs; no relay in the servers' namespace.
            let server_config = RttConfig { profile: None, ..config.clone() };
            let client_config = config.clone();
            namespaces::across(
                &config.profile.clone().unwrap_or_default(),
                backend,
                move |ip| async move { Targets::start(&server_config, ip).await },
                move |targets: Targets| async move {
                    let view = targets.view(&client_config, namespaces::CLIENT_BIND);
                    let series = run_series(client_config, view, progress).await;
                    let sound = targets.stop();
                    series.and_then(|series| sound.map(|()| series))
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
        "rounds": config.rounds,
        "warmup_s": config.warmup.as_secs_f64(),
        "profile": config.profile,
        "tuning": config.tuning.name,
        // (Given apart: a command line may change them from the named tuning's.)
        "copies": config.tuning.copies,
        "copy_spacing_ms": config.tuning.copy_spacing.as_secs_f64() * 1e3,
        "tuning_applies_to": if config.server.is_some() { "clients" } else { "server and clients" },
        "server": config.server.as_ref().map(|(s, _)| s.clone()).unwrap_or_else(|| "in-process".into()),
        "compare_websocket": config.compare_websocket,
        "emulator": emulator,
    });
    Ok(Report { config: config_json, series })
}

type Runner = fn(RttConfig, Arc<TargetsView>) -> BoxedSeries;
type SingleRunner = fn(&'static str, RttConfig, Arc<TargetsView>) -> SingleSeries;

/// The series of a run, one after the other, in rounds ([`RttConfig::rounds`]).
async fn run_series(config: RttConfig, view: TargetsView, progress: Progress) -> Result<Vec<SeriesResult>, BenchError> {
    let view = Arc::new(view);
    let layers: [(&'static str, Option<&str>, SingleRunner); 6] = [
        ("udp echo", None, |n, c, t| Box::pin(layers::udp_series(n, c, t))),
        ("quinn datagram echo", None, |n, c, t| Box::pin(layers::quinn_series(n, c, t, false))),
        ("quiver datagram", Some("quinn datagram echo"), |n, c, t| Box::pin(layers::quiver_datagram_series(n, c, t))),
        ("quinn stream echo", None, |n, c, t| Box::pin(layers::quinn_series(n, c, t, true))),
        ("quiver stream", Some("quinn stream echo"), |n, c, t| Box::pin(layers::quiver_stream_series(n, c, t, false))),
        // Its goal is set against the path's own round trip: the datagram echo.
        ("quiver stream redundant", Some("quinn datagram echo"), |n, c, t| {
            Box::pin(layers::quiver_stream_series(n, c, t, true))
        }),
    ];
    let head_to_head: [(&'static str, Runner); 3] = [
        ("quiver tick + chat", |c, t| Box::pin(head_to_head::quiver_mixed_series(c, t, false))),
        ("websocket tick + chat", |c, t| Box::pin(head_to_head::websocket_mixed_series(c, t))),
        ("quiver over websocket tick + chat", |c, t| Box::pin(head_to_head::quiver_mixed_series(c, t, true))),
    ];
    let count = if config.compare_websocket { head_to_head.len() } else { layers.len() };
    let rounds = config.rounds.max(1);
    let round = RttConfig { duration: config.round_duration(), ..config.clone() };
    let mut merged = Merged::default();
    for r in 0..rounds {
        for k in round_order(count, r) {
            let name = if config.compare_websocket { head_to_head[k].0 } else { layers[k].0 };
            match rounds {
                1 => progress(name),
                _ => progress(&format!("{name} (round {} of {rounds})", r + 1)),
            }
            if config.compare_websocket {
                for result in (head_to_head[k].1)(round.clone(), view.clone()).await? {
                    merged.add(k, result);
                }
            } else {
                let (name, baseline, runner) = layers[k];
                let mut result = runner(name, round.clone(), view.clone()).await?;
                result.baseline = compared_with(&config, baseline);
                merged.add(k, result);
            }
        }
    }
    Ok(merged.into_series())
}

/// The order of the series in round `r` of a run: forward in even rounds, backward in odd ones.
fn round_order(count: usize, r: u32) -> Vec<usize> {
    match r % 2 {
        0 => (0..count).collect(),
        _ => (0..count).rev().collect(),
    }
}

/// A run's results as its rounds come in: each series' rounds merged, in the order of the series' list (the
/// runner's index, then the order a runner gave its results in).
#[derive(Default)]
struct Merged {
    series: Vec<(usize, SeriesResult)>,
}

impl Merged {
    fn add(&mut self, runner: usize, result: SeriesResult) {
        match self.series.iter_mut().find(|(_, s)| s.name == result.name) {
            Some((_, known)) => known.absorb(result),
            None => {
                let at = self.series.iter().take_while(|(k, _)| *k <= runner).count();
                self.series.insert(at, (runner, result));
            }
        }
    }

    fn into_series(self) -> Vec<SeriesResult> {
        self.series.into_iter().map(|(_, s)| s).collect()
    }
}

/// The series a Quiver series' ratios are taken against: none for an external server (`--server`), whose path is
/// not the one the baselines measure (they stay on this machine's loopback).
fn compared_with(config: &RttConfig, baseline: Option<&str>) -> Option<String> {
    baseline.filter(|_| config.server.is_none()).map(str::to_string)
}

type SingleSeries = std::pin::Pin<Box<dyn std::future::Future<Output = Result<SeriesResult, BenchError>> + Send>>;
type BoxedSeries = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<SeriesResult>, BenchError>> + Send>>;

/// Writes a report as JSON.
pub fn write_json(report: &impl serde::Serialize, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).map_err(|source| BenchError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::series::{Schedule, Tally};

    #[test]
    fn an_external_server_is_not_compared_with_the_local_baselines() {
        let local = RttConfig::new();
        assert_eq!(compared_with(&local, Some("quinn datagram echo")).as_deref(), Some("quinn datagram echo"));
        let external =
            RttConfig { server: Some(("quiver.example:4433".into(), TrustOptions::CaFile("ca.pem".into()))), ..local };
        assert_eq!(compared_with(&external, Some("quinn datagram echo")), None);
    }

    #[test]
    fn rounds_alternate_the_order_and_merge_each_series_in_the_lists_order() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [2, 1, 0]);
        assert_eq!(round_order(3, 2), [0, 1, 2]);
        let result = |name: &str, us: u64| {
            let tally = Tally::shared();
            let plan = Schedule { start: tokio::time::Instant::now(), interval: Duration::ZERO, count: 1, warmup: 0 };
            Tally::sent(&tally, &plan, 0, 0, tokio::time::Instant::now() - Duration::from_micros(us));
            Tally::received(&tally, 0, 0);
            Tally::result(&tally, name, None)
        };
        let mut merged = Merged::default();
        // Round 1 forward (runner 1 gives two results), round 2 backward.
        merged.add(0, result("a", 100));
        merged.add(1, result("b", 200));
        merged.add(1, result("b2", 300));
        merged.add(2, result("c", 400));
        merged.add(2, result("c", 4000));
        merged.add(1, result("b", 2000));
        merged.add(1, result("b2", 3000));
        merged.add(0, result("a", 1000));
        let series = merged.into_series();
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "b2", "c"]);
        assert!(series.iter().all(|s| s.sent == 2 && s.latency.count == 2), "{series:?}");
        assert!(series[3].latency.max_us >= 3990, "the second round's sample: {:?}", series[3].latency);
        // A series first heard of in a later round still takes its place in the list.
        let mut merged = Merged::default();
        merged.add(2, result("c", 1));
        merged.add(0, result("a", 1));
        merged.add(1, result("b", 1));
        let names: Vec<String> = merged.into_series().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_setting_out_of_range_is_named() {
        let err = run_rtt(RttConfig { rate: 0.0, ..RttConfig::new() }, |_| {}).await.unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "rate", .. }), "{err:?}");
        assert_eq!(err.to_string(), "rate must be from 0.01 to 100000 per second, got 0");
        for rate in [1e-20, 1e7, f64::NAN] {
            let err = RttConfig { rate, ..RttConfig::new() }.check().unwrap_err();
            assert!(matches!(err, BenchError::BadConfig { field: "rate", .. }), "{rate}: {err:?}");
        }
        for rounds in [0, MAX_ROUNDS + 1] {
            let err = RttConfig { rounds, ..RttConfig::new() }.check().unwrap_err();
            assert!(matches!(err, BenchError::BadConfig { field: "rounds", .. }), "{rounds}: {err:?}");
        }
        // 10 s at 0.2/s is two messages: one round can hold them, five (0.4 each) cannot.
        let sparse = RttConfig { rate: 0.2, ..RttConfig::new() };
        assert!(RttConfig { rounds: 1, ..sparse.clone() }.check().is_ok());
        let err = RttConfig { rounds: 5, ..sparse }.check().unwrap_err();
        assert!(err.to_string().contains("per round"), "{err}");
        let err = RttConfig { clients: 0, ..RttConfig::new() }.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "clients", .. }), "{err:?}");
        let head_to_head = RttConfig { compare_websocket: true, chat_rate: f64::NAN, ..RttConfig::new() };
        let err = head_to_head.check().unwrap_err();
        assert!(matches!(err, BenchError::BadConfig { field: "chat_rate", .. }), "{err:?}");
        assert!(
            RttConfig { chat_rate: 0.0, ..RttConfig::new() }.check().is_ok(),
            "chat rate only matters head to head"
        );
    }
}
