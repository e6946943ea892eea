//! `quiver bench`: latency of Quiver's paths beside baselines measured in the same run, through the same link
//! emulator. Every send is scheduled at a fixed rate and its latency counts from the scheduled time (no
//! coordinated omission), warm-up excluded, percentiles from HdrHistogram.
//!
//! `rtt` and `fanout` measure latency; `connections` what idle connections cost the server; `cluster` what a Redis
//! between nodes costs; `post` measures the durable store (posts/s and ack latency per durability
//! mode). `rtt` and `fanout` share how a series is counted (`series`), the Quiver server
//! and the baselines' echoes they measure (`server`, `echo`), the WebSocket client Quiver is compared with
//! (`websocket`), and the link they cross (`namespaces`).

mod cluster;
mod connections;
mod echo;
mod error;
mod fanout;
mod namespaces;
mod plot;
mod post;
mod proc;
mod restart;
mod rtt;
mod series;
mod server;
mod websocket;

pub use cluster::{run_cluster, ClusterConfig, ClusterReport, FanoutRow};
pub use connections::{run_connections, serve_connections_child, ConnectionsConfig, ConnectionsReport};
pub use error::BenchError;
pub use fanout::{run_fanout, FanoutConfig, FanoutReport, FanoutSide, ServerTicks};
pub use plot::{write_plot, PlotError};
pub use post::{run_post, PostConfig, PostReport, PostRow};
/// The durability modes `post` measures (the server's own type).
pub use quiver_server::store::{Durability, UnknownDurability};
pub use restart::{run_restart, RestartConfig, RestartReport};
pub use rtt::{run_rtt, write_json, RttConfig};
pub use series::{Report, SeriesResult};

/// A temporary directory only this user may read and write (0700): the benches' servers keep their data directories
/// in these, and a server warns about one others can read (tempfile's default is 0777 less the umask).
pub(crate) fn private_tempdir(within: Option<&std::path::Path>) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    match within {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
}
