//! A room stream's bytes on their way from the read loop to the client's reader: queued without waiting (an unread
//! room must not hold the others up), bounded by bytes per stream ([`INBOUND_STREAM_BYTES`]) and for all of them
//! ([`INBOUND_CONNECTION_BYTES`]), and discarded when the stream is reset, as QUIC discards a reset stream's unread
//! data: a reader that stopped reading (its room reset as a slow consumer and rejoined on a new stream) holds
//! nothing.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use quiver_proto::ErrorCode;
use tokio::sync::Notify;

use super::{shared::Inbound, INBOUND_CONNECTION_BYTES, INBOUND_STREAM_BYTES};

/// One room stream's queue, shared by the read loop (writing) and the stream's reader.
#[derive(Debug)]
pub(super) struct RoomQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    /// Bytes waiting in every room stream of the connection (each queue changes it under its own lock, by its own
    /// bytes only, so it is always the sum of theirs).
    total: Arc<AtomicUsize>,
    /// The stream's id on the wire (for a stop).
    id: u64,
    /// Room streams of the connection whose queue is alive (handed out and not dropped by both the read loop and the
    /// reader): the bound on streams open at once counts these, not only those whose end has not come.
    live: Arc<AtomicUsize>,
}

impl Drop for RoomQueue {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Inbound>,
    bytes: usize,
    reader_gone: bool,
    writer_gone: bool,
}

/// What [`RoomQueue::data`] did with the bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    Queued,
    /// Nobody reads the stream any more: dropped.
    Dropped,
    /// The stream's bound would be passed: the stream is reset (`SlowConsumer`), what waited discarded.
    Overflow,
    /// The connection's bound would be passed: nothing was done (the caller resets the stream holding the most).
    ConnectionFull,
}

/// The least a chunk counts against [`INBOUND_STREAM_BYTES`] and [`INBOUND_CONNECTION_BYTES`]: about its place in
/// the queue (the item, its buffer's header), so that a peer sending tiny chunks cannot make the queue hold many
/// times the bound in places (a chunk of a byte counted one).
const CHUNK_COST: usize = 64;

/// What `bytes` counts against the bounds: its length, or [`CHUNK_COST`] if that is more.
fn charged(bytes: &Bytes) -> usize {
    bytes.len().max(CHUNK_COST)
}

impl RoomQueue {
    pub(super) fn new(total: Arc<AtomicUsize>, live: Arc<AtomicUsize>, id: u64) -> Arc<RoomQueue> {
        live.fetch_add(1, Relaxed);
        Arc::new(RoomQueue { state: Mutex::default(), ready: Notify::new(), total, id, live })
    }

    /// The stream's id on the wire.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what waits (its bytes no longer count).
    fn discard(&self, state: &mut QueueState) {
        state.items.clear();
        self.total.fetch_sub(std::mem::take(&mut state.bytes), Relaxed);
    }

    pub(super) fn data(&self, bytes: Bytes) -> Pushed {
        let mut state = self.lock();
        if state.reader_gone {
            return Pushed::Dropped;
        }
        if bytes.is_empty() {
            return Pushed::Queued; // nothing to read: not queued (an empty chunk cost a place and counted nothing)
        }
        let len = charged(&bytes);
        if state.bytes + len <= INBOUND_STREAM_BYTES && self.total.load(Relaxed) + len > INBOUND_CONNECTION_BYTES {
            return Pushed::ConnectionFull;
        }
        if state.bytes + len > INBOUND_STREAM_BYTES {
            self.discard(&mut state);
            state.items.push_back(Inbound::Reset(ErrorCode::SlowConsumer));
            drop(state);
            self.ready.notify_one();
            return Pushed::Overflow;
        }
        state.bytes += len;
        self.total.fetch_add(len, Relaxed);
        state.items.push_back(Inbound::Data(bytes));
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Bytes waiting for the reader.
    pub(super) fn queued(&self) -> usize {
        self.lock().bytes
    }

    /// The stream ended: finished (what waits is still read) or reset (what waits is discarded).
    pub(super) fn end(&self, end: Inbound) {
        let mut state = self.lock();
        if matches!(end, Inbound::Reset(_)) {
            self.discard(&mut state);
        }
        state.items.push_back(end);
        drop(state);
        self.ready.notify_one();
    }

    /// The read loop is gone (the connection ended): the reader gets `None` once it took what waits.
    pub(super) fn writer_gone(&self) {
        self.lock().writer_gone = true;
        self.ready.notify_one();
    }

    /// The reader stopped the stream (or is gone): it no longer counts among the streams open at once.
    pub(super) fn is_reader_gone(&self) -> bool {
        self.lock().reader_gone
    }

    /// The reader is gone: what waits, and what comes, is dropped.
    pub(super) fn reader_gone(&self) {
        let mut state = self.lock();
        state.reader_gone = true;
        self.discard(&mut state);
    }

    /// The next item; `None` once the read loop is gone and nothing waits.
    pub(super) async fn next(&self) -> Option<Inbound> {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(item) = state.items.pop_front() {
                    if let Inbound::Data(bytes) = &item {
                        state.bytes -= charged(bytes);
                        self.total.fetch_sub(charged(bytes), Relaxed);
                    }
                    return Some(item);
                }
                if state.writer_gone {
                    return None;
                }
            }
            ready.await;
        }
    }
}
