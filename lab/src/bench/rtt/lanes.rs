//! How a round-trip series runs its senders: each sender's messages on fixed schedules (lanes) that all start
//! together once every sender is set up, so that connecting, slow over an impaired link, never counts as latency;
//! then a drain that waits for what is still in flight.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RttConfig;
use crate::bench::{
    namespaces,
    series::{Schedule, SeriesResult, SharedTally, Tally, RELIABLE_DRAIN_CAP},
    BenchError,
};

/// One kind of message a sender sends: its schedule and where its latencies go.
pub(super) struct Lane {
    pub(super) plan: Schedule,
    pub(super) tally: SharedTally,
}

impl Lane {
    /// Waits for message `i`'s turn and records it as sent by `who`; false when the sender is out of time
    /// ([`Schedule::due`]): nothing more is to be sent, and the rest counts as lost ([`Tally::not_sent`]).
    pub(super) async fn turn(&self, who: u32, i: u64) -> bool {
        let Some(origin) = self.plan.due(i).await else {
            Tally::not_sent(&self.tally, &self.plan, i);
            return false;
        };
        Tally::sent(&self.tally, &self.plan, who, i, origin);
        true
    }

    /// Sends every message of the lane with `send`, which must not wait; returns how many it sent.
    pub(super) async fn send_scheduled(&self, who: u32, mut send: impl FnMut(u64)) -> u64 {
        for i in 0..self.plan.count {
            if !self.turn(who, i).await {
                return i;
            }
            send(i);
        }
        self.plan.count
    }
}

/// Where every sender waits once it is set up: the schedules start together 200 ms after the last one arrives, so
/// set-up time (seconds for many clients over a lossy link) is never counted as latency.
#[derive(Clone)]
struct Gate {
    barrier: Arc<tokio::sync::Barrier>,
    start: Arc<std::sync::OnceLock<Instant>>,
}

/// A sender's lanes before the start: the tallies now (for its readers), the schedules at [`Lanes::start`].
pub(super) struct Lanes {
    tallies: Vec<SharedTally>,
    /// Schedules with `start` not yet known; each lane's offset from the common start is in `offsets`.
    plans: Vec<Schedule>,
    offsets: Vec<Duration>,
    gate: Gate,
}

impl Lanes {
    /// Lane `k`'s tally.
    pub(super) fn tally(&self, k: usize) -> SharedTally {
        self.tallies[k].clone()
    }

    /// Waits until every sender is set up, then returns the lanes with their schedules.
    async fn start(self) -> Vec<Lane> {
        self.gate.barrier.wait().await;
        let start = *self.gate.start.get_or_init(|| Instant::now() + Duration::from_millis(200));
        self.plans
            .into_iter()
            .zip(self.offsets)
            .zip(self.tallies)
            .map(|((plan, offset), tally)| Lane { plan: Schedule { start: start + offset, ..plan }, tally })
            .collect()
    }

    /// [`Lanes::start`] for a single lane.
    pub(super) async fn start_one(self) -> Lane {
        let lanes = self.start().await;
        lanes.into_iter().next().unwrap_or_else(|| unreachable!("measure asks for one lane"))
    }

    /// [`Lanes::start`] for two lanes (ticks and chat).
    pub(super) async fn start_two(self) -> (Lane, Lane) {
        let mut lanes = self.start().await.into_iter();
        match (lanes.next(), lanes.next()) {
            (Some(first), Some(second)) => (first, second),
            _ => unreachable!("the head-to-head asks for two lanes"),
        }
    }
}

/// A lane to measure: its name, messages per second per sender, and whether its path is reliable (then the run
/// waits for retransmissions, up to [`RELIABLE_DRAIN_CAP`], before counting a message lost).
pub(super) type LaneSpec<'a> = (&'a str, f64, bool);

