//! The scripts against a real `redis-server` of the test's own (skipped loudly without one; a failure under
//! `QUIVER_REQUIRE_ALL=1`), called in the orders the nodes' connections can make them run in.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;
use crate::cluster::keys::RoomKeys;

#[path = "../../../tests/src/ports.rs"]
mod ports;

/// A `redis-server` on a free port, persistence off, and a connection to it.
pub(in crate::cluster) struct Redis {
    pub(in crate::cluster) conn: redis::Connection,
    /// `redis://127.0.0.1:PORT`.
    pub(in crate::cluster) url: String,
    _process: Process,
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Redis of the test's own; `None` (after a loud message) without `redis-server`.
pub(in crate::cluster) fn redis(test: &str) -> Option<Redis> {
    if !Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let why = "redis-server is not installed (Debian package redis-server)";
        assert!(std::env::var("QUIVER_REQUIRE_ALL").as_deref() != Ok("1"), "QUIVER_REQUIRE_ALL=1 and {why}");
        // (The stderr handle: `eprintln!` is captured by the test harness for passing tests.)
        let _ = std::io::Write::write_fmt(&mut std::io::stderr().lock(), format_args!("\n!!! SKIPPED {test}: {why}\n"));
        return None;
    }
    // A port outside the kernel's ephemeral range (`ports::restartable_port`, the end-to-end harness's): no
    // outgoing socket of another process is given it meanwhile, as a port found free at 0 and let go could be.
    let port = ports::restartable_port();
    // (Replication, which a test may start, over the socket both ways: no RDB file written in the working directory.)
    let diskless = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "swapdb"];
    let mut process = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(diskless)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            return Some(Redis { conn, url, _process: process });
        }
        assert!(process.0.try_wait().unwrap().is_none(), "redis-server on port {port} exited at once");
        assert!(started.elapsed() < Duration::from_secs(10), "redis-server does not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const NODE: &str = "n1";

/// The members a join script returned, and whether it refused for the burial's mark.
type Joined = (Vec<String>, bool);

pub(super) fn join(redis: &mut Redis, keys: &RoomKeys, identity: &str, sub: u64) -> Vec<String> {
    join_as(redis, keys, (identity, sub), "0").0
}

/// [`join`], asking to be counted in a room where the node was buried (`revive` `1`) or not: the members, and
/// whether the script refused for the burial's mark.
fn join_as(redis: &mut Redis, keys: &RoomKeys, who: (&str, u64), revive: &str) -> (Vec<String>, bool) {
    join_listing(redis, keys, who, revive, 1_000)
}

/// [`join_as`], with at most `most` member names back.
pub(super) fn join_listing(redis: &mut Redis, keys: &RoomKeys, who: (&str, u64), revive: &str, most: usize) -> Joined {
    let (identity, sub) = who;
    let (_epoch, _seq, _op, members, buried): (String, u64, u64, Vec<String>, u8) = JOIN_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .key(&keys.members)
        .key(keys.holders(NODE))
        .key(keys.gone(NODE, sub))
        .key(keys.buried(NODE))
        .arg("17")
        .arg(identity)
        .arg("1000")
        .arg(&keys.events)
        .arg(sub)
        .arg(revive)
        .arg(most)
        .invoke(&mut redis.conn)
        .unwrap();
    (members, buried == 1)
}

/// A dead node's join that reaches Redis only after the node was buried (sent before it died, held in its kernel's
/// send buffer across a partition) counts no member: the burial left a mark in each of its rooms. Before, it
/// counted one that nobody would ever take out (the node, no longer listed, is never buried again). The node
/// itself, alive after all, asks again and is counted, which clears the mark.
#[test]
fn a_join_that_runs_after_its_nodes_burial_counts_no_member() {
    let Some(mut redis) = redis("a_join_that_runs_after_its_nodes_burial_counts_no_member") else { return };
    let keys = RoomKeys::new("buried");
    assert_eq!(join(&mut redis, &keys, "alice", 1), ["alice"]);
    let ended: u64 = NODE_GONE_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .key(&keys.members)
        .key(keys.holders(NODE))
        .key(keys.buried(NODE))
        .arg("2000")
        .arg(&keys.events)
        .arg(0)
        .arg(60_000)
        .invoke(&mut redis.conn)
        .unwrap();
    assert_eq!(ended, 1);
    let ttl: i64 = redis::cmd("PTTL").arg(keys.buried(NODE)).query(&mut redis.conn).unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "the mark expires ({ttl} ms)");
    let (seen, refused) = join_as(&mut redis, &keys, ("ghost", 2), "0");
    assert!(refused && seen.is_empty(), "{seen:?}");
    assert!(members(&mut redis, &keys).is_empty(), "a dead node's late join counted a member");
    // A reconcile of the node's that runs late (its call stalled across the burial) counts nobody either.
    assert_eq!(reconcile(&mut redis, &keys, 2, &[(1, "alice")]), (0, 0));
    assert!(members(&mut redis, &keys).is_empty(), "a dead node's late reconcile counted a member");
    let (seen, refused) = join_as(&mut redis, &keys, ("bob", 3), "1");
    assert!(!refused);
    assert_eq!(seen, ["bob"], "the node, alive, is counted when it asks again");
    let marked: u64 = redis::cmd("EXISTS").arg(keys.buried(NODE)).query(&mut redis.conn).unwrap();
    assert_eq!(marked, 0, "its next joins are counted at once");
    let (mut seen, refused) = join_as(&mut redis, &keys, ("carol", 4), "0");
    seen.sort();
    assert_eq!((seen, refused), (vec!["bob".to_string(), "carol".to_string()], false));
}

