//! Redundant delivery end to end: rooms joined with `redundant` through the link emulator's relay at 20 % random
//! loss each way, with jitter that reorders: every message arrives exactly once, in seq order, at the poster and at
//! a second member, and the copies did the work (the server sequenced posts from their copies and sent room
//! copies).
#![allow(clippy::unwrap_used)]

use std::{sync::atomic::Ordering, time::Duration};

use quiver_client::{Client, ConnectOptions, JoinOptions, Room, RoomEvent};
use quiver_lab::impair::{DirectionProfile, ImpairmentProfile};
use quiver_proto::Limits;
use quiver_tests::TestServer;

const MESSAGES: u64 = 200;

/// Reads `room` until `MESSAGES` messages came (or the time is up); returns their seqs and bodies' numbers.
async fn read_all(mut room: Room) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let read = async {
        while (got.len() as u64) < MESSAGES {
            match room.next().await {
                Some(RoomEvent::Message(m)) => {
                    let n = u64::from_le_bytes(m.body[..8].try_into().unwrap());
                    got.push((m.seq, n));
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_in_order_through_twenty_percent_loss() {
    let server = TestServer::start(Limits::default());
    let lossy = DirectionProfile {
        loss_pct: 20.0,
        delay_ms: 5.0,
        jitter_ms: 3.0,
        jitter_reorders: true,
        ..DirectionProfile::default()
    };
    let relay = server.relay(ImpairmentProfile { seed: 20, ..ImpairmentProfile::symmetric(lossy) }, 8);
    let connect = || async {
        let options = ConnectOptions { trust: server.trust(), ..ConnectOptions::default() };
        Client::connect_with(&relay.local_addr().to_string(), options).await.unwrap()
    };
    let (poster, reader) = (connect().await, connect().await);
    let redundant = JoinOptions { redundant: true, ..JoinOptions::default() };
    let mine = poster.join_with("lossy", redundant).await.unwrap();
    let theirs = reader.join_with("lossy", redundant).await.unwrap();
    let (mine, theirs) = (tokio::spawn(read_all(mine)), tokio::spawn(read_all(theirs)));
    let mut acks = Vec::new();
    for n in 0..MESSAGES {
        let mut body = n.to_le_bytes().to_vec();
        body.extend_from_slice(b" redundant");
        acks.push(poster.post("lossy", body));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(tokio::time::timeout(Duration::from_secs(60), ack).await.unwrap().unwrap());
    }
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>(), "posts sequenced once each, in the order made");
    let expected: Vec<(u64, u64)> = (1..=MESSAGES).zip(0..MESSAGES).collect();
    for (who, got) in [("poster", mine.await.unwrap()), ("reader", theirs.await.unwrap())] {
        assert_eq!(got, expected, "{who}: each message once, in order, none missing");
    }
    let copies_sent = server.stats.room_copies_sent.load(Ordering::Relaxed);
    let posts_from_copies = server.stats.post_copies_used.load(Ordering::Relaxed);
    assert!(copies_sent > MESSAGES, "room copies sent: {copies_sent}");
    assert!(posts_from_copies > 0, "no post was sequenced from its copy: the copies did nothing");
    drop((poster, reader, relay));
    server.stop().await;
}
