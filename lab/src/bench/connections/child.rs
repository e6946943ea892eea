//! The server `quiver bench connections` measures runs in a process of its own, so that its memory (RSS) and CPU
//! time are its alone: [`serve`] is that process's body (the CLI's hidden `quiver bench connections-server`), and
//! [`ServerProcess`] the bench's handle on it. They talk in JSON lines: the child prints where it listens, then
//! answers each line on its stdin with its counters, and exits when its stdin closes (the bench ended or died).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use quiver_certs::Fingerprint;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio_util::sync::CancellationToken;

use crate::bench::BenchError;

/// What the child prints first.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Ready {
    pub(super) addr: SocketAddr,
    pub(super) pin: String,
    pub(super) data_dir: PathBuf,
}

/// The child's answer to a line on its stdin.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct ChildStats {
    /// Sessions admitted so far.
    pub(super) handshakes: u64,
    /// TLS session tickets presented and opened (resumptions).
    pub(super) tls_tickets_accepted: u64,
    /// Native connections open now.
    pub(super) connections: i64,
}

/// Runs a Quiver server for `quiver bench connections` on 127.0.0.1 (dev certificate and token keys in `data_dir`,
/// which the bench made and removes; memory durability; limits raised to `max_connections` from this one address),
/// until stdin closes.
pub async fn serve(max_connections: u32, data_dir: PathBuf) -> Result<(), BenchError> {
    let limits = quiver_proto::Limits {
        max_connections: max_connections.max(1),
        max_connections_per_ip: max_connections.max(1),
        ..crate::bench::post::raised_limits()
    };
    let config = quiver_server::ServerConfig {
        durability: quiver_server::store::Durability::Memory,
        limits,
        budget: crate::bench::post::raised_budget(),
        ..quiver_server::ServerConfig::dev(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir.clone())
    };
    let server = quiver_server::Server::bind(config)?;
    let ready = Ready { addr: server.local_addr(), pin: server.fingerprint().to_string(), data_dir };
    let stats = server.stats();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    let mut out = tokio::io::stdout();
    out.write_all(json_line(&ready).as_bytes()).await.map_err(BenchError::io("stdout"))?;
    out.flush().await.map_err(BenchError::io("stdout"))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        let snapshot = stats.snapshot();
        let answer = ChildStats {
            handshakes: snapshot.handshakes,
            tls_tickets_accepted: snapshot.tls_tickets_accepted,
            connections: stats.connections_native.load(std::sync::atomic::Ordering::Relaxed),
        };
        out.write_all(json_line(&answer).as_bytes()).await.map_err(BenchError::io("stdout"))?;
        out.flush().await.map_err(BenchError::io("stdout"))?;
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    Ok(())
}

/// `value` as one line of JSON.
fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default() + "\n"
}

/// The bench's handle on the server process: killed when dropped.
#[derive(Debug)]
pub(super) struct ServerProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: Lines<BufReader<tokio::process::ChildStdout>>,
    pub(super) ready: Ready,
    pub(super) pin: Fingerprint,
}

impl ServerProcess {
    /// Starts `program args…` and waits (up to 30 s) for its [`Ready`] line.
    pub(super) async fn start(program: &std::path::Path, args: &[String]) -> Result<ServerProcess, BenchError> {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("starting the server process"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::io("the server process")(std::io::Error::other("no stdin or stdout pipe")));
        };
        let mut stdout = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        let ready: Ready = match first {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)?,
            _ => {
                let status = child.try_wait().ok().flatten();
                let why = format!("it did not say where it listens (exit status: {status:?})");
                return Err(BenchError::io("the server process")(std::io::Error::other(why)));
            }
        };
        let pin = ready.pin.parse::<Fingerprint>().map_err(|_| {
            BenchError::io("the server process")(std::io::Error::other("its certificate fingerprint does not parse"))
        })?;
        Ok(ServerProcess { child, stdin, stdout, ready, pin })
    }

    /// The server's counters now.
    pub(super) async fn stats(&mut self) -> Result<ChildStats, BenchError> {
        let io = || BenchError::io("the server process");
        self.stdin.write_all(b"stats\n").await.map_err(io())?;
        self.stdin.flush().await.map_err(io())?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .map_err(|_| io()(std::io::Error::other("no answer to stats")))?
            .map_err(io())?
            .ok_or_else(|| io()(std::io::Error::other("it exited")))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Resident memory now, bytes (Linux: `/proc/PID/status`).
    pub(super) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
        kib.parse::<u64>().ok().map(|k| k * 1024)
    }

    /// CPU time used so far, user + system (Linux).
    pub(super) fn cpu(&self) -> Option<Duration> {
        crate::bench::proc::cpu_time(&self.child.id()?.to_string())
    }

    /// Closes its stdin (it stops serving and exits) and waits up to 5 s, then kills it.
    pub(super) async fn stop(mut self) {
        drop(self.stdin);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill().await;
    }
}
