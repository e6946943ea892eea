//! One measured series: scheduled sends, latencies from the schedule, losses; and the report of a run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use quiver_client::latency::{LatencyRecorder, LatencySummary};

use crate::sync::lock;

/// How late tokio's timer fires on its own (its granularity): a sender waking later than this was held up.
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How far past its schedule's end a sender may still send ([`Schedule::due`]).
pub(crate) const OVERRUN: Duration = Duration::from_secs(2);

/// The highest rate a bench sender is asked for, per second: each message in flight is remembered until it comes
/// back, and a sender beyond what the machine carries stops at its schedule's end plus [`OVERRUN`].
pub(crate) const MAX_RATE: f64 = 100_000.0;
/// The lowest: one message every 100 s.
pub(crate) const MIN_RATE: f64 = 0.01;

/// A rate a bench sender can be asked for: finite, from [`MIN_RATE`] to [`MAX_RATE`] per second.
pub(crate) fn rate_in_range(rate: f64) -> bool {
    rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// The send schedule of one sender: message `i` is due at `start + i × interval`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) start: Instant,
    pub(crate) interval: Duration,
    pub(crate) count: u64,
    /// Messages below this index are warm-up: sent, not measured.
    pub(crate) warmup: u64,
}

impl Schedule {
    /// `rate` messages per second from `start`: `warmup`'s worth of warm-up, then `duration`'s worth measured.
    pub(crate) fn at_rate(rate: f64, warmup: Duration, duration: Duration, start: Instant) -> Schedule {
        let warmup = (warmup.as_secs_f64() * rate).round() as u64;
        let count = warmup + (duration.as_secs_f64() * rate).round() as u64;
        Schedule { start, interval: Duration::from_secs_f64(1.0 / rate), count, warmup }
    }

    /// Waits for message `i`'s turn; returns the time its latency counts from. A sender late by up to
    /// [`TIMER_SLACK`] is the load generator's own imprecision (tokio's timer has 1 ms granularity), so then it is
    /// the moment it sends; later than that, the runtime was busy (on these 2 cores, with the system under test's
    /// own work: a fan-out's deliveries in its clients), and the time beyond the slack counts, as it would for a
    /// real application's sender (no coordinated omission). The same whether the sender slept for this message or
    /// found it already due: above 1,000 messages a second a timer armed for one wakes on the next millisecond with
    /// the next ones due too, and counting those from their schedule charged every message up to 1 ms of the
    /// timer's step (a review's find: on loopback, where a round trip is 50 µs, that flattened every ratio).
    ///
    /// `None` once the sender is more than [`OVERRUN`] past the schedule's end: the machine cannot carry the rate,
    /// and the run stops on time (what was not sent counts as lost, [`Tally::not_sent`]) instead of sending the
    /// rest back to back for as long as that takes.
    pub(crate) async fn due(&self, i: u64) -> Option<Instant> {
        let scheduled = self.start + self.interval.mul_f64(i as f64);
        let now = Instant::now();
        if now >= scheduled {
            let end = self.start + self.interval.mul_f64(self.count as f64);
            if now > end + OVERRUN {
                tracing::warn!(
                    sent = i,
                    scheduled = self.count,
                    "a sender fell more than {OVERRUN:?} behind its schedule: the rest is not sent (lower the rate)"
                );
                return None;
            }
            return Some(now.min(scheduled + TIMER_SLACK));
        }
        tokio::time::sleep_until(scheduled).await;
        Some(Instant::now().min(scheduled + TIMER_SLACK))
    }
}

