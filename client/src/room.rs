//! Rooms on the client: a [`Room`] handle per joined room, fed by the room's stream. The stream reader drops
//! messages already delivered (seq at or below the last one) so that a resume never shows a duplicate, and waits
//! for the Join reply that opened the stream so that `Resumed` comes before the replay it announces.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use quiver_proto::{ErrorCode, EventKind, FrameCodec, Joined, Position, RoomFrame};
use tokio::sync::{mpsc, Notify};

use crate::{session::lock, Client, RequestError};

/// Events buffered per room before the reader stops reading the room's stream (and the server, after
/// `room_queue_bytes` more, resets it as a slow consumer).
pub const EVENT_BUFFER: usize = 1024;

/// How long a room stream waits for the Join reply that opened it, and a Join reply for its stream.
pub(crate) const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Something that happened in a room, in the room's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A posted message.
    Message(Message),
    /// A member joined.
    MemberJoined {
        /// Identity.
        member: String,
    },
    /// A member left (or its connection was lost).
    MemberLeft {
        /// Identity.
        member: String,
    },
    /// The room was rejoined after a reconnect or a slow-consumer reset. `recovered: false` means messages were
    /// missed: what follows is the room's latest messages, not everything since the last one seen.
    Resumed {
        /// Whether every message since the last one seen is replayed.
        recovered: bool,
        /// The room's epoch now (a new epoch means the server lost the room's history).
        epoch: u64,
    },
}

/// A message in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The room's epoch.
    pub epoch: u64,
    /// Its place in the room's order.
    pub seq: u64,
    /// Server time it was sequenced, µs since the Unix epoch.
    pub time_us: u64,
    /// Identity of the poster.
    pub sender: String,
    /// The poster's id for the post.
    pub client_msg_id: u64,
    /// Payload.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct RoomState {
    epoch: Option<u64>,
    last_seq: u64,
    members: BTreeSet<String>,
    /// Join replies not yet matched with their stream: (number of the join, the connection it was made on
    /// (`quinn::Connection::stable_id`), whether it was a rejoin, reply). A stream is matched only with a reply
    /// from its own connection: a reply whose stream never came before the connection was lost is stale.
    replies: VecDeque<(u64, usize, bool, Joined)>,
    joins: u64,
}

/// What the client keeps per joined room.
#[derive(Debug)]
pub(crate) struct RoomShared {
    pub(crate) name: String,
    state: Mutex<RoomState>,
    replied: Notify,
    events: mpsc::Sender<RoomEvent>,
}

impl RoomShared {
    pub(crate) fn new(name: String) -> (Arc<RoomShared>, mpsc::Receiver<RoomEvent>) {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let shared = RoomShared { name, state: Mutex::default(), replied: Notify::new(), events };
        (Arc::new(shared), rx)
    }

    /// The position to resume from: the last message delivered.
    pub(crate) fn position(&self) -> Option<Position> {
        let state = lock(&self.state);
        state.epoch.map(|epoch| Position { epoch, seq: state.last_seq })
    }

    /// Records a Join reply, for the stream it opened; returns the join's number (see [`RoomShared::orphaned`]).
    pub(crate) fn joined(&self, conn: usize, rejoin: bool, joined: Joined) -> u64 {
        let mut state = lock(&self.state);
        if state.epoch.is_none() {
            // First join: live events follow the room's current head.
            state.epoch = Some(joined.epoch);
            state.last_seq = joined.last_seq;
            state.members = joined.members.iter().cloned().collect();
        }
        state.joins += 1;
        let number = state.joins;
        state.replies.push_back((number, conn, rejoin, joined));
        drop(state);
        self.replied.notify_waiters();
        number
    }

    /// True (and the reply forgotten) when join `number`'s stream never showed its Open frame: it was reset before
    /// its first byte arrived, and the room must be joined again.
    pub(crate) fn orphaned(&self, number: u64) -> bool {
        let mut state = lock(&self.state);
        let before = state.replies.len();
        state.replies.retain(|(n, _, _, _)| *n != number);
        state.replies.len() != before
    }

