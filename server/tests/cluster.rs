//! Several `quiver-server` processes on one real `redis-server` (started here on a free port, persistence off):
//! members on different nodes chat in one order through a SIGKILL of a node (its clients move to the others and
//! resume without a gap or a duplicate, and its members leave within the presence expiry); Redis stopped and its
//! Pub/Sub connections cut during posting (posts refused with `Unavailable` and retried, nothing acknowledged lost
//! or doubled); a room whose stream Redis lost starting a new epoch; a node cut off from Redis (through a relay
//! that stalls) for longer than the presence expiry, buried by the others and coming back with its members; ticks
//! crossing nodes only where another node subscribes; Redis lost by every node at once for longer than the expiry,
//! and no live node buried; a room's gap filled from the stream while the node's other rooms go on; history paged
//! through more than one read of the stream; Redis coming back from an older snapshot (a new epoch, no message
//! skipped).
//!
//! Needs `redis-server` (Debian's `redis-server` package; `.ci/run` installs it): without it the tests skip loudly,
//! or fail under `QUIVER_REQUIRE_ALL=1`. The server binary is `QUIVER_SERVER_BIN` when set, else this package's
//! debug build.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use quiver_client::{Client, ConnectOptions, RoomEvent};

#[path = "cluster/fill.rs"]
mod fill;
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/history.rs"]
mod history;
#[path = "../../tests/src/lines.rs"]
mod lines;
#[path = "cluster/outage.rs"]
mod outage;
/// Ports outside the ephemeral range, so that no client socket takes one between its pick and the bind (or a
/// node's restart).
#[path = "../../tests/src/ports.rs"]
mod ports;
#[path = "cluster/posts.rs"]
mod posts;
#[path = "cluster/rollback.rs"]
mod rollback;

use harness::*;

