//! `quiver bench post`: acknowledged posts per second and ack latency for each durability mode, in one run.

use std::path::PathBuf;

use clap::Args;
use quiver_lab::bench::{run_post, PostConfig};

use super::report;
use crate::error::CliError;

#[derive(Debug, Args)]
pub(crate) struct PostArgs {
    /// Concurrent posters (each its own connection), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10, 100])]
    posters: Vec<u32>,
    /// Rooms the posters spread over, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 100])]
    rooms: Vec<u32>,
    /// Durability modes, comma-separated: memory, os, fsync.
    #[arg(long, value_delimiter = ',', default_values_t = ["memory".to_string(), "os".into(), "fsync".into()])]
    modes: Vec<String>,
    /// Posts each poster keeps in flight (the next one sent without waiting for the earlier ones' replies, as the
    /// client library pipelines them), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32])]
    in_flight: Vec<u32>,
    /// Post body bytes (at most 16 MiB).
    #[arg(long, default_value_t = 64, value_parser = super::body_size)]
    size: usize,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Seconds per cell before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(super) async fn post(args: PostArgs) -> Result<(), CliError> {
    let mut modes = Vec::new();
    for mode in &args.modes {
        modes.push(mode.parse::<quiver_lab::bench::Durability>()?);
    }
    let config = PostConfig {
        posters: args.posters,
        in_flight: args.in_flight,
        rooms: args.rooms,
        modes,
        size: args.size,
        duration: super::bench_seconds("duration", args.duration)?,
        warmup: super::bench_seconds("warmup", args.warmup)?,
    };
    let cells = config.modes.len() * config.rooms.len() * config.posters.len() * config.in_flight.len();
    let per_cell = config.warmup + config.duration;
    crate::err!(
        "{cells} cells ({} modes x {} room spreads x {} poster counts x {} in-flight depths) x {:.1} s, {} B bodies; \
         in-process server with its per-connection post and request rates and per-address connection limits raised \
         for the bench's load",
        config.modes.len(),
        config.rooms.len(),
        config.posters.len(),
        config.in_flight.len(),
        per_cell.as_secs_f64(),
        config.size
    );
    let run = |progress| run_post(config, progress);
    report(per_cell * cells as u32, args.json.as_deref(), run, quiver_lab::bench::PostReport::table).await
}
