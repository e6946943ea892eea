//! What a fan-out run reports: per side (the raw UDP and bare quinn baselines, Quiver, and a WebSocket hub when
//! compared), delivery and one-way latency of ticks and of chat, and the server's CPU time per delivery, with
//! ratios against raw UDP fan-out measured in the same run.

use quiver_client::latency::LatencySummary;
use serde::Serialize;

use crate::bench::series::times;

/// The baseline the ratios are taken against: raw UDP, one `send_to` per delivery.
pub(super) const RAW_UDP: &str = "raw udp";

/// Quiver's second run, without chat, beside baselines that carry ticks only.
pub(super) const QUIVER_NO_CHAT: &str = "quiver no chat";

/// The outcome of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Settings.
    pub config: serde_json::Value,
    /// Quiver's numbers.
    #[serde(flatten)]
    pub quiver: FanoutSide,
    /// The baselines' numbers (raw UDP, raw UDP with `sendmmsg`, bare quinn datagrams), unless left out.
    pub baselines: Vec<FanoutSide>,
    /// Quiver again with ticks only (no chat), when the run has chat and baselines: the baselines carry ticks only,
    /// and CPU per delivery compares like loads only so (a chat message's delivery, on a stream, costs the server
    /// differently from a tick's: less, in the runs so far).
    pub quiver_no_chat: Option<FanoutSide>,
    /// The WebSocket hub's numbers, when compared.
    pub websocket: Option<FanoutSide>,
}

/// One transport's fan-out numbers.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSide {
    /// Which series (`quiver`, `raw udp`, `raw udp sendmmsg`, `bare quinn`, `websocket`).
    pub name: String,
    /// Ticks the publisher sent (measured part).
    pub ticks_sent: u64,
    /// Share of (tick, subscriber) pairs delivered, percent.
    pub delivered_pct: f64,
    /// Share of tick arrivals dropped as stale (after a newer tick), over the whole run with its warm-up, percent.
    pub stale_pct: f64,
    /// Ticks that arrived and were let go of by a subscription's backlog of accepted ticks (its reader fell
    /// behind), over the whole run: counted as not delivered, and not in the percentiles (the table says so).
    pub superseded: u64,
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
    /// Ticks and chat messages that reached a subscriber in the whole run, warm-up included.
    pub deliveries: u64,
    /// CPU seconds the server's own threads used in the run (`None` for an external server).
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per delivery, µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// CPU of everything else in the process (the subscribers, the publisher, the bench) per delivery, µs: what
    /// the load generator costs on the same cores.
    pub client_cpu_us_per_delivery: Option<f64>,
    /// What Quiver's in-process server did with the run's ticks (`None` for other sides and external servers).
    pub server_ticks: Option<ServerTicks>,
}

/// Quiver's server counters over one run: ticks handed to QUIC, replaced by a newer one before they could be
/// (latest wins), and dropped for their age.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerTicks {
    /// Handed to QUIC for a subscriber.
    pub sent: u64,
    /// Replaced by a newer tick of their channel while waiting.
    pub conflated: u64,
    /// Dropped for being older than the channel's max age.
    pub expired: u64,
}

impl FanoutSide {
    /// Deliveries one core of this machine could make per second at this side's CPU cost.
    pub fn deliveries_per_core_s(&self) -> Option<f64> {
        self.cpu_us_per_delivery.filter(|us| *us > 0.0).map(|us| 1e6 / us)
    }
}

impl FanoutReport {
    /// Every side: baselines, Quiver, then the WebSocket hub.
    pub fn sides(&self) -> impl Iterator<Item = &FanoutSide> {
        self.baselines.iter().chain([&self.quiver]).chain(self.quiver_no_chat.as_ref()).chain(self.websocket.as_ref())
    }

    /// The side named `name`.
    pub fn side(&self, name: &str) -> Option<&FanoutSide> {
        self.sides().find(|s| s.name == name)
    }

    /// Quiver's delivery throughput per core as a multiple of raw UDP fan-out's (the goal: ≥ 0.5), on the
    /// same load: ticks only (Quiver's run without chat, where the run has chat).
    pub fn quiver_throughput_vs_raw_udp(&self) -> Option<f64> {
        let raw = self.side(RAW_UDP)?.cpu_us_per_delivery?;
        let quiver = self.quiver_no_chat.as_ref().unwrap_or(&self.quiver);
        (quiver.chat_sent == 0).then_some(raw / quiver.cpu_us_per_delivery?)
    }

    /// The run as series for a percentile plot ([`crate::bench::write_plot`]): ticks (and chat, where sent) of
    /// each side.
    pub fn as_series(&self) -> crate::bench::series::Report {
        let series = |name: String, sent: u64, delivered_pct: f64, latency, curve: &Vec<(f64, u64)>| {
            crate::bench::series::SeriesResult {
                name,
                baseline: None,
                sent,
                lost: sent - (sent as f64 * delivered_pct / 100.0).round().min(sent as f64) as u64,
                stale: 0,
                superseded: 0,
                wire_bytes_per_msg: None,
                latency,
                curve: curve.clone(),
                samples: None,
            }
        };
        let mut out = Vec::new();
        for side in self.sides() {
            let name = &side.name;
            out.push(series(
                format!("{name} ticks"),
                side.ticks_sent,
                side.delivered_pct,
                side.tick_latency,
                &side.tick_curve,
            ));
            if side.chat_sent > 0 {
                out.push(series(
                    format!("{name} chat"),
                    side.chat_sent,
                    side.chat_delivered_pct,
                    side.chat_latency,
                    &side.chat_curve,
                ));
            }
        }
        crate::bench::series::Report { config: self.config.clone(), series: out }
    }

