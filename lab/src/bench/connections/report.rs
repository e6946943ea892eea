//! What a connections run reports, with the goals beside the figures.

use std::time::Duration;

use serde::Serialize;

use super::{child::ChildStats, ConnectionsConfig};

/// Goal: server memory per idle connection, bytes (moonshot 20 KB).
pub(super) const GOAL_BYTES_PER_CONNECTION: f64 = 28_000.0;
/// Goal: full handshakes per second.
pub(super) const GOAL_HANDSHAKES_PER_S: f64 = 2_000.0;
/// Goal: the server's CPU with every connection idle, percent of one core.
pub(super) const GOAL_IDLE_CPU_PCT: f64 = 5.0;

/// The outcome of a connections run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// Settings.
    pub config: serde_json::Value,
    /// Connections opened (QUIC handshake and Hello/Welcome).
    pub connections: u32,
    /// Connections that failed to open (first and resumed rounds).
    pub failed: u32,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// Time to open them all, seconds.
    pub connect_s: f64,
    /// Full handshakes per second over that time.
    pub full_handshakes_per_s: f64,
    /// The server's CPU time per full handshake, µs.
    pub server_cpu_per_handshake_us: Option<f64>,
    /// The server's resident memory before any connection, bytes.
    pub rss_before_bytes: Option<u64>,
    /// With every connection open and settled, bytes.
    pub rss_after_bytes: Option<u64>,
    /// (after − before) / connections.
    pub bytes_per_connection: Option<f64>,
    /// Native connections the server counted open.
    pub server_connections: i64,
    /// Seconds the idle CPU was measured over.
    pub idle_s: f64,
    /// The server's CPU while every connection idled, percent of one core.
    pub idle_cpu_pct: Option<f64>,
    /// Connections closed and opened again with their session tickets.
    pub resumed: u32,
    /// Time to open them again, seconds.
    pub resume_s: f64,
    /// Resumed handshakes per second.
    pub resumed_handshakes_per_s: f64,
    /// Session tickets the server accepted meanwhile (its `tls_tickets_accepted` counter): one per resumed
    /// handshake.
    pub server_tickets_accepted: u64,
    /// The client sockets' buffers as granted (receive, send), bytes.
    pub client_socket_buffers: (usize, usize),
    /// The kernel's caps on what a socket may ask for (`net.core.rmem_max`, `wmem_max`), bytes.
    pub kernel_buffer_max: (Option<u64>, Option<u64>),
    /// Connections asked for: the goals are judged only when every one of them opened.
    pub requested: u32,
}

/// What `run_connections` measured, turned into a report by [`ConnectionsReport::new`].
pub(super) struct Measured<'a> {
    pub(super) config: &'a ConnectionsConfig,
    pub(super) opened: u32,
    pub(super) failures: u32,
    pub(super) first_failure: Option<String>,
    pub(super) connect_time: Duration,
    pub(super) handshake_cpu: Option<Duration>,
    pub(super) rss_before: Option<u64>,
    pub(super) rss_after: Option<u64>,
    pub(super) stats_open: ChildStats,
    pub(super) idle_cpu: Option<Duration>,
    pub(super) resumed: u32,
    pub(super) resume_time: Duration,
    pub(super) tickets_accepted: u64,
    pub(super) granted: (usize, usize),
}

fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).ok()?.trim().parse().ok()
}

