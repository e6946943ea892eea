//! A connection's room streams: one server-opened unidirectional stream per joined room, fed from a bounded
//! [`StreamOutbox`]. The hub enqueues into the outbox under the room's lock; [`Outbox::flush`], called after the
//! lock is released, writes what is queued straight to the stream when nothing is in the way (one task hand-off
//! less on every message: ~20 µs on this VM) and otherwise leaves it to the stream's pump task. A room whose outbox
//! overflows has its stream reset with `SlowConsumer` and the connection is told (it pushes `Kicked` so the client
//! rejoins); the rest of the connection is untouched.
//!
//! A stream joined with `redundant` (and granted) also numbers its frames (positions: Open is 0) and queues each
//! live frame for datagram copies in the connection's [`CopyQueue`], sent by the connection's probe timer; the
//! [`RoomFrame::Copies`] frame after Open tells the client the stream's slot.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use quiver_proto::{
    copies::{CopyQueue, CopyTarget},
    ErrorCode, FrameCodec, RoomFrame,
};
use quiver_transport::TailProbe;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    lock,
    mailbox::Mailbox,
    wire::{WireError, WireSend as SendStream},
};
use crate::{
    hub::Outbox,
    stats::{bump, ServerStats},
};

/// A room stream that fell behind: the room, and the outbox whose stream was reset (to tell it from a newer
/// subscription to the same room).
pub(crate) type Kicked = (Arc<str>, Arc<StreamOutbox>);

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// An empty queue with room, swapped with `frames` when a writer takes them, so that writing a message does
    /// not cost an allocation per subscriber.
    spare: VecDeque<Bytes>,
    /// Live bytes queued since the pump or a flush last took the queue.
    bytes: usize,
    /// Live bytes the pump took and has not written yet: they still count toward the bound (the stream is that
    /// far behind as much as if they were queued).
    in_flight: usize,
    /// Left: finish the stream once the queue is written.
    closed: bool,
    /// The room stream, parked here while nobody writes to it; taken by whoever writes (a flush or the pump).
    send: Option<SendStream>,
    /// Live frames held behind a paged replay (`Outbox::hold`), and their bytes.
    held: Option<VecDeque<Bytes>>,
    held_bytes: usize,
    /// Bytes of catch-up frames ([`Outbox::push_catch_up`]) queued since the queue was last written out: at most
    /// [`CATCH_UP_BOUNDS`] times the live bound.
    catch_up: usize,
    /// The pump is gone (the stream ended): nothing queued will be written any more.
    gone: bool,
    /// Position of the next frame to enter `frames` (frames before it on the stream).
    position: u64,
    /// The pump, watching the parked stream for the client's stop, found it taken by a flush: the flush wakes it
    /// when it puts the stream back (a stop that came meanwhile used the pump's wake-up up, and a flush that wrote
    /// everything wakes nobody otherwise).
    stop_watch_waits: bool,
}

impl Queue {
    /// Everything queued was handed to the stream: nothing queued, and nobody holding frames to write (the stream
    /// is parked here). Until 2026-12-06 a paged replay went on once the pump had *taken* a page, so a reader that
    /// took nothing held two pages per room (one in the pump's hands, the next queued), neither counted against
    /// `room_queue_bytes` (a review's find).
    fn written_out(&self) -> bool {
        self.frames.is_empty() && self.send.is_some()
    }

    /// The position before which every frame has left the queue (written, or in a writer's hands).
    fn written_before(&self) -> u64 {
        self.position - self.frames.len() as u64
    }

    /// Every queued frame, leaving an empty queue with room in its place.
    fn take_frames(&mut self) -> VecDeque<Bytes> {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.frames, spare)
    }

    /// What a writer took and could not write (older than anything queued since: it goes first); the emptied
    /// queue becomes the spare.
    fn put_back(&mut self, mut rest: VecDeque<Bytes>) {
        while let Some(frame) = rest.pop_back() {
            self.frames.push_front(frame);
        }
        if self.spare.capacity() == 0 {
            self.spare = rest;
        }
    }
}

/// Where a redundant stream's copies go: its slot on the connection, the connection's copy queue, and the
/// encoded `Copies` frame that follows Open.
#[derive(Debug)]
pub(crate) struct OutboxCopies {
    slot: u64,
    queue: Arc<Mutex<CopyQueue>>,
    announce: Bytes,
}

impl OutboxCopies {
    /// Copies for the stream with `slot`, queued on `queue`.
    pub(crate) fn new(slot: u64, queue: Arc<Mutex<CopyQueue>>) -> Option<OutboxCopies> {
        let announce = FrameCodec::new(usize::MAX).encode_to_vec(&RoomFrame::Copies { slot }).ok()?.freeze();
        Some(OutboxCopies { slot, queue, announce })
    }
}

