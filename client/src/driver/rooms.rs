//! The driver's rooms: which rooms the application joined and the state of each, joining again from a position,
//! and reading room streams into their rooms' channels. Each room's events are made under its state lock with room
//! in its channel already reserved, so they leave in the order the state produced them, even while a rejoin's
//! stream replaces an older one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::BytesMut;
use quiver_proto::{ErrorCode, Failure, FrameCodec, Join, Joined, Reply, RequestBody, RoomFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    connection::{Connection, Handler},
    error::RequestError,
    state::room::{Opened, RoomEvent, RoomState, StreamNumber},
    sync::lock,
};

/// Events buffered per room before its stream's reader stops reading (and the server, after `room_queue_bytes`
/// more, resets the stream as a slow consumer).
pub const EVENT_BUFFER: usize = 1024;

/// What the client keeps per joined room.
#[derive(Debug)]
pub(crate) struct RoomEntry {
    pub(crate) name: String,
    pub(crate) state: Mutex<RoomState>,
    events: mpsc::Sender<RoomEvent>,
}

impl RoomEntry {
    /// The Join's reply.
    pub(crate) fn replied(&self, joined: &Joined) {
        lock(&self.state).replied(joined);
    }
}

/// The rooms the application has joined, by name.
#[derive(Debug, Default)]
pub(crate) struct Rooms(Mutex<HashMap<String, Arc<RoomEntry>>>);

impl Rooms {
    /// A new entry for `room`, and the receiver of its events; `AlreadyJoined` if it has one.
    pub(crate) fn add(&self, room: &str) -> Result<(Arc<RoomEntry>, mpsc::Receiver<RoomEvent>), RequestError> {
        let mut rooms = lock(&self.0);
        if rooms.contains_key(room) {
            let failure = Failure::new(ErrorCode::AlreadyJoined, format!("already in room {room}"));
            return Err(RequestError::Failed(failure));
        }
        let (events, received) = mpsc::channel(EVENT_BUFFER);
        let entry = Arc::new(RoomEntry { name: room.to_string(), state: Mutex::new(RoomState::new()), events });
        rooms.insert(room.to_string(), entry.clone());
        Ok((entry, received))
    }

    /// Forgets `room` (left, or its join failed).
    pub(crate) fn remove(&self, room: &str) {
        lock(&self.0).remove(room);
    }

    /// The entry of `room`, if it is joined.
    pub(crate) fn get(&self, room: &str) -> Option<Arc<RoomEntry>> {
        lock(&self.0).get(room).cloned()
    }

    /// Every joined room.
    pub(crate) fn all(&self) -> Vec<Arc<RoomEntry>> {
        lock(&self.0).values().cloned().collect()
    }
}

/// Joins a room again from its position (after a reconnect, or a slow-consumer kick).
/// A join refused as `Unavailable` (the server's broker unreachable) is tried again, this many times at most, with
/// the delay doubling from 50 ms to 2 s (about a minute in all).
const UNAVAILABLE_REJOINS: u32 = 40;

pub(crate) async fn rejoin<H: Handler>(connection: &Connection<H>, entry: &RoomEntry) {
    let mut delay = std::time::Duration::from_millis(50);
    for _ in 0..UNAVAILABLE_REJOINS {
        let since = lock(&entry.state).position();
        match connection.request(RequestBody::Join(Join { room: entry.name.clone(), since })).await {
            Ok(Reply::Joined(joined)) => entry.replied(&joined),
            Ok(other) => tracing::warn!(room = %entry.name, ?other, "unexpected reply to Join"),
            // The connection went again: the supervisor rejoins once it is back.
            Err(RequestError::Closed { .. }) => {}
            Err(RequestError::Failed(failure)) if failure.code == ErrorCode::Unavailable => {
                tracing::info!(room = %entry.name, reason = %failure.message, ?delay, "rejoin refused for now; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                continue;
            }
            Err(err) => tracing::warn!(room = %entry.name, %err, "cannot rejoin room"),
        }
        return;
    }
    tracing::warn!(room = %entry.name, "cannot rejoin room: the server stayed unavailable");
}

/// Room for one event in a room's channel: at once when there is room, else when the application reads or `stop`
/// is cancelled; `None` when the room's handle is gone or the client stopped.
async fn reserve<'a>(
    events: &'a mpsc::Sender<RoomEvent>,
    stop: &CancellationToken,
) -> Option<mpsc::Permit<'a, RoomEvent>> {
    match events.try_reserve() {
        Ok(permit) => Some(permit),
        Err(mpsc::error::TrySendError::Closed(())) => None,
        Err(mpsc::error::TrySendError::Full(())) => tokio::select! {
            permit = events.reserve() => permit.ok(),
            () = stop.cancelled() => None,
        },
    }
}