    async fn take_reply(&self, conn: usize) -> Option<(bool, Joined)> {
        let wait = async {
            loop {
                let notified = self.replied.notified();
                {
                    let mut state = lock(&self.state);
                    if let Some(i) = state.replies.iter().position(|(_, c, _, _)| *c == conn) {
                        if let Some((_, _, rejoin, joined)) = state.replies.remove(i) {
                            return (rejoin, joined);
                        }
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(REPLY_WAIT, wait).await.ok()
    }
}

/// A joined room: its events, in order, and posting.
#[derive(Debug)]
pub struct Room {
    pub(crate) shared: Arc<RoomShared>,
    pub(crate) events: mpsc::Receiver<RoomEvent>,
    pub(crate) client: Client,
}

impl Room {
    /// The room's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The next event; `None` once the room is left or the client is closed for good.
    pub async fn next(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    /// Posts `body`; the future resolves to the seq the message got. Queued at the call (posts keep the order of
    /// the calls), retried across reconnects until acknowledged (the server deduplicates retries): delivered once.
    pub fn post(&self, body: impl Into<Bytes>) -> impl std::future::Future<Output = Result<u64, RequestError>> {
        self.client.post(&self.shared.name, body)
    }

    /// Members present, as of the events delivered to the room's reader so far.
    pub fn members(&self) -> Vec<String> {
        lock(&self.shared.state).members.iter().cloned().collect()
    }

    /// The last message position delivered.
    pub fn position(&self) -> Option<Position> {
        self.shared.position()
    }

    /// Leaves the room; its event stream ends.
    pub async fn leave(self) -> Result<(), RequestError> {
        self.client.leave(&self.shared.name).await
    }
}

/// Reads one room stream: `Open`, then events, until the stream ends.
pub(crate) async fn read_stream(client: Client, mut recv: quinn::RecvStream, conn: usize, max_frame: usize) {
    let codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let (name, epoch) = match next_frame(&codec, &mut recv, &mut buf).await {
        Ok(Some(RoomFrame::Open(open))) => (open.room, open.epoch),
        other => {
            tracing::warn!(?other, "room stream did not start with Open");
            let _ = recv.stop(quinn::VarInt::from_u32(ErrorCode::ProtocolViolation.to_u32()));
            return;
        }
    };
    let Some(shared) = client.room_shared(&name) else {
        // Left meanwhile.
        let _ = recv.stop(quinn::VarInt::from_u32(ErrorCode::NoError.to_u32()));
        return;
    };
    let Some((rejoin, joined)) = shared.take_reply(conn).await else {
        tracing::warn!(room = %name, "no Join reply for the room's stream");
        return;
    };
    {
        let mut state = lock(&shared.state);
        if state.epoch != Some(epoch) {
            // A new epoch: the old seqs mean nothing any more.
            state.epoch = Some(epoch);
            state.last_seq = 0;
        }
        state.members = joined.members.iter().cloned().collect();
    }
    if rejoin && shared.events.send(RoomEvent::Resumed { recovered: joined.recovered, epoch }).await.is_err() {
        return;
    }
    loop {
        match next_frame(&codec, &mut recv, &mut buf).await {
            Ok(Some(RoomFrame::Event(event))) => {
                let delivered = {
                    let mut state = lock(&shared.state);
                    match event.kind {
                        EventKind::Message { sender, client_msg_id, body } => {
                            if event.seq <= state.last_seq {
                                continue; // already delivered before a resume
                            }
                            state.last_seq = event.seq;
                            RoomEvent::Message(Message {
                                epoch,
                                seq: event.seq,
                                time_us: event.time_us,
                                sender,
                                client_msg_id,
                                body,
                            })
                        }
                        EventKind::MemberJoined { member } => {
                            state.members.insert(member.clone());
                            RoomEvent::MemberJoined { member }
                        }
                        EventKind::MemberLeft { member } => {
                            state.members.remove(&member);
                            RoomEvent::MemberLeft { member }
                        }
                    }
                };
                if shared.events.send(delivered).await.is_err() {
                    return; // the Room handle is gone
                }
            }
            Ok(Some(RoomFrame::Open { .. })) => {
                tracing::warn!(room = %name, "second Open on a room stream");
                return;
            }
            Ok(None) => return, // finished: the room was left
            Err(StreamEnd::Reset(ErrorCode::SlowConsumer)) => {
                tracing::info!(room = %name, "fell behind; resuming the room");
                client.rejoin(shared).await;
                return;
            }
            Err(StreamEnd::Reset(code)) => {
                tracing::warn!(room = %name, %code, "room stream reset");
                return;
            }
            Err(StreamEnd::Other(err)) => {
                tracing::debug!(room = %name, %err, "room stream ended");
                return;
            }
        }
    }
}

#[derive(Debug)]
enum StreamEnd {
    Reset(ErrorCode),
    Other(String),
}

async fn next_frame(
    codec: &FrameCodec,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<Option<RoomFrame>, StreamEnd> {
    loop {
        match codec.decode::<RoomFrame>(buf) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(StreamEnd::Other("stream ended inside a frame".into())),
            Err(quinn::ReadError::Reset(code)) => {
                return Err(StreamEnd::Reset(quiver_transport::close::from_quic_code(code)))
            }
            Err(err) => return Err(StreamEnd::Other(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(epoch: u64) -> Joined {
        Joined { room: "r".into(), epoch, recovered: true, replay_from: 1, last_seq: 0, members: vec![] }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_takes_only_a_join_reply_of_its_own_connection() {
        let (shared, _events) = RoomShared::new("r".into());
        let first = shared.joined(1, false, reply(7));
        // The connection was lost before the stream came; the next connection's stream must not take it.
        assert!(shared.take_reply(2).await.is_none(), "a reply of another connection is not taken");
        shared.joined(2, true, reply(8));
        let (rejoin, joined) = shared.take_reply(2).await.unwrap();
        assert!(rejoin);
        assert_eq!(joined.epoch, 8);
        assert!(shared.orphaned(first), "the stale reply is still there for its watchdog to drop");
    }
}
