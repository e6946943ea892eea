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
    /// Joined from a stored position: the first stream says (with `Resumed`) whether it was recovered.
    resuming: bool,
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
        self.resuming = true;
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
        let rejoin = self.current.replace(stream).is_some() || std::mem::take(&mut self.resuming);
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
mod tests {
    use super::*;

    fn open(epoch: u64, recovered: bool, replay_from: u64, last_seq: u64, members: &[&str]) -> Joined {
        Joined {
            room: "r".into(),
            epoch,
            recovered,
            replay_from,
            last_seq,
            members: members.iter().map(|m| m.to_string()).collect(),
            req_id: 0,
        }
    }

    /// A room whose Join (request 0 on connection 0) was written: the streams below answer it.
    fn joined() -> RoomState {
        let mut room = RoomState::new();
        room.joining((0, 0));
        room
    }

    fn message(seq: u64) -> quiver_proto::RoomEvent {
        let kind = EventKind::Message { sender: "a".into(), client_msg_id: seq, body: Bytes::new() };
        quiver_proto::RoomEvent { seq, time_us: 0, kind }
    }

    fn presence(seq: u64, joined: bool, member: &str) -> quiver_proto::RoomEvent {
        let kind = if joined {
            EventKind::MemberJoined { member: member.into() }
        } else {
            EventKind::MemberLeft { member: member.into() }
        };
        quiver_proto::RoomEvent { seq, time_us: 0, kind }
    }

    fn seq(event: Option<RoomEvent>) -> Option<u64> {
        match event {
            Some(RoomEvent::Message(m)) => Some(m.seq),
            _ => None,
        }
    }

