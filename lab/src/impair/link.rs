//! One direction of an emulated link, without IO or clocks: given a packet's arrival time and size, decide
//! whether it is lost, when it is delivered, and whether a duplicate follows. Seeded, so a run can be repeated.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::DirectionProfile;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random or burst loss.
    Loss,
    /// The rate limiter's queue was full.
    Queue,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Drop(DropReason),
    /// Delivered at `at_us`, and again at `duplicate_at_us` if duplicated.
    Deliver {
        /// Delivery time, µs on the caller's clock.
        at_us: u64,
        /// Delivery time of the duplicate, if any.
        duplicate_at_us: Option<u64>,
        /// True when it is delivered before a packet that arrived earlier.
        reordered: bool,
    },
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets delivered (duplicates not counted).
    pub passed: u64,
    /// Packets lost to random or burst loss.
    pub dropped: u64,
    /// Packets dropped by a full rate-limiter queue.
    pub queue_dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets delivered ahead of an earlier one.
    pub reordered: u64,
    /// Packets held back by delay, jitter or the rate limiter.
    pub delayed: u64,
}

impl LinkStats {
    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &LinkStats) {
        self.passed += other.passed;
        self.dropped += other.dropped;
        self.queue_dropped += other.queue_dropped;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.delayed += other.delayed;
    }
}

/// One direction's state.
#[derive(Debug)]
pub struct Link {
    profile: DirectionProfile,
    rng: StdRng,
    /// Gilbert model: in the bad (losing) state.
    bad: bool,
    /// When the rate limiter's transmitter is free again, in µs (fractional: each packet's transmit time rounded
    /// up to a whole µs carried 20 % less than asked at 1 Gbit/s with 100-byte packets).
    free_at_us: f64,
    /// The latest delivery time scheduled so far.
    last_delivery_us: u64,
    stats: LinkStats,
}

