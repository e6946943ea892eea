//! Sending on a fixed schedule, precisely. tokio's timer has 1 ms granularity and fires up to ~1 ms late, which a
//! latency measured from the scheduled send time (as it must be, to avoid coordinated omission) would count as
//! network latency. So: sleep on the timer until shortly before the deadline, then yield until it is reached.

use std::time::Duration;

use tokio::time::Instant;

/// How early the coarse timer sleep ends; the rest of the wait yields to other tasks.
pub const SPIN_WINDOW: Duration = Duration::from_micros(1500);

/// Waits until `deadline` to within a few µs (when a core is free), yielding to other tasks meanwhile.
pub async fn until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(SPIN_WINDOW) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_early() {
        for wait_us in [0u64, 200, 3000] {
            let deadline = Instant::now() + Duration::from_micros(wait_us);
            until(deadline).await;
            assert!(Instant::now() >= deadline);
        }
    }
}
