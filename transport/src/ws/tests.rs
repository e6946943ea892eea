//! The WebSocket connection over an in-memory pipe: both roles, streams, datagrams, bounds and closes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quiver_proto::{ws::WsMessage, ErrorCode, TickHeader};
use tokio_tungstenite::{
    tungstenite::{protocol::Role as WsRole, Message},
    WebSocketStream,
};

use super::*;

pub(super) fn addr() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

pub(super) async fn raw_pair(
    config: &WsConfig,
) -> (WebSocketStream<tokio::io::DuplexStream>, WebSocketStream<tokio::io::DuplexStream>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let ws = config.websocket();
    let server = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(ws)).await;
    let client = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(ws)).await;
    (server, client)
}

async fn pair(config: WsConfig) -> (WsSession, WsSession) {
    let (server, client) = raw_pair(&config).await;
    let server = WsSession::start(server, Role::Server, config.clone(), addr());
    let client = WsSession::start(client, Role::Client, config, addr());
    (server, client)
}

/// A server session whose raw peer reads nothing yet, over a 1 KiB pipe: the server's socket fills at once.
pub(super) async fn stalled(config: WsConfig) -> (WsSession, WebSocketStream<tokio::io::DuplexStream>) {
    let (a, b) = tokio::io::duplex(1024);
    let ws = config.websocket();
    let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(ws)).await;
    let peer = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(ws)).await;
    (WsSession::start(server_ws, Role::Server, config, addr()), peer)
}

/// The first `n` stream messages (wire id, bytes) a raw peer reads.
async fn stream_messages(peer: &mut WebSocketStream<tokio::io::DuplexStream>, n: usize) -> Vec<(u64, Bytes)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let Some(Ok(Message::Binary(bytes))) = within(peer.next()).await else { continue };
        if let Ok(WsMessage::Stream { id, bytes }) = WsMessage::decode(Bytes::from(bytes)) {
            seen.push((id, bytes));
        }
    }
    seen
}

pub(super) async fn within<T>(what: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), what).await.expect("timed out")
}

#[tokio::test]
async fn control_room_streams_and_datagrams_cross() {
    let (server, client) = pair(WsConfig::default()).await;
    let (mut c_send, mut c_recv) = client.open_bi().unwrap();
    assert!(client.open_bi().is_err(), "one control stream");
    c_send.write_all(b"hello").await.unwrap();
    let (mut s_send, mut s_recv) = within(server.accept_bi()).await.unwrap();
    assert_eq!(within(s_recv.read_chunk()).await.unwrap().unwrap(), &b"hello"[..]);
    s_send.write_all(b"welcome").await.unwrap();
    assert_eq!(within(c_recv.read_chunk()).await.unwrap().unwrap(), &b"welcome"[..]);

    let mut room = server.open_uni().unwrap();
    assert!(client.open_uni().is_err(), "clients open no room streams");
    room.write_chunk(Bytes::from_static(b"open")).await.unwrap();
    room.write_all(b"+event").await.unwrap();
    room.finish().unwrap();
    let mut recv = within(client.accept_uni()).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = within(recv.read_chunk()).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"open+event");
    within(room.stopped()).await.unwrap();

    client.send_datagram(Bytes::from_static(b"\x01tick")).unwrap();
    assert_eq!(within(server.read_datagram()).await.unwrap(), &b"\x01tick"[..]);
    let too_big = Bytes::from(vec![1; 1201]);
    assert_eq!(client.send_datagram(too_big), Err(WsError::TooLarge(1201, 1200)));
}

#[tokio::test]
async fn a_reset_reaches_the_reader_and_discards_what_waited() {
    let (server, client) = pair(WsConfig::default()).await;
    let mut room = server.open_uni().unwrap();
    room.write_all(b"first").await.unwrap();
    let mut recv = within(client.accept_uni()).await.unwrap();
    assert_eq!(within(recv.read_chunk()).await.unwrap().unwrap(), &b"first"[..]);
    room.reset(ErrorCode::SlowConsumer).unwrap();
    assert_eq!(within(recv.read_chunk()).await, Err(WsError::Reset(ErrorCode::SlowConsumer)));
}

