//! Redis that comes back with older data than the nodes delivered (restarted from a snapshot; a failover to a
//! replica that lagged is the same): the room moves to a new epoch, and no message posted after is skipped.

use std::time::Duration;

use quiver_client::{Client, RoomEvent};

use super::harness::*;

/// Posts after Redis' return: more than the five it lost.
const AFTER: u64 = 8;

/// A member saw seqs 1–10; Redis dies and comes back from a snapshot taken at seq 5, and the next posts get seqs
/// 6 to 13, 6–10 again. The member's node used to skip them (their ops were behind the ones it had delivered) and
/// a client resuming from seq 7 was told it missed nothing: now the node notices at its catch-up that Redis holds
/// another history in the same epoch (here the new posts may have overtaken the node's seq and op before it looks:
/// the message at its last seq is another one), moves the room to a new epoch, and the member resumes unrecovered
/// and gets them.
#[test]
fn a_redis_back_with_older_data_moves_the_room_to_a_new_epoch_and_skips_no_message() {
    if !redis_available("a_redis_back_with_older_data_moves_the_room_to_a_new_epoch_and_skips_no_message") {
        return;
    }
    let (snapshots, redis) = Snapshots::start();
    let (_tmp, dirs) = node_dirs(1);
    let nodes = start_cluster(&dirs, &[redis.url()], &[]);
    let runtime = clients_runtime();
    runtime.block_on(async {
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let mut room = member.join("rewound").await.unwrap();
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        for k in 1..=5u64 {
            assert_eq!(poster.post("rewound", format!("kept-{k}")).await.unwrap(), k);
        }
        let first_epoch = poster.history("rewound", None, 10).await.unwrap().epoch;
        let saved: String = redis.query(&mut redis::cmd("SAVE")).unwrap();
        assert_eq!(saved, "OK");
        for k in 6..=10u64 {
            assert_eq!(poster.post("rewound", format!("lost-{k}")).await.unwrap(), k);
        }
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match room.next().await {
                    Some(RoomEvent::Message(m)) if m.seq == 10 => break,
                    Some(_) => {}
                    None => panic!("the room ended"),
                }
            }
        })
        .await;
        seen.expect("the member saw seq 10");
        // Redis is killed and comes back from its snapshot (seq 5); the posts meanwhile are retried by the client.
        let redis = snapshots.restart(redis);
        for k in 1..=AFTER {
            poster.post("rewound", format!("after-{k}")).await.unwrap();
        }
        let (mut resumed, mut bodies) = (Vec::new(), Vec::new());
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            while !bodies.iter().any(|body: &String| *body == format!("after-{AFTER}")) {
                match room.next().await {
                    Some(RoomEvent::Resumed { recovered, epoch }) => resumed.push((recovered, epoch)),
                    Some(RoomEvent::Message(m)) => bodies.push(String::from_utf8_lossy(&m.body).into_owned()),
                    Some(_) => {}
                    None => panic!("the room ended"),
                }
            }
        })
        .await;
        all.unwrap_or_else(|_| panic!("the member got every post made after the restart: {resumed:?} {bodies:?}"));
        let page = poster.history("rewound", None, 100).await.unwrap();
        assert_ne!(page.epoch, first_epoch, "a new epoch");
        assert!(resumed.contains(&(false, page.epoch)), "resumed unrecovered in the new epoch: {resumed:?}");
        let after: Vec<&String> = bodies.iter().filter(|body| body.starts_with("after-")).collect();
        let expected: Vec<String> = (1..=AFTER).map(|k| format!("after-{k}")).collect();
        assert_eq!(after, expected.iter().collect::<Vec<_>>(), "each once, in order: {bodies:?}");
        let stored: Vec<String> = page
            .messages
            .iter()
            .filter_map(|m| match &m.kind {
                quiver_proto::EventKind::Message { body, .. } => Some(String::from_utf8_lossy(body).into_owned()),
                _ => None,
            })
            .collect();
        assert!(stored.iter().all(|body| !body.starts_with("lost-")), "{stored:?}");
        for body in &expected {
            assert!(stored.contains(body), "{stored:?}");
        }
        member.close().await;
        poster.close().await;
        drop(redis);
    });
}

