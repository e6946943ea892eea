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
    /// Number of pings (at least 1: none would report zeros as a measurement).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Time between scheduled sends, in ms; latency counts from the scheduled time, not the actual send.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// A ping not answered within this many ms counts as lost (at least 1).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
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

/// How often a long ping run says how far it got (without --json).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: PingArgs) -> Result<(), CliError> {
    let client = args.server.connect().await?;
    if !args.json {
        crate::err!("pinging {} ({} pings, one every {} ms)", client.server_addr(), args.count, args.interval_ms);
    }
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let mut stop = crate::output::Stop::new();
    let mut in_flight = JoinSet::new();
    let mut latencies = LatencyRecorder::default();
    let (mut lost, mut sent) = (0u64, 0u64);
    let mut first_failure = None;
    // Each ping's outcome is taken as it comes (the set holds only those in flight, not one entry per ping of a
    // long run); Ctrl-C ends the run with the report of what was answered; a long run says how it goes.
    let mut take = |outcome: Result<Result<Duration, Option<quiver_client::RequestError>>, tokio::task::JoinError>| {
        match outcome {
            Ok(Ok(rtt)) => latencies.record(rtt),
            Ok(Err(failure)) => {
                lost += 1;
                first_failure = first_failure.take().or(failure);
            }
            Err(err) => {
                lost += 1;
                tracing::warn!(%err, "a ping's task failed");
            }
        }
    };
    let mut progress_at = start + PROGRESS_EVERY;
    let mut interrupted = false;
    for i in 0..args.count {
        // Fixed schedule: a slow reply does not delay later sends (no coordinated omission).
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        loop {
            tokio::select! {
                () = quiver_lab::pace::until(scheduled) => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => take(done),
                () = stop.requested() => {
                    interrupted = true;
                    break;
                }
            }
        }
        if interrupted {
            break;
        }
        if !args.json && Instant::now() >= progress_at {
            progress_at += PROGRESS_EVERY;
            crate::err!("  {sent} of {} sent, {} in flight", args.count, in_flight.len());
        }
        let client = client.clone();
        sent += 1;
        in_flight.spawn(async move {
            // A ping that fails (the connection went while it was out) is lost like one that timed out; the
            // first failure is reported after the run.
            match tokio::time::timeout(timeout, client.ping()).await {
                Ok(Ok(_)) => Ok(scheduled.elapsed()),
                Ok(Err(err)) => Err(Some(err)),
                Err(_) => Err(None),
            }
        });
    }
    if interrupted {
        // The pings still out are neither answered nor lost: the run ended before their time was up.
        in_flight.abort_all();
        crate::err!("* interrupted after {sent} pings");
    } else {
        // The last ones, each within --timeout-ms; Ctrl-C ends the wait too.
        loop {
            tokio::select! {
                done = in_flight.join_next() => match done {
                    Some(done) => take(done),
                    None => break,
                },
                () = stop.requested() => {
                    interrupted = true;
                    in_flight.abort_all();
                    crate::err!("* interrupted while {} pings were still out", in_flight.len());
                    break;
                }
            }
        }
    }
    if let Some(err) = first_failure {
        crate::err!("* some pings failed, the first with: {}", crate::chat::terminal_line(&err.to_string()));
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
    match (lost, interrupted) {
        (0, false) => Ok(()),
        (0, true) => Err(CliError::Interrupted),
        (lost, _) => Err(CliError::PingsLost { lost, sent: s.count + lost }),
    }
}