fn leave(redis: &mut Redis, keys: &RoomKeys, sub: u64) -> u64 {
    LEAVE_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .key(&keys.members)
        .key(keys.holders(NODE))
        .key(keys.gone(NODE, sub))
        .arg(sub)
        .arg("2000")
        .arg(&keys.events)
        .arg(0)
        .arg(60_000)
        .invoke(&mut redis.conn)
        .unwrap()
}

fn members(redis: &mut Redis, keys: &RoomKeys) -> Vec<String> {
    redis::cmd("HKEYS").arg(&keys.members).query(&mut redis.conn).unwrap()
}

/// A join whose reply was lost is undone by a leave, and the join itself may run after it (late, on a connection
/// the node replaced): the leave's tombstone keeps it from counting a member nobody will ever take out.
#[test]
fn a_join_that_runs_after_its_leave_counts_no_member() {
    let Some(mut redis) = redis("a_join_that_runs_after_its_leave_counts_no_member") else { return };
    let keys = RoomKeys::new("late");
    assert_eq!(leave(&mut redis, &keys, 7), 0, "nothing to end yet");
    let seen = join(&mut redis, &keys, "ghost", 7);
    assert!(seen.is_empty(), "{seen:?}");
    assert!(members(&mut redis, &keys).is_empty());
    let held: u64 = redis::cmd("HLEN").arg(keys.holders(NODE)).query(&mut redis.conn).unwrap();
    assert_eq!(held, 0);
    let meta: u64 = redis::cmd("EXISTS").arg(&keys.meta).query(&mut redis.conn).unwrap();
    assert_eq!(meta, 0, "nothing was written: no room made that nothing would expire");
    let ttl: i64 = redis::cmd("PTTL").arg(keys.gone(NODE, 7)).query(&mut redis.conn).unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "the tombstone expires ({ttl} ms)");
}

/// In the usual order nothing changes: a join counts its member, a retried join counts it once, the leave ends it,
/// and no tombstone is left behind.
#[test]
fn a_join_and_its_leave_in_order_count_and_end_the_member_once() {
    let Some(mut redis) = redis("a_join_and_its_leave_in_order_count_and_end_the_member_once") else { return };
    let keys = RoomKeys::new("usual");
    assert_eq!(join(&mut redis, &keys, "alice", 8), vec!["alice".to_string()]);
    assert_eq!(join(&mut redis, &keys, "alice", 8), vec!["alice".to_string()], "a retry counts once");
    let count: u64 = redis::cmd("HGET").arg(&keys.members).arg("alice").query(&mut redis.conn).unwrap();
    assert_eq!(count, 1);
    assert_eq!(leave(&mut redis, &keys, 8), 1);
    assert!(members(&mut redis, &keys).is_empty());
    let tomb: u64 = redis::cmd("EXISTS").arg(keys.gone(NODE, 8)).query(&mut redis.conn).unwrap();
    assert_eq!(tomb, 0, "no tombstone for a subscription that was there");
}

