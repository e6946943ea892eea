//! The client's connection, whatever carries it: QUIC, or a WebSocket (the fallback where UDP or QUIC is
//! blocked). The control stream, room streams, ticks and the close work the same over both; what only QUIC has
//! (the tail probe, datagram copies, path statistics) is asked for by kind.

use bytes::Bytes;
use quiver_proto::ErrorCode;
use quiver_transport::close::describe;
#[cfg(feature = "websocket")]
use quiver_transport::ws::{WsError, WsRecv, WsSend, WsSession};

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// QUIC (UDP).
    Quic,
    /// A WebSocket (TCP), the fallback.
    WebSocket,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "quic",
            TransportKind::WebSocket => "websocket",
        })
    }
}

/// A connection to the server.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Quic(QuicLink),
    #[cfg(feature = "websocket")]
    Ws(WsSession),
}

/// A QUIC connection, and the code and reason this end closed it with (first close wins, as quinn's).
#[derive(Debug, Clone)]
pub(crate) struct QuicLink {
    conn: quinn::Connection,
    local_close: std::sync::Arc<std::sync::OnceLock<(ErrorCode, String)>>,
}

impl QuicLink {
    pub(crate) fn new(conn: quinn::Connection) -> QuicLink {
        QuicLink { conn, local_close: std::sync::Arc::default() }
    }
}

impl std::ops::Deref for QuicLink {
    type Target = quinn::Connection;

    fn deref(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// The sending side of the control stream.
#[derive(Debug)]
pub(crate) enum LinkSend {
    Quic(quinn::SendStream),
    #[cfg(feature = "websocket")]
    Ws(WsSend),
}

/// The receiving side of a stream (the control stream, or a room stream).
#[derive(Debug)]
pub(crate) enum LinkRecv {
    Quic(quinn::RecvStream),
    #[cfg(feature = "websocket")]
    Ws(WsRecv),
}

/// Why reading a stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The connection closed, with this code and reason.
    Closed(ErrorCode, String),
    /// The server cut the stream off with this code.
    Reset(ErrorCode),
    /// Anything else.
    Other(String),
}

/// Why a write failed (for the request's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteFailed(pub(crate) String);

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendDatagramError {
    TooLarge,
    Closed,
    Unsupported,
}

#[cfg(feature = "websocket")]
fn ws_read_error(err: WsError) -> ReadError {
    match err {
        WsError::Closed(code, reason) => ReadError::Closed(code, reason),
        WsError::Reset(code) => ReadError::Reset(code),
        other => ReadError::Other(other.to_string()),
    }
}

impl Link {
    /// QUIC or WebSocket.
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Link::Quic(_) => TransportKind::Quic,
            #[cfg(feature = "websocket")]
            Link::Ws(_) => TransportKind::WebSocket,
        }
    }

    /// The QUIC connection, for what only QUIC has.
    pub(crate) fn quic(&self) -> Option<&quinn::Connection> {
        match self {
            Link::Quic(quic) => Some(&quic.conn),
            #[cfg(feature = "websocket")]
            Link::Ws(_) => None,
        }
    }

    /// The WebSocket session, if this is one.
    #[cfg(feature = "websocket")]
    pub(crate) fn ws(&self) -> Option<&WsSession> {
        match self {
            Link::Quic(_) => None,
            Link::Ws(ws) => Some(ws),
        }
    }

    /// Opens the control stream.
    pub(crate) async fn open_bi(&self) -> Result<(LinkSend, LinkRecv), ReadError> {
        match self {
            Link::Quic(quic) => match quic.open_bi().await {
                Ok((send, recv)) => Ok((LinkSend::Quic(send), LinkRecv::Quic(recv))),
                Err(err) => {
                    let (code, reason) = describe(&err);
                    Err(ReadError::Closed(code, reason))
                }
            },
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => {
                let (send, recv) = ws.open_bi().map_err(ws_read_error)?;
                Ok((LinkSend::Ws(send), LinkRecv::Ws(recv)))
            }
        }
    }

    /// The next room stream the server opened; `None` once the connection is closed.
    pub(crate) async fn accept_uni(&self) -> Option<LinkRecv> {
        match self {
            Link::Quic(quic) => quic.accept_uni().await.ok().map(LinkRecv::Quic),
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.accept_uni().await.ok().map(LinkRecv::Ws),
        }
    }

    /// The next datagram; `None` once the connection is closed.
    pub(crate) async fn read_datagram(&self) -> Option<Bytes> {
        match self {
            Link::Quic(quic) => quic.read_datagram().await.ok(),
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.read_datagram().await.ok(),
        }
    }

    /// Sends a datagram (never waits).
    pub(crate) fn send_datagram(&self, datagram: Bytes) -> Result<(), SendDatagramError> {
        match self {
            Link::Quic(quic) => quic.send_datagram(datagram).map_err(|err| match err {
                quinn::SendDatagramError::TooLarge => SendDatagramError::TooLarge,
                quinn::SendDatagramError::ConnectionLost(_) => SendDatagramError::Closed,
                _ => SendDatagramError::Unsupported,
            }),
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.send_datagram(datagram).map_err(|err| match err {
                WsError::TooLarge(..) => SendDatagramError::TooLarge,
                _ => SendDatagramError::Closed,
            }),
        }
    }

    /// The largest datagram, if datagrams go at all.
    pub(crate) fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Link::Quic(quic) => quic.max_datagram_size(),
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => Some(ws.max_datagram_size()),
        }
    }

    /// Closes the connection with `code` and `reason`.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        match self {
            Link::Quic(quic) => {
                // quinn reports a close of ours as `LocallyClosed`, without its code or reason: kept here.
                let _ = quic.local_close.set((code, reason.to_string()));
                quiver_transport::close::close(quic, code, reason);
            }
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.close(code, reason),
        }
    }

    /// Completes once the connection is closed.
    pub(crate) async fn closed(&self) {
        match self {
            Link::Quic(quic) => {
                quic.closed().await;
            }
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => {
                ws.closed().await;
            }
        }
    }

    /// Why the connection closed, once it has.
    pub(crate) fn close_reason(&self) -> Option<(ErrorCode, String)> {
        match self {
            Link::Quic(quic) => quic.close_reason().map(|err| match (&err, quic.local_close.get()) {
                (quinn::ConnectionError::LocallyClosed, Some(why)) => why.clone(),
                _ => describe(&err),
            }),
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.close_reason(),
        }
    }

    /// Packets (QUIC) or messages (WebSocket) received so far: a count that stops growing means a silent server.
    pub(crate) fn received(&self) -> u64 {
        match self {
            Link::Quic(quic) => quic.stats().udp_rx.datagrams,
            #[cfg(feature = "websocket")]
            Link::Ws(ws) => ws.received(),
        }
    }
}

