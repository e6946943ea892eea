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
    let midpoint = best.sent_us.saturating_add(best.rtt.as_micros() as u64 / 2);
    Some(best.server_us as i64 - midpoint as i64)
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
    }
}
