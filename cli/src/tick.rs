//! `quiver tick pub` and `quiver tick sub`: ticks from the command line, with live statistics.

use std::time::Duration;

use clap::{Args, Subcommand};
use quiver_client::{latency::LatencySummary, ConnectionState, TickError, TickStats};
use serde::Serialize;
use tokio::time::Instant;

use crate::{error::CliError, seconds, ServerArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum TickCommand {
    /// Publish ticks at a fixed rate.
    Pub(PubArgs),
    /// Subscribe and print statistics once a second and at the end.
    Sub(SubArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Channel to publish on.
    #[arg(long)]
    channel: String,
    /// Ticks per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Payload bytes per tick (the first 8 carry a counter).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Ask the server to drop ticks older than this many ms instead of sending them late.
    #[arg(long)]
    max_age_ms: Option<u64>,
    /// Send a random-walk price as text ("101.25") instead of --size bytes with a counter (what the browser
    /// demo page draws as a line).
    #[arg(long)]
    price: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Channel to subscribe to.
    #[arg(long)]
    channel: String,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Print one JSON object at the end instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: TickCommand) -> Result<(), CliError> {
    match command {
        TickCommand::Pub(args) => publish(args).await,
        TickCommand::Sub(args) => subscribe(args).await,
    }
}

/// The client gave up the channel (`why`: code and reason): nothing more would be sent or received.
fn ended(channel: &str, (code, reason): (quiver_proto::ErrorCode, String)) -> CliError {
    CliError::TicksEnded { channel: channel.to_string(), code, reason }
}

fn deadline(duration: Option<f64>) -> Result<Option<Instant>, CliError> {
    // Beyond what the clock can count: no end.
    Ok(duration.map(|secs| seconds("duration", secs)).transpose()?.and_then(|d| Instant::now().checked_add(d)))
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `setup` (a connection, a claim), within the run's `--duration` if it has one: a server that never answers
/// does not hold a bounded run forever.
async fn within<T>(
    end: Option<Instant>,
    what: &'static str,
    setup: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::select! {
        result = setup => result,
        () = until(end) => Err(CliError::TickSetupTimeout(what)),
    }
}

async fn publish(args: PubArgs) -> Result<(), CliError> {
    if !(args.rate >= 0.01 && args.rate <= 1_000_000.0) {
        return Err(CliError::TickRate(args.rate));
    }
    let end = deadline(args.duration)?;
    let client = within(end, "connecting", args.server.connect()).await?;
    let max_age = args.max_age_ms.map(Duration::from_millis);
    let claim = async { client.publisher_with_max_age(&args.channel, max_age).await.map_err(CliError::Publish) };
    let publisher = within(end, "Publish", claim).await?;
    let max = publisher.max_payload()?;
    if args.size > max {
        return Err(TickError::TooLarge { size: args.size, max_payload: max }.into());
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    if args.price {
        crate::err!("publishing {} prices/s on {}", args.rate, args.channel);
    } else {
        crate::err!("publishing {} ticks/s of {} bytes on {}", args.rate, args.size, args.channel);
    }
    let mut price = 100.0f64;
    let start = Instant::now();
    let (mut sent, mut unsent) = (0u64, 0u64);
    let mut payload = vec![0u8; args.size];
    let mut report = start + Duration::from_secs(1);
    let mut stop = crate::output::Stop::new();
    for i in 0u64.. {
        let scheduled = start + interval.mul_f64(i as f64);
        if end.is_some_and(|end| scheduled >= end) {
            break;
        }
        // The timer's ~1 ms slack is fine here (latency is measured from the stamped send time, not the
        // schedule), and spinning for precision would take a core from the server on small machines.
        tokio::select! {
            () = tokio::time::sleep_until(scheduled) => {}
            () = stop.requested() => break,
            (code, reason) = client.closed() => return Err(ended(&args.channel, (code, reason))),
        }
        if let Some(why) = publisher.end_reason() {
            return Err(ended(&args.channel, why));
        }
        let tick = if args.price {
            // A random walk pulled gently back towards 100.
            price += (rand::random::<f64>() - 0.5) * 0.4 + (100.0 - price) * 0.002;
            format!("{price:.2}").into_bytes()
        } else {
            // The counter's low-order bytes when --size is below 8 (its high-order ones would stay 0).
            let counter = i.to_be_bytes();
            let n = counter.len().min(payload.len());
            payload[..n].copy_from_slice(&counter[counter.len() - n..]);
            payload.clone()
        };
        match publisher.send(tick) {
            Ok(_) => sent += 1,
            Err(TickError::NotConnected) => unsent += 1,
            Err(err) => return Err(err.into()),
        }
        if Instant::now() >= report {
            crate::err!("sent {sent} ticks ({unsent} while reconnecting)");
            report += Duration::from_secs(1);
        }
    }
    crate::out!("sent {sent} ticks in {:.1} s ({unsent} not sent while reconnecting)", start.elapsed().as_secs_f64());
    let connected_at_end = client.state().borrow().is_connected();
    // Closing drops datagrams quinn has not sent yet: give the last ticks a moment to leave.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close().await;
    if sent == 0 && unsent > 0 {
        // Connected throughout the run's end, it would have sent some: a script must not take this for success.
        return Err(CliError::TicksNotSent(unsent));
    }
    if !connected_at_end {
        // As `tick sub` does: the server went away mid-run (it exited 0 then, having sent some).
        return Err(CliError::NotConnectedAtEnd(args.channel));
    }
    Ok(())
}

/// `quiver tick sub --json` output.
#[derive(Debug, Serialize)]
struct SubReport {
    channel: String,
    received: u64,
    lost: u64,
    stale_dropped: u64,
    latency: LatencySummary,
    /// Milliseconds of the run the client spent not connected (reconnecting).
    disconnected_ms: u64,
    /// Whether the client was connected when the run ended (if not, the command exits non-zero).
    connected_at_end: bool,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// A live line: this second's rate, then totals since the start (the loss, staleness and latency figures are the
/// whole run's, said so, not the second's).
fn line(stats: &TickStats, rate: f64) -> String {
    let seen = stats.received + stats.lost;
    format!(
        "{rate:>8.0}/s  since start: received {:>8}  lost {:>5.2}%  stale {:>5.2}%  latency p50 {} µs  p99 {} µs",
        stats.received,
        percent(stats.lost, seen),
        percent(stats.stale_dropped, stats.received + stats.stale_dropped),
        stats.latency.p50_us,
        stats.latency.p99_us
    )
}

async fn subscribe(args: SubArgs) -> Result<(), CliError> {
    let end = deadline(args.duration)?;
    let client = within(end, "connecting", args.server.connect()).await?;
    let subscribed = async { client.subscribe(&args.channel).await.map_err(CliError::Subscribe) };
    let subscription = within(end, "Subscribe", subscribed).await?;
    // (On stderr with --json too: stdout holds only the report, and a script may wait for this line.)
    crate::err!("subscribed to {}", args.channel);
    let mut second = tokio::time::interval_at(Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    // After a stall, one line late rather than several at once (with "0/s" rates).
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut previous, mut last_line) = (0, Instant::now());
    let mut stop = crate::output::Stop::new();
    // The connection's state, told on stderr as it changes, and the time spent without one: a run against a server
    // that went away printed "0/s" lines and exited 0, like a run on a channel nobody published on.
    let mut state = client.state();
    let mut down_since = (!matches!(*state.borrow_and_update(), ConnectionState::Connected { .. })).then(Instant::now);
    let (mut disconnected, mut watching) = (Duration::ZERO, true);
    // A subscription that ends still reports what it received (with --json too) before the error.
    let ending = loop {
        tokio::select! {
            changed = state.changed(), if watching => {
                if changed.is_err() {
                    watching = false; // the client is going: its close ends the run
                    continue;
                }
                let now = state.borrow_and_update().clone();
                crate::err!("* {}", crate::chat::terminal_line(&now.to_string()));
                match (&now, down_since) {
                    (ConnectionState::Connected { .. }, Some(since)) => {
                        disconnected += since.elapsed();
                        down_since = None;
                    }
                    (ConnectionState::Connected { .. }, None) => {}
                    (_, None) => down_since = Some(Instant::now()),
                    (_, Some(_)) => {}
                }
            }
            _ = second.tick() => {
                if let Some(why) = subscription.end_reason() {
                    break Some(ended(&args.channel, why));
                }
                let stats = subscription.stats();
                if !args.json {
                    let window = last_line.elapsed().as_secs_f64().max(1e-3);
                    crate::out!("{}", line(&stats, (stats.received - previous) as f64 / window));
                }
                last_line = Instant::now();
                previous = stats.received;
            }
            () = until(end) => break None,
            () = stop.requested() => break None,
            why = client.closed() => break Some(ended(&args.channel, why)),
        }
    };
    let stats = subscription.stats();
    let connected_at_end = down_since.is_none();
    let disconnected = disconnected + down_since.map_or(Duration::ZERO, |since| since.elapsed());
    if args.json {
        let report = SubReport {
            channel: args.channel.clone(),
            received: stats.received,
            lost: stats.lost,
            stale_dropped: stats.stale_dropped,
            latency: stats.latency,
            disconnected_ms: u64::try_from(disconnected.as_millis()).unwrap_or(u64::MAX),
            connected_at_end,
        };
        crate::out!("{}", serde_json::to_string(&report)?);
    } else {
        crate::out!("total: received {}  lost {}  stale {}", stats.received, stats.lost, stats.stale_dropped);
        if !disconnected.is_zero() {
            crate::out!("not connected for {:.1} s of the run", disconnected.as_secs_f64());
        }
        let l = stats.latency;
        crate::out!(
            "latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
    }
    client.close().await;
    match ending {
        Some(err) => Err(err),
        None if !connected_at_end => Err(CliError::NotConnectedAtEnd(args.channel)),
        None => Ok(()),
    }
}
