//! A Quiver connection over one WebSocket ([`quiver_proto::ws`], the fallback where UDP or WebTransport is not
//! available), with the shape of a QUIC connection: a control stream, server-opened room streams, datagrams and a
//! close with a code and reason. Everything above (the server's connection loop, the client's driver) is the same
//! code for both.
//!
//! One ordered byte pipe cannot give QUIC's independence between streams, so the writer task schedules what
//! goes next itself: the control stream first (but a room stream's chunk goes between two of its chunks, so replies
//! cannot starve the rooms); then room streams (round robin, a chunk each) and datagrams take turns. Each stream
//! may have [`WsConfig::stream_window`] bytes waiting here, all room streams together
//! [`WsConfig::connection_window`] (a write past either waits: the room outboxes above keep their bounds and
//! slow-consumer handling). Datagrams wait in a small lane,
//! [`WsConfig::datagram_buffer`] bytes, where a newer tick replaces the waiting one of its channel: when the socket
//! cannot take more, only the newest tick of each channel waits, never a backlog.

#[cfg(test)]
mod close_tests;
#[cfg(test)]
mod control_in_tests;
mod datagrams_in;
#[cfg(test)]
mod inbound_tests;
mod io;
#[cfg(test)]
mod keepalive_tests;
mod lane;
mod recv;
mod room_in;
mod shared;
#[cfg(test)]
mod stop_tests;
mod stops;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use quiver_proto::ErrorCode;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, Notify},
};
use tokio_tungstenite::{tungstenite::protocol::WebSocketConfig, WebSocketStream};

pub use recv::WsRecv;
use shared::{lock, End, OutStream, Shared, State};

/// The wire's bounds for the WebSocket mapping: the largest chunk of one stream in one message, the largest
/// datagram (defined with the mapping's encoding, `quiver_proto::ws`).
pub use quiver_proto::ws::{MAX_CHUNK, MAX_DATAGRAM};

/// The WebSocket path, as WebTransport's: `wss://host:port/quiver`.
pub const PATH: &str = "/quiver";

/// Which end this is: the client opens the control stream, the server opens room streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that accepted the WebSocket.
    Server,
    /// The end that connected.
    Client,
}

/// A WebSocket connection's bounds and timers.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Bytes one stream may have waiting to be written (QUIC: the stream's send buffer).
    pub stream_window: usize,
    /// Bytes all room streams together may have waiting to be written (QUIC: the connection's send window). A
    /// room stream finished by its writer keeps its bytes here until they are written, with nobody left to reset
    /// it: without this bound, joining and leaving rooms in a loop piled up a window per cycle.
    pub connection_window: usize,
    /// Bytes of datagrams waiting to be written (QUIC: the datagram send buffer).
    pub datagram_buffer: usize,
    /// Bytes of the control stream received and not read yet (QUIC: the stream's receive window); beyond that,
    /// reading the socket waits. A server's is [`crate::tuning::server_receive_windows`]' stream window.
    pub control_window: usize,
    /// Largest datagram either end sends.
    pub max_datagram: usize,
    /// A ping after this long without writing anything ([`WsConfig::with_keep_alive`]); and, whatever it is, after
    /// at most a third of `idle_timeout` of writing with nothing received (the pong keeps the peer's messages, and
    /// with them this end's idle timeout, coming: a peer that only receives sends nothing of its own).
    pub keepalive: Duration,
    /// Closed when nothing arrives for this long.
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            stream_window: 64 * 1024,
            connection_window: 1024 * 1024,
            datagram_buffer: 4 * 1024,
            control_window: 128 * 1024,
            max_datagram: MAX_DATAGRAM,
            keepalive: crate::tuning::KEEP_ALIVE,
            idle_timeout: crate::tuning::IDLE_TIMEOUT,
        }
    }
}

impl WsConfig {
    /// The defaults with a keep-alive as the QUIC lane's (a client's `TransportTuning::keep_alive`, a server's
    /// `server_keep_alive` of it): a ping after that long without writing; `None`, never (the connection then ends
    /// after `idle_timeout` of silence, as a QUIC connection without keep-alives does). Sub-second intervals are
    /// QUIC's tail-loss probes (the `tail-probe` tuning), not keep-alives: TCP retransmits on its own, so the
    /// WebSocket keeps [`crate::tuning::KEEP_ALIVE`] instead.
    pub fn with_keep_alive(keep_alive: Option<Duration>) -> WsConfig {
        let keepalive = match keep_alive {
            Some(k) if k < Duration::from_secs(1) => crate::tuning::KEEP_ALIVE,
            Some(k) => k,
            None => Duration::MAX,
        };
        WsConfig { keepalive, ..WsConfig::default() }
    }

