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

/// After a join set the room live in a new epoch (its script saw the switch first), the old epoch's last events
/// that Pub/Sub still brings are stragglers, not a reason to reset; an event of another epoch than the last one the
/// channel brought is one.
#[test]
fn the_old_epochs_last_events_after_a_switch_are_stragglers() {
    let in_epoch = |epoch, published: Published| Published { epoch, ..published };
    // Live in epoch 2 through a join; the channel last brought epoch 1's op 5.
    let state = NodeState { live: true, epoch: 2, last_op: 7, last_seq: 3, seen: (1, 5), ..NodeState::default() };
    assert!(state.straggler(&in_epoch(1, message(6, 3))), "epoch 1, published before the switch");
    assert!(!state.straggler(&in_epoch(2, message(8, 4))), "the live epoch");
    assert!(!state.straggler(&in_epoch(3, message(1, 1))), "a newer epoch: a reset");
    // Once the channel brought the live epoch, an event of the old one is not a straggler.
    let moved_on = NodeState { seen: (2, 8), ..state };
    assert!(!moved_on.straggler(&in_epoch(1, message(6, 3))));
    // Not live: events are kept for the next join, which sorts them by epoch.
    let waiting = NodeState { live: false, epoch: 2, seen: (1, 5), ..NodeState::default() };
    assert!(!waiting.straggler(&in_epoch(1, message(6, 3))));
}

/// A subscriber's outbox that records what reaches it.
#[derive(Debug, Default)]
struct Recorded {
    frames: Mutex<Vec<Bytes>>,
    kicked: std::sync::atomic::AtomicBool,
    /// Live frames it takes before it overflows (0: no bound), as `room_queue_bytes` would.
    live_bound: std::sync::atomic::AtomicUsize,
}