fn rolled_back(redis: &mut Redis, keys: &RoomKeys, delivered: (&str, u64, u64, u64, u64), fresh: &str) -> String {
    let (epoch, seq, op, message_op, message_time) = delivered;
    let epoch: Option<String> = ROLLED_BACK_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .arg(epoch)
        .arg(seq)
        .arg(op)
        .arg(fresh)
        .arg(message_op)
        .arg(message_time)
        .invoke(&mut redis.conn)
        .unwrap();
    epoch.unwrap()
}

/// A post as a node makes it: (seq, duplicate).
fn post(redis: &mut Redis, keys: &RoomKeys, id: u64, time_us: u64) -> (u64, bool) {
    post_remembering(redis, keys, id, time_us, 10_000)
}

/// [`post`], in a room whose dedupe remembers `max_entries` posts.
fn post_remembering(redis: &mut Redis, keys: &RoomKeys, id: u64, time_us: u64, max_entries: u32) -> (u64, bool) {
    post_fresh(redis, keys, id, time_us, max_entries, "17")
}

/// [`post_remembering`], with `fresh` the epoch a room with none (new, or lost) is given.
fn post_fresh(redis: &mut Redis, keys: &RoomKeys, id: u64, time_us: u64, max_entries: u32, fresh: &str) -> (u64, bool) {
    let (_epoch, seq, duplicate): (String, u64, u8) = POST_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .key(&keys.members)
        .key(keys.dedupe("poster", id))
        .key(keys.dedupe_ring())
        .arg(fresh)
        .arg(time_us)
        .arg(format!("body {id}"))
        .arg(60_000)
        .arg(1_000)
        .arg(0)
        .arg(0)
        .arg(&keys.events)
        .arg(max_entries)
        .invoke(&mut redis.conn)
        .unwrap();
    (seq, duplicate == 1)
}

/// A stream whose oldest entry has no readable time (damaged, or not written by a node) does not make every 8th
/// post fail after it was stored (the age trim compared a nil): the trim stops at that entry, and the post is
/// answered and published.
#[test]
fn an_entry_without_a_time_stops_the_age_trim_and_fails_no_post() {
    let Some(mut redis) = redis("an_entry_without_a_time_stops_the_age_trim_and_fails_no_post") else { return };
    let keys = RoomKeys::new("damaged");
    assert_eq!(post(&mut redis, &keys, 1, 1_000), (1, false));
    let _: () = redis::cmd("XDEL").arg(&keys.log).arg("1-0").query(&mut redis.conn).unwrap();
    let fields = ["o", "1", "t", "not a time", "p", "x"];
    let _: String = redis::cmd("XADD").arg(&keys.log).arg("1-1").arg(&fields).query(&mut redis.conn).unwrap();
    for id in 2..=9u64 {
        let posted: (String, u64, u8) = POST_SCRIPT
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.members)
            .key(keys.dedupe("poster", id))
            .key(keys.dedupe_ring())
            .arg("17")
            .arg(1_000 + id)
            .arg(format!("body {id}"))
            .arg(60_000)
            .arg(1_000)
            .arg(1) // every message is past a 1 µs age limit
            .arg(0)
            .arg(&keys.events)
            .arg(10_000)
            .invoke(&mut redis.conn)
            .unwrap_or_else(|err| panic!("post {id} refused: {err}"));
        assert_eq!((posted.1, posted.2), (id, 0));
    }
    let left: u64 = redis::cmd("XLEN").arg(&keys.log).query(&mut redis.conn).unwrap();
    assert_eq!(left, 9, "nothing deleted past the entry that cannot be read");
}

/// A room's dedupe keys are bounded by count (`dedupe_max_entries`, and 64 between trims), not only by the window:
/// a key per post for the whole window let one client at its post rate fill Redis. The newest are remembered (a
/// retry gets its seq back); the oldest are forgotten, as on one node.
#[test]
fn a_rooms_dedupe_keys_are_bounded_by_count() {
    let Some(mut redis) = redis("a_rooms_dedupe_keys_are_bounded_by_count") else { return };
    let keys = RoomKeys::new("busy");
    for id in 1..=500 {
        assert_eq!(post_remembering(&mut redis, &keys, id, 1_000 + id, 100), (id, false));
    }
    let pattern = format!("{}*", keys.dedupe("poster", 0).trim_end_matches('0'));
    let stored: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut redis.conn).unwrap();
    assert!((100..=164).contains(&stored.len()), "{} dedupe keys for 500 posts", stored.len());
    let ring: u64 = redis::cmd("LLEN").arg(keys.dedupe_ring()).query(&mut redis.conn).unwrap();
    assert_eq!(ring, stored.len() as u64, "the ring names every key kept");
    let ttl: i64 = redis::cmd("PTTL").arg(keys.dedupe_ring()).query(&mut redis.conn).unwrap();
    assert!(ttl > 0, "the ring expires: {ttl}");
    assert_eq!(post_remembering(&mut redis, &keys, 480, 9_000, 100), (480, true), "a recent post is remembered");
    assert_eq!(post_remembering(&mut redis, &keys, 3, 9_001, 100), (501, false), "an old one is forgotten");
}

