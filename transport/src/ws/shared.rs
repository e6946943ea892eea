//! The state both of a WebSocket connection's tasks and its handles share: what waits to be written (per stream,
//! and the datagram lane), the writer's schedule, and the close.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use quiver_proto::{ws::WsMessage, ErrorCode};
use tokio::sync::{mpsc, Notify};

use super::{Handle, Role, WsConfig, WsError, MAX_CHUNK};

/// How a stream ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum End {
    Finish,
    Reset(ErrorCode),
}

#[derive(Debug, Default)]
pub(super) struct OutStream {
    pub(super) queue: VecDeque<Bytes>,
    pub(super) bytes: usize,
    pub(super) end: Option<End>,
    /// A write waiting for room in the window.
    pub(super) waker: Option<Waker>,
    /// Its id on the wire, given when its first message goes (so ids appear in increasing order).
    pub(super) wire_id: Option<u64>,
    /// The peer stopped it (kind 6) with this code: writes fail with it.
    pub(super) stopped: Option<ErrorCode>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Streams with something to write or an end to send; 0 is the control stream.
    pub(super) streams: HashMap<u64, OutStream>,
    /// Room streams waiting for their turn, each once.
    pub(super) ready: VecDeque<u64>,
    pub(super) datagrams: VecDeque<Bytes>,
    pub(super) datagram_bytes: usize,
    /// Ticks the lane let go of before the socket took them: replaced by their channel's newer tick, and ticks
    /// older than the one of their channel waiting (dropped). The sender counted each as handed over.
    pub(super) lane_superseded: (u64, u64),
    /// Datagrams go next when both wait (they alternate with stream chunks).
    pub(super) datagram_turn: bool,
    /// A room stream's chunk goes next when one waits (after a control chunk).
    pub(super) rooms_turn: bool,
    /// Bytes waiting on room streams (not the control stream), at most [`WsConfig::connection_window`].
    pub(super) room_bytes: usize,
    /// Room stream writes waiting for `room_bytes` to fall below the connection window.
    pub(super) blocked: Vec<Waker>,
    pub(super) next_stream: u64,
    /// The next stream id on the wire, and which stream each id on the wire is (for the peer's stops).
    pub(super) next_wire_id: u64,
    pub(super) wire_ids: HashMap<u64, u64>,
    /// Stop messages to send (the client: streams it can take no more of).
    pub(super) stops: VecDeque<(u64, ErrorCode)>,
    pub(super) control_taken: bool,
    /// A close asked for, not yet written.
    pub(super) closing: Option<(ErrorCode, String)>,
    /// The connection is over, and why.
    pub(super) closed: Option<(ErrorCode, String)>,
    /// The stream whose chunk the writer took and has not finished sending: what `WsSend::stopped` waits for
    /// besides an empty queue (the queue empties when the chunk is taken, before it reaches the socket).
    pub(super) writing: Option<u64>,
    /// This end closed the connection for what the peer sent (a text message, a message too large, a malformed
    /// one): the code, for the owner to count as a refusal (it sees only that the connection closed).
    pub(super) refused: Option<ErrorCode>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) role: Role,
    pub(super) config: WsConfig,
    pub(super) remote: SocketAddr,
    pub(super) state: Mutex<State>,
    /// Something to write (or a close).
    pub(super) wake_writer: Notify,
    /// Bytes were written, room was made, or the connection closed.
    pub(super) changed: Notify,
    /// A stream was stopped by the peer, or the connection is closing or closed: what room streams' stop signals
    /// and the waits for the close listen to. Not woken by each message written (with `changed`, every room
    /// stream's stop signal was polled again after every message: a client in 64 rooms sending Pings made the
    /// server poll 65 tasks per reply).
    pub(super) ended: Notify,
    pub(super) control_in: tokio::sync::Mutex<Option<mpsc::Receiver<Inbound>>>,
    /// Bytes the control stream may still receive before its reader takes some ([`super::WsConfig::control_window`]):
    /// taken by the read loop for each message it queues, given back as the reader takes them.
    pub(super) control_room: tokio::sync::Semaphore,
    /// Datagrams received and not read yet (latest wins: the oldest dropped past its bound).
    pub(super) datagrams_in: super::datagrams_in::DatagramsIn,
    /// Held by the one reader of `datagrams_in` at a time.
    pub(super) datagram_reader: tokio::sync::Mutex<()>,
    /// Room streams the server opened, until accepted (no handle inside: queued streams keep nothing alive).
    pub(super) streams_in: tokio::sync::Mutex<mpsc::UnboundedReceiver<PendingStream>>,
    /// Messages received so far (pings and pongs too): a peer that sends nothing is dead.
    pub(super) received: std::sync::atomic::AtomicU64,
    /// Room streams the server may have open at once ([`super::WsSession::set_max_inbound_streams`]).
    pub(super) max_streams_in: std::sync::atomic::AtomicUsize,
    /// The handles' shared part, for streams the reader opens (not kept alive by the reader).
    pub(super) handle: std::sync::OnceLock<std::sync::Weak<Handle>>,
}