#[test]
fn members_on_three_nodes_chat_in_one_order_through_the_sigkill_of_a_node() {
    if !redis_available("members_on_three_nodes_chat_in_one_order_through_the_sigkill_of_a_node") {
        return;
    }
    // A presence expiry of 5 s (the others' 2 s): a moved chatter must rejoin on a live node (after noticing the
    // kill within a second, then a handshake and a rejoin) before the dead node is buried, or it is seen leaving;
    // on a loaded 2-core CI machine 2 s left too little of that margin.
    const EXPIRY: u64 = 5_000;
    let Cluster { redis: _redis, dirs, nodes, runtime, _tmp } =
        cluster(3, &[("QUIVER_BROKER_PRESENCE_EXPIRY_MS", &EXPIRY.to_string())]);
    runtime.block_on(async {
        // Each chatter lists its home node first, then the others: the cluster's address list.
        let list = |home: usize| {
            let mut order: Vec<&str> = vec![&nodes[home].addr];
            order.extend((0..3).filter(|i| *i != home).map(|i| nodes[i].addr.as_str()));
            order.join(",")
        };
        let observer = Client::connect_with(&nodes[2].addr, options(&dirs[0], "observer")).await.unwrap();
        let observed = Arc::new(Mutex::new(Seen::default()));
        read_room(observer.join("lobby").await.unwrap(), observed.clone());
        // A member of node 0 that does not come back: the others see it leave when node 0 is found dead.
        let ghost =
            Client::connect_with(&nodes[0].addr, ConnectOptions { reconnect: false, ..options(&dirs[0], "ghost") })
                .await
                .unwrap();
        let _ghost_room = ghost.join("lobby").await.unwrap();
        let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
        let mut seen = vec![observed.clone()];
        // Everyone joins before anyone posts: every member must see every message.
        let mut joined = Vec::new();
        for i in 0..6 {
            let client =
                Arc::new(Client::connect_with(&list(i % 3), options(&dirs[0], &format!("chatter-{i}"))).await.unwrap());
            assert_eq!(client.server_addr().to_string(), nodes[i % 3].addr, "the home node answers first");
            let mine = Arc::new(Mutex::new(Seen::default()));
            read_room(client.join("lobby").await.unwrap(), mine.clone());
            seen.push(mine);
            joined.push(client);
        }
        let mut chatters = Vec::new();
        for (i, client) in joined.into_iter().enumerate() {
            let acked = acked.clone();
            chatters.push(tokio::spawn(async move {
                for k in 0..30 {
                    let body = format!("chatter-{i}-{k}");
                    let seq = client.post("lobby", body.clone()).await.unwrap();
                    assert!(acked.lock().unwrap().insert(seq, body).is_none(), "seq {seq} acknowledged twice");
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                client
            }));
        }
        wait_for("a third of the posts are acknowledged", Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= 60
        })
        .await;
        nodes[0].process.signal("KILL");
        let killed = Instant::now();
        let mut clients = Vec::new();
        for chatter in chatters {
            // (Bounded: a post never acknowledged fails the test here instead of holding it.)
            let chatted = tokio::time::timeout(Duration::from_secs(60), chatter).await;
            clients.push(chatted.expect("every chatter's posts acknowledged").unwrap());
        }
        for (i, client) in clients.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            assert_ne!(client.server_addr().to_string(), nodes[0].addr, "chatter {i} moved to a live node");
        }
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), 180);
        let everyone_has_all = || seen.iter().all(|s| s.lock().unwrap().messages.len() >= acked.len());
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            while !everyone_has_all() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        for (i, s) in seen.iter().enumerate() {
            let s = s.lock().unwrap();
            let seqs: Vec<u64> = s.messages.iter().map(|(seq, _)| *seq).collect();
            let missing: Vec<u64> = (1..=acked.len() as u64).filter(|q| !seqs.contains(q)).collect();
            eprintln!("member {i}: {} messages, resumed {:?}, missing {missing:?}", seqs.len(), s.resumed);
        }
        assert!(all.is_ok(), "every member has every message within 20 s");
        check_one_order(&acked, &seen);
        let expiry = Duration::from_millis(EXPIRY + 4 * HEARTBEAT_MS) + Duration::from_secs(2);
        let ghost_left = || observed.lock().unwrap().left.iter().any(|(member, _)| member == "ghost");
        wait_for("the observer sees the dead node's member leave", expiry, ghost_left).await;
        let left_after = observed.lock().unwrap().left.iter().find(|(m, _)| m == "ghost").map(|(_, at)| *at - killed);
        eprintln!("ghost left {left_after:?} after the kill (expiry {EXPIRY} ms)");
        // Presence now, as a newcomer on another live node sees it: every chatter (those of node 0 rejoined on
        // another node), not the ghost
        // (and, noticing the kill within a second, well before the expiry: not seen leaving at all).
        let gone: Vec<String> = observed.lock().unwrap().left.iter().map(|(m, _)| m.clone()).collect();
        assert!(!gone.iter().any(|m| m.starts_with("chatter")), "a member that moved nodes was seen leaving: {gone:?}");
        let newcomer = Client::connect_with(&nodes[1].addr, options(&dirs[0], "newcomer")).await.unwrap();
        let members = newcomer.join("lobby").await.unwrap().members();
        let mut expected: Vec<String> = (0..6).map(|i| format!("chatter-{i}")).collect();
        expected.extend(["newcomer".to_string(), "observer".to_string()]);
        expected.sort();
        assert_eq!(members, expected);
        newcomer.close().await;
        for client in clients {
            Arc::try_unwrap(client).unwrap().close().await;
        }
    });
}

