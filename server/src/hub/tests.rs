//! The room state machine without sockets: order, contiguity, dedupe, history bounds, resume, presence, slow
//! consumers.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use quiver_proto::{EventKind, FrameCodec, Joined, Limits, Position, RoomFrame};

use super::*;

/// An outbox that decodes what it is given, up to `bound` bytes.
#[derive(Debug)]
pub(super) struct Collect {
    frames: Mutex<Vec<RoomFrame>>,
    bytes: Mutex<usize>,
    bound: usize,
    /// Live frames held behind a paged replay.
    held: Mutex<Option<Vec<Bytes>>>,
    /// Ended by the hub ([`Outbox::kick`]).
    kicked: std::sync::atomic::AtomicBool,
    /// While set, [`Outbox::drained`] waits (a reader that takes nothing), until [`Collect::written_out`].
    unwritten: std::sync::atomic::AtomicBool,
    written: tokio::sync::Notify,
}

impl Collect {
    pub(super) fn new(bound: usize) -> Arc<Collect> {
        Arc::new(Collect {
            frames: Mutex::new(Vec::new()),
            bytes: Mutex::new(0),
            bound,
            held: Mutex::new(None),
            kicked: Default::default(),
            unwritten: Default::default(),
            written: tokio::sync::Notify::new(),
        })
    }

