//! Reading a room's streams: each stream's Open frame says which room and Join it is of, then its events go to the
//! room's channel, merged with their datagram copies on a redundant stream. Each room's events are made under its
//! state lock with room in its channel already reserved, so they leave in the order the state produced them, even
//! while a rejoin's stream replaces an older one.

use crate::wire::{Link, LinkRecv, ReadError};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::{Bytes, BytesMut};
use quiver_proto::{frame, ErrorCode, FrameCodec, RoomFrame};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::rooms::{RoomEntry, Rooms};
use crate::{
    state::room::{Opened, RoomEvent, RoomState, StreamNumber},
    sync::lock,
};

/// Bytes of unfinished frames (read, not yet decoded) the room streams of one connection hold together at most: 64
/// MiB (four frames at the 16 MiB ceiling a client believes). Each stream alone is bounded by `max_frame`, but a
/// server may open as many room streams as the client allows (the Welcome's `max_rooms` + 1, up to 4,097), and one
/// announcing large limits (hostile, or misconfigured) could otherwise have the client buffer a frame's worth on
/// each: 64 GiB at the ceilings. Past it the connection is closed as a protocol violation, and the reconnect
/// resumes every room. An honest server reaches it only with every room stream inside a large frame at once
/// (quinn sends streams in turn): 64 streams of 1 MiB frames; the default 64 KiB frames stay under 5 MiB.
pub(crate) const UNFINISHED_FRAME_BYTES: usize = 64 << 20;

/// One room stream's part of its connection's unfinished frame bytes ([`UNFINISHED_FRAME_BYTES`]), given back when
/// the stream's reader ends.
#[derive(Debug)]
pub(crate) struct Unfinished {
    total: Arc<AtomicUsize>,
    mine: usize,
    limit: usize,
}

impl Unfinished {
    /// A stream's part of `total`, its connection's count.
    pub(crate) fn new(total: Arc<AtomicUsize>) -> Unfinished {
        Unfinished { total, mine: 0, limit: UNFINISHED_FRAME_BYTES }
    }

    /// The stream now holds `bytes` of unfinished frames: false when the connection's streams together hold more
    /// than they may.
    fn hold(&mut self, bytes: usize) -> bool {
        let total = if bytes >= self.mine {
            self.total.fetch_add(bytes - self.mine, Ordering::AcqRel) + (bytes - self.mine)
        } else {
            self.total.fetch_sub(self.mine - bytes, Ordering::AcqRel) - (self.mine - bytes)
        };
        self.mine = bytes;
        total <= self.limit
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

/// Room for one event in `entry`'s channel: at once when there is room, else when the application reads; `None`
/// when the room's handle is gone, the room was left or ended, the stream's connection closed (the event, not
/// handed out, comes again in the reconnect's resume), or the client stopped.
async fn reserve<'a>(
    entry: &'a RoomEntry,
    link: &Link,
    stop: &CancellationToken,
) -> Option<mpsc::Permit<'a, RoomEvent>> {
    // Bytes first: a room holding `EVENT_BUFFER_BYTES` for the application reads no more until it takes some.
    tokio::select! {
        biased;
        () = entry.below_byte_budget() => {}
        () = entry.ended.cancelled() => return None,
        () = stop.cancelled() => return None,
        () = link.closed() => return None,
    }
    match entry.events.try_reserve() {
        Ok(permit) => Some(permit),
        Err(mpsc::error::TrySendError::Closed(())) => None,
        Err(mpsc::error::TrySendError::Full(())) => tokio::select! {
            permit = entry.events.reserve() => permit.ok(),
            // Left while its reader waits for the application (which may hold the room until the Left reply):
            // the stream is stopped now, so the server's end of it is done at once (its room-stream limit counts
            // it until then).
            () = entry.ended.cancelled() => None,
            () = stop.cancelled() => None,
            () = link.closed() => None,
        },
    }
}

/// Hands out the events copies brought for `entry`'s current stream, in order, while its channel has room now (the
/// rest wait for the stream, or for room). Called with the room's state locked.
fn hand_out_copies(entry: &RoomEntry, state: &mut RoomState) {
    while state.has_ready() {
        let Ok(permit) = entry.events.try_reserve() else { return };
        match state.ready() {
            Some(Some(event)) => entry.hand_out(permit, event),
            Some(None) => {}
            None => return,
        }
    }
}