impl Link {
    /// A link following `profile`, its random choices seeded by `seed`.
    pub fn new(profile: DirectionProfile, seed: u64) -> Link {
        Link {
            profile,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            free_at_us: 0.0,
            last_delivery_us: 0,
            stats: LinkStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn chance(&mut self, pct: f64) -> bool {
        pct > 0.0 && self.rng.gen::<f64>() * 100.0 < pct
    }

    fn lost(&mut self) -> bool {
        let p = self.profile.loss_pct / 100.0;
        if self.profile.burst_len <= 1.0 || p <= 0.0 {
            return self.chance(self.profile.loss_pct);
        }
        // Gilbert model with a lossless good state and a lossy bad state: leaving bad has probability 1/b
        // (mean burst b); entering it q = p·r/(1−p) keeps the long-run share of bad (lost) packets at p.
        let r = 1.0 / self.profile.burst_len;
        let q = (p * r / (1.0 - p)).min(1.0);
        let flip: f64 = self.rng.gen();
        self.bad = if self.bad { flip >= r } else { flip < q };
        self.bad
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now_us`.
    pub fn on_packet(&mut self, now_us: u64, len: usize) -> Fate {
        if self.lost() {
            self.stats.dropped += 1;
            return Fate::Drop(DropReason::Loss);
        }
        // Every other random choice is drawn before the rate limiter's, which depends on when packets arrive (the
        // wall clock): a queue drop that returned before them shifted every later choice, so a seed did not repeat
        // a rate-limited run.
        let skip_delay = self.chance(self.profile.reorder_pct);
        let mut delay_us = if skip_delay { 0.0 } else { self.profile.delay_ms * 1000.0 };
        if self.profile.jitter_ms > 0.0 && !skip_delay {
            let jitter = self.profile.jitter_ms * 1000.0;
            delay_us = (delay_us + self.rng.gen_range(-jitter..=jitter)).max(0.0);
        }
        let mut duplicate = self.chance(self.profile.duplicate_pct);
        // Rate limit: the packet leaves the bottleneck once everything queued before it has been sent; its duplicate
        // (made before the bottleneck, as netem re-enqueues one) right behind it, or dropped if the queue is full.
        // Until 2026-12-07 a duplicate took no time at the bottleneck: at 50 % duplicates a link carried 1.5× its
        // rate (a review's find).
        let mut departs_us = now_us;
        let mut duplicate_departs_us = now_us;
        if self.profile.rate_kbps > 0.0 {
            if !self.queue(now_us, len) {
                self.stats.queue_dropped += 1;
                return Fate::Drop(DropReason::Queue);
            }
            departs_us = self.free_at_us.ceil() as u64;
            if duplicate {
                duplicate = self.queue(now_us, len);
                duplicate_departs_us = self.free_at_us.ceil() as u64;
            }
        }
        // (Saturating: a profile's limits keep these far from overflow, but a link's clock must not wrap.)
        let delay_us = delay_us.round() as u64;
        let mut at_us = departs_us.saturating_add(delay_us);
        if !self.profile.jitter_reorders && !skip_delay {
            // A single path: no packet overtakes one sent before it.
            at_us = at_us.max(self.last_delivery_us);
        }
        let reordered = at_us < self.last_delivery_us;
        self.last_delivery_us = self.last_delivery_us.max(at_us);
        let duplicate_at_us = duplicate.then(|| {
            let at = duplicate_departs_us.saturating_add(delay_us).max(at_us);
            self.last_delivery_us = self.last_delivery_us.max(at);
            at
        });
        self.stats.passed += 1;
        self.stats.reordered += u64::from(reordered);
        self.stats.duplicated += u64::from(duplicate_at_us.is_some());
        self.stats.delayed += u64::from(at_us > now_us);
        Fate::Deliver { at_us, duplicate_at_us, reordered }
    }
}

impl Link {
    /// Queues `len` bytes at the bottleneck at `now_us` (`free_at_us` moves past them): false, and nothing queued,
    /// when its queue has no room.
    fn queue(&mut self, now_us: u64, len: usize) -> bool {
        let start = self.free_at_us.max(now_us as f64);
        let backlog_bytes = (start - now_us as f64) * self.profile.rate_kbps / 8_000.0;
        if backlog_bytes + len as f64 > self.profile.queue_bytes as f64 {
            return false;
        }
        self.free_at_us = start + len as f64 * 8_000.0 / self.profile.rate_kbps;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u64 = 200_000;

    /// Runs `N` packets of 100 bytes, one every `gap_us`; returns the fates.
    fn run(profile: DirectionProfile, gap_us: u64) -> (Vec<(u64, Fate)>, LinkStats) {
        let mut link = Link::new(profile, 42);
        let fates = (0..N).map(|i| (i * gap_us, link.on_packet(i * gap_us, 100))).collect();
        (fates, link.stats())
    }

    /// `count` successes out of `N` trials is within 5 standard deviations of probability `p`.
    fn within_binomial(count: u64, p: f64) -> bool {
        let mean = N as f64 * p;
        let sd = (N as f64 * p * (1.0 - p)).sqrt();
        (count as f64 - mean).abs() <= 5.0 * sd
    }

    /// A seed repeats a rate-limited run: a queue drop (which depends on arrival times) no longer shifts the random
    /// choices after it. Two runs, the second with two packets arriving early enough to be queue-dropped: the
    /// losses after them are the same packets.
    #[test]
    fn a_queue_drop_does_not_shift_the_random_choices_after_it() {
        let profile = DirectionProfile {
            loss_pct: 20.0,
            jitter_ms: 2.0,
            duplicate_pct: 5.0,
            rate_kbps: 800.0,
            queue_bytes: 150,
            ..DirectionProfile::default()
        };
        let losses = |early: bool| {
            let mut link = Link::new(profile.clone(), 7);
            let mut lost = Vec::new();
            for i in 0..2_000u64 {
                let at = if early && (i == 10 || i == 11) { 9 * 2_000 } else { i * 2_000 };
                match link.on_packet(at, 100) {
                    Fate::Drop(DropReason::Loss) if i > 11 => lost.push(i),
                    _ => {}
                }
            }
            (lost, link.stats().queue_dropped)
        };
        let (steady, steady_queue) = losses(false);
        let (early, early_queue) = losses(true);
        assert_eq!(steady_queue, 0);
        assert!(early_queue >= 1, "the early packets met a full queue");
        assert_eq!(steady, early, "the same losses after the queue drop");
    }

    /// The rate limiter carries what it is asked to: 10,000 packets of 100 B at 1 Gbit/s take 8 ms, not 10 (each
    /// packet's 0.8 µs was rounded up to 1 µs).
    #[test]
    fn the_rate_limiter_keeps_its_rate_for_small_packets() {
        let profile =
            DirectionProfile { rate_kbps: 1_000_000.0, queue_bytes: 10_000_000, ..DirectionProfile::default() };
        let mut link = Link::new(profile, 1);
        let mut last = 0;
        for _ in 0..10_000 {
            if let Fate::Deliver { at_us, .. } = link.on_packet(0, 100) {
                last = at_us;
            }
        }
        assert!((7_990..=8_010).contains(&last), "the last packet left at {last} µs");
    }

    #[test]
    fn bernoulli_loss_matches_its_rate() {
        let (_, stats) = run(DirectionProfile { loss_pct: 5.0, ..DirectionProfile::default() }, 100);
        assert!(within_binomial(stats.dropped, 0.05), "dropped {}", stats.dropped);
        assert_eq!(stats.passed + stats.dropped, N);
    }

    #[test]
    fn burst_loss_keeps_the_rate_and_the_mean_burst_length() {
        let profile = DirectionProfile { loss_pct: 2.0, burst_len: 4.0, ..DirectionProfile::default() };
        let (fates, stats) = run(profile, 100);
        let rate = stats.dropped as f64 / N as f64;
        assert!((rate - 0.02).abs() < 0.004, "long-run loss {rate}");
        let mut bursts = Vec::new();
        let mut current = 0;
        for (_, fate) in &fates {
            if matches!(fate, Fate::Drop(_)) {
                current += 1;
            } else if current > 0 {
                bursts.push(current);
                current = 0;
            }
        }
        let mean = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
        assert!((mean - 4.0).abs() < 0.4, "mean burst {mean} over {} bursts", bursts.len());
    }

    #[test]
    fn duplicates_match_their_rate() {
        let (_, stats) = run(DirectionProfile { duplicate_pct: 3.0, ..DirectionProfile::default() }, 100);
        assert!(within_binomial(stats.duplicated, 0.03), "duplicated {}", stats.duplicated);
    }

    #[test]
    fn delay_and_jitter_stay_within_their_bounds_and_keep_order() {
        let profile = DirectionProfile { delay_ms: 20.0, jitter_ms: 5.0, ..DirectionProfile::default() };
        let (fates, stats) = run(profile, 10_000); // 10 ms apart: jitter alone could reorder, it must not
        let mut total = 0.0;
        let mut last = 0;
        for (sent, fate) in &fates {
            let Fate::Deliver { at_us, reordered, .. } = fate else { panic!("lost without loss") };
            let delay = at_us - sent;
            assert!((15_000..=25_000).contains(&delay), "delay {delay} µs");
            assert!(*at_us >= last && !reordered);
            last = *at_us;
            total += delay as f64;
        }
        let mean = total / N as f64;
        assert!((mean - 20_000.0).abs() < 100.0, "mean delay {mean} µs");
        assert_eq!(stats.reordered, 0);
    }

    #[test]
    fn jitter_that_may_reorder_does() {
        let profile =
            DirectionProfile { delay_ms: 20.0, jitter_ms: 5.0, jitter_reorders: true, ..DirectionProfile::default() };
        let (_, stats) = run(profile, 1_000);
        assert!(stats.reordered > N / 10, "reordered {}", stats.reordered);
    }

    #[test]
    fn reorder_share_sends_packets_past_the_delay() {
        let profile = DirectionProfile { delay_ms: 10.0, reorder_pct: 2.0, ..DirectionProfile::default() };
        let (fates, stats) = run(profile, 100);
        let undelayed = fates.iter().filter(|(sent, f)| matches!(f, Fate::Deliver { at_us, .. } if at_us == sent));
        assert!(within_binomial(undelayed.count() as u64, 0.02));
        assert!(stats.reordered > 0);
    }

    #[test]
    fn rate_limit_paces_and_its_queue_drops() {
        // 800 kbit/s = 100 bytes per ms; packets of 100 bytes offered every 0.5 ms: twice the rate.
        let profile = DirectionProfile { rate_kbps: 800.0, queue_bytes: 10_000, ..DirectionProfile::default() };
        let (fates, stats) = run(profile, 500);
        let delivered: Vec<u64> = fates
            .iter()
            .filter_map(|(_, f)| if let Fate::Deliver { at_us, .. } = f { Some(*at_us) } else { None })
            .collect();
        let span_ms = (delivered[delivered.len() - 1] - delivered[0]) as f64 / 1000.0;
        let per_ms = delivered.len() as f64 / span_ms;
        assert!((per_ms - 1.0).abs() < 0.01, "{per_ms} packets/ms through a 1 packet/ms bottleneck");
        assert!(within_binomial(stats.queue_dropped, 0.5) || stats.queue_dropped > N / 3, "{stats:?}");
        // Queueing delay never exceeds what the queue holds: 10,000 bytes at 100 bytes/ms = 100 ms (+1 packet).
        for (sent, fate) in &fates {
            if let Fate::Deliver { at_us, .. } = fate {
                assert!(at_us - sent <= 101_000, "{} µs in the queue", at_us - sent);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let profile = DirectionProfile { loss_pct: 10.0, jitter_ms: 3.0, delay_ms: 5.0, ..DirectionProfile::default() };
        assert_eq!(run(profile.clone(), 100).0, run(profile, 100).0);
    }

    /// A duplicate goes through the bottleneck too: at 50 % duplicates and twice the rate offered, the link carries
    /// its rate (a packet of 100 B a millisecond at 800 kbit/s), not 1.5× it.
    #[test]
    fn duplicates_take_their_time_at_the_bottleneck() {
        let profile = DirectionProfile {
            rate_kbps: 800.0,
            duplicate_pct: 50.0,
            queue_bytes: 10_000,
            ..DirectionProfile::default()
        };
        let mut link = Link::new(profile, 5);
        let mut copies = Vec::new();
        for i in 0..20_000u64 {
            if let Fate::Deliver { at_us, duplicate_at_us, .. } = link.on_packet(i * 500, 100) {
                copies.push(at_us);
                copies.extend(duplicate_at_us);
            }
        }
        // Between 2 s and 8 s, past the queue's filling: one copy a millisecond.
        let carried = copies.iter().filter(|at| (2_000_000..8_000_000).contains(*at)).count();
        assert!((5_900..=6_100).contains(&carried), "{carried} copies in 6 s");
    }
}
