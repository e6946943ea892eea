//! A client's connection, whatever carries it: QUIC (native, or a WebTransport session: web-transport-quinn's
//! [`Session`]) or a WebSocket ([`WsSession`], the fallback). The connection loop, room streams and ticks are one
//! code path over [`Wire`]; only what QUIC alone has (the tail probe, datagram copies, path statistics) is asked
//! for by kind.

use bytes::Bytes;
use quiver_proto::ErrorCode;
use quiver_transport::ws::{WsError, WsRecv, WsSend, WsSession};
use web_transport_quinn::{RecvStream, SendStream, Session, SessionError, WebTransportError};

use super::close::describe_session;

/// A client connection.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    /// QUIC: native, or a WebTransport session (shared: a `Session` is 776 bytes, and every task of the connection
    /// holds a handle).
    Quic(std::sync::Arc<Session>),
    /// A WebSocket.
    Ws(WsSession),
}

/// The sending side of a stream of a [`Wire`].
#[derive(Debug)]
pub(crate) enum WireSend {
    Quic(SendStream),
    Ws(WsSend),
}

/// The receiving side of a stream of a [`Wire`].
#[derive(Debug)]
pub(crate) enum WireRecv {
    Quic(RecvStream),
    Ws(WsRecv),
}

/// Why an operation on a [`Wire`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The connection is closed, with this code and reason.
    Closed(ErrorCode, String),
    /// The peer reset (reading) or stopped (writing) the stream, with this code.
    Stream(u32),
    /// The datagram is larger than the connection takes.
    TooLarge,
    /// A datagram that belongs to no session (WebTransport): the peer's garbage, not the end.
    Malformed,
    /// The browser closed its WebTransport session: it resets and stops the session's streams with
    /// `WT_SESSION_GONE` (HTTP/3's code, outside the mapped range) before its close capsule arrives. The end of the
    /// session, not a refusal of the stream.
    SessionGone,
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Closed(code, reason) => write!(f, "connection closed: {code}: {}", Printable(reason)),
            WireError::Stream(code) => write!(f, "stream cut off by the peer (code {code})"),
            WireError::TooLarge => write!(f, "datagram too large"),
            WireError::Malformed => write!(f, "datagram for no session"),
            WireError::SessionGone => write!(f, "the browser closed its WebTransport session"),
            WireError::Other(what) => write!(f, "{what}"),
        }
    }
}

/// A peer's text (a close reason) as it goes into the server's log: control characters escaped (`\n` as the two
/// characters `\` `n`), so that a peer cannot start a line of the log that looks like the server's own.
struct Printable<'a>(&'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c.is_control() {
                true => write!(f, "{}", c.escape_default())?,
                false => std::fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

impl From<SessionError> for WireError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::SendDatagramError(quinn::SendDatagramError::TooLarge) => WireError::TooLarge,
            SessionError::WebTransportError(WebTransportError::UnknownSession) => WireError::Malformed,
            err => {
                let (code, reason) = describe_session(&err);
                WireError::Closed(code, reason)
            }
        }
    }
}

impl From<WsError> for WireError {
    fn from(err: WsError) -> Self {
        match err {
            WsError::Closed(code, reason) => WireError::Closed(code, reason),
            WsError::Reset(code) | WsError::Stopped(code) => WireError::Stream(code.to_u32()),
            WsError::TooLarge(..) => WireError::TooLarge,
            WsError::Unsupported(what) => WireError::Other(what.into()),
        }
    }
}

/// The code a stop with an unrepresentable code is reported with (no application code is this large).
pub(crate) const INVALID_STOP: u32 = u32::MAX;

/// WebTransport's `WT_SESSION_GONE` (draft-ietf-webtrans-http3): the code a browser resets and stops its session's
/// streams with as it closes the session (Chromium, before the close capsule).
const WT_SESSION_GONE: u64 = 0x170d_7b68;