    /// Human-readable summary: latency of every side's ticks (p50 and p99 as a ratio of raw UDP's) and chat
    /// (as a ratio of the WebSocket hub's, when compared), then the servers' CPU per delivery.
    pub fn table(&self) -> String {
        let row = |name: &str, l: &LatencySummary, delivered: f64, stale: String, vs: Option<&LatencySummary>| {
            let vs = vs.map(|b| {
                let [p50, p99] = crate::bench::series::ratios(l, b);
                format!("  {}, {}", times(p50), times(p99))
            });
            let [p50, p90, p99, p999, max, spread] = crate::bench::series::cells(l);
            format!(
                "{name:<23} {:>9} {:>8.2} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}{}\n",
                l.count,
                delivered,
                stale,
                p50,
                p90,
                p99,
                p999,
                max,
                spread,
                vs.unwrap_or_default()
            )
        };
        let raw = self.side(RAW_UDP).map(|s| &s.tick_latency);
        let ws_chat = self.websocket.as_ref().filter(|w| w.chat_sent > 0).map(|w| &w.chat_latency);
        let mut out = format!(
            "{:<23} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}{}\n",
            "(µs)",
            "count",
            "deliv.%",
            "stale%",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean ± sd",
            if raw.is_some() || ws_chat.is_some() {
                "  p50, p99 ÷ raw udp ticks (chat: ÷ websocket chat)"
            } else {
                ""
            }
        );
        for side in self.sides() {
            let stale = format!("{:.2}", side.stale_pct);
            let vs = raw.filter(|_| side.name != RAW_UDP);
            out += &row(&format!("{} ticks", side.name), &side.tick_latency, side.delivered_pct, stale, vs);
            if side.chat_sent > 0 {
                let vs = ws_chat.filter(|_| side.name != "websocket");
                out += &row(&format!("{} chat", side.name), &side.chat_latency, side.chat_delivered_pct, "".into(), vs);
            }
        }
        for side in self.sides().filter(|side| side.superseded > 0) {
            out += &format!(
                "note: {}: {} ticks arrived and were superseded in the subscriptions' backlogs (readers fell behind): \
                 not delivered, and not in the percentiles, which are the lower for it\n",
                side.name, side.superseded
            );
        }
        if let Some(t) = self.quiver.server_ticks {
            out += &format!(
                "quiver server: {} ticks sent, {} conflated (latest wins), {} expired\n",
                t.sent, t.conflated, t.expired
            );
        }
        out += &self.cpu_table();
        out
    }

    /// The servers' CPU per delivery and the delivery throughput one core would give, as a multiple of raw UDP's.
    fn cpu_table(&self) -> String {
        if self.sides().all(|s| s.cpu_us_per_delivery.is_none()) {
            return String::new();
        }
        let raw = self.side(RAW_UDP).and_then(|s| s.cpu_us_per_delivery);
        let mut out = format!(
            "\nserver CPU (its own threads, whole run incl. warm-up); clients: the rest of the process but the link emulator\n\
             {:<23} {:>11} {:>8} {:>12} {:>16} {:>13} {:>14}\n",
            "series", "deliveries", "CPU s", "µs/delivery", "deliveries/core-s", "× raw udp", "clients µs/del."
        );
        for side in self.sides() {
            let Some(us) = side.cpu_us_per_delivery else {
                out += &format!("{:<23} {:>11} {:>8}\n", side.name, side.deliveries, "n/a");
                continue;
            };
            let per_core = side.deliveries_per_core_s().unwrap_or(f64::NAN);
            // (Only where the load is raw UDP's, ticks only: a chat delivery costs the server otherwise.)
            let like = side.chat_sent == 0;
            let vs = raw.filter(|_| like).map_or_else(|| "–".to_string(), |raw| format!("{:.2}", raw / us));
            out += &format!(
                "{:<23} {:>11} {:>8.2} {:>12.2} {:>16.0} {:>13} {:>14.2}\n",
                side.name,
                side.deliveries,
                side.server_cpu_s.unwrap_or(f64::NAN),
                us,
                per_core,
                vs,
                side.client_cpu_us_per_delivery.unwrap_or(f64::NAN)
            );
        }
        if let Some(ratio) = self.quiver_throughput_vs_raw_udp() {
            let run = if self.quiver_no_chat.is_some() { QUIVER_NO_CHAT } else { "quiver" };
            out += &format!("Quiver's throughput per core, ticks only ({run}): {ratio:.2}× raw udp's (goal ≥ 0.5");
            // Receivers that overflowed raise the cost per delivery of the side that lost (fewer deliveries for the
            // same sends): the ratio then says little.
            let short: Vec<_> = [self.side(RAW_UDP), Some(self.quiver_no_chat.as_ref().unwrap_or(&self.quiver))]
                .into_iter()
                .flatten()
                .filter(|side| side.delivered_pct < 99.0)
                .map(|side| format!("{} delivered {:.1} %", side.name, side.delivered_pct))
                .collect();
            match short.is_empty() {
                true => out += ")\n",
                false => out += &format!("; not judged: {})\n", short.join(", ")),
            }
        }
        out
    }
}
