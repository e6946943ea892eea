//! A WebSocket connection's two tasks: the writer (sends what the schedule picks, pings when idle, writes the
//! close) and the reader (routes each message to its stream or the datagram queue, enforces the idle timeout).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

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
    room_in::{Pushed, RoomQueue},
    shared::{Inbound, Outbound, PendingStream, Shared},
    Role,
};

pub(super) struct Senders {
    pub(super) control: mpsc::Sender<Inbound>,
    pub(super) streams: mpsc::UnboundedSender<PendingStream>,
}

pub(super) type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
pub(super) type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// How long the close message gets to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(mut sink: Sink<S>, shared: Arc<Shared>) {
    let keepalive = shared.config.keepalive;
    // A peer that only receives sends nothing a WebSocket reader sees (TCP's ACKs are not messages; a browser sends
    // no ping of its own), so a writer that keeps writing pings too when nothing arrived for this long: the pong
    // keeps the reader's idle timeout away, as the ACKs of what it sends keep a QUIC connection's.
    let quiet = keepalive.min(shared.config.idle_timeout / 3);
    let later = |after: Duration| Instant::now().checked_add(after);
    let (mut check_at, mut received, mut wrote) = (later(quiet), shared.received.load(Ordering::Relaxed), false);
    // The keep-alive counts from the last write. (Slept anew each time round the loop until 2026-12-08: the check
    // above, firing first, restarted it, and an idle ping went up to twice the keep-alive after the last write, past
    // a Rust client's 12 s `dead_server_after`, which dropped a healthy idle connection every 13 s.)
    let mut last_write = Instant::now();
    loop {
        let wake = shared.wake_writer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let quiet_ping = match check_at {
            Some(at) if Instant::now() >= at => {
                let now_received = shared.received.load(Ordering::Relaxed);
                let ping = wrote && now_received == received;
                (check_at, received, wrote) = (later(quiet), now_received, false);
                ping
            }
            _ => false,
        };
        let next = if quiet_ping { None } else { Some(shared.next_outbound()) };
        let message = match next {
            None => Message::Ping(Vec::new()),
            Some(Outbound::Message(message)) => Message::Binary(message.encode().to_vec()),
            Some(Outbound::Close(code, reason)) => {
                let close = WsMessage::Close { code, reason: reason.clone() }.encode();
                // The close frame whatever the message's send says (the peer's own close may have come first, and
                // tungstenite then refuses the message but still owes its close reply, sent by `close`).
                let bye = async {
                    let _ = sink.send(Message::Binary(close.to_vec())).await;
                    sink.close().await
                };
                let _ = tokio::time::timeout(CLOSE_GRACE, bye).await;
                shared.finished(code, reason);
                return;
            }
            // The connection is over: a close the peer began is answered (tungstenite queued the reply, which only
            // a write or flush sends; a browser reports 1006 without it), and one ended otherwise is closed.
            Some(Outbound::Done) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
                return;
            }
            Some(Outbound::Idle) => {
                let check = async {
                    match check_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = wake => continue,
                    () = check, if wrote => continue,
                    () = sleep_until_after(last_write, keepalive) => Message::Ping(Vec::new()),
                }
            }
        };
        (wrote, last_write) = (true, Instant::now());
        // Every write races the end: a close asked for while the socket is full goes at once (what waits is
        // discarded anyway), and a connection that ended (the peer's close, a dead socket) stops the writer even
        // when the peer no longer reads.
        let written = async {
            match sink.send(message).await {
                // Pongs tungstenite answered while the socket was full filled its (bounded) buffer: let it drain.
                Err(tokio_tungstenite::tungstenite::Error::WriteBufferFull(message)) => {
                    sink.flush().await?;
                    sink.send(message).await
                }
                other => other,
            }
        };
        let ended = shared.wait_for_end(|state| (state.closing.is_some() || state.closed.is_some()).then_some(()));
        tokio::select! {
            // The write first: one the socket takes at once is never dropped for a close asked for meanwhile (the
            // final reply a stream's `stopped` said was written).
            biased;
            written = written => if let Err(err) = written {
                return shared.finished(ErrorCode::Internal, format!("connection lost: {err}"));
            },
            () = ended => {}
        }
        super::shared::lock(&shared.state).writing = None;
        shared.changed.notify_waiters();
    }
}

