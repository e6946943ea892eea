//! A node's room: which events it delivers (each must follow the last one delivered).

use super::*;

fn message(op: u64, seq: u64) -> Published {
    let kind = EventKind::Message { sender: "a".into(), client_msg_id: op, body: Bytes::new() };
    Published { epoch: 1, op, event: RoomEvent { seq, time_us: 0, kind } }
}

fn joined(op: u64, seq: u64) -> Published {
    Published {
        epoch: 1,
        op,
        event: RoomEvent { seq, time_us: 0, kind: EventKind::MemberJoined { member: "b".into() } },
    }
}

#[test]
fn every_event_must_follow_the_last_one_delivered() {
    // Delivered so far: up to op 10, message seq 4.
    let state = NodeState { live: true, epoch: 1, last_op: 10, last_seq: 4, ..NodeState::default() };
    assert_eq!(state.next(&message(10, 4)), Next::Skip, "delivered already");
    assert_eq!(state.next(&message(11, 5)), Next::Deliver);
    assert_eq!(state.next(&joined(11, 4)), Next::Deliver);
    // Messages 5 and 6 never arrived: read them from the stream first.
    assert_eq!(state.next(&message(14, 7)), Next::Fill(6));
    assert_eq!(state.next(&joined(13, 6)), Next::Fill(6));
    // The next message, but an op between was missed: a presence event the stream does not hold.
    assert_eq!(state.next(&message(12, 5)), Next::Lost);
    assert_eq!(state.next(&joined(12, 4)), Next::Lost);
    // Broken order (a seq going back with a newer op).
    assert_eq!(state.next(&message(11, 4)), Next::Lost);
    assert_eq!(state.next(&joined(11, 3)), Next::Lost);
}
