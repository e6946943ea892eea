//! The control stream's inbound bound: what a client sends and the server has not read yet holds at most the
//! control window, as QUIC's stream flow control bounds it.

use bytes::Bytes;
use futures_util::SinkExt;
use quiver_proto::ws::WsMessage;
use tokio_tungstenite::{tungstenite::protocol::Role as WsRole, tungstenite::Message, WebSocketStream};

use super::tests::{addr, within};
use super::*;

/// A client's control messages that nobody reads are taken up to the control window (and the message the read
/// loop holds meanwhile); then reading the socket waits, and the client's writes with it. Before, 64 messages
/// were taken whatever their size: 1 MiB and more per connection. Read, they all come through, in order.
#[tokio::test]
async fn unread_control_messages_hold_at_most_the_control_window() {
    let config = WsConfig::default();
    let (a, b) = tokio::io::duplex(1024);
    let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
    let mut peer = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(config.websocket())).await;
    let server = WsSession::start(server_ws, Role::Server, config.clone(), addr());
    let mut sent = 0usize;
    for n in 0..100u8 {
        let message = Message::Binary(WsMessage::Control(Bytes::from(vec![n; MAX_CHUNK])).encode().to_vec());
        match tokio::time::timeout(Duration::from_millis(300), peer.send(message)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    // The window, the message the read loop holds while it waits for room, and what the pipe and the two
    // WebSockets' buffers hold.
    let most = config.control_window / MAX_CHUNK + 3;
    assert!(sent <= most, "{sent} messages of {MAX_CHUNK} bytes taken (at most {most})");
    let (_send, mut recv) = server.accept_bi().await.unwrap();
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < sent * MAX_CHUNK {
            got.extend_from_slice(&within(recv.read_chunk()).await.unwrap().unwrap());
        }
        got
    });
    let got = within(reading).await.unwrap();
    let expected: Vec<u8> = (0..sent).flat_map(|n| vec![n as u8; MAX_CHUNK]).collect();
    assert!(got == expected, "in order, each once");
}
