//! The series' tally, schedule and table.

use super::*;

#[test]
fn payload_round_trip() {
    assert_eq!(parse(&payload(7, 123_456, 64)), Some((7, 123_456)));
    assert_eq!(payload(1, 2, 3).len(), 12);
    assert_eq!(parse(&[1, 2, 3]), None);
}

#[tokio::test]
async fn warmup_is_not_measured_and_losses_are_counted() {
    let schedule = Schedule { start: Instant::now(), interval: Duration::from_millis(1), count: 10, warmup: 2 };
    let tally = Tally::shared();
    for i in 0..10 {
        let origin = schedule.due(i).await.unwrap();
        Tally::sent(&tally, &schedule, 0, i, origin);
        if i != 5 {
            Tally::received(&tally, 0, i);
        }
    }
    Tally::received(&tally, 0, 3); // duplicate: ignored
    let result = Tally::result(&tally, "x", None);
    assert_eq!((result.sent, result.lost, result.latency.count), (8, 1, 7));
}

/// The datagram baselines receive as Quiver's tick subscriptions do (latest wins): an arrival overtaken by a
/// newer one is stale, neither lost nor measured, in both, so that their percentiles are over the same arrivals.
/// Ticks a subscription's backlog let go of are neither lost nor measured either, and the table says so.
#[tokio::test]
async fn overtaken_arrivals_are_stale_and_superseded_ticks_are_noted() {
    let schedule = Schedule { start: Instant::now(), interval: Duration::from_millis(1), count: 6, warmup: 0 };
    let tally = Tally::shared();
    for i in 0..6 {
        let origin = schedule.due(i).await.unwrap();
        Tally::sent(&tally, &schedule, 0, i, origin);
    }
    for i in [0, 2, 1, 3, 3] {
        Tally::received_latest(&tally, 0, i); // 1 overtaken by 2; 3 twice (a copy: ignored)
    }
    let superseded = Arc::new(std::sync::atomic::AtomicU64::new(7));
    Tally::superseded_from(&tally, &superseded);
    superseded.store(8, std::sync::atomic::Ordering::Relaxed); // one of them (4) let go of by the backlog
    let result = Tally::result(&tally, "quiver datagram", None);
    let counts = (result.sent, result.latency.count, result.stale, result.superseded, result.lost);
    assert_eq!(counts, (6, 3, 1, 1, 1), "5 never arrived");
    let report = Report { config: serde_json::Value::Null, series: vec![result] };
    assert!(report.table().contains("quiver datagram: 1 ticks arrived and were superseded"), "{}", report.table());
}

/// A series that lost every message has no latency: its cells and ratios show "–", not p50 0 and "×0.000",
/// which read as infinitely fast.
#[tokio::test]
async fn a_series_that_measured_nothing_shows_no_latency_and_no_ratio() {
    let schedule = Schedule { start: Instant::now(), interval: Duration::from_millis(1), count: 3, warmup: 0 };
    let (baseline, lost) = (Tally::shared(), Tally::shared());
    for i in 0..3 {
        let origin = schedule.due(i).await.unwrap();
        Tally::sent(&baseline, &schedule, 0, i, origin);
        Tally::received(&baseline, 0, i);
        Tally::sent(&lost, &schedule, 0, i, origin);
    }
    let report = Report {
        config: serde_json::Value::Null,
        series: vec![Tally::result(&baseline, "quinn", None), Tally::result(&lost, "quiver", Some("quinn"))],
    };
    let table = report.table();
    let row = table.lines().find(|l| l.starts_with("quiver")).unwrap();
    assert!(!row.contains('×') && row.contains("–, – (quinn)"), "{table}");
    assert!(ratios(&report.series[0].latency, &report.series[1].latency)[0].is_nan());
}

/// A sender more than [`OVERRUN`] past its schedule's end stops (the machine cannot carry the rate), instead of
/// sending the rest back to back: a run ends on time.
#[tokio::test]
async fn a_sender_far_behind_its_schedule_stops() {
    let start = Instant::now() - Duration::from_secs(5);
    let schedule = Schedule { start, interval: Duration::from_millis(1), count: 1000, warmup: 0 };
    assert_eq!(schedule.due(10).await, None, "3 s past the end");
    let schedule = Schedule { start, interval: Duration::from_millis(4), count: 1000, warmup: 0 };
    let origin = start + Duration::from_millis(40) + TIMER_SLACK;
    assert_eq!(schedule.due(10).await, Some(origin), "1 s past the end: still sent");
}

