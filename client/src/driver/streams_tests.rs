//! A room stream's reader against an in-memory WebSocket: the merge with copies, the room's budgets.

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
    /// The slots the reader routed copies of (its `copies`).
    routed: Arc<std::sync::Mutex<Vec<u64>>>,
    _sessions: (WsSession, Arc<Rooms>),
}

#[allow(clippy::unwrap_used)] // a test's setup: a failure is the test's
impl FullRoom {
    async fn open() -> FullRoom {
        FullRoom::open_with(true).await
    }

    /// [`FullRoom::open`]; without the Copies frame unless `copies` (the channel not filled then).
    async fn open_with(copies: bool) -> FullRoom {
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
        if copies {
            codec.encode(&RoomFrame::Copies { slot: 1 }, &mut head).unwrap();
        }
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
        let routed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reading = tokio::spawn({
            let (rooms, stop, routed) = (rooms.clone(), stop.clone(), routed.clone());
            async move {
                let copies = |slot: u64, _: &Arc<RoomEntry>| routed.lock().unwrap().push(slot);
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
        if copies {
            tokio::time::sleep(Duration::from_millis(20)).await; // the Copies frame, right behind the Open
            entry.events.try_send(filler()).expect("the Open's place is free again");
            assert_eq!(entry.events.capacity(), 0);
        }
        FullRoom { send, entry, received, stop, reading, codec, routed, _sessions: (server, rooms) }
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

/// A redundant room's Copies frame read after the room was left (it came behind an Open in several packets, or its
/// packet was lost once) routes nothing: before, its slot was routed to the ended room and the room's posts were
/// copied again on the connection (a later plain join of the room included), its entry kept until a reconnect.
#[tokio::test]
async fn a_copies_frame_read_after_the_room_was_left_routes_nothing() {
    let mut room = FullRoom::open_with(false).await;
    room.entry.ended.cancel(); // left: as `write_leave` does before its Leave is answered
    let copies = room.codec.encode_to_vec(&RoomFrame::Copies { slot: 1 }).unwrap();
    room.send.write_all(&copies).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(room.routed.lock().unwrap().is_empty(), "copies routed to a room that was left");
    room.end();
}