    #[test]
    fn a_first_stream_starts_at_the_head_and_a_rejoin_dedupes_its_replay() {
        let mut room = joined();
        assert_eq!(room.position(), None);
        let first = 1;
        assert_eq!(room.open((0, first), &open(7, true, 11, 10, &["a"])), Opened::Current(None), "no resume yet");
        assert_eq!(room.position(), Some(Position { epoch: 7, seq: 10 }));
        assert_eq!(seq(room.event(first, message(11))), Some(11));
        assert_eq!(seq(room.event(first, message(12))), Some(12));
        // Rejoined from 12, the server replays from 11 (an older position was asked for): 11 and 12 are dropped.
        let second = 2;
        let resumed = room.open((0, second), &open(7, true, 11, 13, &["a", "b"]));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 7 })));
        assert_eq!(room.members(), ["a", "b"]);
        assert_eq!(seq(room.event(second, message(11))), None);
        assert_eq!(seq(room.event(second, message(12))), None);
        assert_eq!(seq(room.event(second, message(13))), Some(13));
        // The replaced stream's late frames are ignored, presence included.
        assert_eq!(seq(room.event(first, message(14))), None);
        assert_eq!(room.event(first, presence(13, false, "b")), None);
        assert_eq!(room.members(), ["a", "b"]);
    }

    #[test]
    fn a_join_from_a_position_resumes_after_it_once_and_a_position_ahead_of_the_room_is_not_a_silence() {
        let mut room = joined();
        room.resume_from(Position { epoch: 7, seq: 12 });
        room.replied(&open(7, true, 13, 15, &["a", "b"]));
        assert_eq!(room.members(), ["a", "b"], "known from the reply, before the stream opens");
        let resumed = room.open((0, 1), &open(7, true, 11, 15, &["a", "b"]));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 7 })));
        assert_eq!(seq(room.event(1, message(12))), None, "at the position: delivered before");
        assert_eq!(seq(room.event(1, message(13))), Some(13));
        // A later stream resumes as usual.
        let again = room.open((0, 2), &open(7, true, 14, 15, &["a", "b"]));
        assert_eq!(again, Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 7 })));

        // A position beyond the room's head (a typo, a store that lost its tail): the latest are delivered.
        let mut room = joined();
        room.resume_from(Position { epoch: 7, seq: 999 });
        let resumed = room.open((0, 1), &open(7, false, 5, 9, &[]));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: false, epoch: 7 })));
        assert_eq!(seq(room.event(1, message(5))), Some(5));
        assert_eq!(seq(room.event(1, message(10))), Some(10));
    }

    /// A rejoin not recovered (messages after its position were trimmed) whose replay starts at messages the replaced
    /// stream handed out after the Join was written (a slow reader's reset: the old stream's buffered frames are
    /// read on) delivers each of them once.
    #[test]
    fn a_rejoin_not_recovered_delivers_nothing_the_replaced_stream_already_did() {
        let mut room = joined();
        room.open((0, 1), &open(7, true, 1, 0, &[]));
        for s in 1..=8 {
            assert_eq!(seq(room.event(1, message(s))), Some(s));
        }
        let position = room.rejoin_position(); // written with the rejoin: (7, 8)
        assert_eq!(position, Some(Position { epoch: 7, seq: 8 }));
        for s in 9..=10 {
            assert_eq!(seq(room.event(1, message(s))), Some(s), "the old stream reads on");
        }
        // 9 was trimmed meanwhile: not recovered, the replay from 10.
        let resumed = room.open((0, 2), &open(7, false, 10, 12, &[]));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: false, epoch: 7 })));
        assert_eq!(seq(room.event(2, message(10))), None, "delivered by the old stream");
        assert_eq!(seq(room.event(2, message(11))), Some(11));
    }

    #[test]
    fn a_new_epoch_counts_from_its_replay_and_says_what_was_lost() {
        let mut room = joined();
        room.open((0, 1), &open(1, true, 1, 0, &[]));
        for s in 1..=5 {
            room.event(1, message(s));
        }
        let second = 5;
        let resumed = room.open((0, second), &open(2, false, 1, 3, &[]));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: false, epoch: 2 })));
        assert_eq!(seq(room.event(second, message(1))), Some(1), "seqs of the new epoch are new messages");
        assert_eq!(room.position(), Some(Position { epoch: 2, seq: 1 }));
    }

    #[test]
    fn a_reply_before_the_stream_gives_the_position_and_members_at_once() {
        let mut room = joined();
        room.replied(&open(4, true, 21, 20, &["x"]));
        assert_eq!((room.position(), room.members()), (Some(Position { epoch: 4, seq: 20 }), vec!["x".into()]));
        assert_eq!(room.open((0, 1), &open(4, true, 21, 20, &["x", "y"])), Opened::Current(None));
        assert_eq!(seq(room.event(1, message(21))), Some(21));
        // A reply never moves an opened room.
        room.replied(&open(9, true, 1, 0, &[]));
        assert_eq!(room.position(), Some(Position { epoch: 4, seq: 21 }));
    }

    #[test]
    fn a_rejoin_between_the_reply_and_the_first_stream_says_what_the_stream_replays() {
        // Joined without a position; the connection went before the stream opened; the server lost the room.
        let mut room = joined();
        room.replied(&open(4, true, 21, 20, &[]));
        assert_eq!(room.rejoin_position(), Some(Position { epoch: 4, seq: 20 }));
        let opened = room.open((0, 1), &open(5, false, 1, 0, &[]));
        assert_eq!(opened, Opened::Current(Some(RoomEvent::Resumed { recovered: false, epoch: 5 })));
        // A rejoin before any position is known is a first join: nothing to say.
        let mut room = joined();
        assert_eq!(room.rejoin_position(), None);
        assert_eq!(room.open((0, 1), &open(5, true, 1, 0, &[])), Opened::Current(None));
    }

    #[test]
    fn an_older_stream_whose_open_is_read_late_stays_outdated() {
        let mut room = joined();
        room.open((0, 1), &open(3, true, 1, 0, &[]));
        room.event(1, message(1));
        // Rejoined twice: stream 3's reader runs before stream 2's (reset, but its Open was buffered).
        assert!(matches!(room.open((0, 3), &open(3, true, 2, 4, &[])), Opened::Current(Some(_))));
        assert_eq!(room.open((0, 2), &open(3, true, 2, 2, &[])), Opened::Stale);
        assert_eq!(seq(room.event(2, message(2))), None, "the outdated stream delivers nothing");
        assert_eq!(seq(room.event(3, message(2))), Some(2));
        assert!(room.is_current(3) && !room.is_current(2));
    }

    #[test]
    fn only_streams_of_the_rooms_own_joins_open() {
        // Joined (request 1), left, joined again (request 3) before the first Join's stream was read: the first
        // stream, read late, is not the room's (before, it opened, delivered the first join's events and made the
        // second's stream a spurious `Resumed`).
        let mut room = RoomState::new();
        room.joining((7, 3));
        let answers = |req_id| Joined { req_id, ..open(2, true, 6, 5, &["me"]) };
        assert_eq!(room.open((7, 1), &answers(1)), Opened::Stale, "an earlier Join's stream");
        assert_eq!(seq(room.event(1, message(5))), None);
        assert_eq!(room.open((8, 2), &answers(3)), Opened::Stale, "request 3 of another connection");
        // A rejoin refused as AlreadyJoined (request 4, written before request 3's stream was read) opens no
        // stream: request 3's is still the room's.
        room.joining((7, 4));
        assert_eq!(room.open((7, 3), &answers(3)), Opened::Current(None), "its own stream: no Resumed");
        assert_eq!(seq(room.event(3, message(6))), Some(6));
        // A rejoin on the same connection that was taken (after a kick): its stream replaces the first.
        room.joining((7, 5));
        assert!(matches!(room.open((7, 4), &answers(5)), Opened::Current(Some(RoomEvent::Resumed { .. }))));
        // Rejoined on a new connection: the old connection's streams are not the room's any more.
        room.joining((9, 1));
        assert_eq!(room.open((7, 5), &answers(6)), Opened::Stale, "a late stream of the old connection");
        let resumed = room.open((9, 6), &answers(1));
        assert_eq!(resumed, Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 2 })));
    }

    #[test]
    fn copies_and_the_stream_merge_into_one_order_and_a_new_stream_drops_the_old_copies() {
        let mut room = joined();
        room.open((0, 1), &open(1, true, 1, 0, &[]));
        room.copies(1, 2); // Open at 0, Copies at 1
        room.copy(1, 3, presence(1, true, "bob"));
        assert!(!room.has_ready(), "waits for position 2");
        room.copy(1, 2, message(1));
        assert_eq!(room.ready().flatten().and_then(|e| seq(Some(e))), Some(1));
        assert_eq!(room.ready(), Some(Some(RoomEvent::MemberJoined { member: "bob".into() })));
        assert_eq!(room.ready(), None);
        assert_eq!(room.stream_event(1, 2, message(1)), None, "brought by its copy");
        assert_eq!(room.stream_event(1, 3, presence(1, true, "bob")), None);
        assert_eq!(seq(room.stream_event(1, 4, message(2))), Some(2), "its copy was lost");
        // A rejoin's stream: copies of the old one count no more.
        room.open((0, 2), &open(1, true, 3, 2, &[]));
        room.copy(1, 5, message(3));
        assert!(!room.has_ready());
        assert_eq!(seq(room.stream_event(2, 2, message(3))), Some(3), "no copies on this stream: plain");
    }

    #[test]
    fn presence_follows_the_current_stream() {
        let mut room = joined();
        let s = 1;
        room.open((0, s), &open(1, true, 1, 0, &["me"]));
        assert_eq!(room.event(s, presence(0, true, "bob")), Some(RoomEvent::MemberJoined { member: "bob".into() }));
        assert_eq!(room.members(), ["bob", "me"]);
        room.event(s, presence(0, false, "bob"));
        assert_eq!(room.members(), ["me"]);
    }
}