/// A message found already due counts as one the sender slept for: from when it is sent while within
/// [`TIMER_SLACK`] of its schedule, from the schedule plus the slack beyond. Above 1,000 messages a second the timer
/// (1 ms steps) wakes a sender with several due, and counting those from their schedule charged each up to 1 ms.
#[tokio::test(start_paused = true)]
async fn a_message_found_due_within_the_timers_step_counts_from_its_send() {
    let start = Instant::now();
    let schedule = Schedule { start, interval: Duration::from_micros(100), count: 1000, warmup: 0 };
    tokio::time::advance(Duration::from_micros(900)).await;
    assert_eq!(schedule.due(3).await, Some(Instant::now()), "600 µs behind: the timer's step");
    tokio::time::advance(Duration::from_millis(4)).await;
    let due = schedule.due(10).await; // scheduled at 1 ms, now at 4.9 ms
    assert_eq!(due, Some(start + Duration::from_millis(1) + TIMER_SLACK), "held up: counts beyond the slack");
}

/// A sender whose timer fired late because the runtime was busy (here: a task blocking its one thread for
/// 10 ms) counts its message from at most [`TIMER_SLACK`] past the schedule, not from when it woke.
#[tokio::test(flavor = "current_thread")]
async fn a_sender_held_up_counts_from_the_schedule() {
    let start = Instant::now();
    let schedule = Schedule { start, interval: Duration::from_millis(2), count: 2, warmup: 0 };
    // Runs as soon as the sender waits (one thread), and keeps the timer from firing for 10 ms.
    let busy = tokio::spawn(async { std::thread::sleep(Duration::from_millis(10)) });
    let origin = schedule.due(1).await.unwrap();
    let scheduled = start + Duration::from_millis(2);
    assert!(origin >= scheduled && origin <= scheduled + TIMER_SLACK, "{:?} after the schedule", origin - scheduled);
    assert!(Instant::now() >= start + Duration::from_millis(10), "the sender was held up");
    busy.await.unwrap();
}

/// Rounds of one series merge into one result: counts summed, percentiles over every sample of both rounds (not an
/// average of the rounds' percentiles), bytes per message weighted by messages.
#[test]
fn rounds_of_a_series_merge_over_all_their_samples() {
    let round = |from: u64, to: u64, bytes: f64| {
        let mut samples = LatencyRecorder::default();
        for us in from..=to {
            samples.record(Duration::from_micros(us));
        }
        let sent = to - from + 1 + 10;
        SeriesResult {
            name: "x".into(),
            baseline: None,
            sent,
            lost: 10,
            stale: 1,
            superseded: 0,
            wire_bytes_per_msg: Some(bytes),
            latency: samples.summary(),
            curve: samples.curve(),
            samples: Some(samples),
        }
    };
    let mut merged = round(1, 900, 100.0);
    merged.absorb(round(901, 1000, 200.0));
    assert_eq!((merged.sent, merged.lost, merged.stale), (1020, 20, 2));
    let l = merged.latency;
    assert_eq!((l.count, l.p50_us, l.p99_us, l.max_us), (1000, 500, 990, 1000));
    assert_eq!(merged.curve.last(), Some(&(1.0, 1000)));
    let bytes = merged.wire_bytes_per_msg.unwrap();
    assert!((bytes - (100.0 * 910.0 + 200.0 * 110.0) / 1020.0).abs() < 1e-9, "{bytes}");
    // A round without its samples (a fan-out's series): no percentiles are made up; the larger round's stand, and
    // no later round merges into them as if they were samples.
    let mut merged = round(1, 100, 100.0);
    merged.absorb(SeriesResult { samples: None, ..round(1, 1000, 100.0) });
    assert_eq!((merged.latency.count, merged.samples.is_none()), (1000, true));
    merged.absorb(round(1, 10, 100.0));
    assert_eq!(merged.latency.count, 1000);
}

/// A p99.9 of fewer than 1,000 samples is its maximum or one of the few slowest: the tables show "–" for it (the
/// cluster's default 900 echoes printed the max twice, as p99.9 and max).
#[test]
fn a_p999_of_too_few_samples_is_not_shown() {
    let samples = |n: u64| {
        let mut recorder = LatencyRecorder::default();
        (1..=n).for_each(|us| recorder.record(Duration::from_micros(us)));
        recorder.summary()
    };
    let few = samples(900);
    assert_eq!((few.p999_us, few.max_us, p999(&few)), (900, 900, None));
    assert_eq!(cells(&few)[3], "–");
    let enough = samples(1_000);
    assert_eq!(p999(&enough), Some(999));
    assert_eq!(cells(&enough)[3], "999");
}