impl LinkSend {
    /// Writes all of `buf`; the error says why not.
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> Result<(), WriteFailed> {
        match self {
            LinkSend::Quic(send) => send.write_all(buf).await.map_err(|err| WriteFailed(err.to_string())),
            #[cfg(feature = "websocket")]
            LinkSend::Ws(send) => send.write_all(buf).await.map_err(|err| WriteFailed(err.to_string())),
        }
    }
}

impl LinkRecv {
    /// The stream's next bytes; `None` once it ended.
    pub(crate) async fn read_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        match self {
            LinkRecv::Quic(recv) => match recv.read_chunk(usize::MAX, true).await {
                Ok(chunk) => Ok(chunk.map(|chunk| chunk.bytes)),
                Err(quinn::ReadError::ConnectionLost(err)) => {
                    let (code, reason) = describe(&err);
                    Err(ReadError::Closed(code, reason))
                }
                Err(quinn::ReadError::Reset(code)) => {
                    Err(ReadError::Reset(quiver_transport::close::from_quic_code(code)))
                }
                Err(err) => Err(ReadError::Other(err.to_string())),
            },
            #[cfg(feature = "websocket")]
            LinkRecv::Ws(recv) => recv.read_chunk().await.map_err(ws_read_error),
        }
    }

    /// Tells the server to stop sending on this stream (QUIC's STOP_SENDING; the WebSocket mapping's stop).
    pub(crate) fn stop(&mut self, code: ErrorCode) {
        match self {
            LinkRecv::Quic(recv) => {
                let _ = recv.stop(quiver_transport::close::quic_code(code));
            }
            #[cfg(feature = "websocket")]
            LinkRecv::Ws(recv) => recv.stop(code),
        }
    }
}