#[tokio::test]
async fn close_carries_code_and_reason_both_ways() {
    let (server, client) = pair(WsConfig::default()).await;
    server.close(ErrorCode::TooManyConnections, "too many from your address");
    let expected = WsError::Closed(ErrorCode::TooManyConnections, "too many from your address".into());
    assert_eq!(within(client.closed()).await, expected);
    assert_eq!(within(server.closed()).await, expected);
    assert!(client.send_datagram(Bytes::from_static(b"\x01x")).is_err());
    assert!(matches!(within(client.read_datagram()).await, Err(WsError::Closed(ErrorCode::TooManyConnections, _))));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (server, client) = pair(WsConfig::default()).await;
    drop(client);
    assert_eq!(within(server.closed()).await, WsError::Closed(ErrorCode::NoError, "connection dropped".into()));
}

#[tokio::test]
async fn a_full_window_makes_the_writer_wait() {
    let config = WsConfig { stream_window: 1000, ..WsConfig::default() };
    // A small pipe whose far end is not read yet: the writer's socket stalls and the stream's window fills.
    let (a, b) = tokio::io::duplex(4096);
    let ws = config.websocket();
    let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(ws)).await;
    let client_ws = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(ws)).await;
    let server = WsSession::start(server_ws, Role::Server, config.clone(), addr());
    let mut room = server.open_uni().unwrap();
    let chunk = vec![7u8; 1000];
    let mut written = 0usize;
    let wrote = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            written += room.write(&chunk).await.unwrap();
        }
    })
    .await;
    assert!(wrote.is_err(), "writes wait once the window is full");
    assert!(written >= 1000, "{written}");
    // Once the client reads, everything written arrives, and writing goes on.
    let client = WsSession::start(client_ws, Role::Client, config, addr());
    let mut recv = within(client.accept_uni()).await.unwrap();
    let mut got = 0;
    while got < written {
        got += within(recv.read_chunk()).await.unwrap().unwrap().len();
    }
    assert_eq!(got, written);
    within(room.write_all(&chunk)).await.unwrap();
}

#[tokio::test]
async fn a_waiting_tick_is_replaced_by_its_channels_next() {
    // The client's socket is never read: datagrams stay in the lane after the first ones.
    let config = WsConfig { datagram_buffer: 200, ..WsConfig::default() };
    let (server_ws, _client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let tick = |channel_id, seq| {
        let mut buf = bytes::BytesMut::new();
        TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut buf).unwrap();
        buf.extend_from_slice(&[0; 20]);
        buf.freeze()
    };
    for seq in 1..=50 {
        server.send_datagram(tick(1, seq)).unwrap();
        server.send_datagram(tick(2, seq)).unwrap();
    }
    let state = lock(&server.shared().state);
    assert_eq!(state.datagrams.len(), 2, "one waiting tick per channel: {:?}", state.datagrams);
    for waiting in &state.datagrams {
        let (header, _) = TickHeader::decode(waiting).unwrap();
        assert_eq!(header.seq, 50, "only the newest waits");
    }
    drop(state);
    // An older tick reaching the lane after a newer one (two fan-outs racing) does not replace it.
    server.send_datagram(tick(1, 49)).unwrap();
    let state = lock(&server.shared().state);
    let seqs: Vec<u64> = state.datagrams.iter().map(|d| TickHeader::decode(d).unwrap().0.seq).collect();
    assert_eq!(seqs, [50, 50], "the older tick replaced the newer one");
    drop(state);
    // Counted, for the sender that counted them as handed over (nothing was written meanwhile: one thread).
    assert_eq!(server.lane_superseded(), (2 * 49, 1));
}