/// A datagram copy of `entry`'s stream `stream`, frames at positions from `first`.
pub(crate) fn on_copy(
    entry: &Arc<RoomEntry>,
    stream: StreamNumber,
    first: u64,
    frames: &[Bytes],
    (stop, tasks): (&CancellationToken, &TaskTracker),
) {
    let mut state = lock(&entry.state);
    for (position, body) in (first..).zip(frames) {
        match frame::decode_body::<RoomFrame>(body) {
            Ok(RoomFrame::Event(event)) => state.copy(stream, position, event),
            // (The events before it are handed out all the same: they are the stream's, and ready.)
            other => {
                tracing::debug!(?other, "a room copy that is not an event");
                break;
            }
        }
    }
    hand_out_copies(entry, &mut state);
    wait_for_room(entry, &state, (stop, tasks));
}

/// Where `entry`'s channel is full (the application is behind) with events copies brought ready behind it: they go
/// out as soon as the application reads, not when the stream's next frame or copy comes (for a lost packet, its
/// retransmission: the wait copies are for). One task per room at a time, started and ended under the state's lock.
fn wait_for_room(entry: &Arc<RoomEntry>, state: &RoomState, (stop, tasks): (&CancellationToken, &TaskTracker)) {
    if state.has_ready() && !entry.copies_waiting.swap(true, std::sync::atomic::Ordering::Relaxed) {
        // (On the client's tracker: waited for when it closes, as its other tasks.)
        tasks.spawn(hand_out_when_read(entry.clone(), stop.clone()));
    }
}

/// Waits for room in `entry`'s channel and hands out the events copies brought, until none is left to hand out (or
/// the room's reader is gone, the room ended, or the client stopped).
async fn hand_out_when_read(entry: Arc<RoomEntry>, stop: CancellationToken) {
    loop {
        let permit = tokio::select! {
            permit = entry.events.reserve() => permit.ok(),
            () = entry.ended.cancelled() => None,
            () = entry.gone.cancelled() => None,
            () = stop.cancelled() => None,
        };
        let mut state = lock(&entry.state);
        if let Some(permit) = permit {
            if let Some(Some(event)) = state.ready() {
                entry.hand_out(permit, event);
            }
            hand_out_copies(&entry, &mut state);
            if state.has_ready() {
                continue;
            }
        }
        entry.copies_waiting.store(false, std::sync::atomic::Ordering::Relaxed);
        return;
    }
}

/// Told when a stream says it has copies: the slot, the room's entry.
pub(crate) type CopiesOpened<'a> = &'a (dyn Fn(u64, &Arc<RoomEntry>) + Send + Sync);

/// A room stream that broke the protocol (a malformed or oversized frame, a stream ended inside a frame, no Open
/// first, a second Open): the code and reason to close its connection with. The room cannot go on from that stream,
/// and waiting would stall it for good; a reconnect resumes it from its position, so nothing is lost.
pub(crate) type Violation = (ErrorCode, String);

