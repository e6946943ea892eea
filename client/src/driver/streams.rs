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
mod tests {
    use std::time::Duration;

    use quiver_proto::{EventKind, Joined, RoomEvent as Event};
    use quiver_transport::ws::{Role, WsConfig, WsSession};
    use tokio_tungstenite::{tungstenite::protocol::Role as WsRole, WebSocketStream};

    use super::*;
    use crate::driver::rooms::{Added, EVENT_BUFFER};

    /// A redundant room's stream from a server, over an in-memory WebSocket (the merge is the same on every
    /// transport): its Open and Copies frames read, then the room's channel filled.
    struct FullRoom {
        /// The server's end of the room stream (its next frame is at position 2).
        send: quiver_transport::ws::WsSend,
        entry: Arc<RoomEntry>,
        received: mpsc::Receiver<crate::state::room::RoomEvent>,
        stop: CancellationToken,
        reading: tokio::task::JoinHandle<Result<(), Violation>>,
        codec: FrameCodec,
        _sessions: (WsSession, Arc<Rooms>),
    }

    #[allow(clippy::unwrap_used)] // a test's setup: a failure is the test's
    impl FullRoom {
        async fn open() -> FullRoom {
            let config = WsConfig::default();
            let (a, b) = tokio::io::duplex(1 << 20);
            let server = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
            let client = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(config.websocket())).await;
            let addr = "127.0.0.1:9".parse().unwrap();
            let server = WsSession::start(server, Role::Server, config.clone(), addr);
            let client = WsSession::start(client, Role::Client, config, addr);
            let codec = FrameCodec::new(64 * 1024);
            let joined = Joined {
                room: "r".into(),
                epoch: 7,
                recovered: true,
                replay_from: 1,
                last_seq: 0,
                members: vec![],
                req_id: 1,
            };
            let mut send = server.open_uni().unwrap();
            let mut head = codec.encode_to_vec(&RoomFrame::Open(joined)).unwrap();
            codec.encode(&RoomFrame::Copies { slot: 1 }, &mut head).unwrap();
            send.write_all(&head).await.unwrap();
            let recv = LinkRecv::Ws(client.accept_uni().await.unwrap());
            let link = Link::Ws(client);

            let rooms = Arc::new(Rooms::default());
            let Ok(Added::New(entry, received)) = rooms.add("r", true, CancellationToken::new()) else {
                panic!("a new room")
            };
            lock(&entry.state).joining((0, 1));
            (0..EVENT_BUFFER - 1).for_each(|_| entry.events.try_send(filler()).unwrap());
            let stop = CancellationToken::new();
            let reading = tokio::spawn({
                let (rooms, stop) = (rooms.clone(), stop.clone());
                async move {
                    let copies = |_: u64, _: &Arc<RoomEntry>| {};
                    let unfinished = Unfinished::new(Arc::default());
                    let running = (&stop, &TaskTracker::new());
                    read_stream(&rooms, (0, 0, &link), recv, (64 * 1024, unfinished, &copies), running).await
                }
            });
            // The Open and the Copies frame are read (the Open's place given back), then the channel is filled.
            tokio::time::timeout(Duration::from_secs(5), async {
                while !lock(&entry.state).is_current(0) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the stream opened");
            tokio::time::sleep(Duration::from_millis(20)).await; // the Copies frame, right behind the Open
            entry.events.try_send(filler()).expect("the Open's place is free again");
            assert_eq!(entry.events.capacity(), 0);
            FullRoom { send, entry, received, stop, reading, codec, _sessions: (server, rooms) }
        }

        /// Message `seq`'s frame, as the stream carries it.
        fn framed(&self, seq: u64) -> bytes::BytesMut {
            let kind = EventKind::Message { sender: "ann".into(), client_msg_id: seq, body: Bytes::from("hi") };
            self.codec.encode_to_vec(&RoomFrame::Event(Event { seq, time_us: 1, kind })).unwrap()
        }

        /// Message `seq`'s frame body (without its one-byte length prefix, as a copy carries it).
        fn message(&self, seq: u64) -> Bytes {
            Bytes::copy_from_slice(&self.framed(seq)[1..])
        }

        /// The application reads until it has `n` messages (fillers skipped); their seqs, or `None` after 2 s.
        async fn messages(&mut self, n: usize) -> Option<Vec<u64>> {
            let mut seqs = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while seqs.len() < n {
                    let event = self.received.recv().await.expect("the room goes on");
                    if let crate::state::room::RoomEvent::Message(m) = event {
                        seqs.push(m.seq);
                    }
                }
            });
            read.await.ok().map(|()| seqs)
        }