    /// From now on nothing is written out ([`Outbox::drained`] waits) until [`Collect::written_out`].
    pub(super) fn take_nothing(&self) {
        self.unwritten.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything so far counts as written ([`Outbox::drained`] completes).
    pub(super) fn written_out(&self) {
        self.unwritten.store(false, std::sync::atomic::Ordering::Relaxed);
        self.written.notify_waiters();
    }

    pub(super) fn kicked(&self) -> bool {
        self.kicked.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn frames(&self) -> Vec<RoomFrame> {
        self.frames.lock().unwrap().clone()
    }

    /// Seqs of the message events received.
    pub(super) fn message_seqs(&self) -> Vec<u64> {
        self.frames()
            .into_iter()
            .filter_map(|f| match f {
                RoomFrame::Event(e) if matches!(e.kind, EventKind::Message { .. }) => Some(e.seq),
                _ => None,
            })
            .collect()
    }

    fn presence(&self) -> Vec<String> {
        self.frames()
            .into_iter()
            .filter_map(|f| match f {
                RoomFrame::Event(e) => match e.kind {
                    EventKind::MemberJoined { member } => Some(format!("+{member}")),
                    EventKind::MemberLeft { member } => Some(format!("-{member}")),
                    EventKind::Message { .. } => None,
                },
                RoomFrame::Open(_) | RoomFrame::Copies { .. } => None,
            })
            .collect()
    }
}

impl Collect {
    fn record(&self, frame: Bytes) {
        let mut buf = BytesMut::from(&frame[..]);
        let decoded = FrameCodec::new(1 << 20).decode::<RoomFrame>(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "one frame per push");
        self.frames.lock().unwrap().push(decoded);
    }
}

impl Outbox for Collect {
    fn push(&self, frame: Bytes) -> bool {
        let mut bytes = self.bytes.lock().unwrap();
        if *bytes + frame.len() > self.bound {
            return false;
        }
        *bytes += frame.len();
        match self.held.lock().unwrap().as_mut() {
            Some(held) => held.push(frame),
            None => self.record(frame),
        }
        true
    }

    fn push_replay(&self, frame: Bytes) {
        self.record(frame);
    }

    fn kick(&self) {
        self.kicked.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn flush(&self) {}

    fn hold(&self) {
        self.held.lock().unwrap().get_or_insert_with(Vec::new);
    }

    fn release_hold(&self) {
        let held = self.held.lock().unwrap().take();
        for frame in held.into_iter().flatten() {
            self.record(frame);
        }
    }

    fn drained(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async {
            loop {
                let written = self.written.notified();
                if !self.unwritten.load(std::sync::atomic::Ordering::Relaxed) {
                    return true;
                }
                written.await;
            }
        })
    }
}

fn room(limits: &Limits) -> Room {
    Room::new("lobby".into(), 77, limits, u64::MAX)
}

fn post(room: &mut Room, who: &str, id: u64, now: u64) -> Posted {
    room.post(who, id, Bytes::from(format!("{who}-{id}")), now).unwrap().posted
}

fn join(room: &mut Room, id: SubscriberId, who: &str, since: Option<Position>, out: Arc<Collect>) -> Joined {
    room.join(id, who, (since, 1), out, 0).0
}

#[test]
fn seqs_are_contiguous_and_everyone_sees_one_order() {
    let mut room = room(&Limits::default());
    let (a, b) = (Collect::new(usize::MAX), Collect::new(usize::MAX));
    join(&mut room, 1, "alice", None, a.clone());
    join(&mut room, 2, "bob", None, b.clone());
    for i in 0..100 {
        let who = if i % 3 == 0 { "alice" } else { "bob" };
        assert_eq!(post(&mut room, who, i, i).seq, i + 1);
    }
    assert_eq!(a.message_seqs(), (1..=100).collect::<Vec<_>>());
    assert_eq!(a.frames()[2..], b.frames()[1..], "the same events in the same order from bob's join on");
    assert!(matches!(&a.frames()[0], RoomFrame::Open(open) if open.room == "lobby" && open.epoch == 77));
}

#[test]
fn retried_post_gets_its_original_seq_and_is_not_delivered_twice() {
    let limits = Limits { dedupe_window_s: 10, ..Limits::default() };
    let mut room = room(&limits);
    let a = Collect::new(usize::MAX);
    join(&mut room, 1, "alice", None, a.clone());
    assert_eq!(post(&mut room, "alice", 5, 0), Posted { seq: 1, duplicate: false });
    assert_eq!(post(&mut room, "bob", 5, 0), Posted { seq: 2, duplicate: false }, "ids are per identity");
    assert_eq!(post(&mut room, "alice", 5, 9_000_000), Posted { seq: 1, duplicate: true });
    assert_eq!(a.message_seqs(), [1, 2]);
    // Past the window the id is forgotten (documented): the same id is a new message.
    assert_eq!(post(&mut room, "alice", 5, 20_000_000), Posted { seq: 3, duplicate: false });
}

#[test]
fn history_is_bounded_by_count_and_age() {
    let limits = Limits { history_max_messages: 10, history_max_age_s: 100, ..Limits::default() };
    let mut room = room(&limits);
    for i in 0..25 {
        post(&mut room, "a", i, i * 1_000_000);
    }
    let page = room.history(None, 100, usize::MAX, 25_000_000).page().unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (16..=25).collect::<Vec<_>>());
    // 200 s later all of it is older than 100 s.
    assert!(room.history(None, 100, usize::MAX, 225_000_000).page().unwrap().messages.is_empty());
    // 0: no age bound (as through Redis), only the count.
    let mut ageless = self::room(&Limits { history_max_messages: 10, history_max_age_s: 0, ..Limits::default() });
    post(&mut ageless, "a", 1, 0);
    assert_eq!(ageless.history(None, 100, usize::MAX, u64::MAX / 2).page().unwrap().messages.len(), 1);
}

#[test]
fn history_pages_by_limit_and_budget() {
    let mut room = room(&Limits::default());
    for i in 0..10 {
        post(&mut room, "a", i, 0);
    }
    let page = room.history(Some(2), 3, usize::MAX, 0).page().unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(page.more);
    let page = room.history(Some(8), 10, usize::MAX, 0).page().unwrap();
    assert!(!page.more);
    let tiny = room.history(None, 10, 30, 0).page().unwrap();
    assert!(tiny.messages.len() < 10 && tiny.more, "budget cuts the page: {}", tiny.messages.len());
}

#[test]
fn resume_inside_history_replays_exactly_what_was_missed() {
    let mut room = room(&Limits::default());
    for i in 0..10 {
        post(&mut room, "a", i, 0);
    }
    let late = Collect::new(usize::MAX);
    let joined = join(&mut room, 1, "bob", Some(Position { epoch: 77, seq: 6 }), late.clone());
    assert!(joined.recovered);
    assert_eq!((joined.replay_from, joined.last_seq), (7, 10));
    post(&mut room, "a", 100, 0);
    assert_eq!(late.message_seqs(), [7, 8, 9, 10, 11], "replay then live, no gap, no duplicate");
    // Resuming at the head replays nothing and is recovered.
    let head = Collect::new(usize::MAX);
    let joined = join(&mut room, 2, "carol", Some(Position { epoch: 77, seq: 11 }), head.clone());
    assert!(joined.recovered);
    assert_eq!(joined.replay_from, 12);
    assert!(head.message_seqs().is_empty());
}

#[test]
fn resume_outside_history_says_so_and_replays_the_latest() {
    let limits = Limits { history_max_messages: 5, gap_replay: 3, ..Limits::default() };
    let mut room = room(&limits);
    for i in 0..20 {
        post(&mut room, "a", i, 0);
    }
    for since in [Position { epoch: 77, seq: 2 }, Position { epoch: 1, seq: 19 }, Position { epoch: 77, seq: 99 }] {
        let out = Collect::new(usize::MAX);
        let joined = join(&mut room, since.seq, "bob", Some(since), out.clone());
        assert!(!joined.recovered, "{since:?}");
        assert_eq!(out.message_seqs(), [18, 19, 20], "{since:?}");
        assert_eq!(joined.replay_from, 18);
    }
    // The oldest retained message is 16: resuming after 15 is complete, after 14 is not.
    assert!(join(&mut room, 100, "x", Some(Position { epoch: 77, seq: 15 }), Collect::new(usize::MAX)).recovered);
    assert!(!join(&mut room, 101, "y", Some(Position { epoch: 77, seq: 14 }), Collect::new(usize::MAX)).recovered);
}

#[test]
fn presence_is_ordered_and_counts_connections() {
    let mut room = room(&Limits::default());
    let watcher = Collect::new(usize::MAX);
    join(&mut room, 1, "watcher", None, watcher.clone());
    join(&mut room, 2, "alice", None, Collect::new(usize::MAX));
    post(&mut room, "alice", 1, 0);
    // A second connection of alice: no second join event; leaving one of the two: no leave event.
    let joined = join(&mut room, 3, "alice", None, Collect::new(usize::MAX));
    assert_eq!(joined.members, ["alice", "watcher"]);
    assert!(room.leave(2, 0).is_some());
    assert!(room.leave(2, 0).is_none(), "leaving twice is a no-op");
    assert_eq!(watcher.presence(), ["+watcher", "+alice"]);
    let left = room.leave(3, 0).unwrap();
    assert_eq!(left.len(), 1, "the leave event goes to the watcher");
    assert_eq!(watcher.presence(), ["+watcher", "+alice", "-alice"]);
    assert_eq!(room.members(), ["watcher"]);
    // Presence events carry the seq of the message before them.
    let seq_of_leave = watcher.frames().into_iter().rev().find_map(|f| match f {
        RoomFrame::Event(e) => Some(e.seq),
        RoomFrame::Open(_) | RoomFrame::Copies { .. } => None,
    });
    assert_eq!(seq_of_leave, Some(1));
}

#[test]
fn slow_consumer_is_dropped_and_others_keep_receiving() {
    let mut room = room(&Limits::default());
    let slow = Collect::new(400);
    let fast = Collect::new(usize::MAX);
    join(&mut room, 1, "slow", None, slow.clone());
    join(&mut room, 2, "fast", None, fast.clone());
    for i in 0..50 {
        post(&mut room, "fast", i, 0);
    }
    assert_eq!(room.subscriber_count(), 1, "the slow subscriber was dropped");
    assert_eq!(fast.message_seqs(), (1..=50).collect::<Vec<_>>());
    assert!(fast.presence().contains(&"-slow".to_string()));
    let got = slow.message_seqs();
    assert!(!got.is_empty() && got.len() < 50);
    // It resumes from what it got and receives the rest, without gap or duplicate, even with a replay larger than
    // its live bound.
    let again = Collect::new(400);
    let last = *got.last().unwrap();
    assert!(join(&mut room, 3, "slow", Some(Position { epoch: 77, seq: last }), again.clone()).recovered);
    let mut all = got;
    all.extend(again.message_seqs());
    assert_eq!(all, (1..=50).collect::<Vec<_>>());
}

#[test]
fn oversized_message_is_refused_not_truncated() {
    let limits = Limits { max_frame: 100, ..Limits::default() };
    let mut room = room(&limits);
    let err = room.post("a", 1, Bytes::from(vec![0u8; 200]), 0).unwrap_err();
    assert_eq!(err.code, quiver_proto::ErrorCode::BodyTooLarge);
    assert_eq!(room.last_seq(), 0, "no seq consumed");
}

#[test]
fn operations_return_every_outbox_they_enqueued_into() {
    let mut room = room(&Limits::default());
    let (a, b) = (Collect::new(usize::MAX), Collect::new(usize::MAX));
    let (_, delivery, _) = room.join(1, "a", (None, 1), a.clone(), 0);
    assert_eq!(delivery.len(), 2, "the joiner's Open, and its join event to the one member (itself)");
    let (_, delivery, _) = room.join(2, "b", (None, 1), b.clone(), 0);
    assert_eq!(delivery.len(), 3, "b's Open, then b's join event to a and b");
    let Posting { posted, delivery, .. } = room.post("a", 1, Bytes::from_static(b"x"), 0).unwrap();
    assert_eq!((posted.seq, delivery.len()), (1, 2));
    let Posting { posted, delivery, .. } = room.post("a", 1, Bytes::from_static(b"x"), 0).unwrap();
    assert!(posted.duplicate && delivery.is_empty(), "a retry enqueues nothing");
}

#[tokio::test]
async fn local_rooms_are_created_on_first_use() {
    let hub = LocalRooms::new(Limits::default(), crate::Budget::default());
    let out = Collect::new(usize::MAX);
    let join =
        JoinRoom { room: "r".into(), identity: "a".into(), since: None, req_id: 1, outbox: out.clone(), now_us: 0 };
    let joining = hub.join(join).await.unwrap();
    assert_eq!(joining.joined.last_seq, 0);
    assert_ne!(joining.joined.epoch, 0);
    let post = PostMessage {
        fenced: None,
        room: "r",
        identity: "a",
        client_msg_id: 1,
        body: Bytes::from_static(b"hi"),
        now_us: 0,
    };
    let (posted, delivery) = hub.post(post).await.unwrap();
    assert_eq!((posted.seq, delivery.len()), (1, 1));
    assert_eq!(hub.history("r", None, 10, usize::MAX, 0).await.unwrap().messages.len(), 1);
    assert_eq!(hub.history("nope", None, 10, usize::MAX, 0).await.unwrap().epoch, 0);
    assert!(hub.leave("r", joining.subscriber, 0).await.is_empty(), "nobody left to tell");
    assert!(hub.leave("nope", joining.subscriber, 0).await.is_empty());
}

#[test]
fn a_member_list_too_long_for_a_frame_is_cut_to_fit_the_reply_and_the_open_frame() {
    let max_frame = Limits::default().max_frame as usize;
    let codec = FrameCodec::new(max_frame);
    let name = |i: usize| format!("{i:0>128}");
    let joined = |members: usize| Joined {
        room: "r".repeat(200),
        epoch: u64::MAX >> 2,
        recovered: true,
        replay_from: u64::MAX >> 2,
        last_seq: u64::MAX >> 2,
        members: (0..members).map(name).collect(),
        req_id: u64::MAX,
    };
    let mut crowded = joined(3_000);
    fit_members(&mut crowded, &name(0), max_frame);
    assert!(crowded.members.len() > 400 && crowded.members.len() < 3_000, "{}", crowded.members.len());
    assert_eq!(crowded.members, joined(crowded.members.len()).members, "the first ones, in order");
    // A joiner that sorts past the cut is listed all the same ("this client included"), in its place: the last.
    let mut late = joined(3_000);
    fit_members(&mut late, &name(2_999), max_frame);
    assert_eq!(late.members.len(), crowded.members.len(), "in the place of the last that fitted");
    assert_eq!(late.members.last(), Some(&name(2_999)));
    assert_eq!(late.members[..late.members.len() - 1], joined(late.members.len() - 1).members[..], "the first ones");
    codec.encode_to_vec(&RoomFrame::Open(late)).expect("fits");
    codec.encode_to_vec(&RoomFrame::Open(crowded.clone())).expect("the Open frame fits");
    let reply =
        quiver_proto::ServerMsg::Reply { req_id: u64::MAX >> 2, result: Ok(quiver_proto::Reply::Joined(crowded)) };
    codec.encode_to_vec(&reply).expect("the Join's reply fits");
    let mut small = joined(10);
    fit_members(&mut small, &name(3), max_frame);
    assert_eq!(small, joined(10), "a list that fits is untouched");
}

/// An outbox that takes everything until it is stuck, then refuses (as a stream whose reader stopped), counting
/// the pushes it was offered.
#[derive(Debug, Default)]
struct Stuck {
    stuck: std::sync::atomic::AtomicBool,
    pushes: std::sync::atomic::AtomicUsize,
}

impl Outbox for Stuck {
    fn push(&self, _: Bytes) -> bool {
        self.pushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        !self.stuck.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn push_replay(&self, _: Bytes) {}
    fn kick(&self) {}
    fn flush(&self) {}
    fn hold(&self) {}
    fn release_hold(&self) {}
    fn drained(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }
}

/// Many slow consumers overflowing on one post leave together: each is offered the post once, and the one member
/// left gets their departures, without a nested delivery per departure (which pushed to every one of them again,
/// m levels deep, under the room's lock).
#[test]
fn slow_consumers_overflowing_together_leave_in_one_pass() {
    let mut room = room(&Limits::default());
    let n = 2_000;
    let stuck: Vec<Arc<Stuck>> = (0..n).map(|_| Arc::new(Stuck::default())).collect();
    for (i, outbox) in stuck.iter().enumerate() {
        let _ = room.join(i as SubscriberId, &format!("m{i}"), (None, 1), outbox.clone(), 0);
    }
    let fast = Collect::new(usize::MAX);
    join(&mut room, n as SubscriberId, "fast", None, fast.clone());
    let offered = |stuck: &[Arc<Stuck>]| -> usize {
        stuck.iter().map(|s| s.pushes.load(std::sync::atomic::Ordering::Relaxed)).sum()
    };
    let before = offered(&stuck);
    stuck.iter().for_each(|s| s.stuck.store(true, std::sync::atomic::Ordering::Relaxed));
    let posting = room.post("fast", 1, Bytes::from_static(b"hi"), 0).unwrap();
    assert_eq!(offered(&stuck) - before, n, "each stuck member is offered the post once");
    assert!(posting.delivery.len() <= n + 1, "{} outboxes to flush", posting.delivery.len());
    assert_eq!(room.subscriber_count(), 1);
    let left = fast.presence().iter().filter(|p| p.starts_with('-')).count();
    assert_eq!(left, n, "the member left sees every departure");
}
