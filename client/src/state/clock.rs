//! The server clock's offset from this machine's, from Ping/Pong samples: the fastest round trip's midpoint is the
//! best guess of when the server read its clock.

use std::time::Duration;

/// One Ping/Pong: when it was sent (this machine's clock, µs since the Unix epoch), its round trip, and the
/// server's clock in the Pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// This machine's clock when the Ping left.
    pub sent_us: u64,
    /// Round-trip time.
    pub rtt: Duration,
    /// The server's clock in the Pong.
    pub server_us: u64,
}

/// Server clock minus this machine's clock, in µs, from the fastest sample; `None` without samples.
pub fn offset_us(samples: &[ClockSample]) -> Option<i64> {
    let best = samples.iter().min_by_key(|s| s.rtt)?;
    let midpoint = best.sent_us.saturating_add(u64::try_from(best.rtt.as_micros() / 2).unwrap_or(u64::MAX));
    // Any u64 from the server: the difference is taken wide and clamped, never overflowing.
    let offset = i128::from(best.server_us) - i128::from(midpoint);
    Some(offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_round_trip_wins() {
        let sample =
            |sent_us, rtt_us, server_us| ClockSample { sent_us, rtt: Duration::from_micros(rtt_us), server_us };
        assert_eq!(offset_us(&[]), None);
        // Server 1,000 µs ahead; the slow sample's asymmetry would say otherwise.
        let samples = [sample(10_000, 5_000, 14_500), sample(20_000, 100, 21_050)];
        assert_eq!(offset_us(&samples), Some(1_000));
        // A server's clock at any u64 is clamped, not overflowed (a panic in debug builds before).
        assert_eq!(offset_us(&[sample(0, 0, u64::MAX)]), Some(i64::MAX));
        assert_eq!(offset_us(&[sample(u64::MAX, 0, 0)]), Some(i64::MIN));
    }
}