/// A busy room through Pub/Sub reconnects with nothing lost in Redis: the catch-up's check finds Redis level with
/// the node (events published between its read and its look at the node's state are no sign of a rollback), so
/// the member is not reset: no resume, every message once and in order.
#[test]
fn a_busy_room_through_pubsub_reconnects_is_not_taken_for_a_rollback() {
    if !redis_available("a_busy_room_through_pubsub_reconnects_is_not_taken_for_a_rollback") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(1, &[]);
    runtime.block_on(async {
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        read_room(member.join("busy").await.unwrap(), seen.clone());
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        let posting = tokio::spawn(async move {
            let mut acked = std::collections::BTreeMap::new();
            for k in 0..600 {
                let body = format!("busy-{k}");
                acked.insert(poster.post("busy", body.clone()).await.unwrap(), body);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            poster.close().await;
            acked
        });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // (Once the node is subscribed again: a fixed wait asked a loaded machine to resubscribe within it.)
            wait_for("the node subscribed", Duration::from_secs(10), || redis.pubsub_clients() >= 1).await;
            let killed: u64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub")).unwrap();
            assert!(killed >= 1);
        }
        let acked = posting.await.unwrap();
        wait_for("every message", Duration::from_secs(20), || seen.lock().unwrap().messages.len() >= acked.len()).await;
        assert!(seen.lock().unwrap().resumed.is_empty(), "the member was reset: {:?}", seen.lock().unwrap().resumed);
        check_one_order(&acked, &[seen]);
        member.close().await;
    });
}

/// A quiet room that went live on its node through a join, after its messages: the node knew its last seq but
/// not which message was there (it had delivered none), and its catch-up at a Pub/Sub reconnect compared that
/// unknown message with Redis' and moved the room to a new epoch, every member told it missed messages, though
/// nothing was lost. Now the message is compared only when the node knows it.
#[test]
fn a_quiet_room_joined_after_its_messages_is_not_taken_for_a_rollback() {
    if !redis_available("a_quiet_room_joined_after_its_messages_is_not_taken_for_a_rollback") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(1, &[]);
    runtime.block_on(async {
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        for k in 1..=3u64 {
            assert_eq!(poster.post("quiet", format!("before-{k}")).await.unwrap(), k);
        }
        let epoch = poster.history("quiet", None, 10).await.unwrap().epoch;
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        read_room(member.join("quiet").await.unwrap(), seen.clone());
        let subscribed = |redis: &Redis| redis.query::<Vec<String>>(redis::cmd("PUBSUB").arg("CHANNELS")).unwrap();
        let before = subscribed(&redis).len();
        let killed: u64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub")).unwrap();
        assert!(killed >= 1);
        // The node subscribes again, then catches up (and checks the room) on the new connection. Nothing is posted
        // meanwhile: a message delivered first would tell the node which message is at its last seq.
        wait_for("the node subscribed again", Duration::from_secs(10), || subscribed(&redis).len() >= before).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(poster.history("quiet", None, 10).await.unwrap().epoch, epoch, "the room's epoch moved");
        assert_eq!(poster.post("quiet", "after").await.unwrap(), 4, "same epoch, the next seq");
        wait_for("the message after", Duration::from_secs(10), || {
            seen.lock().unwrap().messages.iter().any(|(_, body)| body == "after")
        })
        .await;
        assert!(seen.lock().unwrap().resumed.is_empty(), "the member was reset: {:?}", seen.lock().unwrap().resumed);
        assert_eq!(poster.history("quiet", None, 10).await.unwrap().epoch, epoch, "the room's epoch moved");
        member.close().await;
        poster.close().await;
    });
}