impl From<web_transport_quinn::WriteError> for WireError {
    fn from(err: web_transport_quinn::WriteError) -> Self {
        match err {
            web_transport_quinn::WriteError::SessionError(err) => err.into(),
            web_transport_quinn::WriteError::Stopped(code) => WireError::Stream(code),
            // A stop whose code is outside the application's range (raw QUIC: 2^32 and up; WebTransport: outside
            // HTTP/3's mapped range) is a stop all the same: the peer takes no more of the stream.
            web_transport_quinn::WriteError::InvalidStopped(code) if code.into_inner() == WT_SESSION_GONE => {
                WireError::SessionGone
            }
            web_transport_quinn::WriteError::InvalidStopped(_) => WireError::Stream(INVALID_STOP),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl Wire {
    /// Which kind of client this is, for logs and gauges.
    pub(crate) fn kind(&self) -> WireKind {
        match self {
            Wire::Quic(session) if session.request().is_some() => WireKind::WebTransport,
            Wire::Quic(_) => WireKind::Native,
            Wire::Ws(_) => WireKind::WebSocket,
        }
    }

    /// True for a WebSocket (cheaper than [`Wire::kind`], for the tick path).
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self, Wire::Ws(_))
    }

    /// Closes the connection with `code`, giving `reason` (truncated to fit a packet) to the peer.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        match self {
            Wire::Quic(session) => super::close::close_session(session, code, reason),
            Wire::Ws(ws) => ws.close(code, reason),
        }
    }

    /// The client's control stream.
    pub(crate) async fn accept_bi(&self) -> Result<(WireSend, WireRecv), WireError> {
        match self {
            Wire::Quic(session) => {
                let (send, recv) = session.accept_bi().await?;
                Ok((WireSend::Quic(send), WireRecv::Quic(recv)))
            }
            Wire::Ws(ws) => {
                let (send, recv) = ws.accept_bi().await?;
                Ok((WireSend::Ws(send), WireRecv::Ws(recv)))
            }
        }
    }

    /// Completes with what the client opened beyond its control stream (a protocol violation), or `None` once the
    /// connection can accept nothing more.
    pub(crate) async fn other_stream(&self) -> Option<&'static str> {
        match self {
            Wire::Quic(session) => tokio::select! {
                Ok(_) = session.accept_bi() => Some("a second bidirectional stream"),
                Ok(_) = session.accept_uni() => Some("a unidirectional stream"),
                else => None,
            },
            // The WebSocket mapping has no way to open one (a room stream message from a client closes it).
            Wire::Ws(ws) => {
                ws.closed().await;
                None
            }
        }
    }

    /// Completes once the connection is closed (by either side, or by the transport).
    pub(crate) async fn closed(&self) {
        match self {
            Wire::Quic(session) => drop(session.closed().await),
            Wire::Ws(ws) => drop(ws.closed().await),
        }
    }

    /// Opens a room stream.
    pub(crate) async fn open_uni(&self) -> Result<WireSend, WireError> {
        match self {
            Wire::Quic(session) => Ok(WireSend::Quic(session.open_uni().await?)),
            Wire::Ws(ws) => Ok(WireSend::Ws(ws.open_uni()?)),
        }
    }

    /// Sends a datagram once there is room for it.
    pub(crate) async fn send_datagram_wait(&self, datagram: Bytes) -> Result<(), WireError> {
        match self {
            Wire::Quic(session) => Ok(session.send_datagram_wait(datagram).await?),
            Wire::Ws(ws) => Ok(ws.send_datagram_wait(datagram).await?),
        }
    }

    /// Sends a datagram if there is room for it now, never making room by dropping an older one: `None` when there
    /// is none (nothing was sent). Checked and queued in one step ([`quiver_transport::if_ready`]).
    pub(crate) fn try_send_datagram(&self, datagram: Bytes) -> Option<Result<(), WireError>> {
        quiver_transport::if_ready(self.send_datagram_wait(datagram))
    }

    /// The code the transport itself closed the connection with for what the client sent, if it did (the
    /// WebSocket lane: a text message, one too large or malformed), to be counted as a refusal. QUIC's own
    /// protocol errors are quinn's to close and are not counted here.
    pub(crate) fn transport_refusal(&self) -> Option<ErrorCode> {
        match self {
            Wire::Quic(_) => None,
            Wire::Ws(ws) => ws.refused(),
        }
    }

    /// The largest tick datagram from this client passed on to subscribers: what the server sends on this client's
    /// own path (larger than the portable size only where path MTU discovery found a larger path: such ticks reach
    /// the subscribers whose paths carry them), at least the portable size; over the WebSocket lane, which has no
    /// path of its own, the portable size.
    pub(crate) fn tick_datagram_max(&self) -> usize {
        match self {
            Wire::Quic(session) => session.max_datagram_size().max(quiver_proto::MAX_PORTABLE_DATAGRAM),
            Wire::Ws(_) => quiver_proto::MAX_PORTABLE_DATAGRAM,
        }
    }

    /// What the WebSocket lane let go of so far, though queued (`WsSession::lane_superseded`); `None` over QUIC,
    /// whose datagram buffer drops nothing the sink queues (it sends only where there is room).
    pub(crate) fn lane_superseded(&self) -> Option<(u64, u64)> {
        match self {
            Wire::Quic(_) => None,
            Wire::Ws(ws) => Some(ws.lane_superseded()),
        }
    }

    /// Room in the datagram send buffer, bytes.
    pub(crate) fn datagram_send_buffer_space(&self) -> usize {
        match self {
            Wire::Quic(session) => session.datagram_send_buffer_space(),
            Wire::Ws(ws) => ws.datagram_send_buffer_space(),
        }
    }

    /// The next datagram from the client.
    pub(crate) async fn read_datagram(&self) -> Result<Bytes, WireError> {
        match self {
            Wire::Quic(session) => Ok(session.read_datagram().await?),
            Wire::Ws(ws) => Ok(ws.read_datagram().await?),
        }
    }
}

/// The kinds of client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireKind {
    Native,
    WebTransport,
    WebSocket,
}