/// Runs one sender per client (each given its index, its [`Lanes`], one per [`LaneSpec`] of `lanes`, and a token
/// cancelled once the drain is over) and returns one result per lane. Every sender must reach
/// [`Lanes::start`] or fail.
pub(super) async fn measure_lanes<F, Fut>(
    config: &RttConfig,
    lanes: &[LaneSpec<'_>],
    sender: F,
) -> Result<Vec<SeriesResult>, BenchError>
where
    F: Fn(u32, Lanes, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let tallies: Vec<SharedTally> = lanes.iter().map(|_| Tally::shared()).collect();
    // A second lane starts half its interval after the first.
    let offsets: Vec<Duration> = lanes
        .iter()
        .enumerate()
        .map(|(k, &(_, rate, _))| if k == 0 { Duration::ZERO } else { Duration::from_secs_f64(0.5 / rate) })
        .collect();
    let plans: Vec<Schedule> = lanes
        .iter()
        .map(|&(_, rate, _)| Schedule::at_rate(rate, config.warmup, config.duration, Instant::now()))
        .collect();
    let gate = Gate {
        barrier: Arc::new(tokio::sync::Barrier::new(config.clients as usize)),
        start: Arc::new(std::sync::OnceLock::new()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for who in 0..config.clients {
        let lanes =
            Lanes { tallies: tallies.clone(), plans: plans.clone(), offsets: offsets.clone(), gate: gate.clone() };
        tasks.spawn(sender(who, lanes, stop.clone()));
    }
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done.map_err(BenchError::from).and_then(|sent| sent) {
            if outcome.is_ok() {
                // The others may be waiting at the gate for this one: stop them.
                tasks.abort_all();
                outcome = Err(err);
            }
        }
    }
    if outcome.is_ok() {
        let drained = Instant::now();
        tokio::time::sleep(namespaces::drain(config.profile.as_ref())).await;
        let pending = || lanes.iter().zip(&tallies).any(|(&(_, _, reliable), t)| reliable && Tally::outstanding(t) > 0);
        while pending() && drained.elapsed() < RELIABLE_DRAIN_CAP {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    outcome
        .map(|()| lanes.iter().zip(&tallies).map(|(&(name, _, _), tally)| Tally::result(tally, name, None)).collect())
}

/// [`measure_lanes`] with one lane at the configured rate.
pub(super) async fn measure<F, Fut>(
    config: &RttConfig,
    name: &str,
    reliable: bool,
    sender: F,
) -> Result<SeriesResult, BenchError>
where
    F: Fn(u32, Lanes, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let results = measure_lanes(config, &[(name, config.rate, reliable)], sender).await?;
    Ok(results.into_iter().next().unwrap_or_else(|| unreachable!("one lane, one result")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(clients: u32) -> RttConfig {
        RttConfig {
            clients,
            rate: 1000.0,
            duration: Duration::from_millis(20),
            warmup: Duration::ZERO,
            ..RttConfig::new()
        }
    }

    #[tokio::test]
    async fn schedules_start_once_every_sender_is_set_up() {
        let started = Instant::now();
        let lanes = [("a", 1000.0, true), ("b", 500.0, false)];
        let results = measure_lanes(&config(3), &lanes, |who, lanes, _stop| async move {
            // A slow set-up (sender 2 takes 300 ms to connect) must not count as latency for anyone.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(who) + 100)).await;
            let lanes = lanes.start().await;
            assert!(lanes[0].plan.start >= started + Duration::from_millis(300 + 200), "start before set-up ended");
            assert_eq!(lanes[1].plan.start - lanes[0].plan.start, Duration::from_millis(1), "half of b's interval");
            for lane in &lanes {
                lane.send_scheduled(who, |i| Tally::received(&lane.tally, who, i)).await;
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!((results[0].sent, results[1].sent), (60, 30));
        // (Loose: a stall of this one thread on a loaded machine counts as latency; the set-up's seconds would not
        // fit.)
        assert!(results[0].latency.max_us < 500_000, "{:?}", results[0]);
    }

    #[tokio::test]
    async fn a_sender_that_fails_before_the_start_stops_the_others() {
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            measure(&config(3), "x", true, |who, lanes, _stop| async move {
                if who == 1 {
                    return Err(BenchError::io("connecting")(std::io::ErrorKind::ConnectionRefused.into()));
                }
                lanes.start_one().await;
                Ok(())
            }),
        )
        .await
        .expect("the others waited forever at the gate");
        let err = outcome.unwrap_err();
        assert!(matches!(err, BenchError::Io { doing: "connecting", .. }), "{err:?}");
    }
}
