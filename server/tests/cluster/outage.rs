//! Redis unreachable for every node at once, longer than the presence expiry, with its data kept (a restart with
//! persistence, a network cut that breaks the connections): when it comes back no live node is buried.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use quiver_client::Client;

use super::harness::*;

/// A TCP relay to Redis that can sever: cut, it closes every connection through it and every new one at once (so
/// nothing sent meanwhile reaches Redis later, unlike a stall), until healed.
struct Severance {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Severance {
    async fn start(upstream: u16) -> Severance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // closed at once
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Severance { addr, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Both nodes lose Redis for longer than the presence expiry; Redis keeps their (now old) heartbeat scores and its
/// clock goes on. Back, the first node to beat must not take the other, as live as itself, for dead: it buries only
/// once it has beaten for a whole expiry itself, by when every live node has beaten too. Before, it buried the other
/// at once, and every member of that node left every room (and joined again once that node noticed).
#[test]
fn after_redis_was_unreachable_for_every_node_no_live_node_is_buried() {
    if !redis_available("after_redis_was_unreachable_for_every_node_no_live_node_is_buried") {
        return;
    }
    let redis = Redis::start();
    let (_tmp, dirs) = node_dirs(2);
    let runtime = clients_runtime();
    let severance = runtime.block_on(Severance::start(redis.port));
    let broker = format!("redis://{}", severance.addr);
    let nodes = start_cluster(&dirs, &[broker.clone(), broker], &[("QUIVER_BROKER_REQUEST_TIMEOUT_MS", "300")]);
    runtime.block_on(async {
        let observer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "observer")).await.unwrap();
        let observed = Arc::new(Mutex::new(Seen::default()));
        read_room(observer.join("lobby").await.unwrap(), observed.clone());
        let other = Client::connect_with(&nodes[1].addr, options(&dirs[0], "other")).await.unwrap();
        let room = other.join("lobby").await.unwrap();
        assert_eq!(room.members(), ["observer", "other"]);
        severance.set(true);
        tokio::time::sleep(Duration::from_millis(EXPIRY_MS + 1_000)).await;
        severance.set(false);
        wait_for("both nodes are ready again", Duration::from_secs(10), || {
            nodes.iter().all(|node| admin_status(node.admin, "/readyz") == 200)
        })
        .await;
        // Past the time a burial would have taken (a whole expiry and a few beats after the nodes came back).
        tokio::time::sleep(Duration::from_millis(EXPIRY_MS + 4 * HEARTBEAT_MS)).await;
        let left = observed.lock().unwrap().left.clone();
        assert!(left.is_empty(), "members of a live node left: {left:?}");
        let seq = other.post("lobby", "still here").await.unwrap();
        let got = || observed.lock().unwrap().messages.iter().any(|(s, b)| *s == seq && b == "still here");
        wait_for("the observer gets the other node's post", Duration::from_secs(10), got).await;
        other.close().await;
        observer.close().await;
    });
}

/// Redis restarted at once (an outage far shorter than half the expiry) from a snapshot older than the expiry: it
/// holds every node's heartbeat from then, so the first node to beat again found the other's score old and buried
/// it, though it was beating all along (every member of that node left every room). A node now sees that Redis
/// lost its own beats (its score went back) and waits a whole expiry of its own beats again before it buries.
#[test]
fn after_redis_restarts_from_an_old_snapshot_no_live_node_is_buried() {
    if !redis_available("after_redis_restarts_from_an_old_snapshot_no_live_node_is_buried") {
        return;
    }
    let (snapshots, redis) = Snapshots::start();
    let (_tmp, dirs) = node_dirs(2);
    // A longer expiry than the other tests': a restart, reconnects included, well within half of it (3 s) even on
    // a loaded machine, so that it never counts as an outage, which would hide what the test is after.
    const EXPIRY: u64 = 6_000;
    let expiry = [("QUIVER_BROKER_PRESENCE_EXPIRY_MS", "6000")];
    let nodes = start_cluster(&dirs, &[redis.url(), redis.url()], &expiry);
    let runtime = clients_runtime();
    runtime.block_on(async {
        let observer = Client::connect_with(&nodes[0].addr, options(&dirs[0], "observer")).await.unwrap();
        let observed = Arc::new(Mutex::new(Seen::default()));
        read_room(observer.join("lobby").await.unwrap(), observed.clone());
        let other = Client::connect_with(&nodes[1].addr, options(&dirs[0], "other")).await.unwrap();
        let room = other.join("lobby").await.unwrap();
        assert_eq!(room.members(), ["observer", "other"]);
        let saved: String = redis.query(&mut redis::cmd("SAVE")).unwrap();
        assert_eq!(saved, "OK");
        // The snapshot's heartbeats grow older than the expiry while both nodes beat on.
        tokio::time::sleep(Duration::from_millis(EXPIRY + 1_000)).await;
        let redis = snapshots.restart(redis);
        wait_for("both nodes are ready again", Duration::from_secs(10), || {
            nodes.iter().all(|node| admin_status(node.admin, "/readyz") == 200)
        })
        .await;
        // Past the time a burial would have taken (the first beats after the restart).
        tokio::time::sleep(Duration::from_millis(8 * HEARTBEAT_MS)).await;
        let left = observed.lock().unwrap().left.clone();
        assert!(left.is_empty(), "members of a live node left: {left:?}");
        other.close().await;
        observer.close().await;
        drop(redis);
    });
}

/// Redis loses every key (a restart without its data, a FLUSHALL) and a member joins on a node before that node's
/// next beat has listed it among the nodes again, and the node dies right after: the other nodes' burials walk the
/// nodes' set, so the member was counted in its room for good (seen by every newcomer, never leaving). A write to a
/// node's lists now lists the node too (`scripts::LISTED`), so its burial finds the member.
#[test]
fn a_member_joined_before_its_nodes_first_beat_on_an_emptied_redis_is_buried_with_its_node() {
    if !redis_available("a_member_joined_before_its_nodes_first_beat_on_an_emptied_redis_is_buried_with_its_node") {
        return;
    }
    // Beats 900 ms apart (within the expiry's bound: 2 s > the 0.9 s request timeout + 0.9 s): the join below, a few
    // milliseconds after the flush, comes before the node's next beat in all but about one run in a hundred.
    const BEAT_MS: u64 = 900;
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(2, &[("QUIVER_BROKER_HEARTBEAT_MS", "900")]);
    runtime.block_on(async {
        let ghost = Client::connect_with(
            &nodes[0].addr,
            quiver_client::ConnectOptions { reconnect: false, ..options(&dirs[0], "ghost") },
        )
        .await
        .unwrap();
        let flushed: String = redis.query(&mut redis::cmd("FLUSHALL")).unwrap();
        assert_eq!(flushed, "OK");
        // Within a heartbeat of the flush: the node has most likely not beaten since.
        let _room = ghost.join("lobby").await.unwrap();
        nodes[0].process.signal("KILL");
        let newcomer = Client::connect_with(&nodes[1].addr, options(&dirs[0], "newcomer")).await.unwrap();
        // The live node waits a whole expiry of its own beats after the flush before it buries anyone.
        let within = Duration::from_millis(2 * EXPIRY_MS + 4 * BEAT_MS) + Duration::from_secs(2);
        let started = std::time::Instant::now();
        let mut counted = false;
        loop {
            let room = newcomer.join("lobby").await.unwrap();
            let members = room.members();
            room.leave().await.unwrap();
            if !members.iter().any(|member| member == "ghost") {
                // (Counted first, or nothing was buried: a join after the flush that was never recorded passed.)
                assert!(counted, "the ghost's join was never counted: {members:?}");
                break;
            }
            counted = true;
            assert!(started.elapsed() < within, "the dead node's member is still counted: {members:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        newcomer.close().await;
    });
}
