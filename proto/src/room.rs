//! Messages of a room stream: a unidirectional stream the server opens per joined room. The first frame is
//! [`RoomFrame::Open`]; every later frame is a [`RoomFrame::Event`] in the room's one total order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A frame on a room stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RoomFrame {
    /// First frame: which room this stream carries, and in which epoch its seqs count.
    Open {
        /// Room name.
        room: String,
        /// The room's epoch.
        epoch: u64,
    },
    /// A room event.
    Event(RoomEvent),
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
