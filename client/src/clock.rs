//! This machine's clock as the protocol counts time: µs since the Unix epoch.

use std::time::SystemTime;

/// Now, in µs since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
