//! Messages of a room stream: a unidirectional stream the server opens per joined room. The first frame is
//! [`RoomFrame::Open`], which says everything a client needs to take the stream on its own (the room, its epoch,
//! whether the resume is complete, where the replay starts, the members), so a client never pairs a Join reply
//! with a stream; every later frame is a [`RoomFrame::Event`] in the room's one total order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A frame on a room stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RoomFrame {
    /// First frame: the outcome of the Join that opened the stream (the same value as the Join's reply): which
    /// room this stream carries, in which epoch its seqs count, whether every message after the Join's `since` is
    /// replayed, the seq the replay starts at and the members.
    Open(crate::Joined),
    /// A room event.
    Event(RoomEvent),
    /// Second frame of a stream joined with `redundant` when the server grants it: this stream's frames are also
    /// sent as datagram copies ([`crate::copies`]) carrying `slot`, each with its position on the stream (the
    /// number of frames before it: Open is 0, this frame 1). The client delivers each position once, from whichever
    /// arrives first.
    Copies {
        /// Names this stream in copy datagrams (and this client's post copies to the room); never reused on the
        /// connection.
        slot: u64,
    },
}

/// One event of a room, in the room's total order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoomEvent {
    /// For a message, its seq. For presence, the seq of the last message before it (presence is ordered among
    /// messages but not retained in history, so it takes no seq of its own).
    pub seq: u64,
    /// Server clock when the event happened, µs since the Unix epoch.
    pub time_us: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of room event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EventKind {
    /// A posted message (retained in history).
    Message {
        /// Identity of the poster.
        sender: String,
        /// The poster's id for the post (for its own deduplication).
        client_msg_id: u64,
        /// Application payload.
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        body: Bytes,
    },
    /// A member joined.
    MemberJoined {
        /// Identity of the member.
        member: String,
    },
    /// A member left (or its connection was lost).
    MemberLeft {
        /// Identity of the member.
        member: String,
    },
}