/// Send times of messages in flight, and what came back.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    sent: HashMap<(u32, u64), Instant>,
    latencies: LatencyRecorder,
    received: u64,
    measured_sent: u64,
    /// Stale counters read when the result is taken (after the drain, so that a tick dropped as stale in the last
    /// round trip is not counted lost), each with its value when measuring began.
    stale_sources: Vec<(Arc<std::sync::atomic::AtomicU64>, u64)>,
    /// Superseded counters (ticks a subscriber's backlog let go of, its reader behind), read as the stale ones.
    superseded_sources: Vec<(Arc<std::sync::atomic::AtomicU64>, u64)>,
    /// Measured messages a latest-wins receiver of this tally's own dropped as stale ([`Tally::received_latest`]).
    stale_here: u64,
    /// The newest message each sender's latest-wins receiver took.
    newest: HashMap<u32, u64>,
    /// UDP payload bytes both ways on the senders' connections while they sent, and the messages they sent.
    wire: Option<(u64, u64)>,
}

/// A tally shared by a series' senders and receivers.
pub(crate) type SharedTally = Arc<Mutex<Tally>>;

impl Tally {
    pub(crate) fn shared() -> SharedTally {
        Arc::default()
    }

    /// Message `i` of sender `who` left at `origin` (only measured messages are recorded).
    pub(crate) fn sent(t: &SharedTally, schedule: &Schedule, who: u32, i: u64, origin: Instant) {
        if i >= schedule.warmup {
            let mut t = lock(t);
            t.sent.insert((who, i), origin);
            t.measured_sent += 1;
        }
    }

    /// Message `i` of sender `who` came back now; duplicates and warm-up are ignored.
    pub(crate) fn received(t: &SharedTally, who: u32, i: u64) {
        let now = Instant::now();
        let mut t = lock(t);
        if let Some(origin) = t.sent.remove(&(who, i)) {
            t.latencies.record(now - origin);
            t.received += 1;
        }
    }

    /// Message `i` of sender `who` came back now, to a receiver that keeps only the newest (as Quiver's tick
    /// subscriptions do): one older than a message taken already is dropped as stale, not measured. The datagram
    /// baselines receive so, so that their percentiles and Quiver's are over the same arrivals (the overtaken ones,
    /// the slowest, left out of both, and counted stale in both).
    pub(crate) fn received_latest(t: &SharedTally, who: u32, i: u64) {
        let now = Instant::now();
        let mut t = lock(t);
        let t = &mut *t;
        let newest = t.newest.entry(who).or_insert(i);
        let stale = i < *newest;
        *newest = (*newest).max(i);
        if let Some(origin) = t.sent.remove(&(who, i)) {
            match stale {
                true => t.stale_here += 1,
                false => {
                    t.latencies.record(now - origin);
                    t.received += 1;
                }
            }
        }
    }

    /// Sender `schedule`'s messages from `from` on were not sent ([`Schedule::due`]: out of time): the measured
    /// ones among them count as sent and lost (they were due, and nothing arrived), so a run whose sender could not
    /// keep up shows it rather than a shorter, cleaner tail.
    pub(crate) fn not_sent(t: &SharedTally, schedule: &Schedule, from: u64) {
        let missing = schedule.count.saturating_sub(from.max(schedule.warmup));
        lock(t).measured_sent += missing;
    }

    /// The stale ticks `counter` counts from now on are measured ones: read when the result is taken.
    pub(crate) fn stale_from(t: &SharedTally, counter: &Arc<std::sync::atomic::AtomicU64>) {
        let now = counter.load(std::sync::atomic::Ordering::Relaxed);
        lock(t).stale_sources.push((counter.clone(), now));
    }

    /// The superseded ticks `counter` counts from now on are measured ones (as [`Tally::stale_from`]).
    pub(crate) fn superseded_from(t: &SharedTally, counter: &Arc<std::sync::atomic::AtomicU64>) {
        let now = counter.load(std::sync::atomic::Ordering::Relaxed);
        lock(t).superseded_sources.push((counter.clone(), now));
    }

    /// A sender's connection carried `bytes` (UDP payload, both ways) while it sent `messages` messages.
    pub(crate) fn wire(t: &SharedTally, bytes: u64, messages: u64) {
        let mut t = lock(t);
        let (b, m) = t.wire.get_or_insert((0, 0));
        *b += bytes;
        *m += messages;
    }