impl State {
    /// Drops every stream's and the datagram lane's waiting bytes, and wakes every writer (its next write fails).
    fn discard_unwritten(&mut self) {
        for stream in self.streams.values_mut() {
            stream.queue.clear();
            stream.bytes = 0;
            if let Some(waker) = stream.waker.take() {
                waker.wake();
            }
        }
        self.room_bytes = 0;
        self.wake_blocked();
        self.datagrams.clear();
        self.datagram_bytes = 0;
    }

    /// `freed` bytes of room stream `id` are gone (written, reset or stopped): blocked room writes may go on.
    pub(super) fn room_freed(&mut self, id: u64, freed: usize) {
        if id != 0 && freed > 0 {
            self.room_bytes = self.room_bytes.saturating_sub(freed);
            self.wake_blocked();
        }
    }

    pub(super) fn wake_blocked(&mut self) {
        for waker in self.blocked.drain(..) {
            waker.wake();
        }
    }
}

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn closed_error(&self) -> WsError {
        let state = lock(&self.state);
        let (code, reason) = state.closed.clone().or_else(|| state.closing.clone()).unwrap_or_else(gone);
        WsError::Closed(code, reason)
    }

    /// Ends the connection with `code` and `reason` (the first close wins); the writer tells the peer.
    pub(super) fn close(&self, code: ErrorCode, reason: &str) {
        self.close_as(code, reason, false);
    }

    fn close_as(&self, code: ErrorCode, reason: &str, refused: bool) {
        let mut state = lock(&self.state);
        if state.closed.is_some() || state.closing.is_some() {
            return;
        }
        if refused {
            state.refused = Some(code);
        }
        let reason = quiver_proto::truncate_utf8(reason, quiver_proto::ws::MAX_REASON).to_string();
        state.closing = Some((code, reason));
        // Like QUIC's close: what was not written yet is not written.
        state.discard_unwritten();
        drop(state);
        self.wake_writer.notify_one();
        self.changed.notify_waiters();
        self.ended.notify_waiters();
    }

    /// [`Shared::close`] for a breach by the peer, noted for [`super::WsSession::refused`] (only when this close is
    /// the one that counts: the first).
    pub(super) fn refuse(&self, code: ErrorCode, reason: &str) {
        self.close_as(code, reason, true);
    }

    /// The connection is over (after the close was written, or the peer's arrived, or the socket failed).
    pub(super) fn finished(&self, code: ErrorCode, reason: String) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(state.closing.clone().unwrap_or((code, reason)));
        }
        // Nothing will be written any more: free it.
        state.discard_unwritten();
        state.ready.clear();
        drop(state);
        self.wake_writer.notify_one();
        self.changed.notify_waiters();
        self.ended.notify_waiters();
    }

    pub(super) fn is_closed(&self) -> bool {
        let state = lock(&self.state);
        state.closed.is_some() || state.closing.is_some()
    }

    /// Waits until `check` returns something (checked again whenever something changed).
    pub(super) async fn wait_for<T>(&self, check: impl FnMut(&mut State) -> Option<T>) -> T {
        self.wait_on(&self.changed, check).await
    }

    /// Waits until `check`, about stops and the close only, returns something (checked again whenever a stream
    /// was stopped or the connection closes: [`Shared::ended`]).
    pub(super) async fn wait_for_end<T>(&self, check: impl FnMut(&mut State) -> Option<T>) -> T {
        self.wait_on(&self.ended, check).await
    }

    async fn wait_on<T>(&self, notify: &Notify, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let changed = notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(done) = check(&mut lock(&self.state)) {
                return done;
            }
            changed.await;
        }
    }

    pub(super) fn poll_write(&self, id: u64, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize, WsError>> {
        let mut state = lock(&self.state);
        if state.closed.is_some() || state.closing.is_some() {
            drop(state);
            return Poll::Ready(Err(self.closed_error()));
        }
        let window = self.config.stream_window;
        let connection_room = match id {
            0 => usize::MAX,
            _ => self.config.connection_window.saturating_sub(state.room_bytes),
        };
        let stream = match id {
            0 => state.streams.entry(0).or_default(),
            _ => match state.streams.get_mut(&id) {
                Some(stream) => stream,
                None => return Poll::Ready(Err(WsError::Unsupported("write after the stream's end"))),
            },
        };
        if let Some(code) = stream.stopped {
            return Poll::Ready(Err(WsError::Stopped(code)));
        }
        if stream.end.is_some() {
            return Poll::Ready(Err(WsError::Unsupported("write after the stream's end")));
        }
        if buf.is_empty() {
            // Nothing to queue: a stream queued with nothing would be given its wire id before streams that write
            // first, and its bytes would then go out under an id lower than theirs.
            return Poll::Ready(Ok(0));
        }
        let room = window.saturating_sub(stream.bytes);
        if room == 0 {
            stream.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if connection_room == 0 {
            // One waker per waiting task (a task polled again while it waits is not added twice).
            if !state.blocked.iter().any(|waker| waker.will_wake(cx.waker())) {
                state.blocked.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let Some(stream) = state.streams.get_mut(&id) else {
            return Poll::Ready(Err(WsError::Unsupported("write after the stream's end")));
        };
        let taken = buf.len().min(room).min(connection_room);
        let was_idle = stream.queue.is_empty();
        for chunk in buf[..taken].chunks(MAX_CHUNK) {
            stream.queue.push_back(Bytes::copy_from_slice(chunk));
        }
        stream.bytes += taken;
        if id != 0 {
            state.room_bytes += taken;
        }
        if id != 0 && was_idle {
            state.ready.push_back(id);
        }
        drop(state);
        self.wake_writer.notify_one();
        Poll::Ready(Ok(taken))
    }

    pub(super) fn end(&self, id: u64, end: End) {
        let mut state = lock(&self.state);
        let stream = match id {
            0 => state.streams.entry(0).or_default(),
            _ => match state.streams.get_mut(&id) {
                Some(stream) => stream,
                None => return,
            },
        };
        if stream.end.is_some() {
            return;
        }
        if let Some(code) = stream.stopped {
            // The peer wants nothing more of it: its end is a reset with the peer's code, as QUIC answers a
            // STOP_SENDING with a RESET_STREAM. The peer counts the stream open until its end comes (forgotten
            // without a word, every room a client stopped stayed open at its end, until it hit its bound on open
            // streams and closed the connection).
            stream.end = Some(End::Reset(code));
            state.ready.push_back(id);
            drop(state);
            self.wake_writer.notify_one();
            self.changed.notify_waiters();
            return;
        }
        // In `ready` already when bytes wait (decided before a reset drops them: it was queued twice).
        let idle = stream.queue.is_empty();
        let mut freed = 0;
        if let End::Reset(_) = end {
            stream.queue.clear();
            freed = std::mem::take(&mut stream.bytes);
        }
        stream.end = Some(end);
        state.room_freed(id, freed);
        // The control stream's end goes with the close; a room stream's is sent after its bytes.
        if id != 0 && idle {
            state.ready.push_back(id);
        }
        drop(state);
        self.wake_writer.notify_one();
        self.changed.notify_waiters();
    }

    /// What the writer sends next.
    pub(super) fn next_outbound(&self) -> Outbound {
        let mut state = lock(&self.state);
        let next = self.pick_outbound(&mut state);
        // A stream's chunk taken is in the writer's hands until it is sent: not handed to the socket yet
        // (`WsSend::stopped`).
        state.writing = match &next {
            Outbound::Message(WsMessage::Control(_)) => Some(0),
            Outbound::Message(WsMessage::Stream { id, .. }) => state.wire_ids.get(id).copied(),
            _ => None,
        };
        next
    }

    fn pick_outbound(&self, state: &mut State) -> Outbound {
        if let Some((code, reason)) = state.closing.clone() {
            return Outbound::Close(code, reason);
        }
        if state.closed.is_some() {
            return Outbound::Done;
        }
        let state = &mut *state;
        // Stops first: a few bytes each, and each spares the peer a stream it is throwing away.
        if let Some((id, code)) = state.stops.pop_front() {
            return Outbound::Message(WsMessage::Stop { id, code });
        }
        // Then in turn: a datagram after each control chunk or room chunk (ticks never wait for a backlog of
        // requests or replies, as over QUIC they would not), room streams after each control chunk.
        if state.datagram_turn && !state.datagrams.is_empty() {
            state.datagram_turn = false;
            if let Some(datagram) = state.datagrams.pop_front() {
                state.datagram_bytes -= datagram.len();
                return Outbound::Message(WsMessage::Datagram(datagram));
            }
        }
        let rooms_first = state.rooms_turn && !state.ready.is_empty();
        if !rooms_first {
            if let Some(message) = state.control_chunk() {
                return message;
            }
        }
        if !state.datagrams.is_empty() && state.ready.is_empty() {
            state.datagram_turn = false;
            if let Some(datagram) = state.datagrams.pop_front() {
                state.datagram_bytes -= datagram.len();
                return Outbound::Message(WsMessage::Datagram(datagram));
            }
        }
        while let Some(key) = state.ready.pop_front() {
            state.datagram_turn = true;
            state.rooms_turn = false;
            let Some(stream) = state.streams.get_mut(&key) else { continue };
            // A stopped stream sends nothing more but its end (a reset), once its owner ended it.
            if stream.stopped.is_some() && stream.end.is_none() {
                continue;
            }
            let id = *stream.wire_id.get_or_insert_with(|| {
                let id = state.next_wire_id;
                state.next_wire_id += 1;
                state.wire_ids.insert(id, key);
                id
            });
            if !stream.queue.is_empty() {
                let bytes = take_chunk(stream);
                if !stream.queue.is_empty() || stream.end.is_some() {
                    state.ready.push_back(key);
                }
                state.room_freed(key, bytes.len());
                return Outbound::Message(WsMessage::Stream { id, bytes });
            }
            let message = match stream.end {
                Some(End::Finish) => WsMessage::Finish { id },
                Some(End::Reset(code)) => WsMessage::Reset { id, code },
                None => continue,
            };
            state.streams.remove(&key);
            state.wire_ids.remove(&id);
            return Outbound::Message(message);
        }
        // Room streams had their turn but nothing to send (stopped or ended ones left in `ready`): the control
        // stream's, or a datagram's, goes now instead of the writer idling with them waiting.
        if let Some(message) = state.control_chunk() {
            return message;
        }
        if let Some(datagram) = state.datagrams.pop_front() {
            state.datagram_bytes -= datagram.len();
            return Outbound::Message(WsMessage::Datagram(datagram));
        }
        Outbound::Idle
    }
}

impl State {
    /// The control stream's next chunk, if it has one (room streams go next: [`State::rooms_turn`]).
    fn control_chunk(&mut self) -> Option<Outbound> {
        let control = self.streams.get_mut(&0).filter(|s| !s.queue.is_empty())?;
        let chunk = take_chunk(control);
        self.rooms_turn = true;
        self.datagram_turn = true;
        Some(Outbound::Message(WsMessage::Control(chunk)))
    }
}

/// A room stream the server opened, until the client accepts it: what arrived, and its bytes (the reader's bound).
#[derive(Debug)]
pub(super) struct PendingStream {
    pub(super) queue: Arc<super::room_in::RoomQueue>,
}

/// The stream's next chunk (frames written one by one go out together, up to [`MAX_CHUNK`]); wakes its writer.
fn take_chunk(stream: &mut OutStream) -> Bytes {
    let mut chunk = stream.queue.pop_front().unwrap_or_default();
    if stream.queue.front().is_some_and(|next| chunk.len() + next.len() <= MAX_CHUNK) {
        let mut joined = BytesMut::from(&chunk[..]);
        while let Some(next) = stream.queue.front().filter(|next| joined.len() + next.len() <= MAX_CHUNK) {
            joined.extend_from_slice(next);
            stream.queue.pop_front();
        }
        chunk = joined.freeze();
    }
    stream.bytes -= chunk.len();
    if let Some(waker) = stream.waker.take() {
        waker.wake();
    }
    chunk
}

pub(super) fn gone() -> (ErrorCode, String) {
    (ErrorCode::NoError, "connection closed".into())
}

pub(super) enum Outbound {
    Message(WsMessage),
    Close(ErrorCode, String),
    Idle,
    Done,
}

/// What arrives on a stream.
#[derive(Debug)]
pub(super) enum Inbound {
    Data(Bytes),
    Finish,
    Reset(ErrorCode),
}