/// A dedupe key claimed again by a post in a later epoch (the room lost, its key still in the window) is not pushed
/// onto the ring a second time: the ring names it already, and its older entry, trimmed, would delete the new
/// claim long before its turn.
#[test]
fn a_dedupe_key_claimed_again_in_a_new_epoch_is_not_pushed_twice() {
    let Some(mut redis) = redis("a_dedupe_key_claimed_again_in_a_new_epoch_is_not_pushed_twice") else { return };
    let keys = RoomKeys::new("lost");
    for id in 1..=3 {
        assert_eq!(post(&mut redis, &keys, id, 1_000 + id), (id, false));
    }
    let ring_length =
        |redis: &mut Redis| -> u64 { redis::cmd("LLEN").arg(keys.dedupe_ring()).query(&mut redis.conn).unwrap() };
    assert_eq!(ring_length(&mut redis), 3);
    // The room's meta and stream are lost (evicted, flushed); its dedupe keys and ring are not.
    let _: () = redis::cmd("DEL").arg(&keys.meta).arg(&keys.log).query(&mut redis.conn).unwrap();
    assert_eq!(post_fresh(&mut redis, &keys, 2, 5_000, 10_000, "18"), (1, false), "a new epoch: stored again");
    assert_eq!(ring_length(&mut redis), 3, "the key claimed again is named once");
    assert_eq!(post_fresh(&mut redis, &keys, 4, 5_001, 10_000, "18"), (2, false));
    assert_eq!(ring_length(&mut redis), 4, "a new key is pushed");
}

fn meta(redis: &mut Redis, keys: &RoomKeys) -> (String, u64, u64) {
    redis::cmd("HMGET").arg(&keys.meta).arg("epoch").arg("seq").arg("op").query(&mut redis.conn).unwrap()
}

/// The switch to a new epoch after Redis went back is a compare and set: only while the room is still in the
/// node's epoch and behind it (seq or op), so that the second node to notice finds the first's new epoch, and a
/// node that is not ahead changes nothing.
#[test]
fn a_room_behind_a_node_moves_to_a_new_epoch_once() {
    let Some(mut redis) = redis("a_room_behind_a_node_moves_to_a_new_epoch_once") else { return };
    let keys = RoomKeys::new("rewound");
    for id in 1..=5 {
        assert_eq!(post(&mut redis, &keys, id, 1_000 + id), (id, false));
    }
    assert_eq!(meta(&mut redis, &keys), ("17".to_string(), 5, 5));
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 5, 5, 1_005), "99"), "17", "level with the node");
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 6, 5, 1_005), "99"), "99", "behind in ops");
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 9, 9, 9, 1_009), "55"), "99", "switched already");
    assert_eq!(meta(&mut redis, &keys), ("99".to_string(), 5, 5), "seqs go on from the room's in the new epoch");
    assert_eq!(rolled_back(&mut redis, &keys, ("99", 6, 5, 5, 1_005), "42"), "42", "behind in seqs");
}

/// New posts may overtake what Redis lost before a node checks: the room is level with the node or ahead, but the
/// message at the node's last seq is another one (its op or time differ).
#[test]
fn a_room_that_holds_another_message_at_the_nodes_last_seq_moves_to_a_new_epoch() {
    let Some(mut redis) = redis("a_room_that_holds_another_message_at_the_nodes_last_seq_moves_to_a_new_epoch") else {
        return;
    };
    let keys = RoomKeys::new("overtaken");
    for id in 1..=6 {
        post(&mut redis, &keys, id, 1_000 + id);
    }
    // The node delivered seq 5 as op 5 at time 1005: the same message.
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 5, 5, 1_005), "99"), "17");
    // It delivered a seq 5 made at another time: Redis lost it and gave seq 5 to a new post.
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 5, 5, 2_005), "99"), "99");
}

