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

/// The sender and `client_msg_id` of an encoded room frame (`varint length || postcard(RoomFrame)`, as
/// [`crate::FrameCodec`] writes it) that is a posted message, read without decoding its body (nothing is copied):
/// how a server's store reads its dedupe window back from stored events. `None` for any other frame, and for bytes
/// that are not one.
pub fn message_sender(frame: &[u8]) -> Option<(&str, u64)> {
    /// The start of `postcard(RoomFrame::Event(RoomEvent { kind: EventKind::Message { .. }, .. }))`: the variant
    /// indices are checked against the real types by this module's tests.
    #[derive(Deserialize)]
    struct Head<'a> {
        frame_variant: u32,
        _seq: u64,
        _time_us: u64,
        kind_variant: u32,
        sender: &'a str,
        client_msg_id: u64,
    }
    let (len, prefix) = crate::varint::decode(frame)?;
    let body = frame.get(prefix..prefix.checked_add(usize::try_from(len).ok()?)?)?;
    let (head, _) = postcard::take_from_bytes::<Head<'_>>(body).ok()?;
    (head.frame_variant == 1 && head.kind_variant == 0).then_some((head.sender, head.client_msg_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameCodec;

    fn encoded(frame: &RoomFrame) -> Vec<u8> {
        FrameCodec::new(1 << 20).encode_to_vec(frame).unwrap().to_vec()
    }

    #[test]
    fn the_sender_of_a_stored_message_is_read_without_its_body_and_nothing_else_passes() {
        for (seq, client_msg_id) in [(1, 0), (300, 7), (u64::MAX, u64::MAX)] {
            let kind = EventKind::Message { sender: "ann".into(), client_msg_id, body: Bytes::from(vec![9; 5000]) };
            let frame = encoded(&RoomFrame::Event(RoomEvent { seq, time_us: seq, kind }));
            assert_eq!(message_sender(&frame), Some(("ann", client_msg_id)));
            for cut in [0, 1, 3, frame.len() - 1] {
                assert_eq!(message_sender(&frame[..cut]), None, "cut at {cut}");
            }
        }
        let joined = EventKind::MemberJoined { member: "ann".into() };
        let others = [
            RoomFrame::Event(RoomEvent { seq: 1, time_us: 1, kind: joined }),
            RoomFrame::Event(RoomEvent { seq: 1, time_us: 1, kind: EventKind::MemberLeft { member: "a".into() } }),
            RoomFrame::Copies { slot: 1 },
        ];
        for other in &others {
            assert_eq!(message_sender(&encoded(other)), None, "{other:?}");
        }
        assert_eq!(message_sender(&[0xff; 12]), None);
    }
}
