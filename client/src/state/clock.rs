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

/// The latest server clock taken for one (µs since the Unix epoch): 2^53, the year 2255, as the browser client's
/// (where a Number stops holding it exactly). A Pong past it is a hostile or broken server's: its 2^63 put the
/// client's server clock past the QUIC varint range that ticks are stamped in, and every tick failed to encode.
pub const MAX_SERVER_CLOCK_US: u64 = 1 << 53;

/// Server clock minus this machine's clock, in µs, from the fastest sample whose server clock is one
/// ([`MAX_SERVER_CLOCK_US`]); `None` without such samples.
pub fn offset_us(samples: &[ClockSample]) -> Option<i64> {
    let best = samples.iter().filter(|s| s.server_us <= MAX_SERVER_CLOCK_US).min_by_key(|s| s.rtt)?;
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
        // A local clock at any u64 is clamped, not overflowed (a panic in debug builds before).
        assert_eq!(offset_us(&[sample(u64::MAX, 0, 0)]), Some(i64::MIN));
        // A server's clock no clock shows is left out, the fastest sample or not.
        assert_eq!(offset_us(&[sample(0, 0, u64::MAX)]), None);
        assert_eq!(offset_us(&[sample(0, 0, 1 << 63), sample(20_000, 100, 21_050)]), Some(1_000));
        assert_eq!(offset_us(&[sample(0, 0, MAX_SERVER_CLOCK_US)]), Some(1 << 53));
    }
}
