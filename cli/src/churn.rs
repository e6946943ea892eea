//! `quiver churn`: ever-new rooms, channels and connections against a server, for a bounded time (the load of
//! `scripts/soak.sh`).

use std::{sync::Arc, time::Duration};

use clap::Args;
use quiver_lab::churn::{churn, ChurnCounters, ChurnOptions};

use crate::{error::CliError, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Connections churning at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds to churn (at most 3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Bytes of each post's body (at most 16 MiB).
    #[arg(long, default_value_t = 8192, value_parser = crate::bench::body_size)]
    body_bytes: usize,
    /// Each worker opens at most one connection per this many ms.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
}

pub(crate) async fn run(args: ChurnArgs) -> Result<(), CliError> {
    // Every flag of the server's (--transport, --qlog-dir, --fallback-after, --websocket-port too).
    let connect = args.server.options(None)?;
    let options = ChurnOptions {
        server: args.server.server.clone(),
        connect,
        workers: args.workers.max(1),
        duration: Duration::from_secs(args.duration),
        body_bytes: args.body_bytes,
        connection_interval: Duration::from_millis(args.interval_ms),
    };
    crate::err!("churning {} for {} s with {} workers", options.server, args.duration, options.workers);
    let counters = Arc::new(ChurnCounters::default());
    let run = churn(options, counters.clone());
    tokio::pin!(run);
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    loop {
        tokio::select! {
            () = &mut run => break,
            _ = progress.tick() => crate::err!("  {}", counters.summary()),
        }
    }
    crate::out!("{}", counters.summary());
    let errors: u64 = {
        let errors = counters.errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (what, count) in errors.iter() {
            // (A refusal's or a close's reason is the server's: escaped.)
            crate::out!("  {count} × {}", crate::chat::terminal_line(what));
        }
        errors.values().sum()
    };
    let connections = counters.connections.load(std::sync::atomic::Ordering::Relaxed);
    if errors > 0 || connections == 0 {
        return Err(CliError::Churn { connections, errors });
    }
    Ok(())
}