    /// The WebSocket settings that go with this: messages of at most a chunk or a datagram (plus their headers),
    /// every message written at once (no buffering in tungstenite), and a bounded write buffer: a message waits
    /// for the socket before the next is buffered, but the Pong tungstenite answers to each Ping while reading was
    /// appended to it even when the socket was full, so a peer sending Pings and never reading grew it without
    /// limit. Bounded, a Pong that does not fit waits in tungstenite's one Pong slot (a newer one replaces it).
    pub fn websocket(&self) -> WebSocketConfig {
        let largest = MAX_CHUNK.max(self.max_datagram) + 16;
        WebSocketConfig {
            max_message_size: Some(largest),
            max_frame_size: Some(largest),
            write_buffer_size: 0,
            max_write_buffer_size: 2 * largest + 1024,
            ..WebSocketConfig::default()
        }
    }
}

/// Why a WebSocket connection's operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The connection is closed, with this code and reason (sent by the peer, or given to [`WsSession::close`]).
    #[error("connection closed ({0}): {1}")]
    Closed(ErrorCode, String),
    /// The sender cut the stream off with this code.
    #[error("stream reset ({0})")]
    Reset(ErrorCode),
    /// The peer stopped reading the stream, with this code.
    #[error("stream stopped by the peer ({0})")]
    Stopped(ErrorCode),
    /// A datagram larger than the connection's largest.
    #[error("datagram of {0} bytes is larger than {1}")]
    TooLarge(usize, usize),
    /// Not something this end does (a client opening a room stream, say).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Closes the connection when the last handle goes (as a QUIC connection does).
#[derive(Debug)]
pub(super) struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close(ErrorCode::NoError, "connection dropped");
    }
}

/// One Quiver connection over a WebSocket. Clones are handles on the same connection; it closes when the last
/// handle (streams included) is dropped, or on [`close`](WsSession::close).
#[derive(Debug, Clone)]
pub struct WsSession {
    handle: Arc<Handle>,
}

/// How many messages of the control stream may wait for its reader, and bytes [`WsConfig::control_window`] (beyond
/// either, reading the socket waits, as QUIC's flow control makes a peer wait). Counted in messages alone, 64 of
/// 16 KiB each (more with the spare capacity of a fragmented message's buffer) let a client pin 1–2 MiB per
/// connection where QUIC's window allows 128 KiB.
pub(super) const INBOUND_MESSAGES: usize = 64;
/// Bytes of one room stream that may wait for its reader (the client); beyond that the stream is reset locally
/// with `SlowConsumer` and the server told to stop (kind 6), so one unread room never holds the connection up.
pub(super) const INBOUND_STREAM_BYTES: usize = 1024 * 1024;
/// Bytes of all room streams together that may wait for their readers (QUIC: the connection's receive window); a
/// stream whose bytes would pass it is reset as one passing [`INBOUND_STREAM_BYTES`] is.
pub(super) const INBOUND_CONNECTION_BYTES: usize = 16 * 1024 * 1024;
/// Room streams the server may have open at once (QUIC: the client's stream limit), unless the server's Welcome
/// allows more rooms ([`WsSession::set_max_inbound_streams`]); a server opening more is broken or hostile, and the
/// connection is closed (`ProtocolViolation`).
pub const MAX_INBOUND_STREAMS: usize = 4096;

