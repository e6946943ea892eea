//! How long a relayed tick spent between its origin node and this one, without trusting the two clocks to agree:
//! the apparent delay (this node's clock at arrival minus the origin's at receipt) is the real transit plus the
//! clocks' offset, and the smallest apparent delay seen lately from an origin stands for the offset (plus the
//! fastest transit). A tick's age is what it took beyond that: a paused or slow Redis shows, a skew does not (as
//! LEDBAT's base delay, RFC 6817, separates queueing from a path's fixed delay).

use std::collections::HashMap;

/// Each origin's base is the minimum over the current window and the one before: a clock that steps or drifts is
/// followed within two windows.
const WINDOW_US: u64 = 10_000_000;

/// Origins remembered at most (nodes of a cluster; the map starts over past it).
const MAX_ORIGINS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Base {
    window_start_us: u64,
    current: i64,
    previous: i64,
}

/// The base delays of the origins ticks came from.
#[derive(Debug, Default)]
pub(crate) struct Transit {
    origins: HashMap<String, Base>,
}

impl Transit {
    /// A tick from `origin`, received there at `received_us` (its clock), arrives here at `now_us` (this clock):
    /// how long it spent on the way beyond the fastest lately, µs.
    pub(crate) fn age_us(&mut self, origin: &str, received_us: u64, now_us: u64) -> u64 {
        // Both clocks' µs since 1970 are far below 2^62; a value beyond (garbage) must not overflow.
        let apparent = (i128::from(now_us) - i128::from(received_us)).clamp(1 - (1 << 62), (1 << 62) - 1) as i64;
        if self.origins.len() >= MAX_ORIGINS && !self.origins.contains_key(origin) {
            self.origins.clear();
        }
        let fresh = Base { window_start_us: now_us, current: apparent, previous: apparent };
        let base = self.origins.entry(origin.to_string()).or_insert(fresh);
        // (A window also ends when this clock stepped back past its start: it would otherwise last as long as the
        // step, keeping a base the origin's clock may have left since.)
        if now_us < base.window_start_us || now_us - base.window_start_us > WINDOW_US {
            *base = Base { window_start_us: now_us, current: apparent, previous: base.current };
        } else {
            base.current = base.current.min(apparent);
        }
        u64::try_from(apparent - base.current.min(base.previous)).unwrap_or(0)
    }

    /// Forgets an origin (a node that died).
    pub(crate) fn forget(&mut self, origin: &str) {
        self.origins.remove(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    /// An origin's clock 80 ms behind (or ahead of) this one: ticks that crossed as fast as usual are fresh; one
    /// that Redis held 500 ms is 500 ms old, whatever the skew.
    #[test]
    fn a_held_tick_is_old_whatever_the_clocks_skew() {
        for skew in [-80 * MS as i64, 0, 80 * MS as i64] {
            let mut transit = Transit::default();
            let origin_clock = |t: u64| (t as i64 + skew) as u64;
            let t0 = 1_000_000 * MS;
            for i in 0..100 {
                let sent = t0 + i * 10 * MS;
                // 0.3 to 1 ms on the way.
                let age = transit.age_us("a", origin_clock(sent), sent + 300 + (i % 8) * 100);
                assert!(age <= MS, "skew {skew}: a usual tick {age} µs old");
            }
            let held = t0 + 2_000 * MS;
            assert!(transit.age_us("a", origin_clock(held), held + 500 * MS + 300) >= 499 * MS, "skew {skew}");
        }
    }

    /// A clock that steps (an NTP correction) is followed within two windows.
    #[test]
    fn a_stepped_clock_is_followed() {
        let mut transit = Transit::default();
        let mut now = 1_000_000 * MS;
        for _ in 0..10 {
            transit.age_us("a", now - 500, now);
            now += 100 * MS;
        }
        // The origin's clock steps 50 ms back: ticks look 50 ms older, until the old minimum ages out.
        let mut last = 0;
        for _ in 0..(2 * WINDOW_US / (100 * MS) + 2) {
            last = transit.age_us("a", now - 500 - 50 * MS, now);
            now += 100 * MS;
        }
        assert_eq!(last, 0, "still counting the step as age");
    }

    /// This clock stepping back does not freeze the window: the base follows the origin's delay again within two
    /// windows, instead of after as long as the step (a minute back kept every tick a minute "old" for a minute).
    #[test]
    fn a_clock_stepped_back_starts_a_new_window() {
        let mut transit = Transit::default();
        let t0 = 1_000_000 * MS;
        for i in 0..10 {
            assert!(transit.age_us("a", t0 + i * 10 * MS, t0 + i * 10 * MS + MS) < MS);
        }
        // This clock steps back a minute (the origin's does not): the apparent delay falls by a minute, and the
        // base with it.
        let back = t0 - 60_000 * MS;
        for i in 0..10 {
            assert!(transit.age_us("a", t0 + (10 + i) * 10 * MS, back + i * 10 * MS) < MS);
        }
        // Then the origin's clock steps back too: ticks cross in 1 ms again, and are taken as fresh once the
        // windows have turned (20 s), not after the minute this clock is behind its old window.
        let mut last = u64::MAX;
        for i in 10..(10 + 2_500) {
            let now = back + i * 10 * MS;
            last = transit.age_us("a", now - MS, now);
        }
        assert!(last < MS, "still {last} µs old 25 s later");
    }
}
