//! Tail-loss probes on demand. A lost packet is detected when a later packet is acknowledged; when the lost one was
//! the last of a burst (a chat message, a reply), nothing later comes until the application's next message, or
//! until quinn's probe timeout: the smoothed RTT, four RTT variances (at least 1 ms) and the peer's ACK delay (25 ms
//! unless the peer took the ACK-frequency request), doubling after each probe timeout without an answer; at a few
//! percent loss the variance alone puts it at many milliseconds. So after writing reliable data, an
//! endpoint sends one probe datagram a moment later: ACK-eliciting, ignored by the receiver (the protocol defines
//! the one-byte datagram `0x00` as a probe, [`quiver_proto::PROBE`]), and its ACK exposes a lost tail within about
//! `delay` + RTT.
//!
//! A probe costs a packet each way (it, and the ACK it elicits), so it goes only where it can help
//! ([`ProbeTiming`]): when the last write (not the first of a burst) may still be unacknowledged after the delay
//! (anything ACK-eliciting in flight counts, a tick too: [`crate::congestion::unacknowledged`]), and on a path that
//! has not lost a packet lately only once that write's ACK is overdue, not 1 ms after it, which on a busy server
//! (where replies take milliseconds) was a probe after nearly every reply, and more than halved the posts a server
//! could acknowledge (docs/benchmarks.md). Idle connections send none.
//!
//! Redundant delivery rides on the same timer: where datagram copies of the reliable data wait
//! ([`quiver_proto::copies::CopyQueue`]), the first round of copies goes instead of the probe (a copy elicits the
//! same ACK), and the sender asks to be called again ([`Probed::Again`]) for the next round.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// (a write before then is probed at that round, or `delay` after it if that comes first).
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
/// tail probe (when `probe()` says it is due: asked last, only when nothing else decided). Returns what the probe
/// task does next, and how many copies went.
pub fn copy_round(
    path_loss: impl FnOnce() -> (u64, u64),
    queue: &Mutex<CopyQueue>,
    probe: impl FnOnce() -> bool,
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
    let probe = || space() >= quiver_proto::PROBE.len() && probe();
    if copies == 0 && probe() && send(Bytes::from_static(quiver_proto::PROBE)) == Sent::Gone {
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
    let path = path_sample(quic);
    (path.sent, path.lost)
}

/// For [`copy_round`]'s `probe`: whether a tail probe for the write made at `written` (`None`: probes off) still
/// helps, that is whether `quic` may not have had it acknowledged ([`crate::congestion::unacknowledged`]).
pub fn probe_helps(quic: &quinn::Connection, written: Option<Instant>) -> bool {
    written.is_some_and(|written| crate::congestion::unacknowledged(quic, written.into_std()))
}

/// A connection's path as the probe timer sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathSample {
    /// Packets sent so far.
    pub sent: u64,
    /// Packets lost so far.
    pub lost: u64,
    /// The smoothed round-trip time.
    pub rtt: Duration,
}

/// `quic`'s path now (one look under its lock).
pub fn path_sample(quic: &quinn::Connection) -> PathSample {
    let path = quic.stats().path;
    PathSample { sent: path.sent_packets, lost: path.lost_packets, rtt: path.rtt }
}

/// Packets a path sends after a loss during which the probe stays speculative ([`ProbeTiming`]): about a loss
/// rate of 0.01 % or more keeps it so (1,000 left a path with 0.5 % loss in bursts, `wifi`, on the slow choice for a
/// quarter of its losses: p99 ×1.1–1.2).
pub const LOSSY_FOR_PACKETS: u64 = 10_000;

/// How long after the last write the tail probe is due, sans IO. On a path that lost a packet among its last
/// [`LOSSY_FOR_PACKETS`] sent, `speculative` (1 ms): the probe's ACK then exposes a lost tail about an RTT after
/// it, before quinn's time threshold (9/8 RTT) would have let it declare the loss anyway on most paths, at the cost
/// of a probe after most bursts. On a path that has not, the write's ACK is waited for: two smoothed RTTs and the
/// peer's ACK delay (RFC 8985's tail-loss probe timeout; at least `speculative`), after which a probe goes only if
/// the write may still be unacknowledged, so a clean path sends almost none (5/4 of the RTT was tried: under load,
/// where RTT samples spread, a third of the replies still drew a probe). quinn's own probe timeout (the smoothed
/// RTT, four RTT variances of at least 1 ms, the peer's ACK delay) comes sooner on long steady paths, later on short
/// or jittery ones. The first tail lost after [`LOSSY_FOR_PACKETS`] clean packets is found that much later than at
/// 1 ms.
#[derive(Debug, Clone)]
pub struct ProbeTiming {
    speculative: Duration,
    ack_delay: Duration,
    /// Packets lost when last sampled, and packets sent when a loss was last seen.
    lost: u64,
    lost_at: Option<u64>,
}

impl ProbeTiming {
    /// A schedule probing `speculative` after a write on lossy paths, where the peer acknowledges within
    /// `ack_delay`.
    pub fn new(speculative: Duration, ack_delay: Duration) -> ProbeTiming {
        ProbeTiming { speculative, ack_delay, lost: 0, lost_at: None }
    }

