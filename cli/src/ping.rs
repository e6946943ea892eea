//! `quiver ping`: control-stream round trips at a fixed rate, latency from the scheduled send time.

use std::time::Duration;

use clap::Args;
use quiver_client::latency::LatencyRecorder;
use serde::Serialize;
use tokio::{task::JoinSet, time::Instant};

use crate::{error::CliError, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct PingArgs {
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

pub(crate) async fn run(args: PingArgs) -> Result<(), CliError> {
    let client = args.server.connect().await?;
    if !args.json {
        crate::err!("pinging {} ({} pings, one every {} ms)", client.server_addr(), args.count, args.interval_ms);
    }
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let mut in_flight = JoinSet::new();
    for i in 0..args.count {
        // Fixed schedule: a slow reply does not delay later sends (no coordinated omission).
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        quiver_lab::pace::until(scheduled).await;
        let client = client.clone();
        in_flight.spawn(async move {
            // A ping that fails (the connection went while it was out) is lost like one that timed out; the
            // first failure is reported after the run.
            match tokio::time::timeout(timeout, client.ping()).await {
                Ok(Ok(_)) => Ok::<_, CliError>(Ok(scheduled.elapsed())),
                Ok(Err(err)) => Ok(Err(Some(err))),
                Err(_) => Ok(Err(None)),
            }
        });
    }
    let mut latencies = LatencyRecorder::default();
    let mut lost = 0;
    let mut first_failure = None;
    while let Some(result) = in_flight.join_next().await {
        match result?? {
            Ok(rtt) => latencies.record(rtt),
            Err(failure) => {
                lost += 1;
                first_failure = first_failure.or(failure);
            }
        }
    }
    if let Some(err) = first_failure {
        crate::err!("* some pings failed, the first with: {err}");
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
        crate::out!("{}", serde_json::to_string(&report)?);
    } else {
        crate::out!("{} answered, {lost} lost", s.count);
        crate::out!(
            "rtt µs   p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            s.max_us
        );
    }
    // Scripts check the exit code: pings that went unanswered are a failure, after the report.
    match lost {
        0 => Ok(()),
        lost => Err(CliError::PingsLost { lost, sent: s.count + lost }),
    }
}