    /// Measured messages sent and not back yet.
    pub(crate) fn outstanding(t: &SharedTally) -> usize {
        lock(t).sent.len()
    }

    pub(crate) fn result(t: &SharedTally, name: &str, baseline: Option<&str>) -> SeriesResult {
        let t = lock(t);
        let read = |sources: &[(Arc<std::sync::atomic::AtomicU64>, u64)]| {
            sources
                .iter()
                .map(|(counter, from)| counter.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(*from))
                .sum::<u64>()
        };
        let (stale, superseded) = (read(&t.stale_sources) + t.stale_here, read(&t.superseded_sources));
        SeriesResult {
            name: name.to_string(),
            baseline: baseline.map(str::to_string),
            sent: t.measured_sent,
            lost: t.measured_sent.saturating_sub(t.received + stale + superseded),
            stale,
            superseded,
            wire_bytes_per_msg: t.wire.and_then(|(b, m)| (m > 0).then(|| b as f64 / m as f64)),
            latency: t.latencies.summary(),
            curve: t.latencies.curve(),
            samples: Some(t.latencies.clone()),
        }
    }
}

/// Runs `task` until `stop` is cancelled: a series' readers, and its connections kept open through the drain.
pub(crate) fn until_stopped(stop: &CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stop.cancelled() => {}
        }
    });
}

/// How long a run waits, after its usual drain, for messages of a reliable path still being retransmitted (TCP's
/// timer backs off to seconds under burst loss); a reliable message counts as lost only after this.
pub(crate) const RELIABLE_DRAIN_CAP: std::time::Duration = std::time::Duration::from_secs(15);

/// Encodes (sender, index) at the start of a payload of `size` bytes (at least 12).
pub(crate) fn payload(who: u32, i: u64, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size.max(12)];
    out[..4].copy_from_slice(&who.to_be_bytes());
    out[4..12].copy_from_slice(&i.to_be_bytes());
    out
}

/// Reads (sender, index) back.
pub(crate) fn parse(payload: &[u8]) -> Option<(u32, u64)> {
    let who = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let i = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    Some((who, i))
}

/// The outcome of one series, in the shared summary shape.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesResult {
    /// What was measured.
    pub name: String,
    /// The series this one is compared with.
    pub baseline: Option<String>,
    /// Measured messages sent (warm-up excluded).
    pub sent: u64,
    /// Measured messages that never came back.
    pub lost: u64,
    /// Measured messages that came back after a newer one and were dropped as stale (ticks: reordered, not lost).
    pub stale: u64,
    /// Measured ticks that arrived and were let go of by the subscription's backlog of accepted ticks (its reader
    /// fell behind): not lost, and (like the stale ones) not in the percentiles: a run with any says so.
    pub superseded: u64,
    /// UDP payload bytes on the wire (both ways, ACKs and control traffic included) per message sent, where the
    /// series can count them (its client's QUIC connection statistics).
    pub wire_bytes_per_msg: Option<f64>,
    /// Round-trip latency percentiles.
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// `(quantile, µs)` points for a percentile plot.
    pub curve: Vec<(f64, u64)>,
    /// Every measured latency, where the series kept them (a round of a run in rounds, to be merged with the
    /// series' other rounds).
    #[serde(skip)]
    pub samples: Option<LatencyRecorder>,
}