/// Reads room stream number `stream` (numbered in accept order) of connection `connection`: its Open frame says
/// which room it carries, which Join it answers and where it starts; then its events, until the stream ends
/// (finished, reset, or its connection closed: closing the client closes it) or a newer stream of the room replaces
/// it. Frames are numbered by position (Open is 0); a `Copies` frame turns on the merge with datagram copies, and
/// `copies` hears of its slot.
pub(crate) async fn read_stream(
    rooms: &Rooms,
    (connection, stream, link): (usize, StreamNumber, &Link),
    mut recv: LinkRecv,
    (max_frame, mut unfinished, copies): (usize, Unfinished, CopiesOpened<'_>),
    (stop, tasks): (&CancellationToken, &TaskTracker),
) -> Result<(), Violation> {
    let codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let open = match next_frame(&codec, &mut recv, &mut buf, &mut unfinished).await {
        Ok(Some(RoomFrame::Open(open))) => open,
        Ok(None) | Err(StreamEnd::Reset(_) | StreamEnd::Lost(_)) => return Ok(()), // reset: a Kicked follows
        Ok(Some(other)) => return Err(violation(format!("room stream began with {other:?}, not Open"))),
        Err(StreamEnd::Broken(code, why)) => return Err((code, format!("room stream: {why}"))),
    };
    let Some(entry) = rooms.get(&open.room) else {
        // Left meanwhile.
        recv.stop(ErrorCode::NoError);
        return Ok(());
    };
    let Some(permit) = reserve(&entry, link, stop).await else {
        recv.stop(ErrorCode::NoError);
        return Ok(());
    };
    // `Resumed` handed out under the state's lock, like every event: a newer stream's events cannot pass it.
    let stale = {
        let mut state = lock(&entry.state);
        match state.open((connection, stream), &open) {
            Opened::Current(Some(resumed)) => {
                entry.hand_out(permit, resumed);
                false
            }
            // (The place reserved goes back now: held for the stream's life, it took one of the room's.)
            Opened::Current(None) => {
                drop(permit);
                false
            }
            Opened::Stale => true,
        }
    };
    if stale {
        recv.stop(ErrorCode::NoError);
        return Ok(());
    }
    let mut position = 0;
    loop {
        let frame = next_frame(&codec, &mut recv, &mut buf, &mut unfinished).await;
        position += 1;
        match frame {
            Ok(Some(RoomFrame::Event(event))) => {
                let Some(permit) = reserve(&entry, link, stop).await else {
                    recv.stop(ErrorCode::NoError);
                    return Ok(());
                };
                let mut state = lock(&entry.state);
                match state.stream_event(stream, position, event) {
                    Some(event) => entry.hand_out(permit, event),
                    None if !state.is_current(stream) => return Ok(()), // replaced by a rejoin
                    None => {}                                          // delivered before a resume, or by its copy
                }
                hand_out_copies(&entry, &mut state);
                // Its event took the place the application made: copies behind it that found no room wait for the
                // next (before, they waited for the stream's next frame, for a lost packet its retransmission).
                wait_for_room(&entry, &state, (stop, tasks));
            }
            // Not for a room left meanwhile (its Copies frame behind an Open in several packets, or lost once):
            // routed, it turned post copies back on for a room the client no longer holds, and kept the entry.
            Ok(Some(RoomFrame::Copies { .. })) if entry.ended.is_cancelled() => {}
            Ok(Some(RoomFrame::Copies { slot })) => {
                lock(&entry.state).copies(stream, position + 1);
                copies(slot, &entry);
            }
            Ok(Some(RoomFrame::Open(_))) => {
                return Err(violation(format!("a second Open on room {}'s stream", entry.name)));
            }
            Ok(None) => return Ok(()), // finished: the room was left
            Err(StreamEnd::Reset(code)) => {
                // A slow consumer's reset is followed by Kicked on the control stream, which rejoins.
                tracing::debug!(room = %entry.name, %code, "room stream reset");
                return Ok(());
            }
            Err(StreamEnd::Lost(err)) => {
                tracing::debug!(room = %entry.name, %err, "room stream ended");
                return Ok(());
            }
            Err(StreamEnd::Broken(code, why)) => return Err((code, format!("room {}'s stream: {why}", entry.name))),
        }
    }
}

fn violation(why: String) -> Violation {
    (ErrorCode::ProtocolViolation, why)
}

/// How a room stream ended, when it did not finish cleanly.
#[derive(Debug)]
enum StreamEnd {
    /// Reset by the server.
    Reset(ErrorCode),
    /// Its bytes broke the protocol.
    Broken(ErrorCode, String),
    /// The connection went (closed, lost).
    Lost(String),
}

async fn next_frame(
    codec: &FrameCodec,
    recv: &mut LinkRecv,
    buf: &mut BytesMut,
    unfinished: &mut Unfinished,
) -> Result<Option<RoomFrame>, StreamEnd> {
    loop {
        let decoded = codec.decode::<RoomFrame>(buf);
        if !unfinished.hold(buf.len()) {
            let why = format!(
                "the room streams hold over {} bytes of unfinished frames together (the server opened many and left \
                 each inside a large frame)",
                unfinished.limit
            );
            return Err(StreamEnd::Broken(ErrorCode::ProtocolViolation, why));
        }
        match decoded {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(err) => return Err(StreamEnd::Broken(err.code(), err.to_string())),
        }
        match recv.read_chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(StreamEnd::Broken(ErrorCode::ProtocolViolation, "finished inside a frame".into())),
            Err(ReadError::Reset(code)) => return Err(StreamEnd::Reset(code)),
            Err(err) => return Err(StreamEnd::Lost(format!("{err:?}"))),
        }
    }
}

#[cfg(all(test, feature = "websocket"))]
#[path = "streams_tests.rs"]
mod tests;
