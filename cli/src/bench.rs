//! `quiver bench`: latency beside same-run baselines, optionally through the link emulator; the store's throughput
//! and restart time.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use quiver_lab::bench::{run_fanout, run_restart, write_json, write_plot, FanoutConfig, RestartConfig};

mod args;
mod cluster;
mod connections;
mod post;
mod rtt;

pub(crate) use args::{bench_seconds, body_size, payload_size, MAX_BENCH_SECONDS};

use quiver_lab::impair::Backend;

use crate::{error::CliError, impair::ProfileArgs, TrustArgs};

/// Checks, before a run, that each output can be written where it is asked for: the directory exists and the
/// file can be created (left empty until the run writes it), and a plot's extension is one we draw. A long run
/// must not fail at its end for a typo.
fn check_outputs(json: Option<&std::path::Path>, plot: Option<&std::path::Path>) -> Result<(), CliError> {
    if let Some(path) = plot {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            return Err(CliError::Output { path: path.to_owned(), why: "a plot is .svg or .png".into() });
        }
    }
    for path in json.into_iter().chain(plot) {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|err| CliError::Output { path: path.to_owned(), why: err.to_string() })?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// `report` as JSON with a `meta` object: when, which build, on what machine, by which command (so that a
/// number read later says where it came from).
fn with_meta(report: &impl serde::Serialize) -> Result<serde_json::Value, CliError> {
    let mut value = serde_json::to_value(report)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_string()).ok();
    let meta = serde_json::json!({
        "unix_time_s": now,
        "quiver_version": crate::VERSION,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": kernel,
        "command": recorded_command(std::env::args_os().map(|arg| arg.to_string_lossy().into_owned())),
    });
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("meta".into(), meta);
    }
    Ok(value)
}

