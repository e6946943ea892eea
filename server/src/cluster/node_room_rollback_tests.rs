//! A node's room after Redis went back (restarted from a snapshot, a lagging replica): the rollback check at the
//! Pub/Sub catch-up, against a real `redis-server`.

use super::*;

/// Room `r` on a node that delivered up to message 5 of epoch 7, where Redis went back to message 3 of it: its keys,
/// the room, its subscriber's outbox.
fn gone_back(redis: &mut super::super::scripts::tests::Redis) -> (RoomKeys, Arc<NodeRoom>, Arc<Recorded>) {
    let keys = RoomKeys::new("r");
    seed(redis, &keys, 7, 3, &Bytes::new());
    let state =
        NodeState { live: true, epoch: 7, last_op: 5, last_seq: 5, last_message: Some((5, 5)), ..NodeState::default() };
    let (room, outbox) = room_on(&redis.url, state);
    (keys, room, outbox)
}

/// A rollback check that fails (here: scripts refused by an ACL, as a demoted primary refuses them with `READONLY`
/// after a failover, while the catch-up's read works) is tried again until Redis answers it, and a room that went
/// back is then reset. Before, the check gave up after three tries in 750 ms and the rollback went unnoticed for
/// good: the posts given the same seqs again were skipped as delivered, and the members were told nothing.
#[tokio::test]
async fn a_failed_rollback_check_is_tried_until_it_answers() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_failed_rollback_check_is_tried_until_it_answers")
    else {
        return;
    };
    let (keys, room, outbox) = gone_back(&mut redis);
    let mut acl = |rule: &str| redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).query::<()>(&mut redis.conn);
    acl("-@scripting").unwrap();
    room.clone().on_resubscribed().await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let kicked = || outbox.kicked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(!kicked(), "reset without a check");
    acl("+@all").unwrap();
    let started = std::time::Instant::now();
    while !kicked() && started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(kicked(), "the room went back and its members were not told");
    let epoch: String = redis::cmd("HGET").arg(&keys.meta).arg("epoch").query(&mut redis.conn).unwrap();
    assert_ne!(epoch, "7", "the room is in a new epoch");
}

/// A live room its last member left stays live (until the sweep drops it) and its next join goes on from the node's
/// position: the rollback check is for it too. (The retried check of 2026-12-07 first asked for members here, and
/// such a room's next join was replayed what Redis lost, the posts given its seqs again skipped.)
#[tokio::test]
async fn a_rollback_is_found_in_a_live_room_its_last_member_left() {
    let Some(mut redis) =
        super::super::scripts::tests::redis("a_rollback_is_found_in_a_live_room_its_last_member_left")
    else {
        return;
    };
    let (keys, room, _) = gone_back(&mut redis);
    lock(&room.state).subscribers.clear();
    room.clone().on_resubscribed().await;
    let started = std::time::Instant::now();
    while lock(&room.state).live && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!lock(&room.state).live, "the room went back and stayed live at the node's position");
    let epoch: String = redis::cmd("HGET").arg(&keys.meta).arg("epoch").query(&mut redis.conn).unwrap();
    assert_ne!(epoch, "7", "the room is in a new epoch");
}

/// The rollback check compares Redis with what the node had delivered when its Pub/Sub connection came back, not
/// with where events delivered since moved it. Here Redis went back to message 3 of epoch 7 (the node delivered 5)
/// and took posts 4 to 6 again (other messages: times 104 to 106); the new connection's first event is post 6,
/// which follows the node's last (5) and is delivered before the catch-up's check runs. Before, the check read the
/// node's position then (6, and the message at 6, which Redis holds) and found nothing gone back: the posts given
/// seqs 4 and 5 again were never delivered here, and a client resuming from 5 was told it missed nothing.
#[tokio::test]
async fn the_rollback_check_compares_redis_with_the_position_at_the_reconnect() {
    let Some(mut redis) =
        super::super::scripts::tests::redis("the_rollback_check_compares_redis_with_the_position_at_the_reconnect")
    else {
        return;
    };
    let (keys, room, outbox) = gone_back(&mut redis);
    for n in 4..=6u64 {
        let payload = super::event::message_payload("a", n, &Bytes::new());
        let mut add = redis::cmd("XADD");
        add.arg(&keys.log).arg(format!("{n}-0")).arg("o").arg(n).arg("t").arg(100 + n).arg("p").arg(payload);
        let _: String = add.query(&mut redis.conn).unwrap();
    }
    let meta = [("seq", 6u64), ("op", 6)];
    let _: () = redis::cmd("HSET").arg(&keys.meta).arg(&meta).query(&mut redis.conn).unwrap();
    room.clone().on_resubscribed().await;
    let mut published = b"7 6 6 106 M".to_vec();
    published.extend_from_slice(&super::event::message_payload("a", 6, &Bytes::new()));
    room.clone().on_event(published);
    assert_eq!(lock(&room.state).last_seq, 6, "post 6 follows the node's last: delivered");
    let kicked = || outbox.kicked.load(std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    while !kicked() && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(kicked(), "the room went back and its members were not told");
    let epoch: String = redis::cmd("HGET").arg(&keys.meta).arg("epoch").query(&mut redis.conn).unwrap();
    assert_ne!(epoch, "7", "the room is in a new epoch");
}

/// A live room without members here whose catch-up's first read fails (here: `HMGET` refused by an ACL, as a
/// loading Redis answers `LOADING`) reads again until it answers, and the rollback check follows. Before, a failed
/// read gave up both for a room without members, though a live room its last member left goes on from the node's
/// position at its next join.
#[tokio::test]
async fn a_catch_up_whose_read_fails_goes_on_in_a_live_room_without_members() {
    let Some(mut redis) =
        super::super::scripts::tests::redis("a_catch_up_whose_read_fails_goes_on_in_a_live_room_without_members")
    else {
        return;
    };
    let (keys, room, _) = gone_back(&mut redis);
    lock(&room.state).subscribers.clear();
    let mut acl = |rule: &str| redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).query::<()>(&mut redis.conn);
    acl("-hmget").unwrap();
    room.clone().on_resubscribed().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    acl("+@all").unwrap();
    let started = std::time::Instant::now();
    while lock(&room.state).live && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!lock(&room.state).live, "the catch-up gave up: the room went back and stayed live at the node's position");
    let epoch: String = redis::cmd("HGET").arg(&keys.meta).arg("epoch").query(&mut redis.conn).unwrap();
    assert_ne!(epoch, "7", "the room is in a new epoch");
}

