//! A latency histogram of fixed buckets, counted with relaxed atomics and encoded when scraped (`super`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds of every latency histogram, in µs (50 µs to 10 s).
const BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A latency histogram of fixed buckets: an observation is three relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        match BUCKETS_US.iter().position(|&bound| us <= bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe_us(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>() + self.over.load(Ordering::Relaxed)
    }

    /// (sum in seconds, count, cumulative buckets with upper bounds in seconds, the last one +Inf).
    pub(super) fn cumulative(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS_US.len() + 1);
        for (bound, count) in BUCKETS_US.iter().zip(&self.buckets) {
            total += count.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / 1e6, total));
        }
        total += self.over.load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, total));
        (self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, total, buckets)
    }

    /// (sum in seconds, count, each bucket's own count with its upper bound in seconds, the last one `f64::MAX`):
    /// what prometheus-client's encoder takes (it sums the buckets itself, and writes `f64::MAX` as `+Inf`).
    pub(super) fn per_bucket(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> =
            BUCKETS_US.iter().zip(&self.buckets).map(|(b, c)| (*b as f64 / 1e6, c.load(Ordering::Relaxed))).collect();
        buckets.push((f64::MAX, self.over.load(Ordering::Relaxed)));
        let count = buckets.iter().map(|(_, c)| c).sum();
        (self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
    }

    /// The duration below which `q` of the observations fall, as the upper bound of its bucket (µs); `None`
    /// without observations.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let (_, count, buckets) = self.cumulative();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        let bound = buckets.iter().find(|(_, c)| *c >= rank).map_or(f64::INFINITY, |(b, _)| *b);
        Some(if bound.is_finite() { (bound * 1e6) as u64 } else { u64::MAX })
    }
}
