//! The WebSocket client that Quiver is compared with, held as WebSocket apps hold one: a single TCP connection
//! (TCP_NODELAY) whose outgoing messages, whatever their kind, wait in one queue for one writer.

use std::net::SocketAddr;

use futures_util::{stream::SplitStream, SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::mpsc::UnboundedSender};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::{series::until_stopped, BenchError};

/// What the server sends to a connection.
pub(crate) type Incoming = SplitStream<WebSocketStream<TcpStream>>;

/// Connects to `ws://addr/`. Messages put on the returned queue are written in order by a task that keeps the
/// connection until `stop`.
pub(crate) async fn connect(
    addr: SocketAddr,
    stop: &CancellationToken,
) -> Result<(UnboundedSender<Message>, Incoming), BenchError> {
    let tcp = TcpStream::connect(addr).await.map_err(BenchError::io("WebSocket TCP"))?;
    tcp.set_nodelay(true).map_err(BenchError::io("WebSocket TCP"))?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp).await?;
    let (mut sink, incoming) = ws.split();
    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Message>();
    until_stopped(stop, async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // The queue's senders are gone before the drain is over: keep the connection.
        std::future::pending::<()>().await;
    });
    Ok((queue, incoming))
}
