//! `quiver bench post`: acknowledged posts per second and ack latency for each durability mode (memory, os,
//! fsync) in one run, into 1 room or spread over many, with 1 to N concurrent posters, and this disk's own fsync
//! latency measured in the same run, so the store's cost reads as a ratio and against the disk.
//!
//! The modes' servers run side by side (idle but for the cell being measured), and each cell is measured for every
//! mode in turn, so that a ratio compares runs seconds apart. Each poster is its own connection posting closed-loop (the next post once the previous is acknowledged), so
//! the ack latency is the whole path: request, sequencing, the store's group commit, delivery, reply. Posts are
//! counted only between the warm-up and the end.

use std::{
    io::Write,
    net::SocketAddr,
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use quiver_client::{
    latency::{LatencyRecorder, LatencySummary},
    Client, ConnectOptions, TokenProvider, TrustOptions,
};
use quiver_server::store::Durability;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BenchError;

/// What `quiver bench post` runs.
#[derive(Debug, Clone)]
pub struct PostConfig {
    /// Concurrent posters per cell (each its own connection).
    pub posters: Vec<u32>,
    /// Posts each poster keeps in flight, per cell (1: the next post once the previous is acknowledged).
    pub in_flight: Vec<u32>,
    /// Rooms the posters spread over per cell (every room gets posts: `super::PostLoop::room`).
    pub rooms: Vec<u32>,
    /// Durability modes, one in-process server each.
    pub modes: Vec<Durability>,
    /// Post body bytes.
    pub size: usize,
    /// Measured time per cell.
    pub duration: Duration,
    /// Time per cell before measuring.
    pub warmup: Duration,
}

/// One cell: a mode, a room spread and a poster count.
#[derive(Debug, Clone, Serialize)]
pub struct PostRow {
    /// `memory`, `os` or `fsync`.
    pub mode: &'static str,
    /// Rooms posted into.
    pub rooms: u32,
    /// Concurrent posters.
    pub posters: u32,
    /// Posts each poster keeps in flight.
    pub in_flight: u32,
    /// Acknowledged posts per second.
    pub posts_per_s: f64,
    /// Post → acknowledgement, of every post sent in the measured window (also those acknowledged after it).
    pub ack: LatencySummary,
    /// Posts sent in the measured window that failed (refused, or the connection lost): posted again at once,
    /// neither counted in `posts_per_s` nor timed.
    pub errors: u64,
    /// Batches the store committed per second (0 in memory): posts per batch = posts_per_s / this.
    pub commits_per_s: f64,
    /// An `fsync` cell: the disk's fsync measured right before it (what its goal's bound adds to memory's p50).
    /// Measured once before the run, it was minutes older than the later cells, on an idle machine, where this
    /// VM's speed drifts by 2× from minute to minute (until 2026-12-07, a review's find).
    pub fsync: Option<LatencySummary>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PostReport {
    /// This disk's fsync before the run: append 4 KiB to a file in the run's data directory and fdatasync it, 200
    /// times (each `fsync` cell has its own, measured right before it: [`PostRow::fsync`]).
    pub fsync: LatencySummary,
    /// Body bytes.
    pub size: usize,
    /// Every cell, in run order.
    pub rows: Vec<PostRow>,
}

/// The server's per-connection and per-address limits, raised for the bench's own load (100 connections from one
/// address posting as fast as they can would otherwise meet `posts_per_s` and `new_connections_per_s_per_ip`; its
/// budget too: [`raised_budget`]).
pub(super) fn raised_limits() -> quiver_proto::Limits {
    quiver_proto::Limits {
        posts_per_s: 1_000_000,
        requests_per_s: 1_000_000,
        // As fast as a bench sender may be asked to publish (`series::MAX_RATE`): at the default 10,000/s the
        // server's limit dropped ticks, and the table showed them as the path's loss.
        ticks_per_s: 100_000,
        new_connections_per_s_per_ip: 100_000,
        max_connections_per_ip: 10_000,
        ..quiver_proto::Limits::default()
    }
}

/// The server's budget with as many handshakes at once from the bench's one address as from all addresses together
/// (and no bound on how many begin a second):
/// a server on the internet makes a burst of newcomers from one address beyond a few validate first (a Retry, one
/// round trip more each), which is not what the benches measure. And as many connections awaiting Hello as
/// `max_connections` allows: the bench's thousands of connections all come from one network, whose oldest
/// newcomers a server on the internet would close beyond `max_awaiting_hello` to make room, and beyond
/// `max_connections_per_network` would refuse (its rooms and channels beyond `max_rooms_per_network` and
/// `max_channels_per_network`).
pub(super) fn raised_budget() -> quiver_server::Budget {
    let default = quiver_server::Budget::default();
    quiver_server::Budget {
        max_unvalidated_handshakes_per_ip: default.max_unvalidated_handshakes,
        // (The connections bench opens thousands a second, each a handshake from the one address.)
        max_unvalidated_handshakes_per_s: 1_000_000,
        max_awaiting_hello: 100_000,
        // (All from 127.0.0.0/24: one network.)
        max_connections_per_network: 100_000,
        new_connections_per_s_per_network: 100_000,
        max_rooms_per_network: 100_000,
        max_channels_per_network: 100_000,
        ..default
    }
}

/// How long past a cell's window its last posts may wait for their acknowledgement.
const POST_OVERTIME: Duration = Duration::from_secs(30);

/// Runs every mode × rooms × posters cell; `progress` hears what runs.
pub async fn run_post(config: PostConfig, progress: impl Fn(&str)) -> Result<PostReport, BenchError> {
    let max_posters = config.posters.iter().copied().max().unwrap_or(0);
    let zero = |counts: &[u32]| counts.is_empty() || counts.contains(&0);
    if zero(&config.posters) || zero(&config.rooms) || zero(&config.in_flight) {
        return Err(BenchError::BadConfig { field: "posters/rooms/in-flight", value: 0.0, expected: "at least 1" });
    }
    if config.duration.is_zero() {
        return Err(BenchError::BadConfig { field: "duration", value: 0.0, expected: "above 0" });
    }
    let scratch = super::private_tempdir(None).map_err(BenchError::io("temporary directory"))?;
    progress("measuring fsync");
    let fsync = measure_fsync(scratch.path()).map_err(BenchError::io("fsync measurement"))?;
    let mut rows = Vec::new();
    // Every mode's server and posters up front, then each cell for every mode in turn: the modes of one cell are
    // measured seconds apart, so a ratio does not straddle this machine's slower and faster minutes.
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut servers = Vec::new();
    for &mode in &config.modes {
        progress(&format!("{}: starting a server and connecting {max_posters} posters", mode.name()));
        servers.push(ModeServer::start(mode, scratch.path(), max_posters, &stop).await?);
    }
    let cells: Vec<(u32, u32)> =
        config.rooms.iter().flat_map(|&r| config.posters.iter().map(move |&p| (r, p))).collect();
    // The modes take turns going first: a mode measured right after another meets that one's background work (its
    // store's flushes and compactions, the page cache's writeback), and the first of a cell meets the last cell's.
    // In a fixed order that always charged the same modes (memory, first, with fsync's leftovers; os never after a
    // store's), and flattered `os` ÷ memory.
    let mut turn = 0;
    for (rooms, posters) in cells {
        for &in_flight in &config.in_flight {
            let first = turn;
            turn += 1;
            for server in (0..servers.len()).map(|j| &servers[(first + j) % servers.len()]) {
                let mode = server.mode.name();
                progress(&format!("{mode}: {posters} posters ({in_flight} in flight each) into {rooms} room(s)"));
                let store = server.store.as_ref();
                let commits = || store.map_or(0, |s| s.writer_stats().commits.load(Ordering::Relaxed));
                let clients = &server.clients[..posters as usize];
                // (Measured in the conditions the cell's own syncs meet: after the cell before it, whose writes the
                // disk may still be taking; off the runtime's threads, where the servers run.)
                let fsync = match server.mode {
                    Durability::Fsync => {
                        let dir = scratch.path().to_owned();
                        let probe = tokio::task::spawn_blocking(move || measure_fsync(&dir)).await;
                        Some(probe.map_err(std::io::Error::other).and_then(|m| m).map_err(BenchError::io("fsync"))?)
                    }
                    _ => None,
                };
                let (posts, ack, commits, errors) = cell(clients, rooms, in_flight, &config, commits).await;
                let seconds = config.duration.as_secs_f64();
                let (posts_per_s, commits_per_s) = (posts as f64 / seconds, commits as f64 / seconds);
                let row = PostRow { mode, rooms, posters, in_flight, posts_per_s, ack, commits_per_s, errors, fsync };
                rows.push(row);
            }
        }
    }
    // Closed in order, so that no store is still open (its background work finding its files gone) when its
    // data directory is removed: the posters (all at once: each close waits out its connection's draining period),
    // then each server, then the stores, then the directories.
    let clients = servers.iter_mut().flat_map(|server| server.clients.drain(..));
    futures_util::future::join_all(clients.map(Client::close)).await;
    stop.cancel();
    for server in servers {
        let ModeServer { task, store, _dir, .. } = server;
        let _ = task.await;
        drop(store);
    }
    rows.sort_by_key(|row| config.modes.iter().position(|m| m.name() == row.mode));
    Ok(PostReport { fsync, size: config.size, rows })
}

/// One durability mode's in-process server, with its store and its posters.
struct ModeServer {
    mode: Durability,
    store: Option<std::sync::Arc<quiver_server::store::Store>>,
    clients: Vec<Client>,
    /// The server's task: done once it stopped (and let go of its store).
    task: tokio::task::JoinHandle<quiver_server::Summary>,
    _dir: tempfile::TempDir,
}

impl ModeServer {
    async fn start(
        mode: Durability,
        scratch: &Path,
        posters: u32,
        stop: &CancellationToken,
    ) -> Result<Self, BenchError> {
        let dir = super::private_tempdir(Some(scratch)).map_err(BenchError::io("data directory"))?;
        let server_config = quiver_server::ServerConfig {
            durability: mode,
            limits: raised_limits(),
            budget: raised_budget(),
            ..quiver_server::ServerConfig::dev(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path().into())
        };
        let server = quiver_server::Server::bind(server_config)?;
        let store = server.rooms().store().cloned();
        let (addr, pin) = (server.local_addr(), server.fingerprint());
        let task = tokio::spawn(server.run(stop.clone()));
        let mut clients = Vec::new();
        for i in 0..posters {
            let options = ConnectOptions {
                trust: TrustOptions::Pin(pin),
                token_provider: Some(TokenProvider::dev(dir.path().to_owned(), format!("poster-{i}"))),
                // QUIC is what these benches measure: never the WebSocket fallback.
                transport: quiver_client::Transport::Quic,
                // `--in-flight` bounds the posts in flight itself.
                max_queued_posts: 0,
                ..ConnectOptions::default()
            };
            clients.push(Client::connect_with(&addr.to_string(), options).await?);
        }
        Ok(ModeServer { mode, store, clients, task, _dir: dir })
    }
}

/// One cell: `clients` post closed-loop into `rooms` rooms for the warm-up and the measured time. Returns the posts
/// acknowledged and the latency recorded while measuring, and the store's commits meanwhile.
async fn cell(
    clients: &[Client],
    rooms: u32,
    in_flight: u32,
    config: &PostConfig,
    commits: impl Fn() -> u64,
) -> (u64, LatencySummary, u64, u64) {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let body = bytes::Bytes::from(vec![b'x'; config.size]);
    let mut posters = tokio::task::JoinSet::new();
    // Each of a poster's `in_flight` loops posts on the poster's one connection: the client library pipelines them.
    let names: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new((0..rooms).map(|r| format!("bench-post-{r}")).collect());
    let loops = (0..clients.len() as u32).flat_map(|poster| (0..in_flight).map(move |slot| (poster, slot)));
    for (poster, slot) in loops {
        let (client, body, names) = (clients[poster as usize].clone(), body.clone(), names.clone());
        let post_loop = super::PostLoop { poster, slot, posters: clients.len() as u32, in_flight };
        posters.spawn(async move {
            let mut latency = LatencyRecorder::default();
            let (mut count, mut errors) = (0u64, 0u64);
            for n in 0.. {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let room = &names[post_loop.room(n, rooms) as usize];
                // (A server that stops answering must not hold the bench: a post unanswered long after the
                // window is an error, and this loop's end.)
                let Ok(posted) =
                    tokio::time::timeout_at((end + POST_OVERTIME).into(), client.post(room, body.clone())).await
                else {
                    errors += 1;
                    break;
                };
                let acked = Instant::now();
                // Counted towards posts/s when acknowledged within the window, whenever sent (counted only when also
                // sent within it, each loop lost about one post of the window: a cycle's worth, more for the slower
                // modes, which lowered their ratio to memory's).
                count += u64::from(posted.is_ok() && acked >= measure_from && acked <= end);
                match (posted.is_ok(), sent >= measure_from) {
                    (_, false) => {}
                    (false, true) => errors += 1,
                    // Timed whenever it is acknowledged: the slowest posts of the window would otherwise be left out.
                    (true, true) => latency.record(acked - sent),
                }
            }
            (count, latency, errors)
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let commits_before = commits();
    tokio::time::sleep_until(end.into()).await;
    let commits_during = commits() - commits_before;
    let (mut total, mut failed) = (0, 0);
    let mut merged = LatencyRecorder::default();
    // Every poster's figures (one that panicked is counted as an error, and the others are kept).
    while let Some(joined) = posters.join_next().await {
        match joined {
            Ok((count, latency, errors)) => {
                total += count;
                failed += errors;
                merged.merge(&latency);
            }
            Err(err) => {
                tracing::warn!(%err, "a poster task failed");
                failed += 1;
            }
        }
    }
    (total, merged.summary(), commits_during, failed)
}

/// Append 4 KiB and fdatasync, 200 times, in `dir` (as the store's group commit syncs: `PersistMode::SyncData`).
fn measure_fsync(dir: &Path) -> std::io::Result<LatencySummary> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut latency = LatencyRecorder::default();
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latency.record(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(latency.summary())
}

impl PostReport {
    /// The table, the machine's fsync, and each goal of the durable-rooms issue with its measured value.
    pub fn table(&self) -> String {
        let mut out = format!(
            "fsync on this disk before the run (append 4 KiB + fdatasync, 200x; again before each fsync cell, for \
             its goal): p50 {} us, p99 {} us\n\n",
            self.fsync.p50_us, self.fsync.p99_us
        );
        out += &format!(
            "{:<7} {:>5} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            "mode",
            "rooms",
            "posters",
            "in flight",
            "posts/s",
            "vs memory",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "per fsync",
            "errors"
        );
        for row in &self.rows {
            // (No ratio against a memory cell that acknowledged nothing: every post failed, e.g. a --size over the
            // server's max_body; the errors column says so.)
            let ratio = self
                .memory(row)
                .filter(|m| m.posts_per_s > 0.0)
                .map_or("-".to_string(), |m| format!("{:.2}x", row.posts_per_s / m.posts_per_s));
            let per_commit = if row.commits_per_s > 0.0 {
                format!("{:.1}", row.posts_per_s / row.commits_per_s)
            } else {
                "-".into()
            };
            out += &format!(
                "{:<7} {:>5} {:>7} {:>9} {:>10.0} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
                row.mode,
                row.rooms,
                row.posters,
                row.in_flight,
                row.posts_per_s,
                ratio,
                row.ack.p50_us,
                row.ack.p99_us,
                super::series::p999(&row.ack).map_or("-".to_string(), |us| us.to_string()),
                per_commit,
                row.errors
            );
        }
        out += "\ngoals:\n";
        for row in &self.rows {
            // (A memory cell that acknowledged nothing is no baseline, nor one whose posts failed: its throughput
            // is depressed, and a ratio against it would flatter the mode judged.)
            let Some(memory) = self.memory(row).filter(|m| m.posts_per_s > 0.0) else { continue };
            if memory.errors > 0 && row.mode != "memory" {
                out += &format!(
                    "  {} {} room(s) x {} posters x {} in flight: not judged (memory's cell had {} errors)\n",
                    row.mode, row.rooms, row.posters, row.in_flight, memory.errors
                );
                continue;
            }
            if row.mode != "memory" && (row.errors > 0 || row.ack.count == 0) {
                // (A cell whose posts failed has no ack p50 worth a verdict: 0 when none was acknowledged.)
                out += &format!(
                    "  {} {} room(s) x {} posters x {} in flight: not judged ({} errors, {} acknowledged)\n",
                    row.mode, row.rooms, row.posters, row.in_flight, row.errors, row.ack.count
                );
                continue;
            }
            match row.mode {
                "fsync" => {
                    let fsync = row.fsync.as_ref().unwrap_or(&self.fsync).p50_us;
                    let bound = memory.ack.p50_us + fsync;
                    out +=
                        &format!(
                        "  fsync {} room(s) x {} posters x {} in flight: ack p50 {} us <= memory p50 {} + fsync p50 {} = {} us: {}\n",
                        row.rooms, row.posters, row.in_flight, row.ack.p50_us, memory.ack.p50_us, fsync, bound,
                        met(row.ack.p50_us <= bound)
                    );
                    if row.posters >= 100 {
                        out += &format!(
                            "  fsync {} room(s) x {} posters x {} in flight: {:.0} posts/s >= 50000: {}\n",
                            row.rooms,
                            row.posters,
                            row.in_flight,
                            row.posts_per_s,
                            met(row.posts_per_s >= 50_000.0)
                        );
                    }
                }
                "os" => {
                    out += &format!(
                        "  os {} room(s) x {} posters x {} in flight: {:.3}x memory throughput >= 0.7x: {}\n",
                        row.rooms,
                        row.posters,
                        row.in_flight,
                        // (Rounded down, towards failing: 0.6999 read "0.700x ... NOT MET".)
                        (row.posts_per_s / memory.posts_per_s * 1000.0).floor() / 1000.0,
                        met(row.posts_per_s >= 0.7 * memory.posts_per_s)
                    );
                }
                _ => {}
            }
        }
        out
    }

    fn memory(&self, row: &PostRow) -> Option<&PostRow> {
        let same = |m: &&PostRow| (m.rooms, m.posters, m.in_flight) == (row.rooms, row.posters, row.in_flight);
        self.rows.iter().find(|m| m.mode == "memory" && same(m))
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_mode_posts_and_reports() {
        let config = PostConfig {
            posters: vec![1, 4],
            in_flight: vec![1, 3],
            rooms: vec![1, 2],
            modes: vec![Durability::Memory, Durability::Os, Durability::Fsync],
            size: 64,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
        };
        let report = run_post(config, |_| {}).await.unwrap();
        assert_eq!(report.rows.len(), 24);
        for row in &report.rows {
            assert!(row.posts_per_s > 0.0 && row.ack.count > 0 && row.errors == 0, "{row:?}");
            assert_eq!(row.commits_per_s > 0.0, row.mode != "memory", "{row:?}");
        }
        assert!(report.fsync.count == 200 && report.fsync.p50_us > 0);
        // Each fsync cell's own fsync, measured right before it, is what its goal's bound adds.
        assert!(report.rows.iter().all(|r| r.fsync.as_ref().map(|f| f.count) == (r.mode == "fsync").then_some(200)));
        let mut probed = report.clone();
        probed.rows.iter_mut().filter_map(|r| r.fsync.as_mut()).for_each(|f| f.p50_us = 12_345);
        assert!(probed.table().contains(" + fsync p50 12345 = "), "{}", probed.table());
        let table = report.table();
        assert!(table.contains("goals:") && table.contains("fsync on this disk"), "{table}");
        assert!(!table.contains("not judged"), "{table}");
        // A cell whose posts failed gets no verdict (its ack p50 read 0, "met").
        let mut failed = report.clone();
        let fsync = failed.rows.iter_mut().find(|r| r.mode == "fsync").unwrap();
        fsync.errors = 5;
        assert!(failed.table().contains("fsync 1 room(s) x 1 posters x 1 in flight: not judged (5 errors"));
    }
}
