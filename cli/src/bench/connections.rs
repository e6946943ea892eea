//! `quiver bench connections`: what idle connections cost the server (memory, handshakes, idle CPU), measured on a
//! server process of its own (this binary, run again with the hidden `connections-server` subcommand).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use quiver_lab::bench::{run_connections, ConnectionsConfig};

use super::report;
use crate::error::CliError;

#[derive(Debug, Args)]
pub(crate) struct ConnectionsArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// Client UDP sockets the connections are spread over.
    #[arg(long, default_value_t = 16)]
    sockets: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: u32,
    /// Connections closed and opened again with their TLS session tickets (at most --count).
    #[arg(long, default_value_t = 1000)]
    resumed: u32,
    /// Seconds over which the server's idle CPU is measured with every connection open: three of the clients'
    /// keep-alive intervals by default (a window shorter than one misses their PINGs, and the figure with them).
    #[arg(long, default_value_t = 24.0)]
    idle: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The hidden subcommand the bench runs its server process with.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Connections the server takes (in all and from one address).
    max_connections: u32,
    /// Its data directory (the bench's temporary one).
    data_dir: PathBuf,
}

pub(super) async fn connections(args: ConnectionsArgs) -> Result<(), CliError> {
    let program = std::env::current_exe().map_err(CliError::CurrentExe)?;
    let config = ConnectionsConfig {
        count: args.count,
        sockets: args.sockets,
        in_flight: args.in_flight,
        resumed: args.resumed.min(args.count),
        idle: super::bench_seconds("idle", args.idle)?,
        server_program: program,
        server_args: vec!["bench".into(), "connections-server".into()],
    };
    crate::err!(
        "{} connections over {} client sockets, {} handshakes in flight, to a server process of its own on 127.0.0.1 \
         (its per-address connection limit and rate raised to the run's count); then {:.0} s idle; then {} reopened \
         with their session tickets",
        config.count,
        config.sockets,
        config.in_flight,
        config.idle.as_secs_f64(),
        config.resumed
    );
    let keep_alive = quiver_transport::tuning::KEEP_ALIVE;
    if config.idle < 2 * keep_alive {
        crate::err!(
            "warning: the idle window ({:.0} s) is shorter than two keep-alive intervals ({} s): the idle CPU \
             figure misses some of the clients' PINGs",
            config.idle.as_secs_f64(),
            keep_alive.as_secs()
        );
    }
    // About 1,500 handshakes a second here, plus the settling, the idle time and the reconnects.
    let expected = Duration::from_secs_f64((f64::from(config.count) + f64::from(config.resumed)) / 1500.0)
        + config.idle
        + Duration::from_secs(4);
    let run = |progress| run_connections(config, progress);
    report(expected, args.json.as_deref(), run, quiver_lab::bench::ConnectionsReport::table).await
}

pub(super) async fn server(args: ServerArgs) -> Result<(), CliError> {
    Ok(quiver_lab::bench::serve_connections_child(args.max_connections, args.data_dir).await?)
}
