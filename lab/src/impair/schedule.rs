//! The delivery side shared by the emulator backends (UDP relay, netns TUN link): a packet that survives its
//! [`Link`] is scheduled for its delivery time (twice if duplicated), and one scheduler thread sends every packet
//! when its time comes from a single time-ordered heap. It sleeps in a timed channel wait (tens of µs of
//! precision here, against ~1 ms for async timers), not one task per packet.

use std::{
    collections::BinaryHeap,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use super::{Fate, Link};

/// How long the scheduler sleeps at most between looks at its stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// A packet waiting for its delivery time, and where it goes.
#[derive(Debug)]
pub(crate) struct Scheduled<T> {
    at: Instant,
    order: u64,
    packet: Vec<u8>,
    out: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    /// Reversed: the heap's top is the earliest delivery (ties in arrival order).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// Applies `link` to `packet`, arrived now, and schedules what survives for `out()`. `order` breaks ties between
/// equal delivery times (callers use disjoint ranges per direction). False once the scheduler is gone.
pub(crate) fn admit<T>(
    link: &mut Link,
    epoch: Instant,
    packet: &[u8],
    out: impl Fn() -> T,
    schedule: &mpsc::Sender<Scheduled<T>>,
    order: &mut u64,
) -> bool {
    let now_us = Instant::now().saturating_duration_since(epoch).as_micros() as u64;
    if let Fate::Deliver { at_us, duplicate_at_us, .. } = link.on_packet(now_us, packet.len()) {
        for at in std::iter::once(at_us).chain(duplicate_at_us) {
            *order += 1;
            let item =
                Scheduled { at: epoch + Duration::from_micros(at), order: *order, packet: packet.to_vec(), out: out() };
            if schedule.send(item).is_err() {
                return false;
            }
        }
    }
    true
}

/// The scheduler: hands every packet to `send` when its time comes, until `stop` (or, once every sender is gone,
/// until the heap is empty).
pub(crate) fn deliver<T>(scheduled: &mpsc::Receiver<Scheduled<T>>, stop: &AtomicBool, mut send: impl FnMut(&T, &[u8])) {
    let mut heap: BinaryHeap<Scheduled<T>> = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while heap.peek().is_some_and(|next| next.at <= now) {
            let Some(item) = heap.pop() else { break };
            send(&item.out, &item.packet);
        }
        let wait = heap.peek().map_or(POLL, |next| next.at.saturating_duration_since(Instant::now()).min(POLL));
        match scheduled.recv_timeout(wait) {
            Ok(item) => heap.push(item),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if heap.is_empty() {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
}
