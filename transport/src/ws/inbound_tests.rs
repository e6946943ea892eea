//! The WebSocket connection's inbound bounds against a hostile server: streams it opens at once, bytes nobody
//! reads, streams that end before a byte of them came.

use bytes::Bytes;
use futures_util::SinkExt;
use quiver_proto::{ws::WsMessage, ErrorCode};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::tests::{addr, raw_pair, within};
use super::*;

/// A raw server's WebSocket and a client session on the other end.
async fn hostile_server() -> (WebSocketStream<tokio::io::DuplexStream>, WsSession) {
    let config = WsConfig::default();
    let (server_ws, client_ws) = raw_pair(&config).await;
    (server_ws, WsSession::start(client_ws, Role::Client, config, addr()))
}

fn stream_message(id: u64, bytes: Bytes) -> Message {
    Message::Binary(WsMessage::Stream { id, bytes }.encode().to_vec())
}

#[tokio::test]
async fn a_server_opening_too_many_room_streams_at_once_is_closed() {
    let (mut server, client) = hostile_server().await;
    let one = Bytes::from_static(b"x");
    for id in 1..=MAX_INBOUND_STREAMS as u64 {
        server.send(stream_message(id, one.clone())).await.unwrap();
    }
    // An ended stream frees its place once its reader let go of it (over QUIC, once the stream is read to its end or
    // dropped, not when its end arrives).
    server.send(Message::Binary(WsMessage::Finish { id: 1 }.encode().to_vec())).await.unwrap();
    let mut first = within(client.accept_uni()).await.unwrap();
    while within(first.read_chunk()).await.unwrap().is_some() {}
    drop(first);
    server.send(stream_message(MAX_INBOUND_STREAMS as u64 + 1, one.clone())).await.unwrap();
    let ping = async { tokio::time::sleep(Duration::from_millis(100)).await };
    tokio::select! {
        closed = client.closed() => panic!("closed at the limit: {closed:?}"),
        () = ping => {}
    }
    server.send(stream_message(MAX_INBOUND_STREAMS as u64 + 2, one)).await.unwrap();
    match within(client.closed()).await {
        WsError::Closed(ErrorCode::ProtocolViolation, reason) => assert!(reason.contains("room streams"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Streams ended before a byte of them came are not handed out: each was, and closed at once, so they escaped the
/// bound on open streams and queued without limit.
#[tokio::test]
async fn streams_ended_before_their_first_byte_are_not_handed_out() {
    let (mut server, client) = hostile_server().await;
    for id in 1..=1000u64 {
        let end = match id % 2 {
            0 => WsMessage::Finish { id },
            _ => WsMessage::Reset { id, code: ErrorCode::NoError },
        };
        server.send(Message::Binary(end.encode().to_vec())).await.unwrap();
    }
    server.send(stream_message(1001, Bytes::from_static(b"x"))).await.unwrap();
    let mut first = within(client.accept_uni()).await.unwrap();
    let bytes = within(first.read_chunk()).await.unwrap();
    assert_eq!(bytes.as_deref(), Some(&b"x"[..]), "the first stream handed out is the one with bytes");
}

#[tokio::test]
async fn room_streams_nobody_reads_are_bounded_together() {
    let (mut server, client) = hostile_server().await;
    // Each stream stays within its own bound; together they pass the connection's.
    let streams = (INBOUND_CONNECTION_BYTES / INBOUND_STREAM_BYTES) as u64 + 1;
    let chunk = Bytes::from(vec![7u8; MAX_CHUNK]);
    let sending = tokio::spawn(async move {
        for id in 1..=streams {
            for _ in 0..INBOUND_STREAM_BYTES / MAX_CHUNK {
                server.send(stream_message(id, chunk.clone())).await.unwrap();
            }
        }
        // The first Stop the client sends names the stream that passed the bound.
        loop {
            let Some(Ok(Message::Binary(bytes))) = within(server.next()).await else { continue };
            if let Ok(WsMessage::Stop { id, code }) = WsMessage::decode(Bytes::from(bytes)) {
                return (id, code, server);
            }
        }
    });
    let (stopped, code, mut server) = within(sending).await.unwrap();
    // One of the full streams ends (a reader that fell furthest behind), not the new one.
    assert!(stopped < streams && code == ErrorCode::SlowConsumer, "stream {stopped} stopped ({code})");
    // Dropping streams unread frees their bytes (at least 1 MiB for two: at most one of them is the stopped one):
    // a new stream fits again.
    let first = within(client.accept_uni()).await.unwrap();
    let second = within(client.accept_uni()).await.unwrap();
    drop((first, second));
    let next = streams + 1;
    for _ in 0..INBOUND_STREAM_BYTES / MAX_CHUNK {
        server.send(stream_message(next, Bytes::from(vec![8u8; MAX_CHUNK]))).await.unwrap();
    }
    let quiet = async {
        loop {
            let Ok(Message::Binary(bytes)) = server.next().await.expect("the client closed the connection") else {
                continue;
            };
            if let Ok(WsMessage::Stop { id, .. }) = WsMessage::decode(Bytes::from(bytes)) {
                return id;
            }
        }
    };
    if let Ok(id) = tokio::time::timeout(Duration::from_millis(300), quiet).await {
        assert_ne!(id, next, "1 MiB freed, 1 MiB more fits");
    }
    // And the new stream's bytes are all there to read (the full streams before it handed out first, dropped).
    let received = within(async {
        loop {
            let mut recv = client.accept_uni().await.expect("the new stream is handed out");
            // (The stream stopped at the bound reads as reset.)
            let Ok(Some(chunk)) = recv.read_chunk().await else { continue };
            if chunk.first() != Some(&8) {
                continue;
            }
            let mut received = chunk.len();
            while let Some(chunk) = recv.read_chunk().await.expect("readable to the end of what came") {
                received += chunk.len();
                if received >= INBOUND_STREAM_BYTES {
                    return received;
                }
            }
            return received;
        }
    })
    .await;
    assert_eq!(received, INBOUND_STREAM_BYTES / MAX_CHUNK * MAX_CHUNK, "stream {next}'s bytes, all of them");
}

#[tokio::test]
async fn bytes_of_finished_streams_at_the_bound_end_only_the_stream_that_came_next() {
    let (mut server, client) = hostile_server().await;
    let full = (INBOUND_CONNECTION_BYTES / INBOUND_STREAM_BYTES) as u64;
    let chunk = Bytes::from(vec![7u8; MAX_CHUNK]);
    for id in 1..=full {
        for _ in 0..INBOUND_STREAM_BYTES / MAX_CHUNK {
            server.send(stream_message(id, chunk.clone())).await.unwrap();
        }
        server.send(Message::Binary(WsMessage::Finish { id }.encode().to_vec())).await.unwrap();
    }
    // Open streams holding nothing: resetting them would free nothing.
    for id in full + 1..=full + 8 {
        server.send(stream_message(id, Bytes::new())).await.unwrap();
    }
    let next = full + 9;
    server.send(stream_message(next, chunk)).await.unwrap();
    let mut stops = Vec::new();
    let quiet = async {
        loop {
            let Some(Ok(Message::Binary(bytes))) = server.next().await else { continue };
            if let Ok(WsMessage::Stop { id, .. }) = WsMessage::decode(Bytes::from(bytes)) {
                stops.push(id);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), quiet).await;
    assert_eq!(stops, [next], "only the stream whose bytes did not fit ends");
    drop(client);
}

/// Streams the server ends at once still count against the bound on open streams while their readers hold them:
/// counted only until their ends came, a server finishing each stream right after its first bytes had every one
/// handed out (each reader parked, over QUIC bounded by the stream credit quinn gives back only as readers let go).
#[tokio::test]
async fn finished_streams_count_while_their_readers_hold_them() {
    let (mut server, client) = hostile_server().await;
    let mut held = Vec::new();
    for id in 1..=MAX_INBOUND_STREAMS as u64 + 1 {
        server.send(stream_message(id, Bytes::from_static(b"x"))).await.unwrap();
        server.send(Message::Binary(WsMessage::Finish { id }.encode().to_vec())).await.unwrap();
        let accepted = tokio::select! {
            stream = client.accept_uni() => stream,
            closed = client.closed() => Err(closed),
        };
        match accepted {
            Ok(stream) => held.push(stream),
            Err(closed) => {
                assert!(id > MAX_INBOUND_STREAMS as u64, "closed at stream {id}: {closed:?}");
                break;
            }
        }
    }
    match within(client.closed()).await {
        WsError::Closed(ErrorCode::ProtocolViolation, reason) => assert!(reason.contains("room streams"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(held.len() <= MAX_INBOUND_STREAMS, "{} handed out", held.len());
}

/// Stops wait in a bounded queue: a server that takes none of them (its socket full) while it opens streams whose
/// readers stop them has the connection closed, instead of the stops piling up without bound.
#[tokio::test]
async fn stops_a_server_never_takes_are_bounded() {
    let config = WsConfig::default();
    let (a, b) = tokio::io::duplex(1024);
    let mut server = WebSocketStream::from_raw_socket(
        a,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(config.websocket()),
    )
    .await;
    let client_ws = WebSocketStream::from_raw_socket(
        b,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(config.websocket()),
    )
    .await;
    let client = WsSession::start(client_ws, Role::Client, config, addr());
    // The server never reads: the client's first stops fill the pipe and the WebSocket's write buffer, the rest
    // wait.
    for id in 1..=3 * super::stops::MAX_STOPS as u64 {
        server.send(stream_message(id, Bytes::from_static(b"x"))).await.unwrap();
        let accepted = tokio::select! {
            stream = client.accept_uni() => stream,
            closed = client.closed() => Err(closed),
        };
        match accepted {
            Ok(mut stream) => stream.stop(ErrorCode::NoError),
            Err(_) => break,
        }
    }
    // The server reads now: the close comes through.
    tokio::spawn(async move { while futures_util::StreamExt::next(&mut server).await.is_some() {} });
    match within(client.closed()).await {
        WsError::Closed(ErrorCode::ProtocolViolation, reason) => assert!(reason.contains("stops"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// A hostile server's empty chunks on a room stream nobody reads are not queued (they cost a place each and counted
/// nothing, without bound), and tiny ones count at least a queue place each: the stream's bound ends it long before
/// it holds a bound's worth of places.
#[tokio::test]
async fn empty_and_tiny_chunks_cannot_grow_a_room_streams_queue_past_its_bound() {
    let (mut server, client) = hostile_server().await;
    server.send(stream_message(1, Bytes::from_static(b"x"))).await.unwrap();
    let mut stream = within(client.accept_uni()).await.unwrap();
    for _ in 0..10_000 {
        server.send(stream_message(1, Bytes::new())).await.unwrap();
    }
    server.send(Message::Binary(WsMessage::Finish { id: 1 }.encode().to_vec())).await.unwrap();
    assert_eq!(within(stream.read_chunk()).await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(within(stream.read_chunk()).await.unwrap(), None, "nothing queued for the empty chunks");
    // One-byte chunks on a stream nobody reads: a stream's bound of places, not of bytes, ends it.
    server.send(stream_message(2, Bytes::from_static(b"y"))).await.unwrap();
    let _unread = within(client.accept_uni()).await.unwrap();
    let places = INBOUND_STREAM_BYTES / 64 + 1;
    let sending = tokio::spawn(async move {
        for _ in 0..places {
            server.send(stream_message(2, Bytes::from_static(b"z"))).await.unwrap();
        }
        loop {
            let Some(Ok(Message::Binary(bytes))) = within(server.next()).await else { continue };
            if let Ok(WsMessage::Stop { id, code }) = WsMessage::decode(Bytes::from(bytes)) {
                return (id, code);
            }
        }
    });
    assert_eq!(within(sending).await.unwrap(), (2, ErrorCode::SlowConsumer));
}

/// Datagrams nobody reads yet are bounded in bytes, and the oldest go past the bound (latest wins, as QUIC's
/// receive buffer): the newest were dropped, so a reader behind read stale ticks and never the latest.
#[tokio::test]
async fn datagrams_waiting_for_their_reader_keep_the_newest() {
    let (mut server, client) = hostile_server().await;
    let datagram = |n: u16| {
        let mut bytes = vec![0u8; 1000];
        bytes[..2].copy_from_slice(&n.to_be_bytes());
        Message::Binary(WsMessage::Datagram(Bytes::from(bytes)).encode().to_vec())
    };
    let (_send, mut control) = client.open_bi().unwrap();
    for n in 1..=200 {
        server.send(datagram(n)).await.unwrap();
    }
    // The last one queued before any is read: the read loop takes messages in order, so once a control message
    // sent after them is read, every datagram was queued.
    server.send(Message::Binary(WsMessage::Control(Bytes::from_static(b"after")).encode().to_vec())).await.unwrap();
    assert_eq!(&within(control.read_chunk()).await.unwrap().unwrap()[..], b"after");
    let mut read = Vec::new();
    while read.last() != Some(&200) {
        let bytes = within(client.read_datagram()).await.unwrap();
        read.push(u16::from_be_bytes([bytes[0], bytes[1]]));
    }
    assert!(read[0] > 1, "the oldest were dropped: {read:?}");
    assert!(read.windows(2).all(|w| w[1] == w[0] + 1), "the newest kept, in order: {read:?}");
    assert!(read.len() * 1032 <= super::datagrams_in::INBOUND_DATAGRAM_BYTES, "{} waited", read.len());
}
