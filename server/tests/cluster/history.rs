//! What History and a resume serve from a room's Redis stream: nothing past the age bound in a room gone quiet, and
//! no replay `recovered` over an entry this node cannot read.

use std::time::Duration;

use quiver_client::{Client, RoomEvent};

use super::harness::*;

/// A room gone quiet keeps no message older than `history_max_age_s` for History or a resume, though a member
/// keeps it (its keys have no expiry then) and no post came to trim its stream: before, History returned them and
/// a resume from before them was `recovered`, days later.
#[test]
fn a_quiet_rooms_messages_past_the_age_bound_are_not_served() {
    if !redis_available("a_quiet_rooms_messages_past_the_age_bound_are_not_served") {
        return;
    }
    let Cluster { redis: _redis, dirs, nodes, runtime, _tmp } = cluster(1, &[("QUIVER_LIMITS_HISTORY_MAX_AGE_S", "1")]);
    runtime.block_on(async {
        let member = Client::connect_with(&nodes[0].addr, options(&dirs[0], "member")).await.unwrap();
        let mut room = member.join("quiet").await.unwrap();
        // More than a page of one History read skips at a time when asked for one message.
        let posts: Vec<_> = (1..=300).map(|i| member.post("quiet", format!("old {i}"))).collect();
        for post in posts {
            post.await.unwrap();
        }
        while room.position().is_none_or(|p| p.seq < 300) {
            tokio::time::timeout(Duration::from_secs(10), room.next()).await.expect("delivered");
        }
        let epoch = room.position().unwrap().epoch;
        assert_eq!(member.history("quiet", None, 10).await.unwrap().messages.len(), 10, "retained for now");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(member.history("quiet", None, 10).await.unwrap().messages.is_empty(), "aged out of History");
        let reader = Client::connect_with(&nodes[0].addr, options(&dirs[0], "reader")).await.unwrap();
        let mut resumed = reader.join_from("quiet", quiver_proto::Position { epoch, seq: 0 }).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await.unwrap();
        assert!(
            matches!(first, Some(RoomEvent::Resumed { recovered: false, .. })),
            "the aged messages are not the room's any more: {first:?}"
        );
        // Newer messages are served as ever, also one at a time behind the aged ones.
        assert_eq!(member.post("quiet", "new").await.unwrap(), 301);
        let page = member.history("quiet", None, 1).await.unwrap();
        assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [301]);
        reader.close().await;
        member.close().await;
    });
}

/// A stream entry this node cannot read (here: written without its payload; also one over its `max_frame`, from a
/// node with larger limits) breaks a resume's replay: the resume is not `recovered`. Before, only the replay's
/// first entry was checked, and the member was told nothing was missed.
#[test]
fn a_replay_over_an_unreadable_entry_is_not_recovered() {
    if !redis_available("a_replay_over_an_unreadable_entry_is_not_recovered") {
        return;
    }
    let Cluster { redis, dirs, nodes, runtime, _tmp } = cluster(1, &[]);
    runtime.block_on(async {
        let poster = Client::connect_with(&nodes[0].addr, options(&dirs[0], "poster")).await.unwrap();
        assert_eq!(poster.post("holed", "one").await.unwrap(), 1);
        // Message 2, as a broken writer would leave it: no payload field.
        let _: String = redis
            .query(redis::cmd("XADD").arg("q:{holed}:log").arg("2-0").arg("o").arg("2").arg("t").arg("1"))
            .unwrap();
        let _: i64 = redis.query(redis::cmd("HINCRBY").arg("q:{holed}:meta").arg("seq").arg(1)).unwrap();
        let _: i64 = redis.query(redis::cmd("HINCRBY").arg("q:{holed}:meta").arg("op").arg(1)).unwrap();
        assert_eq!(poster.post("holed", "three").await.unwrap(), 3);
        let epoch: u64 = redis.query(redis::cmd("HGET").arg("q:{holed}:meta").arg("epoch")).unwrap();
        let reader = Client::connect_with(&nodes[0].addr, options(&dirs[0], "reader")).await.unwrap();
        let mut resumed = reader.join_from("holed", quiver_proto::Position { epoch, seq: 0 }).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await.unwrap();
        assert!(
            matches!(first, Some(RoomEvent::Resumed { recovered: false, .. })),
            "told nothing was missed: {first:?}"
        );
        reader.close().await;
        poster.close().await;
    });
}