impl Outbox for Recorded {
    fn push(&self, frame: Bytes) -> bool {
        let bound = self.live_bound.load(std::sync::atomic::Ordering::SeqCst);
        let mut frames = self.frames.lock().unwrap();
        if bound > 0 && frames.len() >= bound {
            return false;
        }
        frames.push(frame);
        true
    }
    fn push_catch_up(&self, frame: Bytes) -> bool {
        self.frames.lock().unwrap().push(frame);
        true
    }
    fn push_replay(&self, frame: Bytes) {
        self.frames.lock().unwrap().push(frame);
    }
    fn kick(&self) {
        self.kicked.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn flush(&self) {}
    fn hold(&self) {}
    fn release_hold(&self) {}
    fn drained(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }
}

/// A room on a node whose broker is never reached (it connects lazily), with `state` and one subscriber.
fn room_with(state: NodeState) -> (Arc<NodeRoom>, Arc<Recorded>) {
    room_on("redis://127.0.0.1:1", state)
}

/// [`room_with`], on the Redis at `url`.
fn room_on(url: &str, state: NodeState) -> (Arc<NodeRoom>, Arc<Recorded>) {
    let config = super::super::broker::BrokerConfig {
        url: url.into(),
        presence_expiry: std::time::Duration::from_secs(30),
        heartbeat: std::time::Duration::from_secs(1),
        request_timeout: std::time::Duration::from_secs(1),
        allow_eviction: false,
    };
    let limits = Limits::default();
    let ctx = Arc::new(Ctx {
        broker: Broker::new(config).unwrap(),
        codec: FrameCodec::new(limits.max_frame as usize),
        limits,
        room_ttl_ms: 0,
        next_subscriber: std::sync::atomic::AtomicU64::new(2),
    });
    let outbox = Arc::new(Recorded::default());
    let mut state = state;
    state.subscribers.insert(1, Sub { identity: "ann".into(), outbox: outbox.clone(), after_op: state.last_op });
    let room = NodeRoom {
        name: "r".into(),
        keys: RoomKeys::new("r"),
        ctx,
        channel: Arc::new(tokio::sync::Mutex::new(Channel::Subscribed)),
        state: Mutex::new(state),
    };
    (Arc::new(room), outbox)
}

/// Redis holds room `keys` at `epoch`, with messages 1 to `count` (op = seq, time = seq) of `body`.
fn seed(redis: &mut super::super::scripts::tests::Redis, keys: &RoomKeys, epoch: u64, count: u64, body: &Bytes) {
    let meta = [("epoch", epoch), ("seq", count), ("op", count)];
    let _: () = redis::cmd("HSET").arg(&keys.meta).arg(&meta).query(&mut redis.conn).unwrap();
    for n in 1..=count {
        let payload = super::event::message_payload("a", n, body);
        let mut add = redis::cmd("XADD");
        add.arg(&keys.log).arg(format!("{n}-0")).arg("o").arg(n).arg("t").arg(n).arg("p").arg(payload);
        let _: String = add.query(&mut redis.conn).unwrap();
    }
}

/// The old epoch's last events, brought by Pub/Sub after a join set the room live in the new one, neither reset
/// the room nor reach its members; the new epoch's next event does.
#[tokio::test]
async fn a_straggler_of_the_old_epoch_does_not_reset_the_room() {
    let state = NodeState { live: true, epoch: 2, last_op: 7, last_seq: 3, seen: (1, 5), ..NodeState::default() };
    let (room, outbox) = room_with(state);
    room.clone().on_event(b"1 3 6 0 Lbob".to_vec());
    assert!(!outbox.kicked.load(std::sync::atomic::Ordering::SeqCst), "reset by a straggler");
    assert!(outbox.frames.lock().unwrap().is_empty());
    room.clone().on_event(b"2 3 8 0 Jcarol".to_vec());
    assert!(!outbox.kicked.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(outbox.frames.lock().unwrap().len(), 1, "the live epoch's next event is delivered");
    assert_eq!(lock(&room.state).last_op, 8);
    // An event of a newer epoch than the live one is a reset.
    room.clone().on_event(b"5 1 1 0 Jdan".to_vec());
    assert!(outbox.kicked.load(std::sync::atomic::Ordering::SeqCst), "a newer epoch resets the room");
}

/// An event over this node's `max_frame` (another node took the post under larger limits) ends the subscriptions it
/// would have reached, so that their clients rejoin and are told they missed it: it was skipped in silence, a gap
/// nobody was told of. The room goes on with the next event.
#[tokio::test]
async fn an_event_over_max_frame_ends_the_subscriptions_it_would_reach() {
    let mut state = NodeState { live: true, epoch: 2, last_op: 7, last_seq: 3, seen: (2, 7), ..NodeState::default() };
    state.recent.push_back((7, Bytes::from_static(b"op 7")));
    let (room, outbox) = room_with(state);
    let payload = super::super::event::message_payload("bob", 1, &Bytes::from(vec![b'x'; 70_000]));
    let mut published = b"2 4 8 0 M".to_vec();
    published.extend_from_slice(&payload);
    room.clone().on_event(published);
    assert!(outbox.kicked.load(std::sync::atomic::Ordering::SeqCst), "the member missed a message it was not told of");
    assert!(outbox.frames.lock().unwrap().is_empty());
    let state = lock(&room.state);
    assert!(state.subscribers.is_empty(), "the subscription is ended");
    // A join whose script ran before the event finds no recent events to bridge it with: refused, retried.
    assert!(state.recent.is_empty(), "a join overlapping the event would pass over it");
    assert_eq!((state.last_op, state.last_seq), (8, 4), "the room goes on after the event");
}

/// A Pub/Sub reconnect's catch-up does not take the events a slow gap fill holds for missed: it waits for the fill
/// (however long its reads take) and judges after it. Before, it waited 5 s at most, then filled what it could and
/// reset the room, although the fill's event (here a join at op 4) had arrived.
#[tokio::test]
async fn a_catch_up_waits_for_a_slow_fill_instead_of_resetting_the_room() {
    let Some(mut redis) =
        super::super::scripts::tests::redis("a_catch_up_waits_for_a_slow_fill_instead_of_resetting_the_room")
    else {
        return;
    };
    // Redis holds messages 1 to 3 (ops 1 to 3), then bob's join (op 4).
    let keys = RoomKeys::new("r");
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("7")
        .arg("seq")
        .arg(3)
        .arg("op")
        .arg(4)
        .query(&mut redis.conn)
        .unwrap();
    for n in 1..=3u64 {
        let payload = super::event::message_payload("a", n, &Bytes::new());
        let _: String = redis::cmd("XADD")
            .arg(&keys.log)
            .arg(format!("{n}-0"))
            .arg("o")
            .arg(n)
            .arg("t")
            .arg(1_000 + n)
            .arg("p")
            .arg(payload)
            .query(&mut redis.conn)
            .unwrap();
    }
    // The node delivered message 1; bob's join arrived, showing messages 2 and 3 missing, and their fill is slow.
    let state = NodeState { live: true, epoch: 7, last_op: 1, last_seq: 1, filling: true, ..NodeState::default() };
    let (room, outbox) = room_on(&redis.url, state);
    let join = Published { epoch: 7, ..joined(4, 3) };
    room.clone().on_resubscribed().await;
    let kicked = || outbox.kicked.load(std::sync::atomic::Ordering::SeqCst);
    // Past the grace and the 5 s it waited (with room for a slow machine's read and rollback check).
    tokio::time::sleep(std::time::Duration::from_millis(8_000)).await;
    assert!(!kicked(), "the catch-up reset the room while the fill held the join");
    room.clone().fill_then_apply(3, join, 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // the catch-up looks again, and ends
    assert!(!kicked(), "reset after the fill");
    let state = lock(&room.state);
    assert_eq!((state.last_seq, state.last_op, state.filling), (3, 4, false));
    assert_eq!(outbox.frames.lock().unwrap().len(), 3, "messages 2 and 3, then bob's join");
}

/// A gap larger than a member's live bound (`room_queue_bytes`) is delivered in full: the fill's messages and the
/// event that waited for them are caught up on outside it. Before, every member's queue overflowed part way through
/// the fill and the room's members here were all dropped as slow at once (a leave and a rejoin each, seen on every
/// node), for a gap that was Pub/Sub's, not theirs.
#[tokio::test]
async fn a_gap_larger_than_the_live_bound_drops_no_member() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_gap_larger_than_the_live_bound_drops_no_member")
    else {
        return;
    };
    // Redis holds messages 1 to 40 (ops 1 to 40); the node delivered none of them.
    let keys = RoomKeys::new("r");
    seed(&mut redis, &keys, 7, 40, &Bytes::from(vec![b'x'; 1_000]));
    let state = NodeState { live: true, epoch: 7, filling: true, ..NodeState::default() };
    let (room, outbox) = room_on(&redis.url, state);
    outbox.live_bound.store(4, std::sync::atomic::Ordering::SeqCst);
    let next = Published { epoch: 7, ..message(41, 41) };
    room.clone().fill_then_apply(40, next, 0).await;
    assert!(!outbox.kicked.load(std::sync::atomic::Ordering::SeqCst), "the room was reset");
    let state = lock(&room.state);
    assert_eq!(state.subscribers.len(), 1, "the member was dropped as slow");
    assert_eq!((state.last_seq, state.filling, state.catching_up), (41, false, false));
    drop(state);
    assert_eq!(outbox.frames.lock().unwrap().len(), 41, "messages 1 to 40, then 41");
    // Live again: the bound applies.
    let mut live = b"7 42 42 0 M".to_vec();
    live.extend_from_slice(&super::super::event::message_payload("bob", 42, &Bytes::new()));
    room.clone().on_event(live);
    assert_eq!(lock(&room.state).subscribers.len(), 0, "a live event past the bound still drops a slow member");
}

/// A leave the broker refuses for good (the node's holders key of the room damaged: `WRONGTYPE`) is given up, not
/// retried for as
/// long as the node runs (one task per subscription).
#[tokio::test]
async fn a_leave_refused_for_good_is_given_up() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_leave_refused_for_good_is_given_up") else {
        return;
    };
    let keys = RoomKeys::new("r");
    let (room, _outbox) = room_on(&redis.url, NodeState::default());
    let holders = keys.holders(room.ctx.broker.node());
    let _: () = redis::cmd("SET").arg(holders).arg("not a hash").query(&mut redis.conn).unwrap();
    let leave = room.ctx.clone().leave("r".into(), 1);
    tokio::time::timeout(std::time::Duration::from_secs(10), leave).await.expect("the leave gave up");
}