    /// The delay for a write made now, on a path that looks like `path`.
    pub fn delay(&mut self, path: PathSample) -> Duration {
        if path.lost > self.lost {
            (self.lost, self.lost_at) = (path.lost, Some(path.sent));
        }
        match self.lossy(path.sent) {
            true => self.speculative,
            false => (path.rtt.saturating_mul(2) + self.ack_delay).max(self.speculative),
        }
    }

    /// Whether the path lost a packet among its last [`LOSSY_FOR_PACKETS`] (`sent`: packets sent so far).
    pub fn lossy(&self, sent: u64) -> bool {
        self.lost_at.is_some_and(|at| sent.saturating_sub(at) < LOSSY_FOR_PACKETS)
    }
}

/// Calls the sender a while after the last [`TailProbe::sent`] ([`ProbeTiming`]; writes during the wait move the
/// time on and share the one call), or at once after [`TailProbe::sent_with_copies`].
#[derive(Debug)]
pub struct TailProbe {
    wake: Notify,
    /// A probe is scheduled and not sent yet: later writes are covered by it.
    pending: AtomicBool,
    /// Copies of what was just written wait: call the sender as soon as the transport had its turn.
    early: AtomicBool,
    /// When the last write was, in µs since `epoch`.
    last_write: AtomicU64,
    epoch: Instant,
    enabled: bool,
}

impl TailProbe {
    /// A probe that does nothing, and no task.
    pub fn disabled() -> Arc<TailProbe> {
        Arc::new(TailProbe::with(false))
    }

    fn with(enabled: bool) -> TailProbe {
        TailProbe {
            wake: Notify::new(),
            pending: AtomicBool::new(false),
            early: AtomicBool::new(false),
            last_write: AtomicU64::new(0),
            epoch: Instant::now(),
            enabled,
        }
    }

    /// A probe scheduled by `timing` from the connection's `path()` (looked at when a write comes with none
    /// pending, and each time the probe's timer fires), that sends with `send`, and the task that does the sending, for the caller to run and
    /// stop with the connection; or a probe that does nothing (and no task) when `timing` is `None`. `send` is
    /// given the last write's time and decides whether a probe still helps ([`copy_round`]'s `probe`).
    pub fn new(
        timing: Option<ProbeTiming>,
        path: impl Fn() -> PathSample + Send + 'static,
        send: impl Fn(Instant) -> Probed + Send + 'static,
    ) -> (Arc<TailProbe>, Option<impl Future<Output = ()> + Send + 'static>) {
        let Some(mut timing) = timing else { return (TailProbe::disabled(), None) };
        let probe = Arc::new(TailProbe::with(true));
        let waiting = probe.clone();
        let task = async move {
            // When the sender asked to be called again (the next round of copies), and the delay of the probe
            // pending after the last write.
            let (mut again, mut probe_delay): (Option<Instant>, Option<Duration>) = (None, None);
            loop {
                let probe_at = probe_delay.map(|delay| waiting.last_write() + delay);
                let woken_by_write = match again.into_iter().chain(probe_at).min() {
                    None => {
                        waiting.wake.notified().await;
                        true
                    }
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => false,
                        () = waiting.wake.notified() => true,
                    },
                };
                let now = Instant::now();
                if woken_by_write {
                    if waiting.early.load(Ordering::Acquire) {
                        // Two turns of the scheduler: the connection's driver, woken by the write before this
                        // task, sends the data first, so the copies go in packets of their own.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                    } else {
                        probe_delay = probe_delay.or_else(|| Some(timing.delay(path())));
                        continue;
                    }
                } else if let (true, Some(_)) = (again.is_none_or(|at| at > now), probe_delay) {
                    // The probe's time (not the copies'): looked at again, as the path may have lost packets since
                    // (a connection writing more often than the delay never gets here otherwise).
                    let delay = timing.delay(path());
                    probe_delay = Some(delay);
                    if waiting.last_write() + delay > now {
                        continue; // written again since: the probe is due after that write
                    }
                }
                // Copies of a write from here on need another wake-up (this call may not see them). Cleared first: a
                // write with copies between the two would otherwise find `early` set, wake nobody, and leave
                // `pending` set for good.
                waiting.early.store(false, Ordering::Release);
                // A write from here on schedules the next probe. One that came before saw a probe pending and did not
                // wake this task: its time is read after the swap (which takes its `pending`), so the sender sees it.
                waiting.pending.swap(false, Ordering::AcqRel);
                probe_delay = None;
                again = match send(waiting.last_write()) {
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
        if self.enabled {
            self.note_write();
            if !self.pending.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
    }

    /// Reliable data was just written and copies of it wait ([`Probed`]): the sender is called as soon as the
    /// transport has had its turn to send the data, not `delay` later (a copy elicits the ACK a probe would).
    pub fn sent_with_copies(&self) {
        if self.enabled {
            self.note_write();
            self.pending.store(true, Ordering::Release);
            if !self.early.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
    }

    fn note_write(&self) {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_write.store(micros, Ordering::Release);
    }

    fn last_write(&self) -> Instant {
        self.epoch + Duration::from_micros(self.last_write.load(Ordering::Acquire))
    }
}
#[cfg(test)]
mod tests;