#[test]
fn ticks_cross_nodes_only_where_another_node_subscribes_and_stay_latest_wins() {
    if !redis_available("ticks_cross_nodes_only_where_another_node_subscribes_and_stay_latest_wins") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(2, &[]);
    runtime.block_on(async {
        let publisher_client = Client::connect_with(&nodes[0].addr, options(&dirs[0], "feed")).await.unwrap();
        let local_client = Client::connect_with(&nodes[0].addr, options(&dirs[0], "local")).await.unwrap();
        let mut local = local_client.subscribe("prices").await.unwrap();
        let publisher = publisher_client.publisher("prices").await.unwrap();
        // Interest announcements settle.
        let before = redis.settled_publishes().await;
        for k in 0..50u32 {
            publisher.send(k.to_string()).unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let tick = local.next().await.expect("the subscription goes on");
                if tick.payload.as_ref() == b"49" {
                    break tick;
                }
            }
        })
        .await
        .expect("the local subscriber gets the ticks");
        assert_eq!(last.payload.as_ref(), b"49");
        assert_eq!(redis.publishes(), before, "no other node subscribes: nothing may go through Redis");

        // A subscriber on node 1: ticks are relayed to it, conflated (the newest always arrives).
        let remote_client = Client::connect_with(&nodes[1].addr, options(&dirs[0], "remote")).await.unwrap();
        let mut remote = remote_client.subscribe("prices").await.unwrap();
        let started = Instant::now();
        let mut k = 1000u32;
        loop {
            publisher.send(k.to_string()).unwrap();
            k += 1;
            if tokio::time::timeout(Duration::from_millis(20), remote.next()).await.is_ok() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no tick crossed to node 1");
        }
        let burst_start = redis.publishes();
        for n in 0..500u32 {
            publisher.send(format!("burst-{n}")).unwrap();
        }
        let newest = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let tick = remote.next().await.expect("the subscription goes on");
                if tick.payload.as_ref() == b"burst-499" {
                    break tick;
                }
            }
        })
        .await
        .expect("the newest tick of the burst reaches node 1");
        assert_eq!(newest.payload.as_ref(), b"burst-499");
        let relayed = redis.publishes() - burst_start;
        eprintln!("a burst of 500 ticks crossed nodes in {relayed} PUBLISHes");
        assert!(relayed >= 1);
        // Once node 1's subscriber leaves, node 0 stops relaying.
        remote.unsubscribe().await.unwrap();
        let after = redis.settled_publishes().await;
        for n in 0..50u32 {
            publisher.send(format!("after-{n}")).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(redis.publishes(), after, "nobody on another node subscribes any more");

        // A channel with a max age: a tick Redis holds back longer than that is dropped at node 1, not sent there
        // as fresh (its age counts from when node 0 received it).
        let max_age = Duration::from_millis(100);
        let mut quotes = remote_client.subscribe("quotes").await.unwrap();
        let quoter = publisher_client.publisher_with_max_age("quotes", Some(max_age)).await.unwrap();
        let started = Instant::now();
        for k in 0u32.. {
            quoter.send(format!("warm-{k}")).unwrap();
            if tokio::time::timeout(Duration::from_millis(20), quotes.next()).await.is_ok() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no quote crossed to node 1");
        }
        while tokio::time::timeout(Duration::from_millis(100), quotes.next()).await.is_ok() {}
        redis.query::<()>(redis::cmd("CLIENT").arg("PAUSE").arg(600).arg("ALL")).unwrap();
        quoter.send("held-1").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        quoter.send("held-2").unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await; // the pause ends; the held PUBLISHes run
        let started = Instant::now();
        let first = loop {
            quoter.send("fresh").unwrap();
            if let Ok(tick) = tokio::time::timeout(Duration::from_millis(20), quotes.next()).await {
                break tick.expect("the subscription goes on");
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no quote crossed to node 1 after the pause");
        };
        assert_eq!(first.payload.as_ref(), b"fresh", "a tick Redis held for 600 ms went out as fresh");
        let metrics = admin_get(nodes[1].admin, "/metrics");
        let expired = metrics.lines().find_map(|line| line.strip_prefix("quiver_ticks_expired_total "));
        assert!(expired.and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 1), "{expired:?}");
        publisher_client.close().await;
        local_client.close().await;
        remote_client.close().await;
    });
}

