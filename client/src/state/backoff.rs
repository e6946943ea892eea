//! Reconnect delays: "equal jitter" exponential backoff. Attempt 0 waits between half and all of the base delay,
//! each later attempt's ceiling is twice the one before, capped at the maximum. The randomness is passed in.

use std::time::Duration;

/// The delays of one run of reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays starting at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, attempt: 0 }
    }

    /// The next attempt's delay; `jitter` in `[0, 1)` picks where in the upper half of the ceiling it falls.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // NaN counts as 0; the product never exceeds the ceiling (no overflow panic near `Duration::MAX`).
        let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * (0.5 + jitter / 2.0)).unwrap_or(ceiling).min(ceiling)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_jitter_and_any_bounds_give_a_delay_within_the_ceiling() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        for jitter in [f64::NAN, f64::INFINITY, -1.0, 0.0, 0.999_999_999_999, 1.0] {
            assert!(b.next_delay(jitter) <= Duration::MAX);
        }
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(b.next_delay(f64::NAN), Duration::from_millis(500), "NaN counts as 0");
    }

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(300));
        for _ in 0..40 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(1));
        }
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500), "half the cap at the least");
        assert_eq!(b.attempts(), 44);
    }
}