/// Sleeps until `after` past `from` (for ever, where that is past what the clock holds).
async fn sleep_until_after(from: Instant, after: Duration) {
    match from.checked_add(after) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut source: Source<S>,
    shared: Arc<Shared>,
    inbound: Senders,
) {
    read_messages(&mut source, &shared, inbound).await;
    // This end closed the connection (a breach, the idle timeout, its owner's close): what still comes is read, and
    // dropped, until the peer closes too (briefly). Closing a socket with unread data resets it, and the peer, its
    // window full or on a stack that drops what it had not read at a reset, could lose the close message and its
    // reason; every path here, not only the owner's close.
    if super::shared::lock(&shared.state).closing.is_some() {
        let drain = async { while let Some(Ok(_)) = source.next().await {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
}

async fn read_messages<S: AsyncRead + AsyncWrite + Unpin>(
    source: &mut Source<S>,
    shared: &Arc<Shared>,
    inbound: Senders,
) {
    let idle = shared.config.idle_timeout;
    let mut streams = Streams::default();
    let mut deadline = Instant::now() + idle;
    loop {
        let closed = shared.wait_for_end(|state| state.closed.is_some().then_some(()));
        let message = tokio::select! {
            message = source.next() => message,
            () = tokio::time::sleep_until(deadline) => {
                let reason = format!("idle timeout: nothing received for {} s", idle.as_secs());
                shared.close(ErrorCode::Internal, &reason);
                return;
            }
            () = closed => return, // (drained by the caller when this end closed)
        };
        deadline = Instant::now() + idle;
        shared.received.fetch_add(1, Ordering::Relaxed);
        let bytes = match message {
            Some(Ok(Message::Binary(mut bytes))) => {
                // A message put together from fragments may hold twice its length: what waits for its reader
                // holds only its length.
                if bytes.capacity() > 2 * bytes.len() + 64 {
                    bytes.shrink_to_fit();
                }
                Bytes::from(bytes)
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                shared.refuse(ErrorCode::ProtocolViolation, "text WebSocket message (Quiver sends binary only)");
                return;
            }
            Some(Ok(Message::Close(_))) | None => {
                return shared.finished(ErrorCode::Internal, "the peer closed the WebSocket without a reason".into());
            }
            Some(Err(err)) => {
                use tokio_tungstenite::tungstenite::{error::ProtocolError, Error};
                let code = match err {
                    // The socket went away without a close: the connection is lost, nobody broke a rule.
                    Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                    | Error::Io(_)
                    | Error::ConnectionClosed
                    | Error::AlreadyClosed => {
                        return shared.finished(ErrorCode::Internal, format!("connection lost: {err}"));
                    }
                    Error::Capacity(_) => ErrorCode::FrameTooLarge,
                    // A text frame that is not UTF-8 is the peer's breach (RFC 6455 §8.1), as any protocol error.
                    Error::Protocol(_) | Error::Utf8 => ErrorCode::ProtocolViolation,
                    _ => ErrorCode::Internal,
                };
                match code {
                    ErrorCode::Internal => shared.close(code, &format!("WebSocket: {err}")),
                    _ => shared.refuse(code, &format!("WebSocket: {err}")),
                }
                return shared.finished(code, format!("WebSocket: {err}"));
            }
        };
        let message = match WsMessage::decode(bytes) {
            Ok(message) => message,
            Err(err) => return shared.refuse(err.code(), &err.to_string()),
        };
        let role = shared.role;
        match message {
            WsMessage::Control(bytes) => {
                // The control stream's queue is bounded: a peer that sends requests faster than they are served
                // waits here (QUIC: the stream's flow control), until the connection ends.
                let closed = shared.wait_for_end(|state| state.closed.is_some().then_some(()));
                let permits = shared.control_permits(bytes.len());
                let queued = async {
                    // Its bytes are counted against the window until its reader takes them (`WsRecv::read_chunk`).
                    if let Ok(room) = shared.control_room.acquire_many(permits).await {
                        room.forget();
                    }
                    if inbound.control.send(Inbound::Data(bytes)).await.is_err() {
                        tracing::trace!("control stream no longer read");
                    }
                };
                tokio::select! {
                    () = queued => {}
                    () = closed => return,
                }
                // The wait was this end's, not the peer's silence: the idle timeout starts again.
                deadline = Instant::now() + idle;
            }
            WsMessage::Datagram(datagram) if datagram.len() > shared.config.max_datagram => {
                let reason = format!("datagram of {} bytes (at most {})", datagram.len(), shared.config.max_datagram);
                return shared.refuse(ErrorCode::DatagramTooLarge, &reason);
            }
            WsMessage::Datagram(datagram) => {
                shared.datagrams_in.push(datagram);
            }
            WsMessage::Close { code, reason } => return shared.finished(code, reason),
            WsMessage::Stop { id, code } if role == Role::Server => shared.stop_stream(id, code),
            WsMessage::Stop { .. } => {
                return shared.refuse(ErrorCode::ProtocolViolation, "a server stops no streams (kind 6)");
            }
            WsMessage::Stream { .. } | WsMessage::Finish { .. } | WsMessage::Reset { .. } if role == Role::Server => {
                return shared.refuse(ErrorCode::ProtocolViolation, "clients open one stream, the control stream");
            }
            WsMessage::Stream { id, bytes } => {
                if let Err(too_many) = streams.data(id, bytes, shared, &inbound) {
                    return too_many.close(shared);
                }
            }
            WsMessage::Finish { id } => {
                if let Err(too_many) = streams.end(id, Inbound::Finish, shared, &inbound) {
                    return too_many.close(shared);
                }
            }
            WsMessage::Reset { id, code } => {
                if let Err(too_many) = streams.end(id, Inbound::Reset(code), shared, &inbound) {
                    return too_many.close(shared);
                }
            }
        }
    }
}

/// A client's room streams, as its reader routes them: each never waits (an unread stream must not hold the
/// others up), bounded by bytes instead (per stream and in all: [`RoomQueue`]), and by how many are open at once.
#[derive(Default)]
struct Streams {
    open: HashMap<u64, Arc<RoomQueue>>,
    /// The highest id seen: a lower one that is not open ended already (its late bytes are dropped).
    last: u64,
    /// Bytes of every stream waiting for their readers.
    total: Arc<AtomicUsize>,
    /// Streams whose queue is alive ([`RoomQueue`]): a stream the server ended still counts while its reader holds
    /// it (counted only until their ends came, a server finishing each stream at once, its reader parked, had them
    /// handed out without bound).
    live: Arc<AtomicUsize>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for queue in self.open.values() {
            queue.writer_gone();
        }
    }
}

/// A server that opened more room streams at once than this many ([`MAX_INBOUND_STREAMS`], or what its Welcome
/// allows).
struct TooManyStreams(usize);

impl TooManyStreams {
    fn close(self, shared: &Shared) {
        let reason = format!("the server opened more than {} room streams at once", self.0);
        shared.refuse(ErrorCode::ProtocolViolation, &reason);
    }
}

impl Streams {
    /// The stream `id`, opened (and handed to `accept_uni`) when it is new; `None` for one that ended.
    fn get(&mut self, id: u64, shared: &Shared, inbound: &Senders) -> Result<Option<&Arc<RoomQueue>>, TooManyStreams> {
        if !self.open.contains_key(&id) {
            if id <= self.last {
                return Ok(None);
            }
            let max = shared.max_streams_in.load(Ordering::Relaxed);
            if self.live.load(Ordering::Relaxed) >= max {
                // Streams this end stopped count no more once their readers let go (their late bytes are dropped
                // by `last`): a server that does not answer a stop with an end would otherwise have them counted
                // for the connection's life.
                self.open.retain(|_, queue| !queue.is_reader_gone());
            }
            if self.live.load(Ordering::Relaxed) >= max {
                return Err(TooManyStreams(max));
            }
            self.last = id;
            let queue = RoomQueue::new(self.total.clone(), self.live.clone(), id);
            if inbound.streams.send(PendingStream { queue: queue.clone() }).is_err() {
                return Ok(None);
            }
            self.open.insert(id, queue);
        }
        Ok(self.open.get(&id))
    }

    fn data(&mut self, id: u64, bytes: Bytes, shared: &Shared, inbound: &Senders) -> Result<(), TooManyStreams> {
        let mut retried = false;
        loop {
            let Some(queue) = self.get(id, shared, inbound)? else { return Ok(()) };
            match queue.data(bytes.clone()) {
                Pushed::Queued | Pushed::Dropped => return Ok(()),
                Pushed::Overflow => {
                    // Its reader fell behind: it ends here (SlowConsumer, as a server's reset would say) and the
                    // server stops sending it and tells the client to rejoin from its position (Kicked).
                    self.open.remove(&id);
                    shared.send_stop(id, ErrorCode::SlowConsumer);
                    return Ok(());
                }
                Pushed::ConnectionFull => {
                    // The open stream holding the most is the one whose reader fell furthest behind: it ends so,
                    // not whichever stream's bytes came next. If that frees too little (the bytes wait in streams
                    // that finished already), this one ends next time round: at most two resets per chunk.
                    let most = match retried {
                        true => None,
                        false => {
                            self.open.iter().filter(|(_, queue)| queue.queued() > 0).max_by_key(|(_, q)| q.queued())
                        }
                    };
                    let victim = most.map_or(id, |(held, _)| *held);
                    retried = true;
                    if let Some(queue) = self.open.remove(&victim) {
                        queue.end(Inbound::Reset(ErrorCode::SlowConsumer));
                        shared.send_stop(victim, ErrorCode::SlowConsumer);
                    }
                    if victim == id {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn end(&mut self, id: u64, end: Inbound, shared: &Shared, inbound: &Senders) -> Result<(), TooManyStreams> {
        if !self.open.contains_key(&id) && id > self.last {
            // Ended before a byte of it came: nothing to read, nothing to hand out (handed out and closed at once,
            // such streams escaped the bound on open ones: a hostile peer could queue them without limit).
            self.last = id;
            return Ok(());
        }
        if let Some(queue) = self.get(id, shared, inbound)? {
            queue.end(end);
        }
        self.open.remove(&id);
        Ok(())
    }
}
