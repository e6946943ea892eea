//! Rate limits without sockets or clocks: a [`TokenBucket`] fed with `now`, and a [`RateLimit`] that also notices
//! a peer that keeps going after being refused. The connection code owns one per limit and asks it per event.

use std::time::{Duration, Instant};

/// `rate` tokens a second, at most `burst` held; starts full. Exact integer arithmetic: a token is 10^9 units and
/// each nanosecond adds `rate` units.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u128,
    burst: u128,
    units: u128,
    last: Instant,
}

/// Units per token.
const UNIT: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least one) refilled at `rate_per_s`.
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> Self {
        let burst = u128::from(burst.max(1)) * UNIT;
        TokenBucket { rate: u128::from(rate_per_s), burst, units: burst, last: now }
    }

    /// A bucket for `rate_per_s` whose burst is [`quiver_proto::Limits::BURST_SECONDS`] seconds of it.
    pub fn per_second(rate_per_s: u32, now: Instant) -> Self {
        TokenBucket::new(rate_per_s, rate_per_s.saturating_mul(quiver_proto::Limits::BURST_SECONDS), now)
    }

    fn refill(&mut self, now: Instant) {
        // An earlier `now` than the last one (callers on several threads) adds nothing rather than panicking.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed > 0 {
            self.units = self.units.saturating_add(elapsed.saturating_mul(self.rate)).min(self.burst);
            self.last = now;
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.units >= UNIT {
            self.units -= UNIT;
            true
        } else {
            false
        }
    }

    /// Takes one token if more than `reserve` tokens are left: what is kept back is for others to take (an
    /// address's validated attempts, beside the unvalidated ones anyone can forge with it).
    pub fn try_take_leaving(&mut self, reserve: u32, now: Instant) -> bool {
        self.refill(now);
        if self.units >= UNIT * (u128::from(reserve) + 1) {
            self.units -= UNIT;
            true
        } else {
            false
        }
    }

    /// True when [`TokenBucket::try_take_leaving`] would take one now (none is).
    pub fn can_take_leaving(&mut self, reserve: u32, now: Instant) -> bool {
        self.refill(now);
        self.units >= UNIT * (u128::from(reserve) + 1)
    }

    /// True when a token could be taken now (none is).
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.units >= UNIT
    }

    /// True when the bucket has refilled completely: it behaves as a new one would.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.units >= self.burst
    }

    /// The burst size, in tokens.
    pub fn burst(&self) -> u32 {
        u32::try_from(self.burst / UNIT).unwrap_or(u32::MAX)
    }
}

/// What a [`RateLimit`] says about one more event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allow,
    /// Over the rate: refuse this one.
    Refuse,
    /// Over the rate, and the peer has been refused more than `close_after` times within a second: it is not
    /// listening, stop serving it.
    Close,
}

/// A token bucket plus a count of refusals in the current one-second window.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bucket: TokenBucket,
    window_start: Option<Instant>,
    refused: u32,
    close_after: u32,
}

/// The refusal window.
const WINDOW: Duration = Duration::from_secs(1);

impl RateLimit {
    /// `rate_per_s` with a burst of [`quiver_proto::Limits::BURST_SECONDS`] seconds; a peer refused more than
    /// [`quiver_proto::Limits::FLOOD_BURSTS`] bursts' worth within a second gets [`Verdict::Close`].
    pub fn new(rate_per_s: u32, now: Instant) -> Self {
        let bucket = TokenBucket::per_second(rate_per_s, now);
        let close_after = bucket.burst().saturating_mul(quiver_proto::Limits::FLOOD_BURSTS);
        RateLimit { bucket, window_start: None, refused: 0, close_after }
    }

    /// Counts one event at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.try_take(now) {
            return Verdict::Allow;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.refused = 0;
            }
        }
        self.refused = self.refused.saturating_add(1);
        if self.refused > self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 20, t0);
        assert!(bucket.is_full(t0));
        assert_eq!((0..100).filter(|_| bucket.try_take(t0)).count(), 20, "the burst at once");
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + ms(99)), "one token takes 100 ms at 10/s");
        assert!(bucket.try_take(t0 + ms(100)));
        // Over a second at the rate: 10 more.
        let allowed = (1..=100).filter(|i| bucket.try_take(t0 + ms(100) + ms(10 * i))).count();
        assert_eq!(allowed, 10);
        assert!(!bucket.is_full(t0 + ms(1100)));
        assert!(bucket.is_full(t0 + ms(3100)), "2 s refill a burst of 20 at 10/s");
        assert_eq!((0..100).filter(|_| bucket.try_take(t0 + ms(60_000))).count(), 20, "never more than the burst");
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + ms(1000);
        let mut bucket = TokenBucket::new(1000, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - ms(500)));
        assert!(bucket.try_take(t0 + ms(1)));
    }

    #[test]
    fn per_second_bursts_two_seconds_worth() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(50, t0);
        assert_eq!(bucket.burst(), 100);
        assert_eq!((0..1000).filter(|_| bucket.try_take(t0)).count(), 100);
    }

    #[test]
    fn a_peer_that_keeps_going_is_told_to_close() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(5, t0); // burst 10, close after 40 refusals within a second
        let verdicts: Vec<Verdict> = (0..60).map(|_| limit.check(t0)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[10..50].iter().all(|v| *v == Verdict::Refuse), "{verdicts:?}");
        assert!(verdicts[50..].iter().all(|v| *v == Verdict::Close));
    }

    #[test]
    fn refusals_spread_over_seconds_do_not_close() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(5, t0);
        for _ in 0..10 {
            assert_eq!(limit.check(t0), Verdict::Allow);
        }
        // 30 over the rate every second (plus the 5 the rate allows) for a minute: refused, never closed.
        for second in 0..60u64 {
            for i in 0..35u64 {
                let verdict = limit.check(t0 + Duration::from_secs(second) + ms(i * 28));
                assert_ne!(verdict, Verdict::Close, "second {second}, event {i}");
            }
        }
    }

    #[test]
    fn a_refused_peer_that_slows_down_is_served_again() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, t0);
        while limit.check(t0) == Verdict::Allow {}
        assert_eq!(limit.check(t0 + ms(50)), Verdict::Refuse);
        assert_eq!(limit.check(t0 + ms(150)), Verdict::Allow);
        assert_eq!(limit.check(t0 + ms(250)), Verdict::Allow);
    }
}