/// Members that left after Redis' last snapshot come back with it: counted in presence again, they looked present
/// to everyone joining since, until their node died. Each node now makes Redis' count of its members agree with
/// its own when its Pub/Sub connection is made again: here a member that left a room that stays busy on its node,
/// and one that left a room where it was its node's last.
#[test]
fn members_that_left_after_the_snapshot_are_not_present_when_redis_returns_with_it() {
    if !redis_available("members_that_left_after_the_snapshot_are_not_present_when_redis_returns_with_it") {
        return;
    }
    let (snapshots, redis) = Snapshots::start();
    let (_tmp, dirs) = node_dirs(2);
    let nodes = start_cluster(&dirs, &[redis.url(), redis.url()], &[]);
    let runtime = clients_runtime();
    runtime.block_on(async {
        let counted = |redis: &Redis, room: &str, member: &str| -> bool {
            let key = format!("q:{{{room}}}:members");
            redis.query::<Option<u64>>(redis::cmd("HGET").arg(&key).arg(member)).unwrap_or(None).is_some()
        };
        let stayer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "stayer")).await.unwrap();
        let _stays = stayer.join("ghosts").await.unwrap();
        let leaver = Client::connect_with(&nodes[0].addr, options(&dirs[0], "leaver")).await.unwrap();
        let left = leaver.join("ghosts").await.unwrap();
        let solo = leaver.join("emptied").await.unwrap();
        let saved: String = redis.query(&mut redis::cmd("SAVE")).unwrap();
        assert_eq!(saved, "OK");
        left.leave().await.unwrap();
        solo.leave().await.unwrap();
        wait_for("the leaves counted", Duration::from_secs(10), || {
            !counted(&redis, "ghosts", "leaver") && !counted(&redis, "emptied", "leaver")
        })
        .await;
        // The node lets the emptied room go at its next sweep: it no longer follows it (nor checks it at a
        // reconnect), but the snapshot still lists it among the node's rooms.
        let listed = |redis: &Redis| -> bool {
            let lists: Vec<String> = redis.query(redis::cmd("KEYS").arg("q:node:*:rooms")).unwrap();
            lists.iter().any(|list| redis.query::<bool>(redis::cmd("SISMEMBER").arg(list).arg("emptied")).unwrap())
        };
        wait_for("the node to let the emptied room go", Duration::from_secs(10), || !listed(&redis)).await;
        // Redis is killed and comes back from its snapshot, which counts the leaver in both rooms.
        let redis = snapshots.restart(redis);
        assert!(counted(&redis, "ghosts", "leaver") && counted(&redis, "emptied", "leaver"), "the snapshot's count");
        assert!(listed(&redis), "the snapshot lists the emptied room");
        wait_for("the node to take its members' leaves back to Redis", Duration::from_secs(20), || {
            !counted(&redis, "ghosts", "leaver") && !counted(&redis, "emptied", "leaver")
        })
        .await;
        // A member still there is counted (again: the room's op went back with Redis, so the node may have taken it
        // for a rollback and reset the room's subscriptions, and the member rejoins in a new epoch; under load that
        // rejoin came after the leaves above were taken back).
        wait_for("a member still there counted", Duration::from_secs(10), || counted(&redis, "ghosts", "stayer")).await;
        // What a member joining on the other node is told.
        let checker = Client::connect_with(&nodes[1].addr, options(&dirs[1], "checker")).await.unwrap();
        let ghosts = checker.join("ghosts").await.unwrap();
        let mut present = ghosts.members();
        present.sort();
        assert_eq!(present, ["checker", "stayer"]);
        let emptied = checker.join("emptied").await.unwrap();
        assert_eq!(emptied.members(), ["checker"]);
        for client in [stayer, leaver, checker] {
            client.close().await;
        }
        drop(redis);
    });
}

