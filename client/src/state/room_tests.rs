//! Tests of [`RoomState`].

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

/// A join from a stored position whose room is kicked (slow consumer) before its first stream opened: that stream
/// still says `Resumed` with its answer (messages were missed), then the kick's rejoin's says its own. Before, only
/// the latest Join's stream could say it, and the first stream's replay came after an unannounced gap.
#[test]
fn a_join_from_a_position_says_its_answer_even_after_a_kicks_rejoin_was_written() {
    let mut room = RoomState::new();
    room.resume_from(Position { epoch: 7, seq: 3 });
    room.joining((0, 5));
    room.replied(&open(7, false, 41, 50, &[]));
    assert_eq!(room.rejoin_position(), Some(Position { epoch: 7, seq: 3 }));
    room.joining((0, 9));
    let first = Joined { req_id: 5, ..open(7, false, 41, 50, &[]) };
    let missed = Opened::Current(Some(RoomEvent::Resumed { recovered: false, epoch: 7 }));
    assert_eq!(room.open((0, 1), &first), missed, "the application's resume: messages were missed");
    let second = Joined { req_id: 9, ..open(7, true, 51, 50, &[]) };
    let resumed = Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 7 }));
    assert_eq!(room.open((0, 2), &second), resumed);
}

/// A kick's rejoin written between the Join's reply and its stream's Open (same connection): the first stream
/// opens without `Resumed` (no rejoin had happened), the rejoin's stream says it once. Before, each said it.
#[test]
fn a_rejoin_written_before_the_first_stream_opened_says_resumed_once() {
    let mut room = RoomState::new();
    room.joining((0, 1));
    room.replied(&open(7, true, 11, 10, &[]));
    assert_eq!(room.rejoin_position(), Some(Position { epoch: 7, seq: 10 }));
    room.joining((0, 2));
    let first = Joined { req_id: 1, ..open(7, true, 11, 10, &[]) };
    assert_eq!(room.open((0, 1), &first), Opened::Current(None));
    let second = Joined { req_id: 2, ..open(7, true, 11, 10, &[]) };
    let resumed = Opened::Current(Some(RoomEvent::Resumed { recovered: true, epoch: 7 }));
    assert_eq!(room.open((0, 2), &second), resumed);
}
