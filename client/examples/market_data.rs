//! A market-data subscriber: every tick of `--channel` (default `prices`) as it arrives, with latency and loss
//! printed once a second, the way a trading front end watches its feed's health.
//!
//!     quiver-server &
//!     quiver tick pub --channel prices --rate 1000 &
//!     cargo run -p quiver-client --example market_data -- --channel prices --seconds 10
//!
//! `next_batch` hands over every tick that arrived (a delta feed needs them all); a reader that falls behind
//! loses the oldest, never reads stale data, and the loss is counted.

mod common;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args = common::Args::parse();
    let channel = args.or("channel", "prices").to_string();
    let client = args.connect().await;
    let mut feed = client.subscribe(&channel).await.expect("subscribe");
    println!("subscribed to {channel}");
    let end = tokio::time::Instant::now() + args.seconds();
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.tick().await;
    let mut last_price = None;
    loop {
        tokio::select! {
            ticks = feed.next_batch() => {
                let Some(ticks) = ticks else { break };
                if let Some(tick) = ticks.last() {
                    last_price = Some(String::from_utf8_lossy(&tick.payload).into_owned());
                }
            }
            _ = report.tick() => print_stats(&channel, &feed.stats(), last_price.as_deref()),
            () = tokio::time::sleep_until(end) => break,
        }
    }
    let stats = feed.stats();
    println!(
        "summary {channel}: received {} lost {} stale {} superseded {} latency p50 {} us p99 {} us",
        stats.received, stats.lost, stats.stale_dropped, stats.superseded, stats.latency.p50_us, stats.latency.p99_us
    );
    client.close().await;
}

fn print_stats(channel: &str, stats: &quiver_client::TickStats, last: Option<&str>) {
    let total = stats.received + stats.lost;
    let loss = if total == 0 { 0.0 } else { 100.0 * stats.lost as f64 / total as f64 };
    println!(
        "{channel}: {} ticks, loss {loss:.2} %, latency p50 {} us p99 {} us, last {}",
        stats.received,
        stats.latency.p50_us,
        stats.latency.p99_us,
        last.unwrap_or("-")
    );
}
