//! `quiver bench`: latency beside same-run baselines, optionally through the link emulator.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use quiver_client::bench::{run_fanout, run_rtt, write_json, write_plot, FanoutConfig, RttConfig};

use crate::{impair::ProfileArgs, TrustArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Round trips over Quiver datagrams and room streams beside bare quinn and raw UDP echoes.
    Rtt(RttArgs),
    /// One publisher to N subscribers, with a chat load on the same connections.
    Fanout(FanoutArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: u32,
    /// Ticks per second from the publisher.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Tick payload bytes (at least 12).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Chat messages per second into the room (posted by the subscribers in turn); 0 for none.
    #[arg(long, default_value_t = 10.0)]
    chat_rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure an external Quiver server instead of an in-process one.
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    profile: ProfileArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RttArgs {
    /// Senders per series.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Payload bytes per message (at least 12).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured seconds per series.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds per series before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a percentile plot here (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Transport settings of Quiver's server and clients: quiver, quinn-defaults or tail-probe.
    #[arg(long, default_value = "quiver")]
    tuning: String,
    /// Measure an external Quiver server instead of an in-process one (baselines stay in-process).
    #[arg(long)]
    server: Option<String>,
    /// Add a baseline: `websocket` (an in-process WebSocket-over-TCP echo; loss-free loopback only for now).
    #[arg(long, value_name = "BASELINE", value_parser = ["websocket"])]
    compare: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    profile: ProfileArgs,
}

pub(crate) async fn run(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Rtt(args) => rtt(args).await,
        BenchCommand::Fanout(args) => fanout(args).await,
    }
}

async fn fanout(args: FanoutArgs) -> Result<(), String> {
    let seconds = |name: &str, v: f64| Duration::try_from_secs_f64(v).map_err(|e| format!("--{name}: {e}"));
    let profile = args.profile.profile()?;
    let config = FanoutConfig {
        subscribers: args.subscribers,
        rate: args.rate,
        size: args.size,
        chat_rate: args.chat_rate,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        profile: (!profile.is_clean()).then_some(profile),
        token: args.server.as_ref().and(args.trust.token_provider(None)),
        server: args.server.map(|server| (server, args.trust.trust())),
    };
    eprintln!(
        "1 publisher at {}/s -> {} subscribers, chat {}/s, {:.0} s",
        config.rate,
        config.subscribers,
        config.chat_rate,
        (config.warmup + config.duration).as_secs_f64()
    );
    let bar = progress_bar(config.warmup + config.duration + Duration::from_secs(3));
    let shown = bar.clone();
    let report = run_fanout(config, move |what| shown.set_message(what.to_string())).await;
    bar.finish_and_clear();
    let report = report?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A progress bar over the expected run time, ticking on its own (hidden when stderr is not a terminal).
fn progress_bar(expected: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(expected.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let ticker = bar.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        while !ticker.is_finished() {
            ticker.set_position(start.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    bar
}

async fn rtt(args: RttArgs) -> Result<(), String> {
    let seconds = |name: &str, v: f64| Duration::try_from_secs_f64(v).map_err(|e| format!("--{name}: {e}"));
    let profile = args.profile.profile()?;
    let config = RttConfig {
        clients: args.clients,
        rate: args.rate,
        size: args.size,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        profile: (!profile.is_clean()).then_some(profile),
        token: args.server.as_ref().and(args.trust.token_provider(None)),
        server: args.server.map(|server| (server, args.trust.trust())),
        tuning: quiver_server::net::transport::TransportTuning::named(&args.tuning)?,
        compare_websocket: args.compare.as_deref() == Some("websocket"),
    };
    let per_series = config.warmup + config.duration;
    eprintln!(
        "5 series x {:.0} s, {} sender(s) at {}/s, {} B{}",
        per_series.as_secs_f64() + 1.2,
        config.clients,
        config.rate,
        config.size,
        if config.profile.is_some() { ", through the link emulator" } else { "" }
    );
    let title = format!(
        "quiver bench rtt, {}/s, {} B, {}, tuning {}",
        config.rate,
        config.size,
        if config.profile.is_some() { "impaired" } else { "loopback" },
        config.tuning.name
    );
    let bar = progress_bar(5 * (per_series + Duration::from_millis(1200)));
    let shown = bar.clone();
    let report = run_rtt(config, move |name| shown.set_message(format!("measuring {name}"))).await;
    bar.finish_and_clear();
    let report = report?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_plot(&report, &title, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