        fn end(self) {
            self.stop.cancel();
            self.reading.abort(); // (its stream is still open: it would read on)
        }
    }

    /// A room holding [`EVENT_BUFFER_BYTES`] for the application reads no more from its stream until the
    /// application takes some, room in its channel or not: the count alone let a room hold 1,024 events of up to
    /// `max_frame` each (16 GiB under a server announcing the 16 MiB frames the client accepts).
    #[tokio::test]
    async fn a_room_holding_its_byte_budget_reads_no_more_until_the_application_takes_some() {
        use crate::driver::rooms::EVENT_BUFFER_BYTES;
        let mut room = FullRoom::open().await;
        while room.received.try_recv().is_ok() {} // room in the channel
        room.entry.held.store(EVENT_BUFFER_BYTES, std::sync::atomic::Ordering::SeqCst);
        room.send.write_all(&room.framed(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(room.received.try_recv().is_err(), "read past the byte budget");
        // The application takes an event: under the budget again, the reader goes on.
        room.entry.taken(&filler());
        let seqs = room.messages(1).await.expect("read on once under the byte budget");
        assert_eq!(seqs, [1]);
        room.end();
    }

    fn filler() -> crate::state::room::RoomEvent {
        crate::state::room::RoomEvent::MemberJoined { member: "x".into() }
    }

    /// Events copies brought while the room's channel was full are handed out as soon as the application reads:
    /// before, only the stream's next frame or the next copy did, and for a lost packet that is its retransmission,
    /// the very wait copies are for.
    #[tokio::test]
    async fn copies_that_found_the_room_full_go_out_once_the_application_reads() {
        let mut room = FullRoom::open().await;
        // Copies of positions 2 and 3 (messages 1 and 2), the stream silent: they wait for room.
        on_copy(&room.entry, 0, 2, &[room.message(1), room.message(2)], (&room.stop, &TaskTracker::new()));
        // The application reads: the copies follow at once, with no stream frame to wake the reader.
        let seqs = room.messages(2).await.expect("the copies were handed out once there was room");
        assert_eq!(seqs, [1, 2]);
        room.end();
    }

    /// The same where the stream's own frame took the place the application made: its reader, waiting for room with
    /// message 1 from the stream, sends it, and the copies behind it (messages 2 and 3, come while 1's copy was
    /// lost) find the channel full again. They go out as the application reads on; before, they waited for the
    /// stream's next frame (for a lost packet, its retransmission).
    #[tokio::test]
    async fn copies_behind_a_stream_frame_that_took_the_room_go_out_once_the_application_reads() {
        let mut room = FullRoom::open().await;
        room.send.write_all(&room.framed(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await; // the reader waits for room with message 1
        on_copy(&room.entry, 0, 3, &[room.message(2), room.message(3)], (&room.stop, &TaskTracker::new()));
        // One event read: the reader takes its place for message 1, and the channel is full again.
        room.received.recv().await.expect("a filler");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(room.entry.events.capacity(), 0);
        let seqs = room.messages(3).await.expect("the copies behind the stream's frame were not handed out");
        assert_eq!(seqs, [1, 2, 3]);
        room.end();
    }
}