impl WireSend {
    /// Writes what the stream takes now (waiting while it takes nothing); how many bytes.
    pub(crate) async fn write(&mut self, buf: &[u8]) -> Result<usize, WireError> {
        match self {
            WireSend::Quic(send) => Ok(send.write(buf).await?),
            WireSend::Ws(send) => Ok(send.write(buf).await?),
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> Result<(), WireError> {
        match self {
            WireSend::Quic(send) => Ok(send.write_all(buf).await?),
            WireSend::Ws(send) => Ok(send.write_all(buf).await?),
        }
    }

    /// Writes all of `chunk`.
    pub(crate) async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WireError> {
        match self {
            WireSend::Quic(send) => Ok(send.write_chunk(chunk).await?),
            WireSend::Ws(send) => Ok(send.write_chunk(chunk).await?),
        }
    }

    /// Ends the stream after what was written.
    pub(crate) fn finish(&mut self) {
        let _ = match self {
            WireSend::Quic(send) => send.finish().is_ok(),
            WireSend::Ws(send) => send.finish().is_ok(),
        };
    }

    /// Cuts the stream off with `code`.
    pub(crate) fn reset(&mut self, code: ErrorCode) {
        let _ = match self {
            WireSend::Quic(send) => send.reset(code.to_u32()).is_ok(),
            WireSend::Ws(send) => send.reset(code).is_ok(),
        };
    }

    /// Completes with the peer's code when it stops the stream (the WebSocket's kind 6); never for QUIC, whose stops
    /// show as write errors and through [`WireSend::poll_stopped`].
    pub(crate) fn stop_signal(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ErrorCode> + Send>> {
        match self {
            WireSend::Quic(_) => Box::pin(std::future::pending()),
            WireSend::Ws(send) => Box::pin(send.stop_signal()),
        }
    }

    /// A QUIC stream's stop, polled without waiting on the stream (it stays free for writers between polls: the
    /// wake-up is registered with the connection and kept in the stream): `Ready(Some(code))` once the peer
    /// stopped it, `Ready(None)` once it ended or the connection did. Always pending for a WebSocket stream, whose
    /// stops [`WireSend::stop_signal`] reports.
    pub(crate) fn poll_stopped(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<u32>> {
        use std::task::Poll;
        use web_transport_quinn::WriteError;
        match self {
            WireSend::Quic(send) => match web_transport_trait::poll::SendStream::poll_closed(send, cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(WriteError::Stopped(code))) => Poll::Ready(Some(code)),
                Poll::Ready(Err(WriteError::InvalidStopped(_))) => Poll::Ready(Some(INVALID_STOP)),
                Poll::Ready(_) => Poll::Ready(None),
            },
            WireSend::Ws(_) => Poll::Pending,
        }
    }

    /// Completes when the peer stopped the stream (`Some(code)`), or it ended and was delivered (`None`); a
    /// browser's stop as it closes its session is [`WireError::SessionGone`] (the crate's own `stopped` reports a
    /// code outside the mapped range as an ordinary end).
    pub(crate) async fn stopped(&mut self) -> Result<Option<u32>, WireError> {
        match self {
            WireSend::Quic(send) => {
                let closed = std::future::poll_fn(|cx| web_transport_trait::poll::SendStream::poll_closed(send, cx));
                match closed.await {
                    Ok(()) => Ok(None),
                    Err(web_transport_quinn::WriteError::Stopped(code)) => Ok(Some(code)),
                    Err(err) => match WireError::from(err) {
                        WireError::Stream(code) => Ok(Some(code)),
                        err => Err(err),
                    },
                }
            }
            WireSend::Ws(send) => Ok(send.stopped().await?.map(|code| code.to_u32())),
        }
    }
}

impl WireRecv {
    /// The stream's next bytes; `None` once it ended.
    pub(crate) async fn read_chunk(&mut self) -> Result<Option<Bytes>, WireError> {
        match self {
            WireRecv::Quic(recv) => match recv.read_chunk(usize::MAX, true).await {
                Ok(chunk) => Ok(chunk.map(|chunk| chunk.bytes)),
                Err(web_transport_quinn::ReadError::SessionError(err)) => Err(err.into()),
                Err(web_transport_quinn::ReadError::Reset(code)) => Err(WireError::Stream(code)),
                Err(web_transport_quinn::ReadError::InvalidReset(code)) if code.into_inner() == WT_SESSION_GONE => {
                    Err(WireError::SessionGone)
                }
                Err(err) => Err(WireError::Other(err.to_string())),
            },
            WireRecv::Ws(recv) => Ok(recv.read_chunk().await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's close reason cannot forge a line of the server's text log: its control characters are escaped.
    #[test]
    fn a_close_reason_is_logged_with_its_control_characters_escaped() {
        let forged = "bye\n2026-12-06T03:00:00Z  INFO quiver_server: server stopped\r\u{1b}[2J";
        let shown = WireError::Closed(ErrorCode::NoError, forged.into()).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("bye\\n2026-12-06"), "{shown}");
        let plain = WireError::Closed(ErrorCode::NoError, "Zoë 名前: done".into()).to_string();
        assert!(plain.ends_with("Zoë 名前: done"), "{plain}");
    }
}