impl SeriesResult {
    /// Adds `other`, another round of the same series, to this one: messages and losses summed, percentiles over
    /// the samples of both, bytes per message weighted by measured messages. A round without its samples cannot
    /// be merged into percentiles: the merged result keeps the summary of the round with more samples and drops
    /// the samples, so that no later round claims a merge either.
    pub fn absorb(&mut self, other: SeriesResult) {
        // (Rounds are alike, so weighting by measured messages is near enough to the totals' own ratio.)
        self.wire_bytes_per_msg = match (self.wire_bytes_per_msg, other.wire_bytes_per_msg) {
            (Some(mine), Some(theirs)) if self.sent + other.sent > 0 => {
                Some((mine * self.sent as f64 + theirs * other.sent as f64) / (self.sent + other.sent) as f64)
            }
            (mine, theirs) => mine.or(theirs),
        };
        self.sent += other.sent;
        self.lost += other.lost;
        self.stale += other.stale;
        self.superseded += other.superseded;
        match (self.samples.as_mut(), other.samples) {
            (Some(mine), Some(theirs)) => {
                mine.merge(&theirs);
                self.latency = mine.summary();
                self.curve = mine.curve();
            }
            (_, _) => {
                tracing::warn!(series = %self.name, "a round without its samples: its percentiles are not merged");
                if other.latency.count > self.latency.count {
                    (self.latency, self.curve) = (other.latency, other.curve);
                }
                self.samples = None;
            }
        }
    }
}

/// A whole run: its settings and every series.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The settings, as text (clients, rate, size, duration, profile).
    pub config: serde_json::Value,
    /// The series, baselines first.
    pub series: Vec<SeriesResult>,
}

impl Report {
    /// A terminal table: one row per series, with p50 and p99 ratios to the baseline.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>7} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8} {:>14} {:>6}  {}\n",
            "series (µs)",
            "count",
            "loss%",
            "stale%",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean ± sd",
            "B/msg",
            "vs baseline (p50, p99)"
        );
        for s in &self.series {
            let l = &s.latency;
            let pct = |n: u64| if s.sent == 0 { 0.0 } else { 100.0 * n as f64 / s.sent as f64 };
            let (loss, stale) = (pct(s.lost), pct(s.stale));
            let bytes = s.wire_bytes_per_msg.map_or("–".to_string(), |b| format!("{b:.0}"));
            let ratio = s
                .baseline
                .as_ref()
                .and_then(|b| self.series.iter().find(|x| &x.name == b))
                .map(|b| {
                    let [p50, p99] = ratios(l, &b.latency);
                    format!("{}, {} ({})", times(p50), times(p99), b.name)
                })
                .unwrap_or_default();
            let [p50, p90, p99, p999, max, spread] = cells(l);
            out += &format!(
                "{:<24} {:>7} {:>6.2} {:>6.2} {:>7} {:>7} {:>8} {:>8} {:>8} {:>14} {:>6}  {}\n",
                s.name, l.count, loss, stale, p50, p90, p99, p999, max, spread, bytes, ratio
            );
        }
        for s in self.series.iter().filter(|s| s.superseded > 0) {
            out += &format!(
                "note: {}: {} ticks arrived and were superseded in the subscription's backlog (the reader fell \
                 behind): not lost, and not in its percentiles, which are the lower for it\n",
                s.name, s.superseded
            );
        }
        out
    }
}

/// Samples below which a p99.9 is not shown: with fewer, it is the maximum or one of the few slowest samples, one
/// draw, not a percentile (until 2026-12-07 the tables printed it, a review's find; the JSON keeps the figure).
pub(crate) const P999_MIN_SAMPLES: u64 = 1_000;

/// `l`'s p99.9, when it has the samples for one ([`P999_MIN_SAMPLES`]).
pub(crate) fn p999(l: &LatencySummary) -> Option<u64> {
    (l.count >= P999_MIN_SAMPLES).then_some(l.p999_us)
}

/// p50, p90, p99, p99.9, max and "mean ± sd" of `l` for a table: "–" for a series that measured nothing (every
/// message lost), whose summary says 0 µs and would read as the fastest, and for a p99.9 of too few samples.
pub(crate) fn cells(l: &LatencySummary) -> [String; 6] {
    if l.count == 0 {
        return std::array::from_fn(|_| "–".to_string());
    }
    let us = |us: u64| us.to_string();
    let p999 = p999(l).map_or("–".to_string(), us);
    [us(l.p50_us), us(l.p90_us), us(l.p99_us), p999, us(l.max_us), format!("{} ± {}", l.mean_us, l.stdev_us)]
}

