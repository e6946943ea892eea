//! The benches' shared arguments: payload sizes and measured windows, bounded.

use std::time::Duration;

use crate::{error::CliError, seconds};

/// The smallest payload the latency benches carry: a sequence number and a send time.
pub(crate) const MIN_SIZE: usize = 12;
/// The largest: what fits a datagram in QUIC's smallest packet (1,200 bytes) with every series' headers. Larger
/// payloads were refused by the datagram series at each send, which showed as 100 % loss on the path.
pub(crate) const MAX_SIZE: usize = 1_024;

/// A `--size` the latency benches cannot use as given (the run would silently send more than asked).
#[derive(Debug, thiserror::Error)]
#[error(
    "expected a byte count from {MIN_SIZE} (the seq and send time every message carries) to {MAX_SIZE} (a datagram in \
     QUIC's smallest packet)"
)]
pub(crate) struct BadSize;

/// The longest window a bench measures (or idles) for, in seconds.
pub(crate) const MAX_BENCH_SECONDS: u64 = 86_400;

/// A bench's `--duration`, `--warmup` or `--idle`: a duration of at most [`MAX_BENCH_SECONDS`].
pub(crate) fn bench_seconds(flag: &'static str, value: f64) -> Result<Duration, CliError> {
    if value > MAX_BENCH_SECONDS as f64 {
        return Err(CliError::BenchTooLong { flag, value });
    }
    seconds(flag, value)
}

/// A payload size for the latency benches: from [`MIN_SIZE`] to [`MAX_SIZE`].
pub(crate) fn payload_size(s: &str) -> Result<usize, BadSize> {
    s.parse::<usize>().ok().filter(|size| (MIN_SIZE..=MAX_SIZE).contains(size)).ok_or(BadSize)
}

/// The largest post body the benches and `quiver churn` send: more than any server's `max_body` is sensible for
/// (16 MiB), and an allocation that cannot fail the process (a size of a terabyte aborted it).
pub(crate) const MAX_BODY: usize = 16 << 20;

/// A body size that is not a byte count from 1 to [`MAX_BODY`].
#[derive(Debug, thiserror::Error)]
#[error("expected a byte count from 1 to {MAX_BODY} (16 MiB)")]
pub(crate) struct BadBody;

/// A post body's size (`bench post --size`, `churn --body-bytes`): from 1 to [`MAX_BODY`].
pub(crate) fn body_size(s: &str) -> Result<usize, BadBody> {
    s.parse::<usize>().ok().filter(|size| (1..=MAX_BODY).contains(size)).ok_or(BadBody)
}
