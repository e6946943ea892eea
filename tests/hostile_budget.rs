//! The server's budget and the control stream's ends, end to end: a frame left unfinished after Hello, a control
//! stream reset, stopped or finished inside a frame (each closed with its own code and a reason), tick channels
//! over `max_channels` refused with `ServerFull`, beside a bystander who loses nothing, and one network's rooms and
//! channels bounded by its share.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quiver_proto::{varint, ErrorCode, Join, Post, Reply, RequestBody};
use quiver_server::Budget;
use quiver_tests::{
    closed_with,
    hostile::{beside_a_bystander, bounded, frame, Control},
    TestServer,
};

/// The first bytes of a frame announcing a 100-byte body: its 2-byte length prefix and `len` bytes.
fn partial_frame(len: usize) -> BytesMut {
    let mut bytes = BytesMut::new();
    varint::encode(100, &mut bytes).unwrap();
    bytes.extend_from_slice(&vec![0u8; len]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_left_unfinished_after_hello_is_closed_with_frame_timeout() {
    bounded(async {
        let server = TestServer::start_with_budget(Budget { frame_timeout_ms: 300, ..Budget::default() });
        beside_a_bystander(&server, async {
            let mut control = Control::open(&server).await;
            // Whole frames, however slowly they come, are fine.
            tokio::time::sleep(Duration::from_millis(500)).await;
            control.ping(1).await;
            // A frame trickled in byte by byte, finished within the timeout, is fine too.
            let ping = frame(2, RequestBody::Ping { client_time_us: 1 });
            for byte in ping.iter() {
                control.send.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(matches!(control.next().await, Some(quiver_proto::ServerMsg::Reply { req_id: 2, .. })));
            // Pipelined frames whose writes always end inside the next frame, for twice the timeout: each write
            // completes a frame, so the buffer is never empty and the connection must stay.
            let pings: Vec<BytesMut> = (3..23).map(|id| frame(id, RequestBody::Ping { client_time_us: 1 })).collect();
            let mut carry = BytesMut::new();
            for ping in &pings {
                let (head, tail) = ping.split_at(ping.len() / 2);
                carry.extend_from_slice(head);
                control.send.write_all(&carry).await.unwrap();
                carry = BytesMut::from(tail);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            control.send.write_all(&carry).await.unwrap();
            for id in 3..23 {
                assert!(
                    matches!(control.next().await, Some(quiver_proto::ServerMsg::Reply { req_id, .. }) if req_id == id)
                );
            }
            let started = Instant::now();
            control.send.write_all(&partial_frame(10)).await.unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::FrameTimeout, "{reason}");
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
            assert!(reason.contains("incomplete"), "{reason}");
        })
        .await;
        assert_eq!(server.stats.snapshot().frame_timeouts, 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_of_the_control_stream_closes_with_a_code_and_a_reason() {
    bounded(async {
        let server = TestServer::start_with_budget(Budget::default());
        beside_a_bystander(&server, async {
            let mut control = Control::open(&server).await;
            control.send.reset(quinn::VarInt::from_u32(7)).unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(
                (code, reason.as_str()),
                (ErrorCode::ControlStreamClosed, "the client reset its control stream (code 7)")
            );

            let mut control = Control::open(&server).await;
            control.recv.stop(quinn::VarInt::from_u32(9)).unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::ControlStreamClosed, "{reason}");
            assert!(reason.contains("stopped reading its control stream (code 9)"), "{reason}");

            let mut control = Control::open(&server).await;
            control.send.write_all(&partial_frame(10)).await.unwrap();
            control.send.finish().unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::ControlStreamClosed, "{reason}");
            assert!(reason.contains("inside a frame (12 bytes of it sent)"), "{reason}");

            // Finishing at a frame boundary is a goodbye, not an error.
            let mut control = Control::open(&server).await;
            control.send.finish().unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!((code, reason.as_str()), (ErrorCode::NoError, "control stream finished"));
        })
        .await;
        assert_eq!(server.stats.snapshot().control_streams_closed, 3);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_over_the_budget_are_refused_with_server_full_until_one_is_freed() {
    bounded(async {
        let server = TestServer::start_with_budget(Budget { max_channels: 2, ..Budget::default() });
        let mut control = Control::open(&server).await;
        let subscribe = |channel: &str| RequestBody::Subscribe { channel: channel.into() };
        assert!(control.request(1, subscribe("a")).await.is_ok());
        assert!(control.request(2, RequestBody::Publish { channel: "b".into(), max_age_ms: None }).await.is_ok());
        let refused = control.request(3, subscribe("c")).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::ServerFull, "{}", refused.message);
        let refused = control.request(4, RequestBody::Publish { channel: "c".into(), max_age_ms: None }).await;
        assert_eq!(refused.unwrap_err().code, ErrorCode::ServerFull);
        assert!(control.request(5, subscribe("b")).await.is_ok(), "an existing channel takes more subscribers");
        assert!(control.request(6, RequestBody::Unsubscribe { channel: "a".into() }).await.is_ok());
        let Ok(Reply::Subscribed { channel_id, .. }) = control.request(7, subscribe("c")).await else {
            panic!("a freed place is taken again")
        };
        // 1 for a, 2 for b's claim, 3 for b's subscription (a subscription and a claim have ids of their own).
        assert_eq!(channel_id, 4, "a new id: ids are never reused on a connection (and 0 is never one)");
        assert_eq!(server.stats.snapshot().server_full, 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_into_a_room_needs_no_join() {
    bounded(async {
        let server = TestServer::start_with_budget(Budget::default());
        let mut control = Control::open(&server).await;
        let post = Post { room: "notices".into(), client_msg_id: 1, body: Bytes::from_static(b"deploy at 5") };
        assert!(matches!(control.request(1, RequestBody::Post(post)).await, Ok(Reply::Posted { seq: 1, .. })));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_floor_posts_are_refused_with_server_full_and_the_connection_goes_on() {
    bounded(async {
        // A floor above the disk's free space, and just under the most it could ever have free (a floor beyond that
        // is refused at start): the server's store is "full" from the start.
        let stat = nix::sys::statvfs::statvfs(&std::env::temp_dir()).unwrap();
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // the field types differ between platforms
        let (blocks, free, available, fragment) = (
            u64::from(stat.blocks()),
            u64::from(stat.blocks_free()),
            u64::from(stat.blocks_available()),
            u64::from(stat.fragment_size()),
        );
        let floor = (available + blocks - free) * fragment - 1;
        assert!(floor > available * fragment, "a disk with nothing in use");
        let server = TestServer::start_with_budget(Budget { disk_min_free_bytes: floor, ..Budget::default() });
        let mut control = Control::open(&server).await;
        let post = Post { room: "notices".into(), client_msg_id: 1, body: Bytes::from_static(b"deploy at 5") };
        let refused = control.request(1, RequestBody::Post(post)).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::ServerFull, "{}", refused.message);
        assert!(refused.message.contains("disk is nearly full"), "{}", refused.message);
        let subscribe = RequestBody::Subscribe { channel: "prices".into() };
        assert!(control.request(2, subscribe).await.is_ok(), "the rest goes on, on the same connection");
        assert_eq!(server.stats.snapshot().server_full, 1);
        server.stop().await;
    })
    .await;
}

/// One network's connections keep at most `max_rooms_per_network` distinct rooms (and `max_channels_per_network`
/// channels) in use: one address could otherwise hold every room of `max_rooms`, which are never evicted while they
/// have members, and have every new room name refused for everyone. A room the network is in already may be joined
/// by more of its connections; a place comes back when its last membership ends, by a Leave or by the connection's
/// end; another network is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_network_holds_at_most_its_share_of_rooms_and_channels() {
    bounded(async {
        let budget = Budget { max_rooms_per_network: 2, max_channels_per_network: 1, ..Budget::default() };
        let server = TestServer::start_with_budget(budget);
        let join = |room: &str| RequestBody::Join(Join { room: room.into(), since: None, redundant: false });
        let (mut first, mut second) = (Control::open(&server).await, Control::open(&server).await);
        assert!(first.request(1, join("a")).await.is_ok());
        assert!(second.request(1, join("b")).await.is_ok());
        assert!(second.request(2, join("a")).await.is_ok(), "a room the network holds takes more of its members");
        let refused = first.request(2, join("c")).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManyRooms, "{}", refused.message);
        assert!(refused.message.contains("127.0.0.0/24") && refused.message.contains("max_rooms_per_network"));
        // "a" is still held by the second connection: leaving it on the first frees nothing.
        assert!(first.request(3, RequestBody::Leave { room: "a".into() }).await.is_ok());
        assert_eq!(first.request(4, join("c")).await.unwrap_err().code, ErrorCode::TooManyRooms);
        assert!(second.request(3, RequestBody::Leave { room: "b".into() }).await.is_ok());
        assert!(first.request(5, join("c")).await.is_ok(), "a room's place comes back with its last member");
        // Channels: subscriptions and claims of one channel hold one place.
        assert!(first.request(6, RequestBody::Subscribe { channel: "p".into() }).await.is_ok());
        let publish = |channel: &str| RequestBody::Publish { channel: channel.into(), max_age_ms: None };
        assert!(second.request(4, publish("p")).await.is_ok());
        let refused = second.request(5, RequestBody::Subscribe { channel: "q".into() }).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManySubscriptions, "{}", refused.message);
        assert!(refused.message.contains("max_channels_per_network"), "{}", refused.message);
        let refused = second.request(5, publish("q")).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManyChannels, "a Publish is refused with its own code");
        // The connection's end gives its places back: the first's room "c" (its subscription to "p" goes too, but
        // the second's claim of "p" still holds that channel).
        first.conn.close(0u32.into(), b"bye");
        drop(first);
        let started = Instant::now();
        loop {
            match second.request(6, join("d")).await {
                Ok(_) => break,
                Err(refused)
                    if refused.code == ErrorCode::TooManyRooms && started.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(refused) => panic!("the closed connection's room was not given back: {refused:?}"),
            }
        }
        assert_eq!(
            second.request(7, RequestBody::Subscribe { channel: "q".into() }).await.unwrap_err().code,
            ErrorCode::TooManySubscriptions,
            "the second connection's claim still holds p"
        );
        assert!(second.request(8, RequestBody::Unpublish { channel: "p".into() }).await.is_ok());
        // Its place comes back once the hub lets the channel go, a grace (250 ms) after the Unpublish: a tick sent
        // before it may still be read and relayed meanwhile.
        let (unpublished, mut req_id) = (Instant::now(), 9);
        loop {
            match second.request(req_id, RequestBody::Subscribe { channel: "q".into() }).await {
                Ok(_) => break,
                Err(refused)
                    if refused.code == ErrorCode::TooManySubscriptions
                        && unpublished.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(refused) => panic!("the unpublished channel's place was not given back: {refused:?}"),
            }
            req_id += 1;
        }
        assert!(unpublished.elapsed() >= Duration::from_millis(200), "given back before the grace was over");
        // Counted apart from the per-connection bounds (the joins of "d" refused until the close took effect too).
        let counted = server.stats.snapshot();
        assert!(counted.rooms_over_network_share >= 2);
        assert_eq!(counted.rooms_over_network_share, counted.too_many_rooms, "every refused join was the share's");
        assert!(counted.subscriptions_over_network_share >= 3, "{counted:?}"); // (refused during the grace too)
        assert_eq!(counted.claims_over_network_share, 1);
        server.stop().await;
    })
    .await;
}
