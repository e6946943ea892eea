//! The probe's schedule and sender, on tokio's paused clock.
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A path that lost a packet (so the probe is speculative: 1 ms after the last write).
const LOSSY: PathSample = PathSample { sent: 10, lost: 1, rtt: Duration::from_millis(20) };

/// A probe on `path` (`speculative` when the path lost a packet, a 1 ms ACK delay) whose sender counts its calls
/// and answers with `answer(call number)`.
fn counting_with(
    speculative: Duration,
    path: PathSample,
    answer: fn(u32) -> Probed,
) -> (Arc<TailProbe>, Arc<AtomicU32>) {
    let count = Arc::new(AtomicU32::new(0));
    let counted = count.clone();
    let timing = ProbeTiming::new(speculative, MS);
    let (probe, task) =
        TailProbe::new(Some(timing), move || path, move |_| answer(counted.fetch_add(1, Ordering::Relaxed)));
    tokio::spawn(task.unwrap());
    (probe, count)
}

fn counting(answer: fn(u32) -> Probed) -> (Arc<TailProbe>, Arc<AtomicU32>) {
    counting_with(MS, LOSSY, answer)
}

#[test]
fn the_probe_speculates_only_after_a_loss() {
    let mut timing = ProbeTiming::new(MS, MS);
    let rtt = Duration::from_millis(10);
    let clean = PathSample { sent: 500, lost: 0, rtt };
    let overdue = Duration::from_millis(21);
    assert_eq!(timing.delay(clean), overdue, "two RTTs and the ACK delay");
    let loss = PathSample { sent: 600, lost: 1, rtt };
    assert_eq!(timing.delay(loss), MS, "a loss: 1 ms");
    let later = PathSample { sent: 600 + LOSSY_FOR_PACKETS - 1, ..loss };
    assert_eq!(timing.delay(later), MS, "still within the packets after it");
    let quiet = PathSample { sent: 600 + LOSSY_FOR_PACKETS, ..loss };
    assert_eq!(timing.delay(quiet), overdue, "then waiting for the ACK again");
    let again = PathSample { sent: 5_000, lost: 2, rtt };
    assert_eq!(timing.delay(again), MS, "until the next loss");
    let mut fast = ProbeTiming::new(Duration::from_millis(3), Duration::ZERO);
    let near = PathSample { sent: 1, lost: 0, rtt: Duration::from_micros(50) };
    assert_eq!(fast.delay(near), Duration::from_millis(3), "never sooner than the speculative delay");
}

/// On a path without loss the probe waits until the write's ACK is overdue (the sender then sends one only if
/// the write is still unacknowledged, [`copy_round`]).
#[tokio::test(start_paused = true)]
async fn on_a_clean_path_the_probe_waits_for_the_ack() {
    let clean = PathSample { sent: 10, lost: 0, rtt: Duration::from_millis(10) };
    let (probe, count) = counting_with(MS, clean, |_| Probed::Sent);
    probe.sent();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(count.load(Ordering::Relaxed), 0, "not before two RTTs and the ACK delay");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(count.load(Ordering::Relaxed), 1);
}

/// A connection that keeps writing on a clean path, which then loses a packet, probes 1 ms after its writes
/// from the next time the timer looks (the delay is chosen again each time it fires, not only after a probe).
#[tokio::test(start_paused = true)]
async fn a_path_that_starts_losing_gets_the_speculative_probe_while_writes_continue() {
    let path = Arc::new(Mutex::new(PathSample { sent: 10, lost: 0, rtt: Duration::from_millis(10) }));
    let count = Arc::new(AtomicU32::new(0));
    let (sampled, counted) = (path.clone(), count.clone());
    let (probe, task) = TailProbe::new(
        Some(ProbeTiming::new(MS, MS)),
        move || *sampled.lock().unwrap(),
        move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Probed::Sent
        },
    );
    tokio::spawn(task.unwrap());
    for write in 0..20 {
        if write == 4 {
            path.lock().unwrap().lost = 1;
        }
        probe.sent();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let probes = count.load(Ordering::Relaxed);
    assert!(probes >= 14, "a probe 1 ms after each write once the timer saw the loss: {probes} of 20");
}