impl WsSession {
    /// Runs the connection over `ws` (an accepted or connected WebSocket, opened with [`WsConfig::websocket`]),
    /// `remote` the peer's address. The reader and writer tasks are spawned here and end with the connection.
    pub fn start<S>(ws: WebSocketStream<S>, role: Role, config: WsConfig, remote: SocketAddr) -> WsSession
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (control_tx, control_rx) = mpsc::channel(INBOUND_MESSAGES);
        let control_room = tokio::sync::Semaphore::new(config.control_window.max(1));
        let (streams_tx, streams_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            role,
            config,
            remote,
            state: Mutex::new(State { next_stream: 1, next_wire_id: 1, ..State::default() }),
            wake_writer: Notify::new(),
            changed: Notify::new(),
            ended: Notify::new(),
            control_in: tokio::sync::Mutex::new(Some(control_rx)),
            control_room,
            datagrams_in: Default::default(),
            datagram_reader: tokio::sync::Mutex::new(()),
            streams_in: tokio::sync::Mutex::new(streams_rx),
            handle: std::sync::OnceLock::new(),
            received: Default::default(),
            max_streams_in: MAX_INBOUND_STREAMS.into(),
        });
        let handle = Arc::new(Handle(shared.clone()));
        let _ = shared.handle.set(Arc::downgrade(&handle));
        let (sink, stream) = ws.split();
        let inbound = io::Senders { control: control_tx, streams: streams_tx };
        tokio::spawn(io::write_loop(sink, shared.clone()));
        tokio::spawn(io::read_loop(stream, shared.clone(), inbound));
        WsSession { handle }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.0
    }

    /// WebSocket messages received so far (keep-alive pings and pongs included).
    pub fn received(&self) -> u64 {
        self.shared().received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.shared().remote
    }

    /// The client's control stream (once).
    pub fn open_bi(&self) -> Result<(WsSend, WsRecv), WsError> {
        if self.shared().role != Role::Client {
            return Err(WsError::Unsupported("the server does not open a control stream"));
        }
        self.take_control()
    }

    fn take_control(&self) -> Result<(WsSend, WsRecv), WsError> {
        if self.shared().is_closed() {
            return Err(self.shared().closed_error());
        }
        let rx = {
            let mut state = lock(&self.shared().state);
            if std::mem::replace(&mut state.control_taken, true) {
                None
            } else {
                self.shared().control_in.try_lock().ok().and_then(|mut rx| rx.take())
            }
        };
        let rx = rx.ok_or(WsError::Unsupported("a WebSocket connection has one control stream"))?;
        let send = WsSend { session: self.handle.clone(), id: 0, finished: false };
        Ok((send, WsRecv::control(self.handle.clone(), rx)))
    }

    /// The server's side of the control stream: at once the first time, then never (waits until the connection
    /// closes and returns why).
    pub async fn accept_bi(&self) -> Result<(WsSend, WsRecv), WsError> {
        if self.shared().role == Role::Server && !lock(&self.shared().state).control_taken {
            return self.take_control();
        }
        Err(self.closed().await)
    }

    /// Opens a room stream (the server).
    pub fn open_uni(&self) -> Result<WsSend, WsError> {
        if self.shared().role != Role::Server {
            return Err(WsError::Unsupported("clients open no room streams"));
        }
        let mut state = lock(&self.shared().state);
        if state.closed.is_some() || state.closing.is_some() {
            drop(state);
            return Err(self.shared().closed_error());
        }
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(id, OutStream::default());
        Ok(WsSend { session: self.handle.clone(), id, finished: false })
    }

    /// Lets the server have up to `max` room streams open at once (the client, once the server's Welcome said how
    /// many rooms it allows); never fewer than [`MAX_INBOUND_STREAMS`].
    pub fn set_max_inbound_streams(&self, max: usize) {
        self.shared().max_streams_in.store(max.max(MAX_INBOUND_STREAMS), std::sync::atomic::Ordering::Relaxed);
    }

    /// The next room stream the server opened (the client).
    pub async fn accept_uni(&self) -> Result<WsRecv, WsError> {
        let mut streams = self.shared().streams_in.lock().await;
        tokio::select! {
            Some(stream) = streams.recv() => {
                Ok(WsRecv::room(self.handle.clone(), stream.queue))
            }
            err = self.closed() => Err(err),
        }
    }

    /// Queues a datagram: a waiting tick of the same channel is replaced by it (or, older than the waiting one, is
    /// dropped); when the buffer is full the oldest waiting datagram is dropped (as QUIC's datagram buffer does).
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), WsError> {
        let shared = self.shared();
        let max = shared.config.max_datagram;
        if datagram.len() > max {
            return Err(WsError::TooLarge(datagram.len(), max));
        }
        let mut state = lock(&shared.state);
        if state.closed.is_some() || state.closing.is_some() {
            drop(state);
            return Err(shared.closed_error());
        }
        lane::queue_datagram(&mut state, datagram, shared.config.datagram_buffer);
        drop(state);
        shared.wake_writer.notify_one();
        Ok(())
    }

    /// Queues a datagram once the buffer has room for it: checked and queued under one lock, so that another
    /// sender's datagram taken in between cannot make this one push out a datagram queued before it.
    pub async fn send_datagram_wait(&self, datagram: Bytes) -> Result<(), WsError> {
        let shared = self.shared();
        let max = shared.config.max_datagram;
        if datagram.len() > max {
            return Err(WsError::TooLarge(datagram.len(), max));
        }
        let (len, cap) = (datagram.len(), shared.config.datagram_buffer);
        let mut datagram = Some(datagram);
        let queued = shared
            .wait_for(|state| {
                if state.closed.is_some() || state.closing.is_some() {
                    return Some(false);
                }
                if state.datagram_bytes + len > cap.max(len) {
                    return None;
                }
                lane::queue_datagram(state, datagram.take()?, cap);
                Some(true)
            })
            .await;
        match queued {
            true => {
                shared.wake_writer.notify_one();
                Ok(())
            }
            false => Err(shared.closed_error()),
        }
    }

    /// Ticks the datagram lane let go of so far before the socket took them, though queued: (replaced by their
    /// channel's newer tick, dropped as older than the one of their channel waiting).
    pub fn lane_superseded(&self) -> (u64, u64) {
        lock(&self.shared().state).lane_superseded
    }

    /// Bytes the datagram buffer can take now.
    pub fn datagram_send_buffer_space(&self) -> usize {
        let shared = self.shared();
        shared.config.datagram_buffer.saturating_sub(lock(&shared.state).datagram_bytes)
    }

    /// Largest datagram.
    pub fn max_datagram_size(&self) -> usize {
        self.shared().config.max_datagram
    }

    /// The next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, WsError> {
        let shared = self.shared();
        let _one_reader = shared.datagram_reader.lock().await;
        tokio::select! {
            datagram = shared.datagrams_in.pop() => Ok(datagram),
            err = self.closed() => Err(err),
        }
    }

    /// Closes the connection with `code` and `reason` (at most 512 bytes), telling the peer; the first close wins.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.shared().close(code, reason);
    }

    /// Waits until the connection is closed; returns why.
    pub async fn closed(&self) -> WsError {
        let shared = self.shared();
        let (code, reason) = shared.wait_for_end(|state| state.closed.clone()).await;
        WsError::Closed(code, reason)
    }

    /// The code this end closed the connection with for what the peer sent (a text message, one too large or
    /// malformed, a WebSocket protocol error), if it did: a breach the owner counts (it sees only the close).
    pub fn refused(&self) -> Option<ErrorCode> {
        lock(&self.shared().state).refused
    }

    /// Why the connection closed, once it has (or is closing).
    pub fn close_reason(&self) -> Option<(ErrorCode, String)> {
        let state = lock(&self.shared().state);
        state.closed.clone().or_else(|| state.closing.clone())
    }
}