/// Redis went back to message 3 of epoch 7 (the node delivered 5) and took a join and two posts since: messages 4
/// and 5 again (other ones: times 104 and 105), at ops 5 and 6. The published frame of post 5.
fn took_posts_again(redis: &mut super::super::scripts::tests::Redis, keys: &RoomKeys) -> Vec<u8> {
    for n in 4..=5u64 {
        let payload = super::event::message_payload("a", n, &Bytes::new());
        let mut add = redis::cmd("XADD");
        add.arg(&keys.log).arg(format!("{n}-0")).arg("o").arg(n + 1).arg("t").arg(100 + n).arg("p").arg(payload);
        let _: String = add.query(&mut redis.conn).unwrap();
    }
    let meta = [("seq", 5u64), ("op", 6)];
    let _: () = redis::cmd("HSET").arg(&keys.meta).arg(&meta).query(&mut redis.conn).unwrap();
    let mut published = b"7 5 6 105 M".to_vec();
    published.extend_from_slice(&super::event::message_payload("a", 5, &Bytes::new()));
    published
}

/// Waits (up to 10 s) for room `keys` to leave epoch 7 in Redis.
async fn left_epoch_7(redis: &mut super::super::scripts::tests::Redis, keys: &RoomKeys) -> String {
    let started = std::time::Instant::now();
    loop {
        let epoch: String = redis::cmd("HGET").arg(&keys.meta).arg("epoch").query(&mut redis.conn).unwrap();
        if epoch != "7" || started.elapsed() > std::time::Duration::from_secs(10) {
            return epoch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The events that follow a rollback are out of line with what the node delivered, and the first resets the room
/// before the catch-up's rollback check can answer: the check still runs and moves the room to a new epoch. Before,
/// the reset ended the check, the epoch stayed, and members resuming from seq 5 were told `recovered: true` over
/// the posts that took seqs 4 and 5.
#[tokio::test]
async fn a_rollback_check_outlives_a_reset_of_the_room() {
    let Some(mut redis) = super::super::scripts::tests::redis("a_rollback_check_outlives_a_reset_of_the_room") else {
        return;
    };
    let (keys, room, outbox) = gone_back(&mut redis);
    let published = took_posts_again(&mut redis, &keys);
    room.clone().on_resubscribed().await;
    room.clone().on_event(published); // before the catch-up's task has run: seq 5 again, not 6
    assert!(!lock(&room.state).live, "out of line: reset");
    assert!(outbox.kicked.load(std::sync::atomic::Ordering::SeqCst));
    assert_ne!(left_epoch_7(&mut redis, &keys).await, "7", "the room went back and stayed in its epoch");
}

/// A reconnect's catch-up whose check has not answered when the next reconnect comes hands its position on: the
/// next one compares Redis with what the node had delivered before Redis went back, not with a position that
/// includes a post delivered since (which Redis holds). Before, the first gave way and the second found nothing.
#[tokio::test]
async fn a_later_catch_up_takes_over_the_position_an_earlier_check_had_not_answered() {
    let test = "a_later_catch_up_takes_over_the_position_an_earlier_check_had_not_answered";
    let Some(mut redis) = super::super::scripts::tests::redis(test) else { return };
    let (keys, room, outbox) = gone_back(&mut redis);
    let acl = |redis: &mut super::super::scripts::tests::Redis, rule: &str| {
        redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).query::<()>(&mut redis.conn)
    };
    acl(&mut redis, "-@scripting").unwrap(); // the first check fails until the second reconnect
    for n in 4..=6u64 {
        let payload = super::event::message_payload("a", n, &Bytes::new());
        let mut add = redis::cmd("XADD");
        add.arg(&keys.log).arg(format!("{n}-0")).arg("o").arg(n).arg("t").arg(100 + n).arg("p").arg(payload);
        let _: String = add.query(&mut redis.conn).unwrap();
    }
    let meta = [("seq", 6u64), ("op", 6)];
    let _: () = redis::cmd("HSET").arg(&keys.meta).arg(&meta).query(&mut redis.conn).unwrap();
    room.clone().on_resubscribed().await;
    let mut published = b"7 6 6 106 M".to_vec();
    published.extend_from_slice(&super::event::message_payload("a", 6, &Bytes::new()));
    room.clone().on_event(published);
    assert_eq!(lock(&room.state).last_seq, 6, "post 6 follows the node's last: delivered");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await; // the first check failed at least once
    room.clone().on_resubscribed().await;
    acl(&mut redis, "+@all").unwrap();
    assert_ne!(left_epoch_7(&mut redis, &keys).await, "7", "the room went back and stayed in its epoch");
    let started = std::time::Instant::now();
    while !outbox.kicked.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed().as_secs() < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(outbox.kicked.load(std::sync::atomic::Ordering::SeqCst), "the members here were not told");
}