/// A post stored before the switch and retried after it (its reply lost in the restart) is the duplicate it is:
/// the seqs up to the switch are the new epoch's.
#[test]
fn a_post_retried_across_the_switch_is_a_duplicate() {
    let Some(mut redis) = redis("a_post_retried_across_the_switch_is_a_duplicate") else { return };
    let keys = RoomKeys::new("retried");
    for id in 1..=3 {
        post(&mut redis, &keys, id, 1_000 + id);
    }
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 9, 9, 9, 1_009), "99"), "99");
    assert_eq!(post(&mut redis, &keys, 2, 5_000), (2, true), "stored before the switch");
    assert_eq!(post(&mut redis, &keys, 4, 5_001), (4, false), "a new post goes on from the room's seq");
    assert_eq!(post(&mut redis, &keys, 4, 5_002), (4, true));
    let length: u64 = redis::cmd("XLEN").arg(&keys.log).query(&mut redis.conn).unwrap();
    assert_eq!(length, 4, "each post stored once");
}

/// The end of a burial buries a node that stayed away, and of one that came back meanwhile (its mark made again,
/// or a beat since the expiry's start) only deletes the mark again, keeping its lists: a burial after its later
/// death must still find its rooms. Before, the lists were deleted unconditionally, and a node back from a
/// partition that died before its next beat left its members in their rooms for good. A node retiring itself is
/// buried whatever its beats.
#[test]
fn a_burial_keeps_the_lists_of_a_node_that_came_back_meanwhile() {
    use crate::cluster::keys;
    let Some(mut redis) = redis("a_burial_keeps_the_lists_of_a_node_that_came_back_meanwhile") else { return };
    let c = &mut redis.conn;
    let bury = |c: &mut redis::Connection, node: &str, retiring: bool| -> u8 {
        let mut invocation = BURIED_SCRIPT.prepare_invoke();
        invocation.key(keys::node_rooms(node)).key(keys::node_ticks(node)).key(keys::node_mark(node));
        invocation.key(keys::NODES).arg(node).arg(10_000u64).arg(if retiring { "1" } else { "0" });
        invocation.arg(keys::CONTROL).arg(format!("dead {node}")).invoke(c).unwrap()
    };
    let listed = |c: &mut redis::Connection, node: &str| {
        let rooms: bool = redis::cmd("EXISTS").arg(keys::node_rooms(node)).query(c).unwrap();
        let score: Option<u64> = redis::cmd("ZSCORE").arg(keys::NODES).arg(node).query(c).unwrap();
        let marked: bool = redis::cmd("EXISTS").arg(keys::node_mark(node)).query(c).unwrap();
        (rooms, score.is_some(), marked)
    };
    let (now_s, _): (u64, u64) = redis::cmd("TIME").query(c).unwrap();
    let now_ms = now_s * 1000;
    let node = |c: &mut redis::Connection, name: &str, beat_ms: u64, marked: bool| {
        redis::cmd("ZADD").arg(keys::NODES).arg(beat_ms).arg(name).query::<()>(c).unwrap();
        redis::cmd("SADD").arg(keys::node_rooms(name)).arg("r").query::<()>(c).unwrap();
        redis::cmd("SADD").arg(keys::node_ticks(name)).arg("t").query::<()>(c).unwrap();
        if marked {
            redis::cmd("SET").arg(keys::node_mark(name)).arg("token").query::<()>(c).unwrap();
        }
    };
    node(c, "away", 1, false);
    assert_eq!(bury(c, "away", false), 1);
    assert_eq!(listed(c, "away"), (false, false, false), "buried");
    node(c, "back", 1, true);
    assert_eq!(bury(c, "back", false), 0);
    assert_eq!(listed(c, "back"), (true, true, false), "came back: only unmarked");
    node(c, "beating", now_ms, false);
    assert_eq!(bury(c, "beating", false), 0);
    assert_eq!(listed(c, "beating"), (true, true, false), "beat since: only unmarked");
    node(c, "retiring", now_ms, true);
    assert_eq!(bury(c, "retiring", true), 1);
    assert_eq!(listed(c, "retiring"), (false, false, false), "retired");
}