#[test]
fn a_room_whose_stream_redis_lost_starts_a_new_epoch_and_its_members_resume_unrecovered() {
    if !redis_available("a_room_whose_stream_redis_lost_starts_a_new_epoch_and_its_members_resume_unrecovered") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(1, &[]);
    runtime.block_on(async {
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let mut room = member.join("fragile").await.unwrap();
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        for k in 1..=3u64 {
            assert_eq!(poster.post("fragile", format!("old-{k}")).await.unwrap(), k);
        }
        let first_epoch = poster.history("fragile", None, 10).await.unwrap().epoch;
        // Redis loses the room's stream (eviction, a flush, a failover to a replica without it).
        let deleted: u64 = redis.query(redis::cmd("DEL").arg("q:{fragile}:log")).unwrap();
        assert_eq!(deleted, 1);
        assert_eq!(poster.post("fragile", "new-1").await.unwrap(), 1, "a new epoch starts at seq 1");
        let page = poster.history("fragile", None, 10).await.unwrap();
        assert_ne!(page.epoch, first_epoch);
        assert_eq!(page.messages.len(), 1);
        // The member's node sees the new epoch: the member is told to rejoin, and its resume is not recovered.
        let resumed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match room.next().await {
                    Some(RoomEvent::Resumed { recovered, epoch }) => break (recovered, epoch),
                    Some(_) => {}
                    None => panic!("the room ended"),
                }
            }
        })
        .await
        .expect("the member resumes");
        assert_eq!(resumed, (false, page.epoch));
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                // (An ended room answers None at once, for good: a loop on it would never let its timeout fire.)
                let Some(event) = room.next().await else { panic!("the room ended: {:?}", room.end_reason()) };
                if let RoomEvent::Message(m) = event {
                    break m;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((next.seq, next.epoch, next.body.as_ref()), (1, page.epoch, &b"new-1"[..]));
        member.close().await;
        poster.close().await;
    });
}

/// History through Redis pages through every message: a page read short by the 1,024-entry cap (a `limit` of
/// 1,024 or more) says there is more, so a client paging with `since` gets every seq once.
#[test]
fn history_through_redis_pages_through_more_than_one_read() {
    if !redis_available("history_through_redis_pages_through_more_than_one_read") {
        return;
    }
    let Cluster { redis: _redis, dirs, nodes, runtime, _tmp } = cluster(1, &[]);
    runtime.block_on(async {
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        const POSTS: u64 = 1_060; // within what `MAXLEN ~ 1000` keeps (whole stream nodes of 100 are trimmed)
        for k in 1..=POSTS {
            assert_eq!(poster.post("long", "x").await.unwrap(), k);
        }
        let (mut seqs, mut since) = (Vec::new(), None);
        loop {
            let page = poster.history("long", since, 5_000).await.unwrap();
            seqs.extend(page.messages.iter().map(|m| m.seq));
            since = seqs.last().copied();
            if !page.more {
                break;
            }
            assert!(!page.messages.is_empty(), "a page that says more has some");
        }
        let (count, last) = (seqs.len(), seqs.last().copied());
        assert!(seqs.into_iter().eq(1..=POSTS), "every seq once, in order: got {count}, the last {last:?}");
        poster.close().await;
    });
}

/// Without an age bound (`history_max_age_s = 0`) a room's keys get no expiry when its last member leaves: its
/// history is kept however long the room is unused (they expired after the dedupe window, 600 s, before).
#[test]
fn without_an_age_bound_an_empty_rooms_history_does_not_expire() {
    if !redis_available("without_an_age_bound_an_empty_rooms_history_does_not_expire") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(1, &[("QUIVER_LIMITS_HISTORY_MAX_AGE_S", "0")]);
    runtime.block_on(async {
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let room = member.join("kept").await.unwrap();
        assert_eq!(member.post("kept", "for later").await.unwrap(), 1);
        room.leave().await.unwrap();
        // The node runs the leave's script after its reply: the keys' expiry is decided once the member is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query::<u64>(redis::cmd("EXISTS").arg("q:{kept}:members")).unwrap() != 0 {
            assert!(Instant::now() < deadline, "the leave reached Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for key in ["q:{kept}:meta", "q:{kept}:log"] {
            let ttl: i64 = redis.query(redis::cmd("PTTL").arg(key)).unwrap();
            assert_eq!(ttl, -1, "{key} exists without an expiry");
        }
        assert_eq!(member.history("kept", None, 10).await.unwrap().messages.len(), 1);
        member.close().await;
    });
}