/// The sending side of a stream.
#[derive(Debug)]
pub struct WsSend {
    session: Arc<Handle>,
    id: u64,
    finished: bool,
}

impl WsSend {
    fn shared(&self) -> &Shared {
        &self.session.0
    }

    /// Takes what fits in the stream's window (at least one byte), waiting while it is full.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, WsError> {
        std::future::poll_fn(|cx| self.shared().poll_write(self.id, cx, buf)).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WsError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Writes all of `chunk`.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WsError> {
        self.write_all(&chunk).await
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) -> Result<(), WsError> {
        self.finished = true;
        self.shared().end(self.id, End::Finish);
        Ok(())
    }

    /// Cuts the stream off with `code`; what was not written yet is not.
    pub fn reset(&mut self, code: ErrorCode) -> Result<(), WsError> {
        self.finished = true;
        self.shared().end(self.id, End::Reset(code));
        Ok(())
    }

    /// Completes with the peer's code once it stops the stream (kind 6: it cannot take more); never otherwise (nor
    /// once this handle is dropped: hold it while waiting).
    pub fn stop_signal(&self) -> impl std::future::Future<Output = ErrorCode> + Send + 'static {
        let (shared, id) = (self.session.0.clone(), self.id);
        async move { shared.wait_for_end(|state| state.streams.get(&id).and_then(|s| s.stopped)).await }
    }

    /// Waits until the stream ended and everything written was handed to the socket (`Ok(None)`), or the
    /// connection closed.
    pub async fn stopped(&self) -> Result<Option<ErrorCode>, WsError> {
        let id = self.id;
        let finished = self.finished;
        let done = self
            .shared()
            .wait_for(|state| {
                if state.closed.is_some() || state.closing.is_some() {
                    return Some(false);
                }
                // Taken by the writer is not written yet: the queue empties when a chunk is taken.
                let written = state.streams.get(&id).is_none_or(|s| s.queue.is_empty()) && state.writing != Some(id);
                (finished && written).then_some(true)
            })
            .await;
        match done {
            true => Ok(None),
            false => Err(self.shared().closed_error()),
        }
    }
}

impl Drop for WsSend {
    fn drop(&mut self) {
        if !self.finished && self.id != 0 {
            self.shared().end(self.id, End::Finish);
        }
    }
}