/// A beat after Redis' clock stepped back (here: stamps an hour ahead of it) stamps Redis' time, for every node
/// whose stamp is that far ahead: kept an hour ahead (`ZADD GT`), a node that died would not be buried for that
/// hour. A stamp a moment ahead (a beat that ran first) is kept.
#[test]
fn a_beat_after_redis_clock_stepped_back_stamps_redis_time() {
    use crate::cluster::keys;
    let Some(mut redis) = redis("a_beat_after_redis_clock_stepped_back_stamps_redis_time") else { return };
    let c = &mut redis.conn;
    let (now_s, _): (u64, u64) = redis::cmd("TIME").query(c).unwrap();
    let beat = |c: &mut redis::Connection, node: &str| -> (u64, u64, u64) {
        let mut invocation = BEAT_SCRIPT.prepare_invoke();
        invocation.key(keys::NODES).key(keys::node_mark(node)).arg(node).arg("token").arg("create");
        invocation.invoke(c).unwrap()
    };
    let stamp = |c: &mut redis::Connection, node: &str| -> u64 {
        redis::cmd("ZSCORE").arg(keys::NODES).arg(node).query(c).unwrap()
    };
    let ahead = now_s * 1000 + 3_600_000;
    redis::cmd("ZADD").arg(keys::NODES).arg(ahead).arg("stepped").query::<()>(c).unwrap();
    redis::cmd("ZADD").arg(keys::NODES).arg(ahead).arg("dead").query::<()>(c).unwrap();
    let (now_ms, _, before) = beat(c, "stepped");
    assert_eq!(before, ahead);
    assert_eq!(stamp(c, "stepped"), now_ms, "Redis' time, not the hour ahead");
    assert_eq!(stamp(c, "dead"), now_ms, "a node that beats no more is stamped back too: buried an expiry later");
    let moment = now_ms + 1_000;
    redis::cmd("ZADD").arg(keys::NODES).arg(moment).arg("racing").query::<()>(c).unwrap();
    beat(c, "racing");
    assert_eq!(stamp(c, "racing"), moment, "a stamp a moment ahead is not taken back");
}

/// `RECONCILE` with `held` (subscription id, identity) read when the node's last subscription id was `last`.
fn reconcile(redis: &mut Redis, keys: &RoomKeys, last: u64, held: &[(u64, &str)]) -> (u64, u64) {
    let mut call = RECONCILE_SCRIPT.prepare_invoke();
    call.key(&keys.meta).key(&keys.log).key(&keys.members).key(keys.holders(NODE)).key(keys.buried(NODE));
    for (id, _) in held {
        call.key(keys.gone(NODE, *id));
    }
    call.arg("3000").arg(&keys.events).arg(0).arg(last);
    for (id, identity) in held {
        call.arg(*id).arg(*identity);
    }
    call.invoke(&mut redis.conn).unwrap()
}

/// A reconcile that runs late (its call's connection stalled and was replaced) acts on the node's subscriptions as
/// they were when it read them: it does not count one whose leave left a tombstone (the leave found it not counted,
/// as a join does not), nor end one joined since (an id above the last one it read). Before, it counted the left one
/// (a member present for good) and ended the new one (a member told gone while connected).
#[test]
fn a_late_reconcile_neither_counts_a_left_subscription_nor_ends_a_newer_one() {
    let Some(mut redis) = redis("a_late_reconcile_neither_counts_a_left_subscription_nor_ends_a_newer_one") else {
        return;
    };
    let keys = RoomKeys::new("reconciled");
    join(&mut redis, &keys, "zed", 3);
    // Read with 3 and 7 held, 7 not counted by Redis (it lost it); 7 leaves before the reconcile runs.
    assert_eq!(leave(&mut redis, &keys, 7), 0);
    assert_eq!(reconcile(&mut redis, &keys, 8, &[(3, "zed"), (7, "ann")]), (0, 0), "not counted after its leave");
    assert_eq!(members(&mut redis, &keys), ["zed"]);
    // Read with 3 held and 8 the last id; subscription 9 joins before the reconcile runs.
    join(&mut redis, &keys, "bob", 9);
    assert_eq!(reconcile(&mut redis, &keys, 8, &[(3, "zed")]), (0, 0), "not ended");
    let mut present = members(&mut redis, &keys);
    present.sort();
    assert_eq!(present, ["bob", "zed"]);
    // What a reconcile is for still holds: one the node does not hold (and read since) ends, one it holds that
    // Redis lost is counted.
    assert_eq!(reconcile(&mut redis, &keys, 10, &[(3, "zed"), (10, "cyd")]), (1, 1));
    let mut present = members(&mut redis, &keys);
    present.sort();
    assert_eq!(present, ["cyd", "zed"]);
}

#[path = "scripts_members_tests.rs"]
mod members;
