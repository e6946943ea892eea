//! The scripts against a real `redis-server` of the test's own (skipped loudly without one; a failure under
//! `QUIVER_REQUIRE_ALL=1`), called in the orders the nodes' connections can make them run in.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;
use crate::cluster::keys::RoomKeys;

/// A `redis-server` on a free port, persistence off, and a connection to it.
struct Redis {
    conn: redis::Connection,
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
fn redis(test: &str) -> Option<Redis> {
    if !Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let why = "redis-server is not installed (Debian package redis-server)";
        assert!(std::env::var("QUIVER_REQUIRE_ALL").as_deref() != Ok("1"), "QUIVER_REQUIRE_ALL=1 and {why}");
        eprintln!("!!! SKIPPED {test}: {why}");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            return Some(Redis { conn, _process: process });
        }
        assert!(started.elapsed() < Duration::from_secs(10), "redis-server does not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const NODE: &str = "n1";

fn join(redis: &mut Redis, keys: &RoomKeys, identity: &str, sub: u64) -> Vec<String> {
    let (_epoch, _seq, _op, members): (String, u64, u64, Vec<String>) = JOIN_SCRIPT
        .key(&keys.meta)
        .key(&keys.log)
        .key(&keys.members)
        .key(keys.holders(NODE))
        .key(keys.gone(NODE, sub))
        .arg("17")
        .arg(identity)
        .arg("1000")
        .arg(&keys.events)
        .arg(sub)
        .invoke(&mut redis.conn)
        .unwrap();
    members
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
    let op: Option<u64> = redis::cmd("HGET").arg(&keys.meta).arg("op").query(&mut redis.conn).unwrap();
    assert_eq!(op.unwrap_or(0), 0, "no join event was published");
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

fn rolled_back(redis: &mut Redis, keys: &RoomKeys, (epoch, seq, op): (&str, u64, u64), fresh: &str) -> Option<String> {
    ROLLED_BACK_SCRIPT.key(&keys.meta).arg(epoch).arg(seq).arg(op).arg(fresh).invoke(&mut redis.conn).unwrap()
}

/// The switch to a new epoch after Redis went back is a compare and set: only while the room is still in the
/// node's epoch and behind it, so that the second node to notice finds the first's new epoch, and a node that is
/// not ahead changes nothing.
#[test]
fn a_room_behind_a_node_moves_to_a_new_epoch_once() {
    let Some(mut redis) = redis("a_room_behind_a_node_moves_to_a_new_epoch_once") else { return };
    let keys = RoomKeys::new("rewound");
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("17")
        .arg("seq")
        .arg(5)
        .arg("op")
        .arg(6)
        .query(&mut redis.conn)
        .unwrap();
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 6), "99").as_deref(), Some("17"), "not behind");
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 5, 7), "99").as_deref(), Some("99"), "behind in ops");
    assert_eq!(rolled_back(&mut redis, &keys, ("17", 10, 11), "55").as_deref(), Some("99"), "switched already");
    let meta: (String, u64, u64) =
        redis::cmd("HMGET").arg(&keys.meta).arg("epoch").arg("seq").arg("op").query(&mut redis.conn).unwrap();
    assert_eq!(meta, ("99".to_string(), 5, 6), "seqs go on from the room's in the new epoch");
    assert_eq!(rolled_back(&mut redis, &keys, ("99", 6, 6), "42").as_deref(), Some("42"), "behind in seqs");
}