/// `l`'s p50 and p99 over `baseline`'s; NaN (shown as "–") when either measured nothing.
pub(crate) fn ratios(l: &LatencySummary, baseline: &LatencySummary) -> [f64; 2] {
    let r = |a: u64, b: u64| match l.count == 0 || baseline.count == 0 || b == 0 {
        true => f64::NAN,
        false => a as f64 / b as f64,
    };
    [r(l.p50_us, baseline.p50_us), r(l.p99_us, baseline.p99_us)]
}

/// A ratio as `×0.62`, with a third decimal below 0.1 (`×0.002`, not `×0.00`).
pub(crate) fn times(r: f64) -> String {
    if !r.is_finite() {
        "–".to_string() // a baseline with nothing measured (every message lost)
    } else if r < 0.1 {
        format!("×{r:.3}")
    } else {
        format!("×{r:.2}")
    }
}

/// Milliseconds from µs, with precision to match the size.
fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    match v {
        v if v < 1.0 => format!("{v:.3}"),
        v if v < 10.0 => format!("{v:.2}"),
        v if v < 100.0 => format!("{v:.1}"),
        v => format!("{v:.0}"),
    }
}

impl Report {
    /// The head-to-head (tick and chat series of Quiver over QUIC, Quiver over its WebSocket fallback, and a bare
    /// WebSocket app) as Markdown table rows labelled `label`, with the header when `header`; empty when the run
    /// was not a head-to-head.
    pub fn head_to_head_markdown(&self, label: &str, header: bool) -> String {
        let mut out = String::new();
        if header {
            out += "| link | traffic | Quiver/QUIC p50 / p99 / p99.9 (ms) | Quiver/WebSocket p50 / p99 / p99.9 (ms) \
                    | bare WebSocket p50 / p99 / p99.9 (ms) | ÷ bare WebSocket p50 / p99: QUIC, Quiver/WS \
                    | lost (+ stale or superseded: arrived, out of the percentiles): QUIC / Quiver/WS / WebSocket |\n";
            out += "|---|---|---|---|---|---|---|\n";
        }
        let find = |name: &str| self.series.iter().find(|s| s.name == name);
        let three = |s: Option<&SeriesResult>| match s {
            Some(s) if s.latency.count > 0 => {
                let p999 = p999(&s.latency).map_or("–".to_string(), ms);
                format!("{} / {} / {}", ms(s.latency.p50_us), ms(s.latency.p99_us), p999)
            }
            _ => "–".to_string(),
        };
        // Stale and superseded arrivals are left out of the percentiles (a series' slowest, often): shown beside
        // the lost, or the table read as if every other message were in its percentiles.
        let lost = |s: Option<&SeriesResult>| match s {
            Some(s) if s.sent > 0 => {
                let pct = |n: u64| 100.0 * n as f64 / s.sent as f64;
                match s.stale + s.superseded {
                    0 => format!("{:.2} %", pct(s.lost)),
                    out => format!("{:.2} % (+{:.2} %)", pct(s.lost), pct(out)),
                }
            }
            _ => "–".to_string(),
        };
        for kind in ["tick", "chat"] {
            let (Some(q), Some(w)) = (find(&format!("quiver {kind}")), find(&format!("websocket {kind}"))) else {
                continue;
            };
            let qw = find(&format!("quiver-ws {kind}"));
            let ratio = |s: Option<&SeriesResult>| match s {
                Some(s) => {
                    let [p50, p99] = ratios(&s.latency, &w.latency);
                    format!("{} / {}", times(p50), times(p99))
                }
                None => "–".to_string(),
            };
            out += &format!(
                "| {label} | {kind} | {} | {} | {} | {}, {} | {} / {} / {} |\n",
                three(Some(q)),
                three(qw),
                three(Some(w)),
                ratio(Some(q)),
                ratio(qw),
                lost(Some(q)),
                lost(qw),
                lost(Some(w)),
            );
        }
        out
    }
}

#[cfg(test)]
#[path = "series_tests.rs"]
mod tests;
