//! What a fan-out run reports: per side, delivery and one-way latency of ticks and of chat, and a table that puts
//! Quiver's numbers beside the WebSocket hub's.

use quiver_client::latency::LatencySummary;
use serde::Serialize;

use crate::bench::series::times;

/// The outcome of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Settings.
    pub config: serde_json::Value,
    /// Quiver's numbers.
    #[serde(flatten)]
    pub quiver: FanoutSide,
    /// The WebSocket hub's numbers, when compared.
    pub websocket: Option<FanoutSide>,
}

/// One transport's fan-out numbers.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSide {
    /// Ticks the publisher sent (measured part).
    pub ticks_sent: u64,
    /// Share of (tick, subscriber) pairs delivered, percent.
    pub delivered_pct: f64,
    /// Share of arrivals dropped as stale (after a newer tick), percent.
    pub stale_pct: f64,
    /// One-way tick latency, publisher's scheduled send to a subscriber's receipt.
    pub tick_latency: LatencySummary,
    /// Chat messages posted (measured part).
    pub chat_sent: u64,
    /// Share of (message, member) pairs delivered, percent.
    pub chat_delivered_pct: f64,
    /// One-way chat latency, scheduled post to each member's receipt.
    pub chat_latency: LatencySummary,
    /// Tick latency at the percentile plot's quantiles, `(quantile, µs)`.
    pub tick_curve: Vec<(f64, u64)>,
    /// Chat latency at the percentile plot's quantiles.
    pub chat_curve: Vec<(f64, u64)>,
}

impl FanoutReport {
    /// The run as series for a percentile plot ([`crate::bench::write_plot`]): ticks and chat of each side.
    pub fn as_series(&self) -> crate::bench::series::Report {
        let series = |name: &str, sent: u64, delivered_pct: f64, latency, curve: &Vec<(f64, u64)>| {
            crate::bench::series::SeriesResult {
                name: name.to_string(),
                baseline: None,
                sent,
                lost: sent - (sent as f64 * delivered_pct / 100.0).round().min(sent as f64) as u64,
                latency,
                curve: curve.clone(),
            }
        };
        let mut out = Vec::new();
        let sides = std::iter::once(("quiver", &self.quiver)).chain(self.websocket.as_ref().map(|w| ("websocket", w)));
        for (name, side) in sides {
            out.push(series(
                &format!("{name} ticks"),
                side.ticks_sent,
                side.delivered_pct,
                side.tick_latency,
                &side.tick_curve,
            ));
            out.push(series(
                &format!("{name} chat"),
                side.chat_sent,
                side.chat_delivered_pct,
                side.chat_latency,
                &side.chat_curve,
            ));
        }
        crate::bench::series::Report { config: self.config.clone(), series: out }
    }

    /// Human-readable summary; with a WebSocket side, its rows follow with Quiver's p50 and p99 as a ratio of it.
    pub fn table(&self) -> String {
        let row = |name: &str, l: &LatencySummary, delivered: f64, vs: Option<&LatencySummary>| {
            let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
            let vs =
                vs.map(|b| format!("  {}, {}", times(ratio(l.p50_us, b.p50_us)), times(ratio(l.p99_us, b.p99_us))));
            format!(
                "{name:<16} {:>9} {:>10.2} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}{}\n",
                l.count,
                delivered,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                format!("{} ± {}", l.mean_us, l.stdev_us),
                vs.unwrap_or_default()
            )
        };
        let ws = self.websocket.as_ref();
        let mut out = format!(
            "{:<16} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}{}\n",
            "(µs)",
            "count",
            "deliv.%",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean ± sd",
            if ws.is_some() { "  quiver ÷ websocket (p50, p99)" } else { "" }
        );
        let q = &self.quiver;
        out += &row("quiver ticks", &q.tick_latency, q.delivered_pct, ws.map(|w| &w.tick_latency));
        out += &row("quiver chat", &q.chat_latency, q.chat_delivered_pct, ws.map(|w| &w.chat_latency));
        if let Some(w) = ws {
            out += &row("websocket ticks", &w.tick_latency, w.delivered_pct, None);
            out += &row("websocket chat", &w.chat_latency, w.chat_delivered_pct, None);
        }
        out += &format!("stale-dropped Quiver ticks: {:.3} %\n", q.stale_pct);
        out
    }
}
