//! `quiver`: the command-line client. `quiver ping` measures control-stream round trips.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use quiver_certs::Fingerprint;
use quiver_client::{latency::LatencyRecorder, Client, ConnectOptions, TrustOptions};
use serde::Serialize;
use tokio::{task::JoinSet, time::Instant};

#[derive(Debug, Parser)]
#[command(version, about = "Quiver client: ping, chat, ticks and benchmarks against a Quiver server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trips on the control stream (Ping → Pong), sent at a fixed rate; prints latency percentiles.
    Ping(PingArgs),
}

/// Where the server is and how to trust it.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: String,
    /// Pin the server certificate's SHA-256 (64 hex digits, as quiver-server prints it).
    #[arg(long, conflicts_with = "ca")]
    cert_hash: Option<Fingerprint>,
    /// Trust certificates issued by the CA(s) in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The server's data directory: for a server on this machine, its dev certificate is trusted.
    #[arg(long, default_value = ".quiver")]
    data_dir: PathBuf,
}

impl ServerArgs {
    fn trust(&self) -> TrustOptions {
        match (&self.cert_hash, &self.ca) {
            (Some(pin), _) => TrustOptions::Pin(*pin),
            (None, Some(ca)) => TrustOptions::CaFile(ca.clone()),
            (None, None) => TrustOptions::Auto { data_dir: self.data_dir.clone() },
        }
    }

    async fn connect(&self) -> Result<Client, String> {
        let options = ConnectOptions { trust: self.trust(), ..ConnectOptions::default() };
        Client::connect_with(&self.server, options).await.map_err(|e| format!("cannot connect to {}: {e}", self.server))
    }
}

#[derive(Debug, Args)]
struct PingArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Number of pings.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Time between scheduled sends, in ms; latency counts from the scheduled time, not the actual send.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// A ping not answered within this many ms counts as lost.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `quiver ping --json` output: `count` answered pings, `lost` unanswered ones, and the RTT percentiles.
#[derive(Debug, Serialize)]
struct PingReport {
    count: u64,
    lost: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The work runs in a spawned task: quinn driven from block_on's thread costs ~4x the round trip (measured).
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Ping(args) => tokio::spawn(ping(args)).await,
        }
    });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Err(join) => {
            eprintln!("error: {join}");
            ExitCode::FAILURE
        }
    }
}

async fn ping(args: PingArgs) -> Result<(), String> {
    let client = args.server.connect().await?;
    if !args.json {
        eprintln!("pinging {} ({} pings, one every {} ms)", client.server_addr(), args.count, args.interval_ms);
    }
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let mut in_flight = JoinSet::new();
    for i in 0..args.count {
        // Fixed schedule: a slow reply does not delay later sends (no coordinated omission).
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        quiver_client::pace::until(scheduled).await;
        let client = client.clone();
        in_flight.spawn(async move {
            match tokio::time::timeout(timeout, client.ping()).await {
                Ok(Ok(_)) => Ok(Some(scheduled.elapsed())),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Ok(None),
            }
        });
    }
    let mut latencies = LatencyRecorder::default();
    let mut lost = 0;
    while let Some(result) = in_flight.join_next().await {
        match result.map_err(|e| e.to_string())? {
            Ok(Some(rtt)) => latencies.record(rtt),
            Ok(None) => lost += 1,
            Err(err) => return Err(format!("ping failed: {err}")),
        }
    }
    let s = latencies.summary();
    client.close().await;
    if args.json {
        let report = PingReport {
            count: s.count,
            lost,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
        };
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        println!("{} answered, {lost} lost", s.count);
        println!(
            "rtt µs   p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
            s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
        );
    }
    Ok(())
}
