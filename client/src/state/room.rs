//! A joined room on the client, without IO: where the client is in the room's order (epoch and last seq), who is
//! present, and what each frame of the room's streams means for the application. Streams describe themselves
//! (their Open frame is the Join's outcome and names the Join), so nothing here pairs replies with streams. Only a
//! stream of a Join of this room's own is taken (a room left and joined again at once gets the earlier Join's stream
//! too, late), and only the room's newest stream delivers: frames of an older one (being replaced by a rejoin) are
//! ignored, so events never go back in the room's order, and messages at or below the last seq delivered are
//! dropped, so a resume never shows a duplicate.

use std::collections::BTreeSet;

use bytes::Bytes;
use quiver_proto::{EventKind, Joined, Position};

use super::merge::Merge;

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

/// Which of a room's streams a frame came from: streams are numbered in the order the client accepted them (across
/// connections), so a higher number is a newer stream, whatever order their readers happen to run in.
pub type StreamNumber = u64;

/// A Join as the client wrote it: the connection it went on (numbered by the client) and its `req_id` there (ids
/// grow on a connection). The server repeats the `req_id` in the room stream's Open frame, on the same connection.
pub type JoinId = (usize, u64);

/// What a stream's Open frame means for the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The stream is the room's newest: read it; hand out this event first (`Resumed`, for every stream after the
    /// first).
    Current(Option<RoomEvent>),
    /// A newer stream of the room opened already, or the stream answers a Join written before this room's first
    /// Join on its connection (a Join of the name left since), or on another connection than the room's latest:
    /// this one is outdated, drop it.
    Stale,
}

/// One joined room's state.
#[derive(Debug, Default)]
pub struct RoomState {
    epoch: Option<u64>,
    last_seq: u64,
    members: BTreeSet<String>,
    /// The newest stream opened, if any: the only one whose events count.
    current: Option<StreamNumber>,
    /// The first Join written for the room on the connection of its latest Join: streams of Joins from it on open.
    join: Option<JoinId>,
    /// A rejoin's position is pending: the latest Join's first stream says (with `Resumed`) whether it was
    /// recovered.
    resuming: bool,
    /// Joined from a stored position ([`RoomState::resume_from`]): the first stream says, with `Resumed`, whether
    /// it was recovered, whichever Join it answers (until 2026-12-08 only the latest's could: a kick's rejoin
    /// written before it opened hid a `recovered: false`).
    from_position: bool,
    /// The latest Join written: only its stream takes `resuming` (an earlier Join's stream on the same connection,
    /// read after a kick's rejoin was written, said `Resumed` for a rejoin that had not happened, then the rejoin's
    /// stream said it again).
    latest: Option<JoinId>,
    /// The current stream's merge with its datagram copies, once it said it has them (redundant delivery).
    copies: Option<(StreamNumber, Merge<quiver_proto::RoomEvent>)>,
    /// Where the room's first stream started: its events come after it.
    started: Option<Position>,
}

impl RoomState {
    /// A room not opened yet.
    pub fn new() -> Self {
        RoomState::default()
    }

    /// Starts from `position` (a join that resumes where an earlier session stopped): messages up to it are not
    /// delivered again, and the first stream's `Resumed` says whether everything after it was.
    pub fn resume_from(&mut self, position: Position) {
        self.epoch = Some(position.epoch);
        self.last_seq = position.seq;
        self.from_position = true;
    }

    /// Where the room's first stream started (its events, delivered or waiting to be read, are after it), once
    /// one opened.
    pub fn started(&self) -> Option<Position> {
        self.started
    }

    /// The position to resume from: the last message delivered (`None` before the room's epoch is known).
    pub fn position(&self) -> Option<Position> {
        self.epoch.map(|epoch| Position { epoch, seq: self.last_seq })
    }

    /// The position a rejoin (after a reconnect) resumes from, as [`RoomState::position`]. A room whose stream has
    /// not opened yet has its position from the Join's reply: its first stream then says, with `Resumed`, whether
    /// everything after it was replayed, as any rejoin's does (a new epoch, a trimmed history).
    pub fn rejoin_position(&mut self) -> Option<Position> {
        let position = self.position();
        if position.is_some() && self.current.is_none() {
            self.resuming = true;
        }
        position
    }

    /// A Join of the room is about to be written (the application's, or a rejoin). On a new connection, only
    /// streams of this Join and later ones open from now on; on the connection of the room's earlier Joins, nothing
    /// changes: a rejoin refused as `AlreadyJoined` opens no stream, and the earlier Join's stream, maybe not read
    /// yet, is the room's (newer streams replace older ones by their number).
    pub fn joining(&mut self, (connection, req_id): JoinId) {
        self.latest = Some((connection, req_id));
        if self.join.is_none_or(|(on, _)| on != connection) {
            self.join = Some((connection, req_id));
        }
    }

    /// True when `stream` is the room's newest stream.
    pub fn is_current(&self, stream: StreamNumber) -> bool {
        self.current == Some(stream)
    }