/// A TCP relay to Redis that can be cut: while cut, it holds what it reads instead of forwarding it (a partition:
/// connections stay open, nothing gets through, and what was sent arrives once it heals).
struct Partition {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Partition {
    async fn start(upstream: u16) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relay_cut = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Partition::pipe(client_read, server_write, relay_cut.clone()));
                tokio::spawn(Partition::pipe(server_read, client_write, relay_cut.clone()));
            }
        });
        Partition { addr, cut }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while cut.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_node_cut_off_from_redis_longer_than_the_expiry_is_buried_and_comes_back_with_its_members() {
    if !redis_available("a_node_cut_off_from_redis_longer_than_the_expiry_is_buried_and_comes_back_with_its_members") {
        return;
    }
    let redis = Redis::start();
    let (_tmp, dirs) = node_dirs(2);
    let runtime = clients_runtime();
    let partition = runtime.block_on(Partition::start(redis.port));
    // Node 1 reaches Redis through the partition.
    let brokers = [redis.url(), format!("redis://{}", partition.addr)];
    let nodes = start_cluster(&dirs, &brokers, &[("QUIVER_BROKER_REQUEST_TIMEOUT_MS", "300")]);
    runtime.block_on(async {
        let observer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "observer")).await.unwrap();
        let observed = Arc::new(Mutex::new(Seen::default()));
        read_room(observer.join("island").await.unwrap(), observed.clone());
        let islander = Client::connect_with(&nodes[1].addr, options(&dirs[0], "islander")).await.unwrap();
        let mut island = islander.join("island").await.unwrap();
        assert_eq!(island.members(), ["islander", "observer"]);
        partition.set(true);
        let cut = Instant::now();
        let left = || observed.lock().unwrap().left.iter().any(|(m, _)| m == "islander");
        let within = Duration::from_millis(EXPIRY_MS + 4 * HEARTBEAT_MS) + Duration::from_secs(2);
        wait_for("the others bury the cut-off node (its member leaves)", within, left).await;
        eprintln!("buried {:?} after the cut", cut.elapsed());
        assert_eq!(admin_status(nodes[1].admin, "/readyz"), 503, "the cut-off node is not ready");
        // Published meanwhile: the islander gets all of it once back (delivered, or filled from the stream).
        let mut during = Vec::new();
        for i in 0..5 {
            during.push(observer.post("island", format!("during {i}")).await.unwrap());
        }
        partition.set(false);
        // Back: the node finds it was buried and counts its members again; its Pub/Sub, stalled by the cut, is
        // made again. Everyone sees the islander present, and its posts reach the others.
        let newcomer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "newcomer")).await.unwrap();
        let started = Instant::now();
        loop {
            let present = match newcomer.join("island").await {
                Ok(room) => {
                    let present = room.members().contains(&"islander".to_string());
                    room.leave().await.unwrap();
                    present
                }
                Err(_) => false,
            };
            if present {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "the islander never came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_for("node 1 is ready again", Duration::from_secs(10), || admin_status(nodes[1].admin, "/readyz") == 200)
            .await;
        let seq = islander.post("island", "back").await.unwrap();
        let got = || observed.lock().unwrap().messages.iter().any(|(s, b)| *s == seq && b == "back");
        wait_for("the observer gets the islander's post", Duration::from_secs(10), got).await;
        // The islander's own room kept going (resumed if its node reset it): every message once, in order, what
        // was posted during the cut included, up to its own post.
        let mut seqs = Vec::new();
        let read = async {
            while seqs.last() != Some(&seq) {
                match island.next().await {
                    Some(RoomEvent::Message(m)) => seqs.push(m.seq),
                    Some(_) => {}
                    None => panic!("the islander's room ended: {:?}", island.end_reason()),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), read).await.expect("the islander's room reaches its own post");
        let expected: Vec<u64> = (during[0]..=seq).collect();
        assert_eq!(seqs, expected, "posted during the cut: {during:?}");
        newcomer.close().await;
        islander.close().await;
        observer.close().await;
    });
}