/// Reads room stream number `stream` (numbered in accept order): its Open frame says which room it carries and
/// where it starts; then its events, until the stream ends (finished, reset, or its connection closed: closing the
/// client closes it) or a newer stream of the room replaces it.
pub(crate) async fn read_stream(
    rooms: &Rooms,
    stream: StreamNumber,
    mut recv: quinn::RecvStream,
    max_frame: usize,
    stop: &CancellationToken,
) {
    let codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let open = match next_frame(&codec, &mut recv, &mut buf).await {
        Ok(Some(RoomFrame::Open(open))) => open,
        Ok(None) | Err(StreamEnd::Reset(_)) => return, // reset before it said anything: a Kicked follows
        other => {
            tracing::warn!(?other, "room stream did not start with Open");
            let _ = recv.stop(quiver_transport::close::quic_code(ErrorCode::ProtocolViolation));
            return;
        }
    };
    let Some(entry) = rooms.get(&open.room) else {
        // Left meanwhile.
        let _ = recv.stop(quiver_transport::close::quic_code(ErrorCode::NoError));
        return;
    };
    let Some(permit) = reserve(&entry.events, stop).await else { return };
    let opened = lock(&entry.state).open(stream, &open);
    match opened {
        Opened::Current(Some(resumed)) => permit.send(resumed),
        Opened::Current(None) => {}
        Opened::Stale => {
            let _ = recv.stop(quiver_transport::close::quic_code(ErrorCode::NoError));
            return;
        }
    }
    loop {
        match next_frame(&codec, &mut recv, &mut buf).await {
            Ok(Some(RoomFrame::Event(event))) => {
                let Some(permit) = reserve(&entry.events, stop).await else { return };
                let mut state = lock(&entry.state);
                match state.event(stream, event) {
                    Some(event) => permit.send(event),
                    None if !state.is_current(stream) => return, // replaced by a rejoin
                    None => {}                                   // delivered before a resume
                }
            }
            Ok(Some(RoomFrame::Open(_))) => {
                tracing::warn!(room = %entry.name, "second Open on a room stream");
                return;
            }
            Ok(None) => return, // finished: the room was left
            Err(StreamEnd::Reset(code)) => {
                // A slow consumer's reset is followed by Kicked on the control stream, which rejoins.
                tracing::debug!(room = %entry.name, %code, "room stream reset");
                return;
            }
            Err(StreamEnd::Other(err)) => {
                tracing::debug!(room = %entry.name, %err, "room stream ended");
                return;
            }
        }
    }
}

/// How a room stream ended, when it did not finish cleanly.
#[derive(Debug)]
enum StreamEnd {
    Reset(ErrorCode),
    Other(String),
}

async fn next_frame(
    codec: &FrameCodec,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<Option<RoomFrame>, StreamEnd> {
    loop {
        match codec.decode::<RoomFrame>(buf) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(StreamEnd::Other("stream ended inside a frame".into())),
            Err(quinn::ReadError::Reset(code)) => {
                return Err(StreamEnd::Reset(quiver_transport::close::from_quic_code(code)))
            }
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
    }
}