impl Drop for OutboxCopies {
    /// The stream's subscription is over (left, kicked, its connection closing): its frames' copies go too, rather
    /// than holding places in the connection's queue that other rooms' copies need (held ones would never be due).
    fn drop(&mut self) {
        lock(&self.queue).forget(CopyTarget::Room(self.slot));
    }
}

/// Frames waiting for one room stream, at most `bound` live bytes.
#[derive(Debug)]
pub(crate) struct StreamOutbox {
    room: Arc<str>,
    copies: Option<OutboxCopies>,
    queue: Mutex<Queue>,
    probe: Arc<TailProbe>,
    /// Wakes the pump: a backlog to write, an overflow, or the room was left.
    wake: Notify,
    /// Wakes a paged replay: the queue was written out (or the stream is gone).
    drained: Notify,
    overflow: CancellationToken,
    /// Why it overflowed when not for a slow reader (an [`Overflow`] as a byte; [`Overflow::SlowReader`] until set,
    /// the first cause set wins): told the client, and counted, apart from a slow reader.
    pub(crate) cause: std::sync::atomic::AtomicU8,
    /// Cancelled when the room is left: the pump then has [`LEFT_STREAM_GRACE`] to finish the stream.
    left: CancellationToken,
    bound: usize,
    /// `outbox_bytes` (bytes queued, all outboxes) and `room_deliveries`.
    stats: Arc<ServerStats>,
    /// Completes when the client stops a WebSocket room stream; taken by the pump. (A QUIC stream's stop is
    /// watched on the parked stream: [`pump`].)
    peer_stopped: Mutex<Option<StopSignal>>,
}

/// [`SendStream::stop_signal`].
struct StopSignal(std::pin::Pin<Box<dyn Future<Output = ErrorCode> + Send>>);

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopSignal")
    }
}

impl StreamOutbox {
    pub(crate) fn new(
        room: Arc<str>,
        send: SendStream,
        bound: usize,
        (probe, copies): (Arc<TailProbe>, Option<OutboxCopies>),
        stats: Arc<ServerStats>,
    ) -> Arc<StreamOutbox> {
        let peer_stopped = Mutex::new(Some(StopSignal(send.stop_signal())));
        Arc::new(StreamOutbox {
            stats,
            room,
            copies,
            peer_stopped,
            queue: Mutex::new(Queue { send: Some(send), ..Queue::default() }),
            probe,
            wake: Notify::new(),
            drained: Notify::new(),
            overflow: CancellationToken::new(),
            cause: std::sync::atomic::AtomicU8::new(Overflow::SlowReader as u8),
            left: CancellationToken::new(),
            bound,
        })
    }

    /// Frames were written, every one before position `written`: the tail probe, or (a redundant stream) their
    /// first copies, right after the write's packet (frames not written yet keep theirs held). A write with no copy
    /// released (its frames too large for a datagram, or held behind a paged replay) is probed on the probe's own
    /// schedule: the copies' early round would otherwise send the probe at once, or, the write not on the wire
    /// yet, take it for acknowledged and send none.
    fn probed(&self, written: u64) {
        let released = self.copies.as_ref().map_or(0, |copies| {
            let now = std::time::Instant::now();
            lock(&copies.queue).release(CopyTarget::Room(copies.slot), written, now)
        });
        if released > 0 {
            self.probe.sent_with_copies();
        } else {
            self.probe.sent();
        }
    }

    /// [`Outbox::push`], or (`catching_up`) [`Outbox::push_catch_up`]: outside the live bound unless held.
    fn enqueue(&self, frame: Bytes, catching_up: bool) -> bool {
        if self.overflow.is_cancelled() {
            return false;
        }
        let mut queue = lock(&self.queue);
        if queue.closed {
            return true; // left already; not an overflow
        }
        let bounded = !catching_up || queue.held.is_some();
        if !bounded && queue.written_out() {
            queue.catch_up = 0; // everything before was handed to the transport: a reader that reads
        }
        let over = match bounded {
            true => queue.bytes + queue.in_flight + queue.held_bytes + frame.len() > self.bound,
            // (A member that reads nothing while most of the room comes by gap fills, Pub/Sub losing messages
            // again and again, is still found slow.)
            false => queue.catch_up + frame.len() > self.bound.saturating_mul(CATCH_UP_BOUNDS),
        };
        if over {
            drop(queue);
            self.overflow.cancel();
            return false;
        }
        if !bounded {
            queue.catch_up += frame.len();
        }
        let queue = &mut *queue;
        ServerStats::add(&self.stats.outbox_bytes, frame.len() as i64);
        bump(&self.stats.room_deliveries);
        match &mut queue.held {
            // Held behind a paged replay: its position is known only once the replay is queued; no copies.
            Some(held) => {
                queue.held_bytes += frame.len();
                held.push_back(frame);
            }
            None => {
                // (No copies of catch-up frames, as of a replay's: a fill's many would push other rooms' copies
                // out of the connection's copy queue.)
                if let Some(copies) = self.copies.as_ref().filter(|_| bounded) {
                    // Held until written: a copy never leaves before its frame, nor in the frame's packet.
                    lock(&copies.queue).push(CopyTarget::Room(copies.slot), queue.position, frame.clone(), None);
                }
                queue.position += 1;
                if bounded {
                    queue.bytes += frame.len();
                }
                queue.frames.push_back(frame);
            }
        }
        true
    }

