//! Tail-loss probes on demand. A lost packet is detected when a later packet is acknowledged; when the lost one was
//! the last of a burst (a chat message, a reply), nothing later comes until the application's next message, or
//! until the probe timeout, which quinn 0.11 cannot bring below 25 ms (its `max_ack_delay` transport parameter is
//! fixed there; the ACK-frequency extension shortens the ACKs, not the PTO). So after writing reliable data, an
//! endpoint sends one probe datagram a moment later: ACK-eliciting, ignored by the receiver (the protocol defines
//! the one-byte datagram `0x00` as a probe, [`quiver_proto::PROBE`]), and its ACK exposes a lost tail within about `delay` + RTT. Cost: one small
//! packet per burst of writes, none on idle connections (unlike a short keep-alive).
//!
//! Redundant delivery rides on the same timer: where datagram copies of the reliable data wait
//! ([`quiver_proto::copies::CopyQueue`]), the first round of copies goes instead of the probe (a copy elicits the
//! same ACK), and the sender asks to be called again ([`Probed::Again`]) for the next round.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use quiver_proto::copies::CopyQueue;

use tokio::{sync::Notify, time::Instant};

/// What the sender did when the probe fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// Sent (a probe, or copies in its place).
    Sent,
    /// Sent, and more is due this long from now (the next round of copies), whether or not data is written again
    /// (a write before then is still probed `delay` after it).
    Again(Duration),
    /// The connection is gone: the task ends.
    Gone,
}

/// How sending one datagram went, for [`copy_round`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the transport.
    Yes,
    /// Not sent (too large for the path); nothing else is wrong.
    Skipped,
    /// The connection is gone.
    Gone,
}

/// One firing of the probe timer on a connection whose copies wait in `queue`: feeds the path's loss so far
/// (`path_loss()`: packets sent and lost, [`path_loss`]; read only when copies wait, as quinn's counters take its
/// connection lock) to the queue, sends the copies due
/// (datagrams of at most `max_size()` bytes) with `send`, skipping any that does not fit the datagram buffer's
/// free `space()` (a copy never pushes a tick out; the stream carries its frame anyway), or, when no copy went, the
/// tail probe (when `probe`). Returns what the probe task does next, and how many copies went.
pub fn copy_round(
    path_loss: impl FnOnce() -> (u64, u64),
    queue: &Mutex<CopyQueue>,
    probe: bool,
    max_size: impl FnOnce() -> usize,
    space: impl Fn() -> usize,
    mut send: impl FnMut(Bytes) -> Sent,
) -> (Probed, usize) {
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    let now = std::time::Instant::now();
    // (Not `match lock().is_empty()`: the guard would live through the match, which locks again.)
    let empty = lock().is_empty();
    let (datagrams, next) = match empty {
        true => (Vec::new(), None),
        false => {
            let ((sent, lost), max) = (path_loss(), max_size());
            let mut queue = lock();
            queue.observe(sent, lost);
            (queue.take(now, max), queue.next_due(now))
        }
    };
    let mut copies = 0;
    for datagram in datagrams {
        if space() < datagram.len() {
            continue;
        }
        match send(datagram) {
            Sent::Yes => copies += 1,
            Sent::Skipped => {}
            Sent::Gone => return (Probed::Gone, copies),
        }
    }
    // Not into a full datagram buffer, where quinn would make room by dropping its oldest datagram (a tick): what
    // is queued there draws the ACKs a probe is for.
    let probe = probe && space() >= quiver_proto::PROBE.len();
    if copies == 0 && probe && send(Bytes::from_static(quiver_proto::PROBE)) == Sent::Gone {
        return (Probed::Gone, 0);
    }
    (next.map_or(Probed::Sent, Probed::Again), copies)
}