/// A second subscription of an identity, taken after Redis' last snapshot, is not counted by Redis back from it (the
/// join bumped no op: the identity was there already, so no rollback check notices). The first subscription's leave
/// then published the identity gone while its second was still in the room. Each node now also counts, at each
/// Pub/Sub connection, the subscriptions it holds that Redis does not.
#[test]
fn a_subscription_taken_after_the_snapshot_is_counted_when_redis_returns_with_it() {
    if !redis_available("a_subscription_taken_after_the_snapshot_is_counted_when_redis_returns_with_it") {
        return;
    }
    let (snapshots, redis) = Snapshots::start();
    let (_tmp, dirs) = node_dirs(1);
    let nodes = start_cluster(&dirs, &[redis.url()], &[]);
    let runtime = clients_runtime();
    runtime.block_on(async {
        let count = |redis: &Redis| -> u64 {
            redis
                .query::<Option<u64>>(redis::cmd("HGET").arg("q:{twice}:members").arg("x"))
                .unwrap_or(None)
                .unwrap_or(0)
        };
        let observer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "observer")).await.unwrap();
        let observed = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        read_room(observer.join("twice").await.unwrap(), observed.clone());
        let first = Client::connect_with(&nodes[0].addr, options(&dirs[0], "x")).await.unwrap();
        let first_room = first.join("twice").await.unwrap();
        let saved: String = redis.query(&mut redis::cmd("SAVE")).unwrap();
        assert_eq!(saved, "OK");
        let second = Client::connect_with(&nodes[0].addr, options(&dirs[0], "x")).await.unwrap();
        let _second_room = second.join("twice").await.unwrap();
        assert_eq!(count(&redis), 2);
        let redis = snapshots.restart(redis);
        wait_for("the node to count x's second subscription again", Duration::from_secs(20), || count(&redis) == 2)
            .await;
        first_room.leave().await.unwrap();
        wait_for("x's first leave counted", Duration::from_secs(10), || count(&redis) == 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = observed.lock().unwrap().left.clone();
        assert!(left.iter().all(|(member, _)| member != "x"), "x looked gone while still in the room: {left:?}");
        for client in [observer, first, second] {
            client.close().await;
        }
        drop(redis);
    });
}

/// A node's interest in a tick channel taken after Redis' last snapshot: Redis back from that snapshot lists the
/// node without the channel, the other nodes read that list afresh at their reconnect, and relayed the channel's
/// ticks to it no more, until its subscriber count fell to 0 and rose again. Each node now makes its listed
/// interest in Redis agree with its own at each Pub/Sub connection.
#[test]
fn tick_interest_taken_after_the_snapshot_survives_redis_returning_with_it() {
    if !redis_available("tick_interest_taken_after_the_snapshot_survives_redis_returning_with_it") {
        return;
    }
    let (snapshots, redis) = Snapshots::start();
    let (_tmp, dirs) = node_dirs(2);
    let nodes = start_cluster(&dirs, &[redis.url(), redis.url()], &[]);
    let runtime = clients_runtime();
    runtime.block_on(async {
        let feed = Client::connect_with(&nodes[0].addr, options(&dirs[0], "feed")).await.unwrap();
        let publisher = feed.publisher("prices").await.unwrap();
        let saved: String = redis.query(&mut redis::cmd("SAVE")).unwrap();
        assert_eq!(saved, "OK");
        let reader = Client::connect_with(&nodes[1].addr, options(&dirs[0], "reader")).await.unwrap();
        let mut prices = reader.subscribe("prices").await.unwrap();
        let listed = |redis: &Redis| {
            let lists: Vec<String> = redis.query(redis::cmd("KEYS").arg("q:node:*:ticks")).unwrap();
            lists.iter().any(|list| redis.query::<bool>(redis::cmd("SISMEMBER").arg(list).arg("prices")).unwrap())
        };
        wait_for("node 1's interest listed", Duration::from_secs(10), || listed(&redis)).await;
        let redis = snapshots.restart(redis);
        wait_for("both nodes are ready again", Duration::from_secs(10), || {
            nodes.iter().all(|node| admin_status(node.admin, "/readyz") == 200)
        })
        .await;
        wait_for("node 1's interest listed again", Duration::from_secs(10), || listed(&redis)).await;
        // What node 0 reads of it at its own reconnect (a reload), or hears announced: it relays to node 1 again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let mut k = 0u32;
        loop {
            publisher.send(k.to_string()).unwrap();
            k += 1;
            if tokio::time::timeout(Duration::from_millis(20), prices.next()).await.is_ok_and(|tick| tick.is_some()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no tick crossed to node 1 after Redis came back");
        }
        feed.close().await;
        reader.close().await;
        drop(redis);
    });
}