impl ConnectionsReport {
    pub(super) fn new(m: Measured<'_>) -> ConnectionsReport {
        let per_s = |n: u32, t: Duration| if t.is_zero() { 0.0 } else { f64::from(n) / t.as_secs_f64() };
        let opened = f64::from(m.opened.max(1));
        ConnectionsReport {
            config: serde_json::json!({
                "count": m.config.count,
                "sockets": m.config.sockets,
                "in_flight": m.config.in_flight,
                "resumed": m.config.resumed,
                "idle_s": m.config.idle.as_secs_f64(),
                "server": "its own process, dev certificate, memory durability, limits raised to the run's count",
            }),
            connections: m.opened,
            failed: m.failures,
            first_failure: m.first_failure,
            connect_s: m.connect_time.as_secs_f64(),
            full_handshakes_per_s: per_s(m.opened, m.connect_time),
            server_cpu_per_handshake_us: m.handshake_cpu.map(|c| c.as_secs_f64() * 1e6 / opened),
            rss_before_bytes: m.rss_before,
            rss_after_bytes: m.rss_after,
            bytes_per_connection: m
                .rss_before
                .zip(m.rss_after)
                .filter(|_| m.opened > 0)
                .map(|(before, after)| after.saturating_sub(before) as f64 / opened),
            server_connections: m.stats_open.connections,
            idle_s: m.config.idle.as_secs_f64(),
            idle_cpu_pct: m
                .idle_cpu
                .filter(|_| !m.config.idle.is_zero() && m.opened > 0)
                .map(|c| 100.0 * c.as_secs_f64() / m.config.idle.as_secs_f64()),
            resumed: m.resumed,
            resume_s: m.resume_time.as_secs_f64(),
            resumed_handshakes_per_s: per_s(m.resumed, m.resume_time),
            server_tickets_accepted: m.tickets_accepted,
            client_socket_buffers: m.granted,
            kernel_buffer_max: (sysctl("rmem_max"), sysctl("wmem_max")),
            requested: m.config.count,
        }
    }

    /// Human-readable summary, each figure beside its goal.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.1}{unit}"));
        // A figure from fewer connections than asked for (or none: an idle server's memory and CPU) says nothing
        // about the goal, which is about all of them.
        let short = format!(
            "not judged: {} of {} connections opened, {} open at the server",
            self.connections, self.requested, self.server_connections
        );
        // Counted on both ends: the server may have dropped some after they opened.
        let complete = self.connections > 0
            && self.connections >= self.requested
            && self.server_connections >= i64::from(self.requested);
        let met = |ok: Option<bool>| match ok {
            _ if !complete => short.clone(),
            Some(true) => "met".into(),
            Some(false) => "NOT met".into(),
            None => "not measured".into(),
        };
        let kb = self.bytes_per_connection.map(|b| b / 1000.0);
        let mut out = String::new();
        out += &format!(
            "connections open           {:>10}   (failed: {}{})\n",
            self.connections,
            self.failed,
            self.first_failure.as_deref().map(|e| format!("; first: {e}")).unwrap_or_default()
        );
        out += &format!("time to connect all        {:>10.2} s\n", self.connect_s);
        // Figures beside a goal are rounded so that one near the bound reads as its verdict does: down for "≥" and
        // "<", up for "≤" (to nearest, 28.004 KB read "28.00 KB ... NOT met", 4.996 % "5.00 % ... met").
        let (down, up) = (
            |v: f64, d: i32| (v * 10f64.powi(d)).floor() / 10f64.powi(d),
            |v: f64, d: i32| (v * 10f64.powi(d)).ceil() / 10f64.powi(d),
        );
        out += &format!(
            "full handshakes/s          {:>10.1}   goal ≥ {GOAL_HANDSHAKES_PER_S:.0}: {}\n",
            down(self.full_handshakes_per_s, 1),
            met(Some(self.full_handshakes_per_s >= GOAL_HANDSHAKES_PER_S))
        );
        out += &format!("server CPU per handshake   {:>10}\n", opt(self.server_cpu_per_handshake_us, " µs"));
        out += &format!(
            "resumed handshakes/s       {:>10.0}   ({} reopened; the server accepted {} of its session tickets)\n",
            self.resumed_handshakes_per_s, self.resumed, self.server_tickets_accepted
        );
        out += &format!(
            "server memory/connection   {:>10}   goal ≤ 28 KB (moonshot 20 KB): {}  (RSS {} → {} MB)\n",
            // (Digits enough that a verdict at the bound shows why: 28.04 read "28.0 KB ... NOT met".)
            kb.map_or("n/a".to_string(), |kb| format!("{:.2} KB", up(kb, 2))),
            met(self.bytes_per_connection.map(|b| b <= GOAL_BYTES_PER_CONNECTION)),
            opt(self.rss_before_bytes.map(|b| b as f64 / 1e6), ""),
            opt(self.rss_after_bytes.map(|b| b as f64 / 1e6), "")
        );
        out += &format!(
            "server idle CPU            {:>10}   goal < {GOAL_IDLE_CPU_PCT:.0} % of a core: {}  (over {:.0} s)\n",
            self.idle_cpu_pct.map_or("n/a".to_string(), |p| format!("{:.2} %", down(p, 2))),
            met(self.idle_cpu_pct.map(|p| p < GOAL_IDLE_CPU_PCT)),
            self.idle_s
        );
        let (rmem, wmem) = self.kernel_buffer_max;
        out += &format!(
            "client socket buffers      granted {} / {} B (receive / send); kernel max {} / {} B\n",
            self.client_socket_buffers.0,
            self.client_socket_buffers.1,
            rmem.map_or("?".into(), |v| v.to_string()),
            wmem.map_or("?".into(), |v| v.to_string())
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(config: &ConnectionsConfig, opened: u32) -> Measured<'_> {
        Measured {
            config,
            opened,
            failures: config.count - opened,
            first_failure: (opened < config.count).then(|| "refused".to_string()),
            connect_time: Duration::from_secs(1),
            handshake_cpu: Some(Duration::from_millis(5)),
            rss_before: Some(10_000_000),
            rss_after: Some(10_000_000 + 20_000 * u64::from(opened)),
            stats_open: ChildStats { connections: i64::from(opened), ..ChildStats::default() },
            idle_cpu: Some(Duration::from_millis(10)),
            resumed: 0,
            resume_time: Duration::ZERO,
            tickets_accepted: 0,
            granted: (0, 0),
        }
    }

