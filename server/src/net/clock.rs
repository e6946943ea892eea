//! Steps of the wall clock, watched for once for the whole server rather than by every session.
//!
//! A token's `exp` is on the wall clock; a session's expiry timer is on the monotonic one, which stops while the
//! machine sleeps and does not follow a step of the wall clock (NTP, an operator). Each session's timer used to look
//! at the wall clock at least once a minute to catch those: at 10,000 idle sessions, 167 wake-ups a second for an
//! event that happens about never. Now one task compares the two clocks every [`CLOCK_CHECK`], and when the wall
//! clock moved by more than [`CLOCK_STEP`] beside the monotonic one, every session checks itself again at once
//! (through the keys' watch, as after a reload), its expiry included: a stepped clock ends the sessions it expired
//! within about a second instead of up to a minute.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the wall clock is compared with the monotonic one.
pub(super) const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// How far the wall clock may move beside the monotonic one between two checks before it counts as a step. NTP's
/// slewing (at most 500 ppm: half a millisecond a second) never comes near; a sleep or a step of a second does.
pub(super) const CLOCK_STEP: Duration = Duration::from_millis(500);

/// The wall clock's offset from the monotonic one, and whether it stepped since the last reading.
#[derive(Debug)]
pub(super) struct StepDetector {
    offset_us: i128,
}

impl StepDetector {
    /// Starts from a reading of both clocks (µs: the wall clock's since the Unix epoch, the monotonic one's since
    /// any fixed point).
    pub(super) fn new(wall_us: u64, mono_us: u64) -> Self {
        StepDetector { offset_us: i128::from(wall_us) - i128::from(mono_us) }
    }

    /// Takes a new reading: by how much the wall clock stepped (forward or back) since the last one, if by more
    /// than [`CLOCK_STEP`].
    pub(super) fn stepped(&mut self, wall_us: u64, mono_us: u64) -> Option<i128> {
        let offset = i128::from(wall_us) - i128::from(mono_us);
        let step = offset - std::mem::replace(&mut self.offset_us, offset);
        (step.unsigned_abs() > CLOCK_STEP.as_micros()).then_some(step)
    }
}

/// How long a session's timer waits, at most, before it looks at the wall clock again for its token's expiry. The
/// timer's clock (monotonic) stops while the machine sleeps and does not follow a step of the wall clock, on which
/// `exp` is: a timer armed once for the whole lifetime let a session outlive its token by as long as the machine
/// slept (a laptop's dev server) or the clock was stepped forward. Such steps are caught by one watch for the whole
/// server (`clock::watch_sessions`: every session checks itself again within about a second of one); this bounds
/// what the two clocks' slow drift (NTP's slewing, at most 500 ppm) can add to a long-lived token. Requests (and
/// post copies) are checked against the wall clock itself.
pub(super) const EXPIRY_LOOK: Duration = Duration::from_secs(3600);

/// The same for a request that waits (a Join for a stalled store, say), during which the session's control loop
/// does not see the clock's watch: its wait ends within a minute of a step past the token's `exp`.
pub(super) const WAIT_EXPIRY_LOOK: Duration = Duration::from_secs(60);

/// When to look at the wall clock next for a token that expires at `exp_us`: then, on the timer's clock as it runs
/// now, or within `look`.
pub(super) fn next_expiry_look(exp_us: u64, look: Duration) -> tokio::time::Instant {
    let left = Duration::from_micros(exp_us.saturating_sub(super::now_us()));
    tokio::time::Instant::now() + left.min(look)
}

/// Completes once the wall clock reached `exp_us` (looked at every [`WAIT_EXPIRY_LOOK`] at most).
pub(super) async fn until_expired(exp_us: u64) {
    while super::now_us() < exp_us {
        tokio::time::sleep_until(next_expiry_look(exp_us, WAIT_EXPIRY_LOOK)).await;
    }
}

/// Every [`CLOCK_CHECK`] until `shutdown`: reads both clocks (`clocks`: the wall clock's µs and the monotonic
/// one's) and calls `stepped` with the step whenever the wall clock stepped.
pub(super) async fn watch(
    mut clocks: impl FnMut() -> (u64, u64),
    mut stepped: impl FnMut(i128),
    shutdown: CancellationToken,
) {
    let (wall, mono) = clocks();
    let mut detector = StepDetector::new(wall, mono);
    loop {
        tokio::select! {
            () = tokio::time::sleep(CLOCK_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
        let (wall, mono) = clocks();
        if let Some(step) = detector.stepped(wall, mono) {
            stepped(step);
        }
    }
}

/// [`watch`] on this machine's clocks: a step makes every live session check itself again (`keys`, the token
/// verifier's watch: its receivers see a change, the verifier itself unchanged).
pub(super) async fn watch_sessions(
    keys: std::sync::Arc<tokio::sync::watch::Sender<std::sync::Arc<crate::auth::Auth>>>,
    shutdown: CancellationToken,
) {
    let stepped = |step: i128| {
        let (way, ms) = if step < 0 { ("back", -step / 1_000) } else { ("forward", step / 1_000) };
        tracing::info!(way, ms, "the wall clock stepped; sessions look at their tokens' expiry again");
        keys.send_modify(|_| {});
    };
    // (The monotonic clock: the tick path's, whose readings' differences are all that is compared.)
    watch(|| (super::now_us(), super::tick_clock_us()), stepped, shutdown).await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_step_is_a_move_of_the_wall_clock_beside_the_monotonic_one() {
        let mut detector = StepDetector::new(1_000_000_000, 5);
        assert_eq!(detector.stepped(1_001_000_000, 1_000_005), None, "both moved a second");
        assert_eq!(detector.stepped(1_002_000_400, 2_000_005), None, "slewed by 400 µs");
        // A machine that slept a minute: the monotonic clock stood still meanwhile.
        assert_eq!(detector.stepped(1_063_000_400, 3_000_005), Some(60_000_000));
        assert_eq!(detector.stepped(1_064_000_400, 4_000_005), None, "measured from the new offset");
        assert_eq!(detector.stepped(1_062_000_400, 5_000_005), Some(-3_000_000), "set back");
        assert_eq!(detector.stepped(1_063_000_400 + 500_000, 6_000_005), None, "half a second is not a step");
    }

    /// The watch reads the clocks once per check and reports each step once; it ends at the shutdown.
    #[tokio::test(start_paused = true)]
    async fn the_watch_reports_each_step_once() {
        // The wall clock follows the monotonic one, except for a step of 10 s before the third check.
        let readings = Arc::new(Mutex::new(0u64));
        let read = readings.clone();
        let clocks = move || {
            let mut n = read.lock().unwrap();
            *n += 1;
            let mono = *n * 1_000_000;
            (1_700_000_000_000_000 + mono + if *n >= 3 { 10_000_000 } else { 0 }, mono)
        };
        let steps = Arc::new(Mutex::new(Vec::new()));
        let seen = steps.clone();
        let shutdown = CancellationToken::new();
        let watching = tokio::spawn(watch(clocks, move |step| seen.lock().unwrap().push(step), shutdown.clone()));
        tokio::time::sleep(CLOCK_CHECK * 5 + CLOCK_CHECK / 2).await;
        assert_eq!(*steps.lock().unwrap(), vec![10_000_000]);
        assert_eq!(*readings.lock().unwrap(), 6, "a reading at the start, then one per check");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), watching).await.expect("ended at the shutdown").unwrap();
    }
}
