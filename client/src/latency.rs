//! The latency summary every Quiver report uses: count and p50/p90/p99/p99.9/max in µs, from an HdrHistogram.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a set of latencies, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Arithmetic mean (rounded).
    pub mean_us: u64,
    /// Standard deviation (rounded): how spread the samples are around the mean.
    pub stdev_us: u64,
}

/// Records latencies with 3 significant digits, from 1 µs to one hour.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid");
        LatencyRecorder { histogram }
    }
}

impl LatencyRecorder {
    /// Adds one sample; values above the range are clamped to it.
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, self.histogram.high());
        self.histogram.saturating_record(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Latency at the quantiles of a percentile plot (50 % … 99.99 %, then the maximum), as `(quantile, µs)`: only
    /// those the samples resolve (a sample beyond each: 99.99 % needs 10,000), the others being the maximum drawn
    /// again under another name (until 2026-12-07 every plot of fewer samples drew its max as "99.99").
    pub fn curve(&self) -> Vec<(f64, u64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        let n = self.histogram.len() as f64;
        let mut points: Vec<(f64, u64)> = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999]
            .iter()
            .filter(|&&q| n * (1.0 - q) >= 1.0 - 1e-9)
            .map(|&q| (q, self.histogram.value_at_quantile(q)))
            .collect();
        points.push((1.0, self.histogram.max()));
        points
    }

    /// The summary of nothing recorded (every field 0).
    pub fn default_summary() -> LatencySummary {
        LatencySummary { count: 0, p50_us: 0, p90_us: 0, p99_us: 0, p999_us: 0, max_us: 0, mean_us: 0, stdev_us: 0 }
    }

    /// The summary of everything recorded.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            count: h.len(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() { 0 } else { h.mean().round() as u64 },
            stdev_us: if h.is_empty() { 0 } else { h.stdev().round() as u64 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plot's curve has only the quantiles its samples resolve: of 900 samples no 99.9 % or 99.99 % point (each
    /// would be the maximum again); of 10,000, all of them.
    #[test]
    fn a_curve_has_only_the_quantiles_its_samples_resolve() {
        let curve = |n: u64| {
            let mut recorder = LatencyRecorder::default();
            (1..=n).for_each(|us| recorder.record(Duration::from_micros(us)));
            recorder.curve().into_iter().map(|(q, _)| q).collect::<Vec<_>>()
        };
        assert_eq!(curve(900), [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 1.0]);
        assert_eq!(curve(1_000).len(), 8, "99.9 % from 1,000");
        assert_eq!(curve(10_000).len(), 9, "and 99.99 % from 10,000");
    }

    #[test]
    fn percentiles_of_a_known_set() {
        let mut rec = LatencyRecorder::default();
        for us in 1..=1000u64 {
            rec.record(Duration::from_micros(us));
        }
        let s = rec.summary();
        assert_eq!(s.count, 1000);
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us), (500, 900, 990, 999, 1000));
        assert_eq!(LatencyRecorder::default().summary().count, 0);
    }
}