    /// A run of 100 connections over one socket.
    fn hundred() -> ConnectionsConfig {
        ConnectionsConfig {
            count: 100,
            sockets: 1,
            in_flight: 1,
            resumed: 0,
            idle: Duration::from_secs(1),
            server_program: "quiver".into(),
            server_args: Vec::new(),
        }
    }

    /// A figure near its goal's bound is printed as its verdict reads (to nearest, 28.004 KB read "28.00 KB ... NOT
    /// met" and 4.996 % "5.00 % ... met").
    #[test]
    fn a_figure_near_its_bound_reads_as_its_verdict() {
        let mut report = ConnectionsReport::new(measured(&hundred(), 100));
        (report.bytes_per_connection, report.idle_cpu_pct, report.full_handshakes_per_s) =
            (Some(28_004.0), Some(4.996), 1_999.96);
        let table = report.table();
        assert!(table.contains("28.01 KB") && table.contains("4.99 %") && table.contains("1999.9 "), "{table}");
    }

    #[test]
    fn goals_are_judged_only_when_every_connection_opened() {
        let config = hundred();
        let all = ConnectionsReport::new(measured(&config, 100)).table();
        assert!(all.contains("goal ≤ 28 KB (moonshot 20 KB): met"), "{all}");
        assert!(all.contains("of a core: met"), "{all}");
        // An idle server with no connection uses little memory and CPU: that is not the goal met.
        for opened in [0, 99] {
            let report = ConnectionsReport::new(measured(&config, opened));
            let table = report.table();
            assert!(!table.contains(": met"), "{table}");
            let short = format!("not judged: {opened} of 100 connections opened, {opened} open at the server");
            assert_eq!(table.matches(&short).count(), 3, "{table}");
            assert_eq!(report.bytes_per_connection.is_none(), opened == 0);
            assert_eq!(report.idle_cpu_pct.is_none(), opened == 0);
        }
        // All opened, but the server dropped some before the memory and idle CPU were measured.
        let mut dropped = measured(&config, 100);
        dropped.stats_open.connections = 90;
        let table = ConnectionsReport::new(dropped).table();
        assert!(!table.contains(": met") && table.contains("100 of 100 connections opened, 90 open"), "{table}");
    }
}
