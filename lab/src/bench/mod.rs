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

/// One closed loop of the post benches: in-flight slot `slot` of poster `poster`, of `posters` posters keeping
/// `in_flight` posts each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PostLoop {
    pub poster: u32,
    pub slot: u32,
    pub posters: u32,
    pub in_flight: u32,
}

impl PostLoop {
    /// Which of `rooms` rooms this loop's post `n` goes to: with as many posters as rooms or more, poster `p` always
    /// posts to room `p % rooms` (its loops together); with fewer, the loops take turns over the rooms (the loops'
    /// `n`th posts go to different rooms, as many as there are loops), so that every room gets posts (a cell of 1
    /// poster and 100 rooms posted into one room, and was reported as 100, until 2026-12-06).
    pub(crate) fn room(&self, n: u64, rooms: u32) -> u32 {
        let rooms = u64::from(rooms.max(1));
        if u64::from(self.posters) >= rooms {
            return (u64::from(self.poster) % rooms) as u32;
        }
        let turn = u64::from(self.slot) + n * u64::from(self.in_flight.max(1));
        ((u64::from(self.poster) + turn * u64::from(self.posters)) % rooms) as u32
    }
}

#[cfg(test)]
mod post_loop_tests {
    use super::PostLoop;

    /// Every room of a cell gets posts, whatever its posters and in-flight count, and the loops in flight at once
    /// (post `n` of each) post to as many different rooms as there are rooms; as many posters as rooms keep one room
    /// each.
    #[test]
    fn the_loops_of_a_cell_cover_every_room() {
        let cells = [(1, 1, 100), (1, 8, 100), (10, 8, 100), (100, 8, 100), (100, 1, 1), (3, 2, 4), (150, 2, 100)];
        for (posters, in_flight, rooms) in cells {
            let loops: Vec<PostLoop> = (0..posters)
                .flat_map(|poster| (0..in_flight).map(move |slot| PostLoop { poster, slot, posters, in_flight }))
                .collect();
            let mut used = std::collections::BTreeSet::new();
            for n in 0..200 {
                let at_once: std::collections::BTreeSet<u32> = loops.iter().map(|l| l.room(n, rooms)).collect();
                assert_eq!(at_once.len(), loops.len().min(rooms as usize), "{posters} x {in_flight} into {rooms}");
                used.extend(at_once);
            }
            assert_eq!(used.len(), rooms as usize, "{posters} x {in_flight} into {rooms}");
        }
        let poster_7 = PostLoop { poster: 7, slot: 5, posters: 100, in_flight: 8 };
        assert!((0..50).all(|n| poster_7.room(n, 100) == 7), "a poster per room keeps its room");
        let poster_107 = PostLoop { poster: 107, slot: 1, posters: 150, in_flight: 2 };
        assert!((0..50).all(|n| poster_107.room(n, 100) == 7), "more posters than rooms: each keeps one");
    }
}