/// The command line as a report records it: any argument that is not UTF-8 shown lossily (a path may not be;
/// `std::env::args` would panic at the end of the run), and the value of `--token` redacted (reports are meant
/// to be kept and shared).
fn recorded_command(args: impl Iterator<Item = String>) -> String {
    let mut shown = Vec::new();
    let mut secret_next = false;
    for arg in args {
        if std::mem::take(&mut secret_next) {
            shown.push("<redacted>".to_string());
        } else if arg == "--token" {
            secret_next = true;
            shown.push(arg);
        } else if arg.starts_with("--token=") {
            shown.push("--token=<redacted>".to_string());
        } else {
            shown.push(arg);
        }
    }
    shown.join(" ")
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Round trips over Quiver datagrams and room streams beside bare quinn and raw UDP echoes.
    Rtt(rtt::RttArgs),
    /// One publisher to N subscribers, with a chat load on the same connections.
    Fanout(FanoutArgs),
    /// Acknowledged posts per second and ack latency for each durability mode (memory, os, fsync), beside this
    /// disk's fsync latency measured in the same run (docs/durability.md).
    Post(post::PostArgs),
    /// Time to ready of a server restarted on a large room store (filled first, in-process).
    Restart(RestartArgs),
    /// What a Redis between nodes costs: room echo, posts/s and tick fan-out on one node and across three nodes on
    /// a redis-server the bench starts itself (docs/cluster.md).
    Cluster(cluster::ClusterArgs),
    /// What idle connections cost the server: memory per connection, full and resumed handshakes per second, time
    /// to connect them all, idle CPU (a server process of its own).
    Connections(connections::ConnectionsArgs),
    /// The server process of `quiver bench connections` (not for direct use).
    #[command(hide = true)]
    ConnectionsServer(connections::ServerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RestartArgs {
    /// MiB of message bodies to store before restarting (1 to 1,048,576: a TiB; larger counts overflowed).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    mib: u64,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: u32,
    /// Body bytes per message (at most 16,384).
    #[arg(long, default_value_t = 8192)]
    size: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: u32,
    /// Ticks per second from the publisher.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Tick payload bytes (12 to 1,024).
    #[arg(long, default_value_t = 64, value_parser = payload_size)]
    size: usize,
    /// Chat messages per second into the room (posted by the subscribers in turn); 0 for none.
    #[arg(long, default_value_t = 10.0)]
    chat_rate: f64,
    /// Write a percentile plot of ticks and chat here (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
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
    /// Run the same workload through a minimal WebSocket hub too (`websocket`). Impaired, it needs --netns. Not
    /// with --server: the hub runs on this machine's loopback, and a ratio against it would compare two paths.
    #[arg(long, value_name = "BASELINE", value_parser = ["websocket"], conflicts_with = "server")]
    compare: Option<String>,
    /// Leave out the baselines measured first (raw UDP fan-out, with `send_to` and with `sendmmsg`, and bare
    /// quinn datagram fan-out). Left out anyway with --server: they run on this machine's loopback, an external
    /// server is elsewhere.
    #[arg(long)]
    no_baselines: bool,
    #[command(flatten)]
    netns: NetnsArgs,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    profile: ProfileArgs,
}

/// Where the bench's servers and clients run.
#[derive(Debug, Args)]
pub(crate) struct NetnsArgs {
    /// Run servers and clients in two network namespaces joined by the link emulator, so TCP and UDP cross the
    /// same impaired link (Linux, root). Cleans up after itself.
    #[arg(long, conflicts_with = "server")]
    netns: bool,
    /// With --netns: `tun` (our emulator on TUN devices, any kernel) or `netem` (veth + tc netem, where the
    /// kernel has sch_netem).
    #[arg(long, default_value = "tun", requires = "netns")]
    backend: String,
}

impl NetnsArgs {
    fn backend(&self) -> Result<Option<Backend>, CliError> {
        if self.netns {
            Ok(Some(Backend::parse(&self.backend)?))
        } else {
            Ok(None)
        }
    }

    /// How the run's link is described to the user.
    fn describe(&self, backend: Option<Backend>, impaired: bool) -> String {
        match backend {
            Some(backend) => format!(", through the netns emulator ({})", backend.name()),
            None if impaired => ", through the UDP relay".to_string(),
            None => String::new(),
        }
    }
}

pub(crate) async fn run(command: BenchCommand) -> Result<(), CliError> {
    match command {
        BenchCommand::Rtt(args) => rtt::rtt(args).await,
        BenchCommand::Fanout(args) => fanout(args).await,
        BenchCommand::Post(args) => post::post(args).await,
        BenchCommand::Restart(args) => restart(args).await,
        BenchCommand::Cluster(args) => cluster::cluster(args).await,
        BenchCommand::Connections(args) => connections::connections(args).await,
        BenchCommand::ConnectionsServer(args) => connections::server(args).await,
    }
}

async fn restart(args: RestartArgs) -> Result<(), CliError> {
    crate::err!(
        "filling a room store with {} MiB ({} B bodies over {} rooms; needs about {} MiB of free disk in the temporary \
         directory), then restarting a server on it",
        args.mib,
        args.size,
        args.rooms,
        args.mib * 2
    );
    let config = RestartConfig { mib: args.mib, rooms: args.rooms, size: args.size };
    let expected = Duration::from_secs(args.mib / 50 + 5);
    let run = |progress| run_restart(config, progress);
    report(expected, args.json.as_deref(), run, quiver_lab::bench::RestartReport::table).await
}

/// Runs a bench under a progress bar showing what it says it does (stopped by Ctrl-C), prints its table, and writes
/// its JSON report when asked.
async fn report<R: serde::Serialize, F: std::future::Future<Output = Result<R, quiver_lab::bench::BenchError>>>(
    expected: Duration,
    json: Option<&std::path::Path>,
    run: impl FnOnce(Box<dyn Fn(&str) + Send + Sync>) -> F,
    table: impl FnOnce(&R) -> String,
) -> Result<(), CliError> {
    check_outputs(json, None)?;
    let mut stop = crate::output::Stop::new();
    crate::err!("expected run time: about {} s", expected.as_secs().max(1));
    let bar = progress_bar(expected);
    let shown = bar.clone();
    let report = tokio::select! {
        report = run(Box::new(move |what: &str| shown.set_message(what.to_string()))) => report.map_err(CliError::from),
        () = stop.requested() => Err(CliError::Interrupted),
    };
    bar.finish_and_clear();
    let report = report?;
    // Files first: they are the run's record, whatever happens to stdout.
    if let Some(path) = json {
        write_json(&with_meta(&report)?, path)?;
        crate::err!("wrote {}", path.display());
    }
    crate::out!("{}", table(&report));
    Ok(())
}

async fn fanout(args: FanoutArgs) -> Result<(), CliError> {
    let profile = args.profile.profile()?;
    let in_process = args.server.is_none();
    let config = FanoutConfig {
        subscribers: args.subscribers,
        rate: args.rate,
        size: args.size,
        chat_rate: args.chat_rate,
        duration: bench_seconds("duration", args.duration)?,
        warmup: bench_seconds("warmup", args.warmup)?,
        profile: (!profile.is_clean()).then_some(profile),
        token: args.server.as_deref().and_then(|server| args.trust.token_provider(None, server)),
        server: args.server.map(|server| (server, args.trust.trust())),
        compare_websocket: args.compare.as_deref() == Some("websocket"),
        netns: args.netns.backend()?,
        baselines: !args.no_baselines && in_process,
    };
    // (With chat and baselines, Quiver runs twice: the second time with ticks only, the baselines' load.)
    let again = config.baselines && config.chat_rate > 0.0;
    let runs = 1 + u32::from(config.compare_websocket) + if config.baselines { 3 } else { 0 } + u32::from(again);
    crate::err!(
        "1 publisher at {}/s -> {} subscribers, chat {}/s (Quiver, WebSocket), {:.0} s per series: {}{}{}",
        config.rate,
        config.subscribers,
        config.chat_rate,
        (config.warmup + config.duration).as_secs_f64(),
        match (config.baselines, config.compare_websocket) {
            (true, true) if again => "raw UDP, raw UDP sendmmsg, bare quinn, Quiver, Quiver without chat, WebSocket",
            (true, false) if again => "raw UDP, raw UDP sendmmsg, bare quinn, Quiver, Quiver without chat",
            (true, true) => "raw UDP, raw UDP sendmmsg, bare quinn, Quiver, WebSocket",
            (true, false) => "raw UDP, raw UDP sendmmsg, bare quinn, Quiver",
            (false, true) => "Quiver, WebSocket",
            (false, false) => "Quiver",
        },
        args.netns.describe(config.netns, config.profile.is_some()),
        if in_process {
            "; the in-process server's per-address connection limits and rates are raised for the bench's own load"
        } else {
            ""
        }
    );
    let per_run = config.warmup + config.duration + Duration::from_secs(3);
    check_outputs(None, args.plot.as_deref())?;
    let title =
        format!("quiver bench fanout, {} subscribers, {} ticks/s, {} B", config.subscribers, config.rate, config.size);
    // Ctrl-C drops the run, which stops its servers and removes the netns emulator's namespaces.
    let run = |progress| run_fanout(config, progress);
    let plot = args.plot.clone();
    // A plot that could not be written fails the command (after the table is printed), as `bench rtt`'s does.
    let plot_failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let failed = plot_failed.clone();
    let table = move |report: &quiver_lab::bench::FanoutReport| {
        if let Some(path) = &plot {
            match write_plot(&report.as_series(), &title, "one way, publisher to subscriber (µs)", path) {
                Ok(()) => crate::err!("wrote {}", path.display()),
                Err(err) => *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(CliError::from(err)),
            }
        }
        report.table()
    };
    report(runs * per_run, args.json.as_deref(), run, table).await?;
    let failed = plot_failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    failed.map_or(Ok(()), Err)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report keeps the command that made it, without the token it was given.
    #[test]
    fn the_recorded_command_hides_the_token() {
        let args =
            ["quiver", "bench", "rtt", "--token", "eyJsecret", "--server=h:1", "--token=eyJother", "--json", "r"];
        let shown = recorded_command(args.iter().map(|a| a.to_string()));
        assert_eq!(shown, "quiver bench rtt --token <redacted> --server=h:1 --token=<redacted> --json r");
    }
}
