//! A room stream the client stops: the server answers with the stream's end (a reset with the client's code), as
//! QUIC's sender answers STOP_SENDING with RESET_STREAM, and the client stops counting it among its open streams.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quiver_proto::{ws::WsMessage, ErrorCode};
use tokio_tungstenite::tungstenite::Message;

use super::tests::{addr, raw_pair, within};
use super::*;

/// The next message of `kind` a raw peer reads (others skipped).
async fn next_message(
    peer: &mut tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
    kind: impl Fn(&WsMessage) -> bool,
) -> WsMessage {
    loop {
        let Some(Ok(Message::Binary(bytes))) = within(peer.next()).await else { continue };
        if let Ok(message) = WsMessage::decode(Bytes::from(bytes)) {
            if kind(&message) {
                return message;
            }
        }
    }
}

/// A stopped stream's end is sent, as a reset with the stopper's code, once its owner ends it (here by dropping
/// it, as a room's outbox does once the member left): before, it was forgotten without a word, and the client
/// counted the stream open for the connection's life.
#[tokio::test]
async fn a_stopped_stream_ends_with_a_reset_once_its_owner_ends_it() {
    let config = WsConfig::default();
    let (server_ws, mut peer) = raw_pair(&config).await;
    let server = WsSession::start(server_ws, Role::Server, config, addr());
    let mut room = server.open_uni().unwrap();
    room.write_all(b"open").await.unwrap();
    let WsMessage::Stream { id, .. } = next_message(&mut peer, |m| matches!(m, WsMessage::Stream { .. })).await else {
        unreachable!()
    };
    peer.send(Message::Binary(WsMessage::Stop { id, code: ErrorCode::SlowConsumer }.encode().to_vec())).await.unwrap();
    assert_eq!(within(room.stop_signal()).await, ErrorCode::SlowConsumer);
    drop(room);
    let end = next_message(&mut peer, |m| matches!(m, WsMessage::Reset { .. } | WsMessage::Finish { .. })).await;
    assert!(matches!(end, WsMessage::Reset { id: ended, code: ErrorCode::SlowConsumer } if ended == id), "{end:?}");
}

/// A client that stops many room streams (rooms dropped or left while their readers waited) is not closed for
/// them: each stopped stream leaves its count of open streams, whether the server answers with an end or not.
#[tokio::test]
async fn streams_the_client_stopped_do_not_count_against_its_bound() {
    let config = WsConfig::default();
    let (mut server, client_ws) = raw_pair(&config).await;
    let client = WsSession::start(client_ws, Role::Client, config, addr());
    // A server that never answers a stop (an older one), past the bound on open streams.
    for id in 1..=MAX_INBOUND_STREAMS as u64 + 4 {
        let message = WsMessage::Stream { id, bytes: Bytes::from_static(b"x") };
        server.send(Message::Binary(message.encode().to_vec())).await.unwrap();
        let mut recv = within(client.accept_uni()).await.unwrap();
        assert_eq!(within(recv.read_chunk()).await.unwrap().as_deref(), Some(&b"x"[..]));
        recv.stop(ErrorCode::NoError);
    }
    let quiet = async { tokio::time::sleep(Duration::from_millis(100)).await };
    tokio::select! {
        closed = client.closed() => panic!("closed for streams it stopped: {closed:?}"),
        () = quiet => {}
    }
    drop(server);
}

/// Counts its wake-ups.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Room streams waiting for a stop are not woken by every message written on the connection: only a stop (or the
/// close) wakes them. Before, each written message woke every room stream's stop signal (and the read loop's
/// wait for the close): a client in 64 rooms sending Pings made the server poll 65 tasks per reply.
#[tokio::test]
async fn stop_signals_are_not_woken_by_messages_written() {
    use std::future::Future;
    let (server_ws, client_ws) = raw_pair(&WsConfig::default()).await;
    let server = WsSession::start(server_ws, Role::Server, WsConfig::default(), addr());
    let client = WsSession::start(client_ws, Role::Client, WsConfig::default(), addr());
    let wakes = std::sync::Arc::new(Wakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut rooms = Vec::new();
    let mut signals = Vec::new();
    for _ in 0..64 {
        let room = server.open_uni().unwrap();
        let mut signal = Box::pin(room.stop_signal());
        assert!(signal.as_mut().poll(&mut cx).is_pending());
        signals.push(signal);
        rooms.push(room);
    }
    let (_client_send, mut client_recv) = client.open_bi().unwrap();
    let (mut control, _server_recv) = server.accept_bi().await.unwrap();
    for _ in 0..200 {
        control.write_all(b"reply").await.unwrap();
        within(client_recv.read_chunk()).await.unwrap().unwrap();
    }
    assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 0, "stop signals woken by writes");
    drop(signals);
}