#[tokio::test]
async fn hostile_messages_close_with_a_reason() {
    let config = WsConfig::default();
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    // A client may not send room stream messages.
    client_ws.send(Message::Binary(WsMessage::Finish { id: 1 }.encode().to_vec())).await.unwrap();
    assert!(matches!(within(server.closed()).await, WsError::Closed(ErrorCode::ProtocolViolation, _)));

    let config = WsConfig::default();
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    client_ws.send(Message::Binary(vec![9, 9])).await.unwrap();
    assert_eq!(
        within(server.closed()).await,
        WsError::Closed(ErrorCode::ProtocolViolation, "unknown WebSocket message kind 9".into())
    );

    // (A peer with tungstenite's defaults: ours would not buffer a message this large.)
    let config = WsConfig::default();
    let (a, b) = tokio::io::duplex(1 << 20);
    let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
    let mut client_ws = WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let _ = client_ws.send(Message::Binary(vec![0; 100_000])).await;
    assert!(matches!(within(server.closed()).await, WsError::Closed(ErrorCode::FrameTooLarge, _)));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out() {
    let config = WsConfig { idle_timeout: Duration::from_secs(3), ..WsConfig::default() };
    let (server_ws, _client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let closed = within(server.closed()).await;
    assert!(matches!(closed, WsError::Closed(ErrorCode::Internal, ref why) if why.contains("idle")), "{closed:?}");
}

#[tokio::test]
async fn a_peer_that_stops_reading_cannot_hold_the_writer_after_it_closed() {
    // A tiny pipe, never read by the raw peer: the server's writer blocks on a full socket.
    let config = WsConfig::default();
    let (server, mut peer) = stalled(config).await;
    let mut room = server.open_uni().unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(200), room.write_all(&[1; 200_000])).await;
    // The peer says goodbye (kind 5) but reads nothing: the session ends all the same.
    let bye = WsMessage::Close { code: ErrorCode::NoError, reason: "bye".into() }.encode().to_vec();
    let _ = tokio::time::timeout(Duration::from_secs(1), peer.send(Message::Binary(bye))).await;
    assert_eq!(within(server.closed()).await, WsError::Closed(ErrorCode::NoError, "bye".into()));
    assert!(matches!(room.write(b"x").await, Err(WsError::Closed(..))));
    let state = lock(&server.shared().state);
    assert!(state.streams.values().all(|s| s.queue.is_empty()), "nothing left pinned after the end");
}

#[tokio::test]
async fn an_unread_room_stream_is_stopped_and_never_holds_up_the_others() {
    let (server, client) = pair(WsConfig::default()).await;
    let (_c_send, mut c_recv) = client.open_bi().unwrap();
    let (mut s_send, _s_recv) = within(server.accept_bi()).await.unwrap();
    let mut unread = server.open_uni().unwrap();
    let stopped = unread.stop_signal();
    // The client's application never reads this stream: more than it buffers is written to it.
    let written = tokio::spawn(async move {
        let chunk = vec![5u8; 16 * 1024];
        loop {
            if let Err(err) = unread.write_all(&chunk).await {
                return (err, unread);
            }
        }
    });
    let mut unread_here = within(client.accept_uni()).await.unwrap();
    assert_eq!(within(stopped).await, ErrorCode::SlowConsumer, "the server is told to stop");
    assert_eq!(within(written).await.unwrap().0, WsError::Stopped(ErrorCode::SlowConsumer));
    // The control stream still flows.
    s_send.write_all(b"still here").await.unwrap();
    assert_eq!(within(c_recv.read_chunk()).await.unwrap().unwrap(), &b"still here"[..]);
    // The unread stream ends as a slow consumer's, what waited discarded (as QUIC discards a reset stream's unread
    // data): a reader stuck elsewhere holds nothing while its room goes on, rejoined, on a new stream.
    let mut got = 0;
    let end = loop {
        match within(unread_here.read_chunk()).await {
            Ok(Some(bytes)) => got += bytes.len(),
            other => break other,
        }
    };
    assert_eq!(end, Err(WsError::Reset(ErrorCode::SlowConsumer)));
    assert_eq!(got, 0);
}

#[tokio::test]
async fn an_oversized_datagram_closes_the_connection() {
    let config = WsConfig::default();
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let datagram = WsMessage::Datagram(Bytes::from(vec![1; 1201])).encode().to_vec();
    client_ws.send(Message::Binary(datagram)).await.unwrap();
    assert!(matches!(within(server.closed()).await, WsError::Closed(ErrorCode::DatagramTooLarge, _)));
}

#[tokio::test]
async fn stream_ids_go_on_the_wire_in_increasing_order_whatever_the_order_of_writes() {
    let config = WsConfig::default();
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let mut first = server.open_uni().unwrap();
    let mut second = server.open_uni().unwrap();
    second.write_all(b"second").await.unwrap();
    first.write_all(b"first").await.unwrap();
    let seen = stream_messages(&mut client_ws, 2).await;
    assert_eq!(seen, [(1, Bytes::from_static(b"second")), (2, Bytes::from_static(b"first"))]);
}

#[tokio::test]
async fn pings_from_a_peer_that_does_not_read_queue_a_bounded_number_of_pongs() {
    // The server's direction of a small pipe fills at once: the peer reads nothing while it pings.
    let config = WsConfig::default();
    let (server, mut peer) = stalled(config).await;
    const PINGS: usize = 5_000;
    for _ in 0..PINGS {
        within(peer.send(Message::Ping(vec![7; 125]))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every Pong answered while the socket was full used to be kept (about 127 bytes each, without limit).
    let mut pongs = 0;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(300), peer.next()).await {
        pongs += usize::from(matches!(message, Message::Pong(_)));
    }
    assert!(pongs < PINGS / 10, "{pongs} of {PINGS} pongs were kept for a peer that did not read");
    assert!(server.close_reason().is_none(), "the session goes on");
}

#[tokio::test]
async fn room_streams_finished_while_unread_are_bounded_by_the_connection_window() {
    let config = WsConfig { connection_window: 200_000, ..WsConfig::default() };
    // The peer reads nothing yet: whatever room streams hold stays here.
    let (a, b) = tokio::io::duplex(1024);
    let ws = config.websocket();
    let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(ws)).await;
    let client_ws = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(ws)).await;
    let server = WsSession::start(server_ws, Role::Server, config.clone(), addr());
    // Join, a replay that fits its stream's window, Leave: each cycle used to leave 60 KB behind, without limit.
    let mut finished = 0;
    let mut waiting = None;
    for _ in 0..10 {
        let mut room = server.open_uni().unwrap();
        match tokio::time::timeout(Duration::from_millis(100), room.write_all(&[3; 60_000])).await {
            Ok(written) => {
                written.unwrap();
                room.finish().unwrap();
                finished += 1;
            }
            Err(_) => {
                waiting = Some(room);
                break;
            }
        }
    }
    assert!(finished <= 3, "{finished} streams of 60 KB took more than the 200 KB window");
    assert!(lock(&server.shared().state).room_bytes <= 200_000);
    // Once the peer reads, the waiting write goes on.
    let client = WsSession::start(client_ws, Role::Client, config, addr());
    let reading = tokio::spawn(async move {
        while let Ok(mut recv) = client.accept_uni().await {
            tokio::spawn(async move { while let Ok(Some(_)) = recv.read_chunk().await {} });
        }
    });
    let mut room = waiting.expect("a write waited for the connection window");
    within(room.write_all(&[4; 60_000])).await.unwrap();
    reading.abort();
}