/// A join's replay reads the room's stream only in the epoch its script read: a Redis restarted empty whose room
/// started anew under the same seqs between the two gives the join nothing to replay (it is tried again), where the
/// first page was read with `XRANGE` alone and handed the new epoch's messages out as the old one's, `recovered` and
/// all. The same for a join that is not recovered (the newest messages).
#[tokio::test]
async fn a_joins_replay_reads_only_the_epoch_its_script_read() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_joins_replay_reads_only_the_epoch_its_script_read")
    else {
        return;
    };
    let keys = RoomKeys::new("r");
    seed(&mut redis, &keys, 41, 3, &Bytes::new());
    let (room, _outbox) = room_on(&redis.url, NodeState::default());
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let read = (keys.meta.as_str(), keys.log.as_str());
    let plan = |epoch, since_epoch| {
        let (ctx, mut conn) = (room.ctx.clone(), conn.clone());
        async move {
            let since = Some(quiver_proto::Position { epoch: since_epoch, seq: 1 });
            super::super::replay::plan(&ctx, &mut conn, (read, epoch, 3), since, 10).await.unwrap()
        }
    };
    let own = plan(41, 41).await.expect("the room's own epoch");
    assert!(own.recovered);
    assert_eq!(own.first.iter().map(Entry::seq).collect::<Vec<_>>(), [2, 3]);
    assert!(plan(40, 40).await.is_none(), "a resume got another epoch's messages");
    let fresh = plan(41, 39).await.expect("the room's own epoch");
    assert!(!fresh.recovered);
    assert_eq!(fresh.first.iter().map(Entry::seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(plan(40, 39).await.is_none(), "a join not recovered got another epoch's messages");
    let page = super::super::history::page(&room.ctx, "r", Some(1), (10, 1 << 20), 10).await.unwrap();
    assert_eq!((page.epoch, page.messages.len(), page.more), (41, 2, false));
    drop(conn);
}

/// A node buried while alive (cut off from Redis for longer than the presence expiry) finds its burial's mark at its
/// next join in the room and asks again: its member is counted, and the mark is gone.
#[tokio::test]
async fn a_live_node_buried_in_a_room_is_counted_at_its_next_join() {
    let Some(mut redis) =
        super::super::scripts::tests::redis("a_live_node_buried_in_a_room_is_counted_at_its_next_join")
    else {
        return;
    };
    let (room, _outbox) = room_on(&redis.url, NodeState::default());
    let keys = RoomKeys::new("r");
    let mark = keys.buried(room.ctx.broker.node());
    let _: () = redis::cmd("SET").arg(&mark).arg("1").arg("PX").arg(60_000).query(&mut redis.conn).unwrap();
    let joined = super::super::membership::join_script(&room.ctx, &keys, ("ann", 5), 10, 100).await.unwrap();
    assert_eq!(joined.3, ["ann"], "the live node's member was not counted");
    let marked: u64 = redis::cmd("EXISTS").arg(&mark).query(&mut redis.conn).unwrap();
    assert_eq!(marked, 0);
}

/// A read of a room's stream for a gap fill or a paged replay gets its entries only in the epoch it reads for: a
/// Redis restarted empty whose room started anew under the same seqs answers nothing (the caller resets the room's
/// members or ends the replay), where `XRANGE` alone handed the new epoch's messages out as the old one's.
#[tokio::test]
async fn a_stream_read_for_an_epoch_gets_nothing_in_another() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_stream_read_for_an_epoch_gets_nothing_in_another")
    else {
        return;
    };
    let keys = RoomKeys::new("anew");
    seed(&mut redis, &keys, 41, 3, &Bytes::new());
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection_manager().await.unwrap();
    let codec = quiver_proto::FrameCodec::new(64 * 1024);
    let read = |epoch| {
        let (mut conn, codec, keys) = (conn.clone(), codec, keys.clone());
        async move {
            let keys = (keys.meta.as_str(), keys.log.as_str());
            super::super::stream::range_in_epoch(&mut conn, keys, epoch, (1, 3, 10), &codec).await.unwrap()
        }
    };
    let seqs = read(41).await.expect("the room's own epoch").iter().map(|e| e.seq()).collect::<Vec<_>>();
    assert_eq!(seqs, [2, 3]);
    assert!(read(40).await.is_none(), "another epoch's read got this one's messages");
    let none = super::super::stream::range_in_epoch(&mut conn, (&keys.meta, &keys.log), 41, (3, 3, 10), &codec);
    assert_eq!(none.await.unwrap().map(|page| page.len()), Some(0));
}

#[path = "node_room_rollback_tests.rs"]
mod rollback;
