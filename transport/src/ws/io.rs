//! A WebSocket connection's two tasks: the writer (sends what the schedule picks, pings when idle, writes the
//! close) and the reader (routes each message to its stream or the datagram queue, enforces the idle timeout).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quiver_proto::{ws::WsMessage, ErrorCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
    time::Instant,
};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::{
    shared::{Inbound, Outbound, Shared},
    Role, WsRecv, INBOUND_MESSAGES,
};

pub(super) struct Senders {
    pub(super) control: mpsc::Sender<Inbound>,
    pub(super) datagrams: mpsc::Sender<Bytes>,
    pub(super) streams: mpsc::UnboundedSender<WsRecv>,
}

pub(super) type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
pub(super) type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// How long the close message gets to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(mut sink: Sink<S>, shared: Arc<Shared>) {
    let keepalive = shared.config.keepalive;
    loop {
        let wake = shared.wake_writer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let message = match shared.next_outbound() {
            Outbound::Message(message) => message,
            Outbound::Close(code, reason) => {
                let close = WsMessage::Close { code, reason: reason.clone() }.encode();
                let bye = async {
                    sink.send(Message::Binary(close.to_vec())).await?;
                    sink.close().await
                };
                let _ = tokio::time::timeout(CLOSE_GRACE, bye).await;
                shared.finished(code, reason);
                return;
            }
            Outbound::Done => return,
            Outbound::Idle => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep(keepalive) => {
                        if sink.send(Message::Ping(Vec::new())).await.is_err() {
                            return shared.finished(ErrorCode::Internal, "connection lost".into());
                        }
                    }
                }
                continue;
            }
        };
        let written = sink.send(Message::Binary(message.encode().to_vec()));
        // A close asked for while the socket is full goes at once: what waits is discarded anyway.
        let closing = shared.wait_for(|state| state.closing.is_some().then_some(()));
        tokio::select! {
            written = written => if let Err(err) = written {
                return shared.finished(ErrorCode::Internal, format!("connection lost: {err}"));
            },
            () = closing => {}
        }
        shared.changed.notify_waiters();
    }
}

pub(super) async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut source: Source<S>,
    shared: Arc<Shared>,
    inbound: Senders,
) {
    let idle = shared.config.idle_timeout;
    let mut streams: HashMap<u64, mpsc::Sender<Inbound>> = HashMap::new();
    let mut last_stream = 0;
    let mut deadline = Instant::now() + idle;
    loop {
        let closed = shared.wait_for(|state| state.closed.is_some().then_some(()));
        let message = tokio::select! {
            message = source.next() => message,
            () = tokio::time::sleep_until(deadline) => {
                let reason = format!("idle timeout: nothing received for {} s", idle.as_secs());
                shared.close(ErrorCode::Internal, &reason);
                return;
            }
            () = closed => return,
        };
        deadline = Instant::now() + idle;
        shared.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = match message {
            Some(Ok(Message::Binary(bytes))) => Bytes::from(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                shared.close(ErrorCode::ProtocolViolation, "text WebSocket message (Quiver sends binary only)");
                return;
            }
            Some(Ok(Message::Close(_))) | None => {
                return shared.finished(ErrorCode::Internal, "the peer closed the WebSocket without a reason".into());
            }
            Some(Err(err)) => {
                let code = match err {
                    tokio_tungstenite::tungstenite::Error::Capacity(_) => ErrorCode::FrameTooLarge,
                    tokio_tungstenite::tungstenite::Error::Protocol(_) => ErrorCode::ProtocolViolation,
                    _ => ErrorCode::Internal,
                };
                shared.close(code, &format!("WebSocket: {err}"));
                return shared.finished(code, format!("WebSocket: {err}"));
            }
        };
        let message = match WsMessage::decode(bytes) {
            Ok(message) => message,
            Err(err) => {
                shared.close(err.code(), &err.to_string());
                return;
            }
        };
        let role = shared.role;
        match message {
            WsMessage::Control(bytes) => {
                if inbound.control.send(Inbound::Data(bytes)).await.is_err() {
                    tracing::trace!("control stream no longer read");
                }
            }
            WsMessage::Datagram(datagram) => {
                let _ = inbound.datagrams.try_send(datagram);
            }
            WsMessage::Close { code, reason } => return shared.finished(code, reason),
            WsMessage::Stream { .. } | WsMessage::Finish { .. } | WsMessage::Reset { .. } if role == Role::Server => {
                shared.close(ErrorCode::ProtocolViolation, "clients open one stream, the control stream");
                return;
            }
            WsMessage::Stream { id, bytes } => {
                if let Some(tx) = stream_for(&mut streams, &mut last_stream, id, &shared, &inbound) {
                    let _ = tx.send(Inbound::Data(bytes)).await;
                }
            }
            WsMessage::Finish { id } => {
                if let Some(tx) = stream_for(&mut streams, &mut last_stream, id, &shared, &inbound) {
                    let _ = tx.send(Inbound::Finish).await;
                }
                streams.remove(&id);
            }
            WsMessage::Reset { id, code } => {
                if let Some(tx) = stream_for(&mut streams, &mut last_stream, id, &shared, &inbound) {
                    let _ = tx.send(Inbound::Reset(code)).await;
                }
                streams.remove(&id);
            }
        }
    }
}

/// The channel of room stream `id` (a client's reader): a new id (above every earlier one) opens a stream and
/// hands it to `accept_uni`; an id seen and ended before is `None` (its late bytes are dropped).
fn stream_for(
    streams: &mut HashMap<u64, mpsc::Sender<Inbound>>,
    last: &mut u64,
    id: u64,
    shared: &Arc<Shared>,
    inbound: &Senders,
) -> Option<mpsc::Sender<Inbound>> {
    if let Some(tx) = streams.get(&id) {
        return Some(tx.clone());
    }
    if id <= *last {
        return None;
    }
    *last = id;
    let (tx, rx) = mpsc::channel(INBOUND_MESSAGES);
    // The stream's handle keeps the connection open while the driver reads it, as QUIC's streams do.
    let session = shared.handle.get()?.upgrade()?;
    let recv = WsRecv { session, rx, ended: false };
    inbound.streams.send(recv).ok()?;
    streams.insert(id, tx.clone());
    Some(tx)
}