#[tokio::test]
async fn replies_on_the_control_stream_do_not_starve_room_streams() {
    let config = WsConfig { stream_window: 1 << 20, ..WsConfig::default() };
    let (server, mut peer) = stalled(config).await;
    peer.send(Message::Binary(WsMessage::Control(Bytes::from_static(b"hello")).encode().to_vec())).await.unwrap();
    let (mut control, _recv) = within(server.accept_bi()).await.unwrap();
    // A long run of replies waits (the peer reads nothing yet), then a room event.
    control.write_all(&[1; 300_000]).await.unwrap();
    let mut room = server.open_uni().unwrap();
    room.write_all(b"event").await.unwrap();
    let mut control_chunks_first = 0;
    loop {
        let message = within(peer.next()).await.unwrap().unwrap();
        let Message::Binary(bytes) = message else { continue };
        match WsMessage::decode(Bytes::from(bytes)).unwrap() {
            WsMessage::Control(_) => control_chunks_first += 1,
            WsMessage::Stream { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    // 300 KB is 19 chunks: the room's chunk goes after at most the few already on their way.
    assert!(control_chunks_first <= 3, "the room event waited behind {control_chunks_first} control chunks");
}

/// A tick waits for at most one control chunk: a backlog of requests or replies (a client resending its posts
/// after a reconnect, a server answering a long History) no longer holds every tick back until it has gone, which
/// over QUIC (datagrams apart from streams) it never did.
#[tokio::test]
async fn a_control_backlog_does_not_hold_back_ticks() {
    let config = WsConfig { stream_window: 1 << 20, ..WsConfig::default() };
    let (server, mut peer) = stalled(config).await;
    peer.send(Message::Binary(WsMessage::Control(Bytes::from_static(b"hello")).encode().to_vec())).await.unwrap();
    let (mut control, _recv) = within(server.accept_bi()).await.unwrap();
    control.write_all(&[1; 300_000]).await.unwrap();
    let mut tick = bytes::BytesMut::new();
    TickHeader { channel_id: 1, seq: 1, sent_time_us: 1 }.encode(&mut tick).unwrap();
    server.send_datagram(tick.freeze()).unwrap();
    let mut control_chunks_first = 0;
    loop {
        let message = within(peer.next()).await.unwrap().unwrap();
        let Message::Binary(bytes) = message else { continue };
        match WsMessage::decode(Bytes::from(bytes)).unwrap() {
            WsMessage::Control(_) => control_chunks_first += 1,
            WsMessage::Datagram(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(control_chunks_first <= 3, "the tick waited behind {control_chunks_first} control chunks");
}

#[tokio::test]
async fn a_room_stream_reset_with_bytes_waiting_never_leaves_control_replies_waiting() {
    let config = WsConfig { stream_window: 1 << 20, ..WsConfig::default() };
    let (server, mut peer) = stalled(config).await;
    peer.send(Message::Binary(WsMessage::Control(Bytes::from_static(b"hello")).encode().to_vec())).await.unwrap();
    let (mut control, _recv) = within(server.accept_bi()).await.unwrap();
    // The peer reads nothing yet: a room's bytes wait, replies wait, then the room is reset (a slow consumer).
    let mut room = server.open_uni().unwrap();
    room.write_all(&[2; 10_000]).await.unwrap();
    control.write_all(&[1; 40_000]).await.unwrap();
    room.reset(ErrorCode::SlowConsumer).unwrap();
    // Every reply arrives without waiting for the next keep-alive (the writer idled with them queued behind a
    // reset stream listed twice).
    let mut replies = 0;
    let read_all = async {
        while replies < 40_000 {
            let Message::Binary(bytes) = peer.next().await.unwrap().unwrap() else { continue };
            if let WsMessage::Control(chunk) = WsMessage::decode(Bytes::from(bytes)).unwrap() {
                replies += chunk.len();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read_all).await.expect("the replies went at once");
}

/// A peer that only receives (a browser subscribed to ticks sends nothing of its own, and pings only in answer)
/// while this end keeps writing: the writer, never idle for a keep-alive, pings anyway once nothing arrived for a
/// while, and the peer's pongs keep the idle timeout away. Before, the connection was closed "idle" every
/// `idle_timeout` (30 s), and the browser reconnected and rejoined, losing ticks each time.
#[tokio::test(start_paused = true)]
async fn a_peer_that_only_receives_is_kept_while_this_end_writes() {
    let config = WsConfig { idle_timeout: Duration::from_secs(3), ..WsConfig::default() };
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    // The peer reads everything (tungstenite answers each ping with a pong as it reads) and sends nothing else.
    let (mut pings, mut datagrams) = (0, 0);
    let reading = async {
        while let Some(Ok(message)) = client_ws.next().await {
            match message {
                Message::Ping(_) => pings += 1,
                Message::Binary(_) => datagrams += 1,
                _ => {}
            }
        }
    };
    let writing = async {
        for n in 0..40u8 {
            let mut tick = Vec::new();
            TickHeader { channel_id: 1, seq: u64::from(n) + 1, sent_time_us: 1 }.encode(&mut tick).unwrap();
            server.send_datagram(Bytes::from(tick)).unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        () = writing => {}
        () = reading => panic!("the connection ended"),
        closed = server.closed() => panic!("closed while writing: {closed:?}"),
    }
    assert!(datagrams >= 39 && pings >= 3, "{datagrams} datagrams, {pings} pings in 10 s");
}

/// A client that stops reading a room stream tells the server (kind 6, as QUIC's STOP_SENDING): the server's
/// writer learns the code, and what the client had waiting of it is dropped. Before, the client only dropped its
/// reader, and the server went on sending into nothing until a Leave came.
#[tokio::test]
async fn a_room_stream_the_client_stops_is_stopped_at_the_server() {
    let (server, client) = pair(WsConfig::default()).await;
    let mut room = server.open_uni().unwrap();
    room.write_all(b"open").await.unwrap();
    let mut recv = within(client.accept_uni()).await.unwrap();
    assert_eq!(within(recv.read_chunk()).await.unwrap().unwrap(), &b"open"[..]);
    recv.stop(ErrorCode::NoError);
    assert_eq!(within(room.stop_signal()).await, ErrorCode::NoError);
    assert_eq!(within(recv.read_chunk()).await.unwrap(), None, "reads end after a stop");
    // The control stream is never stopped this way.
    let (_c_send, mut c_recv) = client.open_bi().unwrap();
    c_recv.stop(ErrorCode::NoError);
}

/// An empty write queues nothing: the stream gets its wire id with its first bytes, not before. Before, it was put
/// in the writer's ready queue with nothing to send, took the next wire id there, and its first bytes, written
/// after another stream's, went out under the lower id: the client took them for a stream that had ended.
#[tokio::test]
async fn an_empty_write_takes_no_stream_id() {
    let config = WsConfig::default();
    let (server_ws, mut client_ws) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let mut first = server.open_uni().unwrap();
    let mut second = server.open_uni().unwrap();
    assert_eq!(first.write(b"").await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await; // the writer runs meanwhile
    second.write_all(b"second").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.write_all(b"first").await.unwrap();
    let seen = stream_messages(&mut client_ws, 2).await;
    assert_eq!(seen, [(1, Bytes::from_static(b"second")), (2, Bytes::from_static(b"first"))]);
}
