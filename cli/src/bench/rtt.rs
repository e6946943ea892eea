//! `quiver bench rtt`: round trips over Quiver's datagrams and room streams beside bare quinn and raw UDP echoes
//! (or, with `--compare websocket`, the head-to-head with a WebSocket app), optionally through the link emulator.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use quiver_lab::bench::{run_rtt, write_json, write_plot, RttConfig};

use super::{bench_seconds, check_outputs, payload_size, progress_bar, with_meta, NetnsArgs};
use crate::{error::CliError, impair::ProfileArgs, TrustArgs};

#[derive(Debug, Args)]
pub(crate) struct RttArgs {
    /// Senders per series.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Payload bytes per message (12 to 1,024).
    #[arg(long, default_value_t = 64, value_parser = payload_size)]
    size: usize,
    /// Measured seconds per series (over all its rounds).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Run the series in this many rounds, each measuring duration / rounds per series, the series' order
    /// alternating forward and backward, so that a slow stretch of a noisy machine falls on every series alike;
    /// each series' rounds are merged (1 to 100).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seconds per series before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a percentile plot here (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Transport settings of Quiver's server and clients: quiver, no-probe, no-floor, quinn-defaults or
    /// tail-probe (with --server: the clients' only).
    #[arg(long, default_value = "quiver")]
    tuning: String,
    /// Redundant delivery's datagram copies (server and clients; with --server the clients'), instead of the
    /// tuning's.
    #[arg(long)]
    copies: Option<u8>,
    /// Time between rounds of copies, ms, instead of the tuning's (with --server: the clients').
    #[arg(long)]
    copy_spacing_ms: Option<u64>,
    /// Measure an external Quiver server instead of an in-process one (baselines stay in-process).
    #[arg(long)]
    server: Option<String>,
    /// Run the head-to-head with `websocket` instead: ticks and chat on one Quiver connection and on one
    /// WebSocket-over-TCP connection per sender. Impaired, it needs --netns. Not with --server: the WebSocket echo
    /// runs on this machine's loopback, and a ratio against it would compare two paths.
    #[arg(long, value_name = "BASELINE", value_parser = ["websocket"], conflicts_with = "server")]
    compare: Option<String>,
    /// Chat messages per second per sender in the head-to-head (ticks go at --rate).
    #[arg(long, default_value_t = 50.0)]
    chat_rate: f64,
    #[command(flatten)]
    netns: NetnsArgs,
    /// Also print the head-to-head as Markdown table rows, labelled with this (e.g. the profile's name).
    #[arg(long, value_name = "LABEL", requires = "compare")]
    markdown: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    profile: ProfileArgs,
}

pub(super) async fn rtt(args: RttArgs) -> Result<(), CliError> {
    let profile = args.profile.profile()?;
    let config = RttConfig {
        clients: args.clients,
        rate: args.rate,
        size: args.size,
        duration: bench_seconds("duration", args.duration)?,
        rounds: args.rounds,
        warmup: bench_seconds("warmup", args.warmup)?,
        profile: (!profile.is_clean()).then_some(profile),
        token: args.server.as_deref().and_then(|server| args.trust.token_provider(None, server)),
        server: args.server.map(|server| (server, args.trust.trust())),
        tuning: {
            let tuning = quiver_transport::TransportTuning::named(&args.tuning)?;
            quiver_transport::TransportTuning {
                copies: args.copies.unwrap_or(tuning.copies),
                copy_spacing: args.copy_spacing_ms.map_or(tuning.copy_spacing, std::time::Duration::from_millis),
                ..tuning
            }
        },
        compare_websocket: args.compare.as_deref() == Some("websocket"),
        chat_rate: args.chat_rate,
        netns: args.netns.backend()?,
    };
    config.check()?;
    let per_series = config.warmup + config.round_duration();
    let runs = if config.compare_websocket { 3 } else { 6 };
    let link = args.netns.describe(config.netns, config.profile.is_some());
    let what = if config.compare_websocket {
        format!(
            "Quiver (QUIC, WebSocket) vs WebSocket, ticks {}/s + chat {}/s per sender",
            config.rate, config.chat_rate
        )
    } else {
        format!("{}/s per sender", config.rate)
    };
    let rounds = match config.rounds {
        1 => String::new(),
        n => format!(" x {n} rounds"),
    };
    crate::err!(
        "{runs} runs{rounds} x {:.0} s, {} sender(s), {what}, {} B{link}",
        per_series.as_secs_f64() + 1.2,
        config.clients,
        config.size,
    );
    // The tuning as it ran: its name, and the copies' settings where the command line changed them.
    let overrides = [
        args.copies.map(|copies| format!("copies {copies}")),
        args.copy_spacing_ms.map(|ms| format!("copy spacing {ms} ms")),
    ];
    let overrides: Vec<String> = overrides.into_iter().flatten().collect();
    let tuning = match overrides.is_empty() {
        true => config.tuning.name.to_string(),
        false => format!("{} ({})", config.tuning.name, overrides.join(", ")),
    };
    let title = format!(
        "quiver bench rtt, {what}, {} B, {}, tuning {tuning}",
        config.size,
        args.markdown.as_deref().unwrap_or(if config.profile.is_some() { "impaired" } else { "clean" }),
    );
    check_outputs(args.json.as_deref(), args.plot.as_deref())?;
    let mut stop = crate::output::Stop::new();
    let expected = (runs * config.rounds) * (per_series + Duration::from_millis(1200));
    crate::err!("expected run time: about {} s", expected.as_secs().max(1));
    let bar = progress_bar(expected);
    let shown = bar.clone();
    // Ctrl-C drops the run, which stops its servers and removes the netns emulator's namespaces.
    let report = tokio::select! {
        report = run_rtt(config, move |name| shown.set_message(format!("measuring {name}"))) => {
            report.map_err(CliError::from)
        }
        () = stop.requested() => Err(CliError::Interrupted),
    };
    bar.finish_and_clear();
    let report = report?;
    crate::out!("{}", report.table());
    if let Some(label) = &args.markdown {
        crate::out!("{}", report.head_to_head_markdown(label, true));
    }
    if let Some(path) = &args.json {
        write_json(&with_meta(&report)?, path)?;
        crate::err!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_plot(&report, &title, "round trip (µs)", path)?;
        crate::err!("wrote {}", path.display());
    }
    Ok(())
}
