//! Posts paced to the rate the server allows. The server counts each connection's posts in a token bucket of
//! `posts_per_s` (and `requests_per_s`, posts being requests too) holding [`Limits::BURST_SECONDS`] of them, and
//! refuses what is over with `RateLimited` (and closes a connection that keeps going). Posts queued while a
//! connection was down, or made faster than the rate, used to go out at once on the next connection: past the
//! bucket they were refused and failed to the application, and the burst could close the connection. The pacer
//! keeps a bucket of its own below the server's, so queued posts leave as fast as the server takes them, no faster:
//! half its burst, and 95 % of its rate (a burst of arrivals bunched by the network still finds tokens there).

use std::time::{Duration, Instant};

use quiver_proto::Limits;

/// Of the server's rate, what the pacer sends, in percent.
const RATE_PERCENT: u64 = 95;

/// A token bucket for one connection's posts, started full when the connection is (as the server's is).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Posts a second.
    rate: u64,
    /// Tokens held at most, in nanotokens (a token is 10^9).
    burst: u128,
    nanotokens: u128,
    last: Instant,
}

/// Nanotokens per token.
const UNIT: u128 = 1_000_000_000;

impl Pacer {
    /// The pacer for a connection whose server announced `limits`, starting full at `now`.
    pub fn new(limits: &Limits, now: Instant) -> Pacer {
        let server_rate = u64::from(limits.posts_per_s.min(limits.requests_per_s).max(1));
        let rate = (server_rate * RATE_PERCENT / 100).max(1);
        let burst = (server_rate * u64::from(Limits::BURST_SECONDS) / 2).max(1);
        let burst = u128::from(burst) * UNIT;
        Pacer { rate, burst, nanotokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed > 0 {
            self.nanotokens =
                self.nanotokens.saturating_add(elapsed.saturating_mul(u128::from(self.rate))).min(self.burst);
            self.last = now;
        }
    }

    /// How long until a post may go (`None`: now; then [`Pacer::take`] it).
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        let missing = UNIT.checked_sub(self.nanotokens).filter(|&missing| missing > 0)?;
        // nanotokens / rate = nanoseconds; rounded up, so that the token is there when the wait ends.
        let nanos = missing.div_ceil(u128::from(self.rate));
        Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// One post goes now (after [`Pacer::wait`] said it may).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.nanotokens = self.nanotokens.saturating_sub(UNIT);
    }

    /// The server refused a post as over its rate anyway (its other requests took tokens too): start from empty.
    pub fn empty(&mut self, now: Instant) {
        self.refill(now);
        self.nanotokens = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(posts_per_s: u32) -> Limits {
        Limits { posts_per_s, requests_per_s: 5_000, ..Limits::default() }
    }

    /// Sends as many posts as the pacer allows over `seconds`, in steps of `step`; returns the count.
    fn sent_over(pacer: &mut Pacer, start: Instant, seconds: u64, step: Duration) -> u64 {
        let mut sent = 0;
        let mut now = start;
        while now <= start + Duration::from_secs(seconds) {
            while pacer.wait(now).is_none() {
                pacer.take(now);
                sent += 1;
            }
            now += step;
        }
        sent
    }

    #[test]
    fn half_the_servers_burst_at_once_then_just_under_its_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(&limits(100), start);
        // The server's bucket holds 200; the pacer sends 100 at once.
        assert_eq!(sent_over(&mut pacer, start, 0, Duration::from_millis(1)), 100);
        let mut pacer = Pacer::new(&limits(100), start);
        let sent = sent_over(&mut pacer, start, 10, Duration::from_millis(1));
        assert_eq!(sent, 100 + 950, "100 at once, then 95 a second");
    }

    #[test]
    fn the_server_never_refuses_what_the_pacer_sends() {
        // A minute of posts as fast as the pacer lets them go, arriving at the server's bucket (rate 100, burst 200)
        // as sent, except that the network holds back each second in turn for a whole second and hands it over at
        // once (bunched behind the next second's first post): the server is never short of a token.
        let start = Instant::now();
        let mut pacer = Pacer::new(&limits(100), start);
        let mut sent = Vec::new();
        let mut now = start;
        while now < start + Duration::from_secs(60) {
            while pacer.wait(now).is_none() {
                pacer.take(now);
                sent.push(now - start);
            }
            now += Duration::from_millis(1);
        }
        for held in 0..59 {
            let arrival = |at: Duration| match at.as_secs() == held {
                true => Duration::from_secs(held + 1),
                false => at,
            };
            let mut arrivals: Vec<Duration> = sent.iter().map(|&at| arrival(at)).collect();
            arrivals.sort();
            let (mut tokens, mut last) = (200.0_f64, Duration::ZERO);
            for at in arrivals {
                tokens = (tokens + (at - last).as_secs_f64() * 100.0).min(200.0) - 1.0;
                last = at;
                assert!(tokens >= 0.0, "refused at {at:?} with second {held} held back");
            }
        }
    }

    #[test]
    fn the_wait_is_until_the_next_token() {
        let start = Instant::now();
        let mut pacer = Pacer::new(&limits(100), start);
        for _ in 0..100 {
            pacer.take(start);
        }
        // 95 a second: a token every 10.53 ms.
        let wait = pacer.wait(start).expect("empty");
        assert!(wait > Duration::from_millis(10) && wait < Duration::from_millis(11), "{wait:?}");
        assert_eq!(pacer.wait(start + wait), None, "there when the wait ends");
        pacer.empty(start + wait);
        assert!(pacer.wait(start + wait).is_some());
    }

    #[test]
    fn the_lower_of_the_post_and_request_rates_and_never_zero() {
        let start = Instant::now();
        let mut pacer = Pacer::new(&Limits { posts_per_s: 1_000, requests_per_s: 10, ..Limits::default() }, start);
        assert_eq!(sent_over(&mut pacer, start, 0, Duration::from_millis(1)), 10);
        let mut pacer = Pacer::new(&Limits { posts_per_s: 0, requests_per_s: 0, ..Limits::default() }, start);
        assert_eq!(sent_over(&mut pacer, start, 0, Duration::from_millis(1)), 1);
    }
}