    /// Members present, as of the events handed out so far.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().cloned().collect()
    }

    /// A Join reply. It only matters for a room whose stream has not opened yet: its position and members are
    /// known at once (a reconnect before the stream arrives then resumes from the right place).
    pub fn replied(&mut self, joined: &Joined) {
        if self.epoch.is_none() {
            self.epoch = Some(joined.epoch);
            self.last_seq = joined.last_seq;
        }
        if self.current.is_none() {
            self.members = joined.members.iter().cloned().collect();
        }
    }

    /// Stream `stream`'s Open frame, read on connection `connection`. Only streams of Joins noted with
    /// [`RoomState::joining`] open.
    pub fn open(&mut self, (connection, stream): (usize, StreamNumber), open: &Joined) -> Opened {
        let ours = self.join.is_some_and(|(on, first)| on == connection && open.req_id >= first);
        if !ours || self.current.is_some_and(|current| current >= stream) {
            return Opened::Stale;
        }
        let latest = self.latest == Some((connection, open.req_id));
        let first = self.current.replace(stream).is_none();
        let asked = first && std::mem::take(&mut self.from_position);
        let rejoin = !first || (latest && std::mem::take(&mut self.resuming)) || asked;
        if self.epoch != Some(open.epoch) {
            // First stream, or the room's history was lost: seqs count from this stream's replay.
            self.epoch = Some(open.epoch);
            self.last_seq = open.replay_from.saturating_sub(1);
        } else if !open.recovered && open.last_seq < self.last_seq {
            // A position ahead of what the room holds in its own epoch (a store that lost its tail, a typo): the
            // replay is the latest messages, and they are delivered. Only then: a rejoin not recovered because the
            // messages after the position it asked from were trimmed, while the replaced stream still handed out
            // some of those after it (a slow reader's reset, its buffered frames read on), replays messages this
            // room delivered already, and they are dropped as any replay's are (they were delivered twice).
            self.last_seq = self.last_seq.min(open.replay_from.saturating_sub(1));
        }
        self.members = open.members.iter().cloned().collect();
        self.copies = None;
        if self.started.is_none() {
            self.started = self.position();
        }
        Opened::Current(rejoin.then_some(RoomEvent::Resumed { recovered: open.recovered, epoch: open.epoch }))
    }

    /// Stream `stream` said (its `Copies` frame) that its frames also come as datagram copies; its next frame is at
    /// `next_position`. From now on its events go through the merge: [`RoomState::stream_event`] and
    /// [`RoomState::copy`], then [`RoomState::ready`].
    pub fn copies(&mut self, stream: StreamNumber, next_position: u64) {
        if self.is_current(stream) {
            self.copies = Some((stream, Merge::new(next_position)));
        }
    }

    /// An event read from stream `stream` at `position`: the application event, or `None` (see
    /// [`RoomState::event`]; also when a copy brought it already).
    pub fn stream_event(
        &mut self,
        stream: StreamNumber,
        position: u64,
        event: quiver_proto::RoomEvent,
    ) -> Option<RoomEvent> {
        match &mut self.copies {
            Some((merged, merge)) if *merged == stream => {
                let event = merge.stream(position, event)?;
                self.event(stream, event)
            }
            _ => self.event(stream, event),
        }
    }

    /// A datagram copy of stream `stream`'s event at `position`: kept for [`RoomState::ready`] if it is new.
    pub fn copy(&mut self, stream: StreamNumber, position: u64, event: quiver_proto::RoomEvent) {
        if let Some((merged, merge)) = &mut self.copies {
            if *merged == stream && self.current == Some(stream) {
                merge.copy(position, event);
            }
        }
    }

    /// True when a copy brought the next event of the current stream.
    pub fn has_ready(&self) -> bool {
        self.copies.as_ref().is_some_and(|(_, merge)| merge.has_ready())
    }

    /// The next event a copy brought, in order: `Some(Some(event))` to hand out, `Some(None)` when it is nothing
    /// new for the application (a message delivered before a resume), `None` when the next one is not here.
    pub fn ready(&mut self) -> Option<Option<RoomEvent>> {
        let (stream, merge) = self.copies.as_mut()?;
        let stream = *stream;
        let event = merge.ready()?;
        Some(self.event(stream, event))
    }

    /// An event on stream `stream`: the application event, or `None` when the stream is not the current one or
    /// the message was already delivered.
    pub fn event(&mut self, stream: StreamNumber, event: quiver_proto::RoomEvent) -> Option<RoomEvent> {
        if !self.is_current(stream) {
            return None;
        }
        Some(match event.kind {
            EventKind::Message { sender, client_msg_id, body } => {
                if event.seq <= self.last_seq {
                    return None;
                }
                self.last_seq = event.seq;
                RoomEvent::Message(Message {
                    epoch: self.epoch.unwrap_or(0),
                    seq: event.seq,
                    time_us: event.time_us,
                    sender,
                    client_msg_id,
                    body,
                })
            }
            EventKind::MemberJoined { member } => {
                self.members.insert(member.clone());
                RoomEvent::MemberJoined { member }
            }
            EventKind::MemberLeft { member } => {
                self.members.remove(&member);
                RoomEvent::MemberLeft { member }
            }
        })
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