/// The probe is for the last write: writes during the wait move it on (earlier packets' losses show in the
/// later packets' ACKs).
#[tokio::test(start_paused = true)]
async fn writes_during_the_wait_move_the_probe_after_the_last() {
    let (probe, count) = counting_with(Duration::from_millis(3), LOSSY, |_| Probed::Sent);
    for _ in 0..10 {
        probe.sent();
        tokio::time::sleep(MS).await;
    }
    assert_eq!(count.load(Ordering::Relaxed), 0, "10 ms of writes 1 ms apart, a 3 ms delay: no probe yet");
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert_eq!(count.load(Ordering::Relaxed), 1, "3 ms after the last");
}

/// A probe goes only where the datagram buffer has room for it: into a full one quinn would make room by
/// dropping its oldest datagram, a tick already counted as sent (the datagrams waiting there draw the ACKs a
/// probe is for).
#[test]
fn no_probe_into_a_full_datagram_buffer() {
    let queue = Mutex::new(CopyQueue::new(2, Duration::ZERO, Duration::from_millis(5)));
    for (space, probes) in [(0, 0), (quiver_proto::PROBE.len(), 1), (1_000, 1)] {
        let mut sent = Vec::new();
        let send = |datagram: Bytes| {
            sent.push(datagram);
            Sent::Yes
        };
        let (probed, copies) = copy_round(|| (0, 0), &queue, || true, || 1_200, || space, send);
        assert_eq!((probed, copies), (Probed::Sent, 0));
        assert_eq!(sent.len(), probes, "{space} bytes free");
    }
}

/// The sender asks whether the probe would help only when it would send one, and sends none when not (the
/// write was acknowledged meanwhile).
#[test]
fn no_probe_where_it_would_not_help() {
    let queue = Mutex::new(CopyQueue::new(2, Duration::ZERO, Duration::from_millis(5)));
    let mut sent = 0;
    let send = |_: Bytes| {
        sent += 1;
        Sent::Yes
    };
    assert_eq!(copy_round(|| (0, 0), &queue, || false, || 1_200, || 1_000, send), (Probed::Sent, 0));
    assert_eq!(sent, 0);
    let asked = std::cell::Cell::new(false);
    let full = copy_round(|| (0, 0), &queue, || asked.replace(true), || 1_200, || 0, |_| Sent::Yes);
    assert_eq!((full, asked.get()), ((Probed::Sent, 0), false), "not asked when the buffer is full");
}

#[tokio::test(start_paused = true)]
async fn one_probe_per_burst_after_the_delay() {
    let (probe, count) = counting(|_| Probed::Sent);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(count.load(Ordering::Relaxed), 0, "no writes, no probes");
    for _ in 0..5 {
        probe.sent();
    }
    tokio::time::sleep(Duration::from_micros(500)).await;
    assert_eq!(count.load(Ordering::Relaxed), 0, "not before the delay");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(count.load(Ordering::Relaxed), 1, "a burst of writes costs one probe");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(count.load(Ordering::Relaxed), 1, "and only one");
    probe.sent();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(count.load(Ordering::Relaxed), 2, "the next write schedules the next probe");
}

#[tokio::test(start_paused = true)]
async fn a_sender_with_more_due_is_called_again_without_a_write() {
    let (probe, count) = counting(|call| match call {
        0 | 1 => Probed::Again(Duration::from_millis(5)),
        _ => Probed::Sent,
    });
    probe.sent();
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(count.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(count.load(Ordering::Relaxed), 2, "again after 5 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::Relaxed), 3, "and once more, then it waits for a write");
}

#[tokio::test(start_paused = true)]
async fn writes_with_copies_call_the_sender_at_once_and_plain_writes_after_the_delay() {
    let (probe, count) = counting(|_| Probed::Sent);
    probe.sent_with_copies();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(count.load(Ordering::Relaxed), 1, "no timer: called after the transport's turn");
    probe.sent();
    tokio::task::yield_now().await;
    assert_eq!(count.load(Ordering::Relaxed), 1, "a plain write waits for the delay");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(count.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn disabled_probes_send_nothing() {
    let (probe, task) = TailProbe::new(None, PathSample::default, |_| panic!("sent"));
    probe.sent();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(task.is_none());
}
