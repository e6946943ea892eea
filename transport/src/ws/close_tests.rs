//! Closes on the WebSocket lane: the peer's answered, this end's breaches noted, drained, and what a stream's
//! `stopped` waits for.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quiver_proto::{ws::WsMessage, ErrorCode};
use tokio_tungstenite::{
    tungstenite::{protocol::Role as WsRole, Message},
    WebSocketStream,
};

use super::{
    tests::{addr, raw_pair, stalled, within},
    *,
};

/// A close the peer begins is answered with a close frame (RFC 6455 §5.5.1): tungstenite queues the reply, which
/// only a later write or flush sends, and the writer used to return without one (browsers then report 1006,
/// `wasClean: false`).
#[tokio::test]
async fn a_close_the_peer_begins_is_answered() {
    let config = WsConfig::default();
    let (server, mut peer) = raw_pair(&config).await;
    let session = WsSession::start(server, Role::Server, config, addr());
    peer.send(Message::Close(None)).await.unwrap();
    let answer = within(async {
        loop {
            match peer.next().await {
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return false,
            }
        }
    })
    .await;
    assert!(answer, "the peer's close answered with a close frame");
    within(session.closed()).await;
    assert_eq!(session.refused(), None, "a close is not a breach");
}

/// What the peer breaks is noted for the owner to count (it sees only the close): a text message, and a text frame
/// that is not UTF-8, which tungstenite reports as a UTF-8 error (once mapped to `Internal`, "not the client's
/// fault").
#[tokio::test]
async fn a_peers_breach_is_noted_with_its_code() {
    let config = WsConfig::default();
    let (server, mut peer) = raw_pair(&config).await;
    let session = WsSession::start(server, Role::Server, config.clone(), addr());
    peer.send(Message::Text("hello".into())).await.unwrap();
    within(session.closed()).await;
    assert_eq!(session.refused(), Some(ErrorCode::ProtocolViolation));

    // A text frame of invalid UTF-8, written as raw bytes (tungstenite's sender refuses to make one).
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
    let session = WsSession::start(server, Role::Server, config, addr());
    // FIN + text opcode, masked, length 2, mask 0, payload 0xff 0xfe.
    tokio::io::AsyncWriteExt::write_all(&mut b, &[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).await.unwrap();
    let why = within(session.closed()).await;
    assert_eq!(session.refused(), Some(ErrorCode::ProtocolViolation), "{why}");

    // A peer that goes away without a close lost its connection: no breach.
    let (server, peer) = raw_pair(&WsConfig::default()).await;
    let session = WsSession::start(server, Role::Server, WsConfig::default(), addr());
    drop(peer);
    within(session.closed()).await;
    assert_eq!(session.refused(), None);
}

/// `stopped` says a finished stream's bytes were handed to the socket: not while the writer still holds its last
/// chunk (the queue empties when the chunk is taken). Before, a stream's final reply could be taken for written while
/// the socket had not taken it, and a close right after dropped it.
#[tokio::test]
async fn a_stream_is_not_said_written_while_its_last_chunk_waits_for_the_socket() {
    let (server, _peer_reads_nothing) = stalled(WsConfig::default()).await;
    let mut room = server.open_uni().unwrap();
    room.write_all(&[1; 16 * 1024]).await.unwrap();
    room.finish().unwrap();
    within(async {
        while !lock(&server.shared().state).streams.values().all(|s| s.queue.is_empty()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await; // the writer took the chunk; the 1 KiB pipe holds a little of it
    let stopped = tokio::time::timeout(Duration::from_millis(200), room.stopped()).await;
    assert!(stopped.is_err(), "said written while the socket had not taken it: {stopped:?}");
}

/// A connection this end closes for a breach goes on reading (and dropping) what the peer still sends, briefly:
/// before, only a close by the owner drained, and a breach's close left unread bytes in the socket, whose reset can
/// lose the close message and its reason at the peer (here: the peer's writes never completed).
#[tokio::test]
async fn a_breach_is_closed_while_the_peer_still_writes_and_it_reads_why() {
    let config = WsConfig::default();
    let (a, b) = tokio::io::duplex(8 * 1024);
    let server = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
    let peer = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(config.websocket())).await;
    let _session = WsSession::start(server, Role::Server, config, addr());
    let (mut tx, mut rx) = peer.split();
    tx.send(Message::Text("not binary".into())).await.unwrap();
    let writing = tokio::spawn(async move {
        for _ in 0..64 {
            tx.send(Message::Binary(vec![0; 4096])).await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    let written = tokio::time::timeout(Duration::from_millis(900), writing).await;
    let written = written.expect("the peer's writes complete in time").unwrap();
    // (Without the drain they fail: the server stops reading, and its end of the pipe goes with the session, which
    // on TCP is the reset that can take the close message with it.)
    assert!(written.is_ok(), "the server stopped reading at its close: {:?}", written.err());
    let why = within(async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Binary(bytes))) => match WsMessage::decode(Bytes::from(bytes)) {
                    Ok(WsMessage::Close { code, reason }) => return Some((code, reason)),
                    _ => continue,
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    let (code, reason) = why.expect("the close message and its reason");
    assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
    assert!(reason.contains("text WebSocket message"), "{reason}");
}