    /// No more frames: the pump finishes the stream once the queue is written.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.left.cancel();
        self.wake.notify_one();
        // A paged replay still under way stops (`drained` answers false now).
        self.drained.notify_waiters();
    }

    /// Tells a waiting replay when everything queued was handed to the stream, and counts catch-up frames afresh
    /// then: a writer that put the stream back with nothing queued (until 2026-12-08 only a catch-up push that found
    /// the stream parked did, so gap fills that each came while the pump wrote added up, over any length of time,
    /// to a reset of a reader that kept up: a review's find).
    fn notify_if_drained(&self, queue: &mut Queue) {
        if queue.written_out() {
            queue.catch_up = 0;
        }
        if queue.written_out() || queue.gone {
            self.drained.notify_waiters();
        }
    }
}

/// Catch-up frames a queue may hold at once, in multiples of its live bound (`room_queue_bytes`): 4 MiB at the
/// default 256 KiB. A larger gap fill is a slow consumer's reset, as any gap over the live bound was before
/// 2026-12-06.
const CATCH_UP_BOUNDS: usize = 16;

/// Takes `bytes` off the queued-bytes gauge (written to the stream, or dropped with it).
fn dequeued(stats: &ServerStats, bytes: usize) {
    ServerStats::add(&stats.outbox_bytes, -(bytes as i64));
}

impl Drop for StreamOutbox {
    fn drop(&mut self) {
        let queue = lock(&self.queue);
        let left: usize = queue.frames.iter().chain(queue.held.iter().flatten()).map(Bytes::len).sum();
        dequeued(&self.stats, left);
        // An outbox goes with its room's member, under the room's lock: its stream must have gone with its pump.
        if queue.send.is_some() && !std::thread::panicking() {
            crate::hub::assert_unlocked("a room stream's drop");
        }
    }
}

/// Marks the outbox gone when its pump ends, however it ends, and lets its stream go (off every lock: quinn's
/// stream takes its connection's lock as it is dropped). A stream left parked in the outbox went with the outbox,
/// dropped with the room's member under the room's lock (a connection lost while its room was quiet, then closed: a
/// review's find), where every post, join and leave of the room waited on another connection's quinn lock.
struct PumpGone(Arc<StreamOutbox>);

impl Drop for PumpGone {
    /// The stream parked here is reset if frames were left unwritten (the first maybe written in part by a flush):
    /// dropped, quinn finishes it, and a finish inside a frame reads as a protocol violation to the client, which
    /// could hide the close that follows (as the pump's own stop resets; until 2026-12-08 this drop finished it).
    fn drop(&mut self) {
        let (send, unwritten) = {
            let mut queue = lock(&self.0.queue);
            queue.gone = true;
            (queue.send.take(), !queue.frames.is_empty())
        };
        self.0.drained.notify_waiters();
        if let (Some(mut send), true) = (send, unwritten) {
            send.reset(ErrorCode::NoError);
        }
    }
}

impl Outbox for StreamOutbox {
    fn push(&self, frame: Bytes) -> bool {
        self.enqueue(frame, false)
    }

    fn push_catch_up(&self, frame: Bytes) -> bool {
        self.enqueue(frame, true)
    }

    fn kick(&self) {
        self.overflow_for(Overflow::RoomReset);
    }

    fn kick_replay(&self) {
        self.overflow_for(Overflow::ReplayCutShort);
    }

