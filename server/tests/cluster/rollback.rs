//! Redis that comes back with older data than the nodes delivered (restarted from a snapshot; a failover to a
//! replica that lagged is the same): the room moves to a new epoch, and no message posted after is skipped.

use std::time::Duration;

use quiver_client::{Client, RoomEvent};

use super::{harness::*, ports};

/// A member saw seqs 1–10; Redis dies and comes back from a snapshot taken at seq 5, and the next posts get seqs
/// 6, 7, 8 again. The member's node used to skip them (their ops were behind the ones it had delivered) and a
/// client resuming from seq 7 was told it missed nothing: now the node notices at its catch-up that Redis is behind
/// it in the same epoch, moves the room to a new epoch, and the member resumes unrecovered and gets them.
#[test]
fn a_redis_back_with_older_data_moves_the_room_to_a_new_epoch_and_skips_no_message() {
    if !redis_available("a_redis_back_with_older_data_moves_the_room_to_a_new_epoch_and_skips_no_message") {
        return;
    }
    let snapshots = tempfile::tempdir().unwrap();
    let dir = snapshots.path().to_str().unwrap().to_string();
    let port = ports::restartable_port();
    let redis = Redis::start_on(port, &["--dir", &dir]);
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
        drop(redis);
        let redis = Redis::start_on(port, &["--dir", &dir]);
        for k in 1..=3 {
            poster.post("rewound", format!("after-{k}")).await.unwrap();
        }
        let (mut resumed, mut bodies) = (Vec::new(), Vec::new());
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            while !bodies.iter().any(|body: &String| body == "after-3") {
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
        assert_eq!(after, ["after-1", "after-2", "after-3"], "each once, in order: {bodies:?}");
        let stored: Vec<String> = page
            .messages
            .iter()
            .filter_map(|m| match &m.kind {
                quiver_proto::EventKind::Message { body, .. } => Some(String::from_utf8_lossy(body).into_owned()),
                _ => None,
            })
            .collect();
        assert!(stored.iter().all(|body| !body.starts_with("lost-")), "{stored:?}");
        for k in 1..=3 {
            assert!(stored.contains(&format!("after-{k}")), "{stored:?}");
        }
        member.close().await;
        poster.close().await;
        drop(redis);
    });
}
