//! `quiver bench cluster`: one node against three on a Redis the bench starts itself (docs/cluster.md).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use quiver_lab::bench::{run_cluster, ClusterConfig};

use super::report;
use crate::error::CliError;

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Echoed messages per echo series (the first tenth is warm-up).
    #[arg(long, default_value_t = 1000)]
    echoes: u32,
    /// Milliseconds between echoed messages (at most 60,000: a larger one overflowed the run's expected time).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    echo_interval_ms: u64,
    /// Posting connections in the posts/s series (spread over the nodes).
    #[arg(long, default_value_t = 100)]
    posters: u32,
    /// Rooms they post into.
    #[arg(long, default_value_t = 100)]
    rooms: u32,
    /// Posts each poster keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: u32,
    /// Measured seconds of each posts/s and fan-out series.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Tick subscribers (connections) in the fan-out series.
    #[arg(long, default_value_t = 300)]
    subscribers: u32,
    /// Ticks per second of the publisher.
    #[arg(long, default_value_t = 60)]
    rate: u32,
    /// Body and payload bytes, 12 to 1,024 (ticks carry at least 16: their number and scheduled time).
    #[arg(long, default_value_t = 64, value_parser = super::payload_size)]
    size: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(super) async fn cluster(args: ClusterArgs) -> Result<(), CliError> {
    let config = ClusterConfig {
        echoes: args.echoes,
        echo_interval: Duration::from_millis(args.echo_interval_ms),
        posters: args.posters,
        rooms: args.rooms,
        in_flight: args.in_flight,
        duration: super::bench_seconds("duration", args.duration as f64)?,
        subscribers: args.subscribers,
        tick_rate: args.rate,
        size: args.size,
    };
    crate::err!(
        "redis-server (persistence off) and 4 in-process nodes (1 alone, 3 on the Redis) with their per-connection \
         rates and per-address connection limits raised for the bench's load"
    );
    // Three echo series and the paced PINGs (1,100 at the echoes' pace), then four throughput and fan-out runs.
    let echoes = config.echo_interval.saturating_mul(config.echoes.saturating_mul(3).saturating_add(1_100));
    let expected = echoes + (config.duration + Duration::from_secs(2)) * 4 + Duration::from_secs(5);
    let run = |progress| run_cluster(config, progress);
    report(expected, args.json.as_deref(), run, quiver_lab::bench::ClusterReport::table).await
}
