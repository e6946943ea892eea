//! Rooms end to end over real quinn on loopback: one order for everyone, resume without gap or duplicate after a
//! dropped connection, retried posts delivered once, history overflow surfaced, slow consumers reset in one room
//! only, and the limits' error codes.
#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, time::Duration};

use quiver_client::{Client, ConnectOptions, RoomEvent};
use quiver_proto::{ErrorCode, Limits, RequestBody};
use quiver_tests::{messages, resumed, seqs, TestServer};

const WAIT: Duration = Duration::from_secs(30);

async fn named(server: &TestServer, name: &str) -> Client {
    server.client_with(ConnectOptions { name: Some(name.into()), ..ConnectOptions::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_interleaved_posts_see_one_contiguous_order() {
    let server = TestServer::start(Limits { history_max_messages: 5_000, ..Limits::default() });
    let mut rooms = Vec::new();
    let mut clients = Vec::new();
    for name in ["ann", "bob", "cid"] {
        let client = named(&server, name).await;
        rooms.push(client.join("town").await.unwrap());
        clients.push(client);
    }
    let mut posters = tokio::task::JoinSet::new();
    for client in &clients {
        let client = client.clone();
        posters.spawn(async move {
            let mut acks = Vec::new();
            for i in 0..1000 {
                acks.push(client.post("town", format!("{i}")).await.unwrap());
            }
            acks
        });
    }
    let mut all_acks = HashSet::new();
    while let Some(acks) = posters.join_next().await {
        let acks = acks.unwrap();
        assert!(acks.windows(2).all(|w| w[0] < w[1]), "one client's posts keep their order");
        all_acks.extend(acks);
    }
    assert_eq!(all_acks.len(), 3000);
    let mut seen = Vec::new();
    for room in &mut rooms {
        seen.push(messages(room, 3000).await.0);
    }
    assert_eq!(seqs(&seen[0]), (1..=3000).collect::<Vec<_>>(), "contiguous from 1");
    assert_eq!(seen[0], seen[1], "ann and bob saw the same sequence");
    assert_eq!(seen[0], seen[2], "ann and cid saw the same sequence");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_with_no_gap_and_no_duplicate() {
    let server = TestServer::start(Limits::default());
    let reader = named(&server, "reader").await;
    let writer = named(&server, "writer").await;
    let mut room = reader.join("news").await.unwrap();
    let posting = tokio::spawn(async move {
        for i in 0..300 {
            writer.post("news", format!("{i}")).await.unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        writer
    });
    let (first, _) = messages(&mut room, 50).await;
    // Drop the reader's connection mid-stream, as a network failure would.
    reader.connection().unwrap().close(0u32.into(), b"test drops the connection");
    let (rest, events) = messages(&mut room, 250).await;
    let all: Vec<u64> = seqs(&first).into_iter().chain(seqs(&rest)).collect();
    assert_eq!(all, (1..=300).collect::<Vec<_>>(), "no gap, no duplicate");
    let resumed: Vec<_> = events.iter().filter(|e| matches!(e, RoomEvent::Resumed { .. })).collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert!(matches!(resumed[0], RoomEvent::Resumed { recovered: true, .. }));
    posting.await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_in_flight_when_the_connection_drops_appear_exactly_once() {
    let server = TestServer::start(Limits::default());
    let watcher = named(&server, "watcher").await;
    let mut room = watcher.join("ops").await.unwrap();
    let poster = named(&server, "poster").await;
    let acked = quiver_tests::posts_across_a_dropped_connection(&poster, "ops", 200, 100).await;
    assert_eq!(acked.len(), 200);
    let (got, _) = messages(&mut room, 200).await;
    let bodies: HashSet<_> = got.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies.len(), 200, "every post delivered once");
    assert_eq!(seqs(&got), (1..=200).collect::<Vec<_>>());
    // Nothing more arrives: no duplicate after the 200.
    let more = tokio::time::timeout(Duration::from_millis(300), room.next()).await;
    assert!(more.is_err(), "unexpected extra event {more:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_overflow_is_surfaced_as_recovered_false() {
    let server = TestServer::start(Limits { history_max_messages: 10, gap_replay: 5, ..Limits::default() });
    let slow_reconnect = ConnectOptions {
        name: Some("away".into()),
        // (Jittered down to half: the 50 posts below, each stored with its fsync, must be in before it reconnects.)
        reconnect_delay: Duration::from_secs(3),
        reconnect_max_delay: Duration::from_secs(3),
        ..ConnectOptions::default()
    };
    let away = server.client_with(slow_reconnect).await.unwrap();
    let mut room = away.join("busy").await.unwrap();
    let writer = named(&server, "writer").await;
    writer.post("busy", "first").await.unwrap();
    messages(&mut room, 1).await;
    away.connection().unwrap().close(0u32.into(), b"test drops the connection");
    // All 50 in flight at once (one client's posts keep their order): a few group commits, not 50 fsyncs in a row.
    let posts = futures_util::future::join_all((0..50).map(|i| writer.post("busy", format!("{i}")))).await;
    assert_eq!(posts.into_iter().map(Result::unwrap).collect::<Vec<_>>(), (2..=51).collect::<Vec<u64>>());
    let (replayed, events) = messages(&mut room, 5).await;
    assert!(
        events.iter().any(|e| matches!(e, RoomEvent::Resumed { recovered: false, .. })),
        "the application is told it missed messages: {events:?}"
    );
    assert_eq!(seqs(&replayed), [47, 48, 49, 50, 51], "the latest gap_replay messages");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_is_reset_in_that_room_only() {
    let limits = Limits { max_frame: 4096, max_body: 2048, room_queue_bytes: 16 * 1024, ..Limits::default() };
    let server = TestServer::start(limits);
    let member = named(&server, "member").await;
    let writer = named(&server, "writer").await;
    quiver_tests::a_member_stops_reading_one_room(&member, &writer).await;
    server.stop().await;
}

#[tokio::test]
async fn presence_and_members() {
    let server = TestServer::start(Limits::default());
    let ann = named(&server, "ann").await;
    let mut room = ann.join("lobby").await.unwrap();
    assert_eq!(room.members(), ["ann"]);
    let bob = named(&server, "bob").await;
    let bob_room = bob.join("lobby").await.unwrap();
    assert_eq!(bob_room.members(), ["ann", "bob"]);
    // A member's own join is an event of the room's order too.
    let next = tokio::time::timeout(WAIT, room.next()).await.unwrap().unwrap();
    assert_eq!(next, RoomEvent::MemberJoined { member: "ann".into() });
    let next = tokio::time::timeout(WAIT, room.next()).await.unwrap().unwrap();
    assert_eq!(next, RoomEvent::MemberJoined { member: "bob".into() });
    bob_room.leave().await.unwrap();
    let next = tokio::time::timeout(WAIT, room.next()).await.unwrap().unwrap();
    assert_eq!(next, RoomEvent::MemberLeft { member: "bob".into() });
    assert_eq!(room.members(), ["ann"]);
    drop(bob);
    server.stop().await;
}

#[tokio::test]
async fn limits_are_refused_with_their_codes() {
    let server = TestServer::start(Limits { max_rooms: 2, max_body: 100, ..Limits::default() });
    let client = server.client().await;
    let _a = client.join("a").await.unwrap();
    let _b = client.join("b").await.unwrap();
    assert_eq!(client.join("c").await.unwrap_err().code(), Some(ErrorCode::TooManyRooms));
    assert_eq!(client.join("a").await.unwrap_err().code(), Some(ErrorCode::AlreadyJoined));
    assert_eq!(client.post("a", vec![0u8; 101]).await.unwrap_err().code(), Some(ErrorCode::BodyTooLarge));
    assert_eq!(client.post("a", vec![0u8; 100]).await.unwrap(), 1);
    let err = client.request(RequestBody::Leave { room: "never-joined".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined));
    let err = client.join("").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    client.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn history_reads_retained_messages_without_joining() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    for i in 0..5 {
        client.post("log", format!("line {i}")).await.unwrap();
    }
    let page = client.history("log", Some(2), 10).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(!page.more);
    assert_eq!(client.history("nothing-here", None, 10).await.unwrap().messages.len(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_keeps_the_room_and_the_client_resumes_without_a_gap() {
    let server = TestServer::start(Limits::default());
    let client = named(&server, "survivor").await;
    let mut room = client.join("lobby").await.unwrap();
    assert_eq!(client.post("lobby", "before").await.unwrap(), 1);
    messages(&mut room, 1).await;
    let old_epoch = room.position().unwrap().epoch;
    let server = server.restart(Limits::default()).await;
    assert_eq!(resumed(&mut room).await, (true, old_epoch), "the store kept the room: same epoch, nothing missed");
    assert_eq!(client.post("lobby", "after").await.unwrap(), 2, "seqs go on");
    let (after, _) = messages(&mut room, 1).await;
    assert_eq!((after[0].seq, after[0].body.as_ref()), (2, &b"after"[..]));
    let history = client.history("lobby", None, 10).await.unwrap();
    assert_eq!((history.epoch, history.messages.len()), (old_epoch, 2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_memory_store_a_restart_loses_the_room_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let memory = |dir: &std::path::Path, addr| quiver_server::ServerConfig {
        durability: quiver_server::store::Durability::Memory,
        ..quiver_server::ServerConfig::dev(addr, dir.to_owned())
    };
    let server = TestServer::start_with(memory(dir.path(), "127.0.0.1:0".parse().unwrap()), dir);
    let client = named(&server, "survivor").await;
    let mut room = client.join("lobby").await.unwrap();
    assert_eq!(client.post("lobby", "before").await.unwrap(), 1);
    messages(&mut room, 1).await;
    let old_epoch = room.position().unwrap().epoch;
    let server = server.restart_with(memory).await;
    let (recovered, epoch) = resumed(&mut room).await;
    assert!(!recovered, "a lost history is never reported as recovered");
    assert_ne!(epoch, old_epoch, "the restarted server's room has a new epoch");
    assert_eq!(client.post("lobby", "after").await.unwrap(), 1, "seqs restart in the new epoch");
    let (after, _) = messages(&mut room, 1).await;
    assert_eq!(after[0].body, "after");
    server.stop().await;
}

/// With `--store memory` a long replay is paged from the room's memory (256 messages at once, the rest as the
/// stream takes them): every message once, in order, and the live ones after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_memory_store_a_long_replay_arrives_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiver_server::ServerConfig {
        durability: quiver_server::store::Durability::Memory,
        ..quiver_server::ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let server = TestServer::start_with(config, dir);
    let writer = named(&server, "writer").await;
    let mut room = writer.join("log").await.unwrap();
    let posts: Vec<_> = (0..700).map(|i| writer.post("log", format!("{i}"))).collect();
    for post in posts {
        post.await.unwrap();
    }
    messages(&mut room, 700).await;
    let epoch = room.position().unwrap().epoch;
    let reader = named(&server, "reader").await;
    let mut replayed = reader.join_from("log", quiver_proto::Position { epoch, seq: 0 }).await.unwrap();
    writer.post("log", "live").await.unwrap();
    let (got, _) = messages(&mut replayed, 701).await;
    assert_eq!(seqs(&got), (1..=701).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(got[700].body, "live");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_connection() {
    let server = TestServer::start(Limits::default());
    let ann = named(&server, "ann").await;
    let _room = ann.join("lobby").await.unwrap();
    let bob = named(&server, "bob").await;
    let bob_room = bob.join("lobby").await.unwrap();
    let native = || server.stats.connections_native.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(native(), 2);
    drop(bob_room);
    drop(bob);
    // (Dropping the room alone sends a Leave, and bob leaves the room: the connection's end is what is counted.)
    tokio::time::timeout(WAIT, async {
        while native() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("bob's connection was not closed when its client was dropped");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_room_stream_is_announced_on_the_control_stream_and_the_rejoin_resumes() {
    use bytes::BytesMut;
    use quiver_proto::{FrameCodec, Hello, Join, Position, Reply, Request, RoomFrame, ServerMsg, PROTOCOL_VERSION};

    let limits = Limits { max_frame: 4096, max_body: 2048, room_queue_bytes: 8 * 1024, ..Limits::default() };
    let server = TestServer::start(limits.clone());
    let conn = server.raw().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let codec = FrameCodec::new(limits.max_frame as usize);
    let hello = Hello { version: PROTOCOL_VERSION, agent: "raw".into(), name: None, token: Some(server.token("raw")) };
    let mut out = codec.encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) }).unwrap();
    let join = Join { room: "flood".into(), since: None, redundant: false };
    codec.encode(&Request { req_id: 1, body: RequestBody::Join(join) }, &mut out).unwrap();
    send.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    quiver_tests::read_msg(&mut recv, &mut buf).await.unwrap(); // Welcome
    let Some(ServerMsg::Reply { result: Ok(Reply::Joined(joined)), .. }) =
        quiver_tests::read_msg(&mut recv, &mut buf).await
    else {
        panic!("not joined")
    };
    // The room stream is accepted but never read: it falls behind.
    // (Every wait on the raw connection bounded: a reply or stream that never comes fails the test, not hangs it.)
    let mut stalled = tokio::time::timeout(WAIT, conn.accept_uni()).await.expect("the room stream").unwrap();
    let writer = named(&server, "writer").await;
    let mut last = 0;
    let kicked = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                msg = quiver_tests::read_msg(&mut recv, &mut buf) => break msg.expect("a push"),
                posted = writer.post("flood", vec![b'x'; 2000]) => last = posted.unwrap(),
            }
        }
    })
    .await
    .expect("kicked as a slow consumer");
    let ServerMsg::Kicked { room, code, .. } = kicked else { panic!("{kicked:?}") };
    assert_eq!((room.as_deref(), code), (Some("flood"), ErrorCode::SlowConsumer));
    // Its stream ends in a reset with the same code.
    let reset = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.read_chunk(usize::MAX, true).await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let Err(quinn::ReadError::Reset(code)) = reset else { panic!("{reset:?}") };
    assert_eq!(quiver_transport::close::from_quic_code(code), ErrorCode::SlowConsumer);
    // Rejoining from the start replays everything retained: the new stream describes itself.
    let since = Some(Position { epoch: joined.epoch, seq: 0 });
    let out = codec.encode_to_vec(&Request {
        req_id: 2,
        body: RequestBody::Join(Join { room: "flood".into(), since, redundant: false }),
    });
    send.write_all(&out.unwrap()).await.unwrap();
    let mut fresh = tokio::time::timeout(WAIT, conn.accept_uni()).await.expect("the new room stream").unwrap();
    let mut room_buf = BytesMut::new();
    let open = loop {
        if let Some(frame) = codec.decode::<RoomFrame>(&mut room_buf).unwrap() {
            break frame;
        }
        let chunk = tokio::time::timeout(WAIT, fresh.read_chunk(usize::MAX, true)).await.expect("its Open");
        room_buf.extend_from_slice(&chunk.unwrap().unwrap().bytes);
    };
    let RoomFrame::Open(open) = open else { panic!("{open:?}") };
    assert_eq!((open.room.as_str(), open.epoch, open.recovered, open.replay_from), ("flood", joined.epoch, true, 1));
    assert!(open.last_seq >= last, "{open:?} after post {last}");
    server.stop().await;
}

/// A client writing its posts without waiting for their replies (the client library does): the server sequences
/// them while earlier ones wait for the store (group commit), past its 64 in flight too, and still answers every
/// request in order; a History after them sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_posts_are_answered_in_order_and_the_requests_after_them_see_them() {
    use bytes::Bytes;
    use quiver_proto::{Post, Reply, ServerMsg};
    use quiver_tests::hostile::{frame, Control};
    let data_dir = tempfile::tempdir().unwrap();
    let dev = quiver_server::ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().into());
    let admin = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(quiver_server::ServerConfig { admin, ..dev }, data_dir);
    let commits = || async {
        let (_, metrics) = quiver_tests::http_get(server.admin.unwrap(), "/metrics").await;
        let line = metrics.lines().find(|l| l.starts_with("quiver_store_commits_total ")).unwrap().to_string();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let mut control = Control::open(&server).await;
    let before = commits().await;
    let mut burst = bytes::BytesMut::new();
    for id in 1..=100u64 {
        let post = Post { room: "pipe".into(), client_msg_id: id, body: Bytes::from(format!("m{id}")) };
        burst.extend_from_slice(&frame(id, RequestBody::Post(post)));
    }
    burst.extend_from_slice(&frame(101, RequestBody::History { room: "pipe".into(), since: None, limit: 1000 }));
    burst.extend_from_slice(&frame(102, RequestBody::Ping { client_time_us: 1 }));
    control.send.write_all(&burst).await.unwrap();
    for id in 1..=100u64 {
        match control.next().await {
            Some(ServerMsg::Reply { req_id, result: Ok(Reply::Posted { seq, duplicate: false, .. }) }) => {
                assert_eq!((req_id, seq), (id, id), "replies in request order, seqs in post order");
            }
            other => panic!("post {id}: {other:?}"),
        }
    }
    match control.next().await {
        Some(ServerMsg::Reply { req_id: 101, result: Ok(Reply::History(page)) }) => {
            assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
        }
        other => panic!("history: {other:?}"),
    }
    assert!(matches!(control.next().await, Some(ServerMsg::Reply { req_id: 102, result: Ok(Reply::Pong { .. }) })));
    // Served one at a time, each post took a commit of its own (and the room's creation one more); pipelined,
    // posts sequenced while a commit ran share the next one (an fsync takes far longer than a post's sequencing).
    let taken = commits().await - before;
    assert!(taken < 100, "{taken} commits for 100 pipelined posts");
    server.stop().await;
}

/// `Room::position` is what the application has read, not what the client has received: a bot that stores it after
/// each message and restarts with messages still unread resumes before them, and loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_to_store_is_the_last_message_read_not_the_last_received() {
    let server = TestServer::start(Limits::default());
    let bot = named(&server, "bot").await;
    let mut room = bot.join("log").await.unwrap();
    let start = room.position().expect("where the join started");
    assert_eq!(start.seq, 0, "an empty room's head");
    for i in 1..=3 {
        bot.post("log", format!("line {i}")).await.unwrap();
    }
    // Received (its own join and three messages), none read.
    tokio::time::timeout(WAIT, async {
        while room.pending() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the events arrived");
    assert_eq!(room.position(), Some(start), "nothing read yet");
    let (read, _) = messages(&mut room, 1).await;
    let stored = room.position().unwrap();
    assert_eq!(stored, quiver_proto::Position { epoch: read[0].epoch, seq: 1 });
    // The bot crashes with two messages unread, and comes back from what it stored.
    drop(room);
    drop(bot);
    let bot = named(&server, "bot").await;
    let mut room = bot.join_from("log", stored).await.unwrap();
    assert_eq!(room.position(), Some(stored));
    let (rest, events) = messages(&mut room, 2).await;
    assert_eq!(seqs(&rest), [2, 3], "the unread messages come again, none lost");
    assert!(matches!(events[0], RoomEvent::Resumed { recovered: true, .. }), "{events:?}");
    assert_eq!(room.position().map(|p| p.seq), Some(3));
    server.stop().await;
}

/// A member that does not read a room is reset as a slow consumer once, and joins again only when it reads: it is
/// not joined, reset and joined again over and over while it does not (each time leaving a reader parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_is_not_read_is_rejoined_only_once_it_is_read() {
    let server = TestServer::start(Limits::default());
    let (member, watcher, writer) =
        (named(&server, "member").await, named(&server, "watcher").await, named(&server, "writer").await);
    let mut watched = watcher.join("a").await.unwrap();
    let mut unread = member.join("a").await.unwrap();
    let body = vec![b'x'; 2000];
    // The presence events of `member` the watcher saw, in order (true: joined).
    let mut presence = Vec::new();
    let watch = |presence: &mut Vec<bool>, event: RoomEvent| match event {
        RoomEvent::MemberJoined { member } if member == "member" => presence.push(true),
        RoomEvent::MemberLeft { member } if member == "member" => presence.push(false),
        _ => {}
    };
    for round in 0..2 {
        // 8 MB into the room: more than the client's buffer, its stream window and the server's queue together.
        let writing = {
            let (writer, body) = (writer.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..4000 {
                    writer.post("a", body.clone()).await.unwrap();
                }
            })
        };
        let (_, events) = messages(&mut watched, 4000).await;
        writing.await.unwrap();
        events.into_iter().for_each(|e| watch(&mut presence, e));
        assert_eq!(presence, [true, false], "round {round}: reset once, and not joined again while unread");
    }
    // Read: the room is joined again and goes on.
    while unread.pending() > 0 {
        unread.next().await;
    }
    let seq = writer.post("a", "after").await.unwrap();
    let (seen, _) = messages(&mut unread, 1).await;
    assert!(seen[0].seq <= seq);
    tokio::time::timeout(WAIT, async {
        while presence.len() < 3 {
            let event = watched.next().await.expect("the watcher's room goes on");
            watch(&mut presence, event);
        }
    })
    .await
    .expect("the member joined again once it read");
    assert_eq!(presence, [true, false, true]);
    server.stop().await;
}