/// `future`'s output if it is ready at its first poll, else `None` (the future is dropped unfinished). For a send
/// that waits for room (`send_datagram_wait`): polled once, it queues the datagram if there is room now and queues
/// nothing otherwise, checked and done under the connection's own lock. Checking the room first and then sending
/// with `send_datagram`, which makes room by dropping the oldest datagram, is a race: another task's datagram
/// taken meanwhile leaves too little, and a tick already counted as sent is dropped for a copy or a probe.
pub fn if_ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// A QUIC connection's packets sent and lost so far, for [`copy_round`].
pub fn path_loss(quic: &quinn::Connection) -> (u64, u64) {
    let path = quic.stats().path;
    (path.sent_packets, path.lost_packets)
}

/// Sends a probe `delay` after [`TailProbe::sent`] is called (calls during the wait share that probe).
#[derive(Debug, Default)]
pub struct TailProbe {
    wake: Notify,
    /// A probe is scheduled and not sent yet: later writes are covered by it.
    pending: AtomicBool,
    /// Copies of what was just written wait: call the sender as soon as the transport had its turn.
    early: AtomicBool,
    enabled: bool,
}

impl TailProbe {
    /// A probe that sends with `send` (which returns false once the connection is gone), and the task that does
    /// the sending, for the caller to run and stop with the connection; or a probe that does nothing (and no task)
    /// when `delay` is `None`.
    pub fn new(
        delay: Option<Duration>,
        send: impl Fn() -> Probed + Send + 'static,
    ) -> (Arc<TailProbe>, Option<impl Future<Output = ()> + Send + 'static>) {
        let Some(delay) = delay else { return (Arc::new(TailProbe::default()), None) };
        let probe = Arc::new(TailProbe {
            wake: Notify::new(),
            pending: AtomicBool::new(false),
            early: AtomicBool::new(false),
            enabled: true,
        });
        let waiting = probe.clone();
        let task = async move {
            // When the sender is to be called next: `delay` after a write, or when it asked to be called again.
            let mut deadline: Option<Instant> = None;
            loop {
                let woken_by_write = match deadline {
                    None => {
                        waiting.wake.notified().await;
                        true
                    }
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => false,
                        () = waiting.wake.notified() => true,
                    },
                };
                if woken_by_write {
                    if waiting.early.load(Ordering::Acquire) {
                        // Two turns of the scheduler: the connection's driver, woken by the write before this
                        // task, sends the data first, so the copies go in packets of their own.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                    } else {
                        let at = Instant::now() + delay;
                        deadline = Some(deadline.map_or(at, |d| d.min(at)));
                        continue;
                    }
                }
                waiting.pending.store(false, Ordering::Release);
                // Copies of a write from here on need another wake-up (this call may not see them).
                waiting.early.store(false, Ordering::Release);
                deadline = match send() {
                    Probed::Sent => None,
                    Probed::Again(after) => Some(Instant::now() + after),
                    Probed::Gone => return,
                };
            }
        };
        (probe, Some(task))
    }

    /// Reliable data was just written.
    pub fn sent(&self) {
        if self.enabled && !self.pending.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Reliable data was just written and copies of it wait ([`Probed`]): the sender is called as soon as the
    /// transport has had its turn to send the data, not `delay` later (a copy elicits the ACK a probe would).
    pub fn sent_with_copies(&self) {
        if self.enabled {
            self.pending.store(true, Ordering::Release);
            if !self.early.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A probe with a 1 ms delay whose sender counts its calls and answers with `answer(call number)`.
    fn counting(answer: fn(u32) -> Probed) -> (Arc<TailProbe>, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let counted = count.clone();
        let (probe, task) =
            TailProbe::new(Some(Duration::from_millis(1)), move || answer(counted.fetch_add(1, Ordering::Relaxed)));
        tokio::spawn(task.unwrap());
        (probe, count)
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
            let (probed, copies) = copy_round(|| (0, 0), &queue, true, || 1_200, || space, send);
            assert_eq!((probed, copies), (Probed::Sent, 0));
            assert_eq!(sent.len(), probes, "{space} bytes free");
        }
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
        let (probe, task) = TailProbe::new(None, || panic!("sent"));
        probe.sent();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(task.is_none());
    }
}