    fn push_replay(&self, frame: Bytes) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return; // left: nothing more is written
        }
        ServerStats::add(&self.stats.outbox_bytes, frame.len() as i64);
        queue.frames.push_back(frame);
        queue.position += 1;
        // The first frame is Open; a redundant stream says its slot right after it.
        if let (1, Some(copies)) = (queue.position, &self.copies) {
            ServerStats::add(&self.stats.outbox_bytes, copies.announce.len() as i64);
            queue.frames.push_back(copies.announce.clone());
            queue.position += 1;
        }
    }

    fn hold(&self) {
        lock(&self.queue).held.get_or_insert_with(VecDeque::new);
    }

    fn release_hold(&self) {
        let mut queue = lock(&self.queue);
        if let Some(mut held) = queue.held.take() {
            queue.bytes += std::mem::take(&mut queue.held_bytes);
            queue.position += held.len() as u64;
            queue.frames.append(&mut held);
        }
    }

    fn drained(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let queue = lock(&self.queue);
                    if queue.gone || queue.closed || self.overflow.is_cancelled() {
                        return false;
                    }
                    if queue.written_out() {
                        return true;
                    }
                }
                notified.await;
            }
        })
    }

    fn flush(&self) {
        crate::hub::assert_unlocked("a room stream's flush");
        if self.overflow.is_cancelled() {
            self.wake.notify_one();
            return;
        }
        // Loops until the queue is empty or the stream cannot take more now: frames pushed by another flush while
        // this one held the stream are written here, since that flush found no stream to write to.
        loop {
            let (mut send, frames, counted) = {
                let mut queue = lock(&self.queue);
                if queue.frames.is_empty() {
                    self.notify_if_drained(&mut queue);
                    return;
                }
                let Some(send) = queue.send.take() else {
                    // The pump (or another flush) is writing; the pump takes what is queued next.
                    drop(queue);
                    self.wake.notify_one();
                    return;
                };
                // The live bytes taken (replay frames are not counted against the bound).
                let counted = std::mem::take(&mut queue.bytes);
                (send, queue.take_frames(), counted)
            };
            let (written, rest) = write_now(&mut send, frames);
            dequeued(&self.stats, written);
            let mut queue = lock(&self.queue);
            if queue.gone {
                // The pump ended while this flush held the stream: nobody writes it any more, and parked it would go
                // with the room's member, under the room's lock (`PumpGone`). What it could not write goes too, out
                // of the gauge (until 2026-12-07 it stayed counted for good). Reset if anything is left unwritten,
                // as `PumpGone` does: dropped, the stream is finished, maybe inside a frame (until 2026-12-08).
                let unwritten = !rest.is_empty() || !queue.frames.is_empty();
                drop(queue);
                if unwritten {
                    send.reset(ErrorCode::NoError);
                }
                drop(send);
                dequeued(&self.stats, rest.iter().map(Bytes::len).sum());
                return;
            }
            queue.send = Some(send);
            let pending = !rest.is_empty() || std::mem::take(&mut queue.stop_watch_waits);
            // Queued again, so counted again (as far as they were live frames: the unwritten are the last ones):
            // until the pump takes the stream, every push flushes, and a count left at 0 here would let the queue
            // grow past its bound a frame at a time.
            queue.bytes += rest.iter().map(Bytes::len).sum::<usize>().min(counted);
            queue.put_back(rest);
            let (written_before, closed) = (queue.written_before(), queue.closed);
            let leaving = pending || self.overflow.is_cancelled() || closed;
            if leaving {
                // The stream is parked again and this flush returns without looking at the queue once more (where
                // it tells a waiting paged replay): tell it here, or it waits for the next event.
                self.notify_if_drained(&mut queue);
            }
            drop(queue);
            if written > 0 {
                self.probed(written_before);
            }
            if leaving {
                self.wake.notify_one();
                return;
            }
        }
    }
}

/// Writes `frames` in order, each with one poll and no waiting: quinn's `write` takes what fits now or returns
/// Pending having taken nothing. The no-op waker is safe because nothing waits on this stream meanwhile (the pump
/// finds no stream to write to); a Pending or short write leaves the rest to the pump, which polls with its own
/// waker. Returns how many bytes were written, and what was not.
fn write_now(send: &mut SendStream, mut frames: VecDeque<Bytes>) -> (usize, VecDeque<Bytes>) {
    let mut written_any = 0;
    while let Some(frame) = frames.pop_front() {
        let written = {
            let mut write = std::pin::pin!(send.write(&frame));
            match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(n)) => n,
                // Errors (stream stopped, connection lost) are met again by the pump, which ends the stream.
                Poll::Ready(Err(_)) | Poll::Pending => 0,
            }
        };
        written_any += written;
        if written < frame.len() {
            frames.push_front(frame.slice(written..));
            break;
        }
    }
    (written_any, frames)
}

/// How long a left room's stream may take to write what was queued before it is reset ([`pump`]).
pub(crate) const LEFT_STREAM_GRACE: Duration = Duration::from_secs(5);

mod pump;
pub(crate) use pump::{pump, Overflow};

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;
