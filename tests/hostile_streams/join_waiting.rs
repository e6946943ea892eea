//! Joins that wait for a left room's stream to end at the stream limit (with the replies before them written, and
//! until the server stops or the token expires), and requests pipelined in the Hello's chunk.

use std::time::Duration;

use quiver_proto::{ErrorCode, Limits};
use quiver_tests::{closed_with, hostile::bounded, TestServer};

use super::connect_with;

/// A connection whose Join (request 6) waits for a left room's stream to end: at `max_rooms` 2, rooms a and b
/// joined with an event stuck on each unread stream (their windows are smaller than one event), a left and c
/// joined, then b left and d joined in one write. Returned once b's Left arrived.
struct JoinWaiting {
    server: TestServer,
    writer: quiver_client::Client,
    /// Keeps the client's endpoint alive.
    _endpoint: quinn::Endpoint,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: bytes::BytesMut,
    /// The left rooms' unread streams.
    streams: Vec<quinn::RecvStream>,
}

impl JoinWaiting {
    async fn start() -> JoinWaiting {
        use quiver_proto::{Join, Reply, RequestBody, ServerMsg};
        use quiver_tests::hostile::{frame, hello};
        use std::sync::atomic::Ordering;
        let server = TestServer::start(Limits { max_rooms: 2, ..Limits::default() });
        let writer = server.client().await;
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(100u32.into()).stream_receive_window(1_000u32.into());
        let (endpoint, conn) = connect_with(&server, transport).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut next = async || quiver_tests::read_msg(&mut recv, &mut buf).await.expect("a reply");
        let join = |room: &str| RequestBody::Join(Join { room: room.into(), since: None, redundant: false });
        send.write_all(&frame(0, hello(server.token("stuck")))).await.unwrap();
        assert!(matches!(next().await, ServerMsg::Reply { result: Ok(Reply::Welcome(_)), .. }));
        let mut streams = Vec::new();
        for (req_id, room) in [(1, "a"), (2, "b")] {
            send.write_all(&frame(req_id, join(room))).await.unwrap();
            assert!(matches!(next().await, ServerMsg::Reply { result: Ok(Reply::Joined(_)), .. }), "{room}");
            streams.push(conn.accept_uni().await.unwrap());
            let before = server.stats.outbox_bytes.load(Ordering::Relaxed);
            writer.post(room, vec![b'x'; 4_000]).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), async {
                while server.stats.outbox_bytes.load(Ordering::Relaxed) <= before {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the event waits on the unread stream");
        }
        // a left (its stream stays open: unread), c joined: three room streams, the most a connection keeps.
        send.write_all(&frame(3, RequestBody::Leave { room: "a".into() })).await.unwrap();
        assert!(matches!(next().await, ServerMsg::Reply { req_id: 3, result: Ok(Reply::Left { .. }) }));
        send.write_all(&frame(4, join("c"))).await.unwrap();
        assert!(matches!(next().await, ServerMsg::Reply { req_id: 4, result: Ok(Reply::Joined(_)) }));
        // Leave b and join d in one write: d has to wait for a left stream to end.
        let mut burst = frame(5, RequestBody::Leave { room: "b".into() });
        burst.extend_from_slice(&frame(6, join("d")));
        send.write_all(&burst).await.unwrap();
        let left = next().await;
        assert!(matches!(left, ServerMsg::Reply { req_id: 5, result: Ok(Reply::Left { .. }) }), "{left:?}");
        JoinWaiting { server, writer, _endpoint: endpoint, _send: send, recv, buf, streams }
    }

    async fn next(&mut self) -> quiver_proto::ServerMsg {
        quiver_tests::read_msg(&mut self.recv, &mut self.buf).await.expect("a reply")
    }
}

/// A Join that has to wait for a left room's stream to end is served after the replies before it are written:
/// a client that stops reading a left room's stream once its Left arrives (as the library does) frees the slot the
/// Join waits for. The replies used to wait behind the Join, which was then refused `TooManyRooms` after its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_at_the_stream_limit_waits_with_the_replies_before_it_written() {
    use quiver_proto::{Reply, ServerMsg};
    bounded(async {
        let mut waiting = JoinWaiting::start().await;
        // Left arrived while d waits: the client stops reading what it left.
        for stream in &mut waiting.streams {
            let _ = stream.stop(0u32.into());
        }
        let joined = waiting.next().await;
        assert!(matches!(joined, ServerMsg::Reply { req_id: 6, result: Ok(Reply::Joined(_)) }), "{joined:?}");
        waiting.writer.close().await;
        waiting.server.stop().await;
    })
    .await;
}

/// A Join waiting for a left room's stream stops waiting when the server shuts down: it is refused `Unavailable`
/// (clients join again once reconnected) and the connection goes away at once (it waited out its second and was
/// refused `TooManyRooms`, which clients take as final, first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waiting_at_the_stream_limit_stops_waiting_when_the_server_shuts_down() {
    use quiver_proto::ServerMsg;
    bounded(async {
        let mut waiting = JoinWaiting::start().await;
        // At once: the Join waits at most a second.
        waiting.server.shutdown.cancel();
        let refused = waiting.next().await;
        match refused {
            ServerMsg::Reply { req_id: 6, result: Err(failure) } => {
                assert_eq!(failure.code, ErrorCode::Unavailable, "{failure:?}");
                assert!(failure.message.contains("shutting down"), "{}", failure.message);
            }
            other => panic!("the waiting Join: {other:?}"),
        }
        let going = waiting.next().await;
        assert!(matches!(going, ServerMsg::GoAway { .. }), "{going:?}");
        waiting.writer.clone().close().await;
        waiting.server.stop().await;
    })
    .await;
}

/// A Join in the very chunk of its Hello, from a client that grants the server no stream for it, waits for one
/// until the token expires, not past it: it is refused `Unavailable` at the expiry (clients join again once
/// reconnected with a fresh token) and the connection closes `TokenExpired`. The control loop used to learn the
/// expiry only after that chunk, so the Join waited out the whole stream timeout (5 s) and was refused as
/// `TooManyRooms`. A request after the Join is not served past the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_in_the_hellos_chunk_stops_waiting_when_the_token_expires() {
    use quiver_auth::{mint_dev, Claims};
    use quiver_proto::{Join, RequestBody, ServerMsg};
    use quiver_tests::hostile::{frame, hello};
    bounded(async {
        let server = TestServer::start(Limits::default());
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(0u32.into());
        let (_endpoint, conn) = connect_with(&server, transport).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token = mint_dev(server.data_dir.path(), &Claims::everything("brief", now_s, 3)).unwrap();
        let mut chunk = frame(0, hello(token));
        chunk.extend_from_slice(&frame(1, RequestBody::Join(Join { room: "r".into(), since: None, redundant: false })));
        chunk.extend_from_slice(&frame(2, RequestBody::Ping { client_time_us: 1 }));
        let sent = std::time::Instant::now();
        send.write_all(&chunk).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let welcome = quiver_tests::read_msg(&mut recv, &mut buf).await.expect("Welcome");
        assert!(matches!(welcome, ServerMsg::Reply { req_id: 0, result: Ok(_) }), "{welcome:?}");
        match quiver_tests::read_msg(&mut recv, &mut buf).await.expect("the Join's reply") {
            ServerMsg::Reply { req_id: 1, result: Err(failure) } => {
                assert_eq!(failure.code, ErrorCode::Unavailable, "{failure:?}");
                assert!(failure.message.contains("token expired"), "{}", failure.message);
            }
            other => panic!("the waiting Join: {other:?}"),
        }
        // The token lived at most 3 s; the stream timeout is 5 s.
        assert!(sent.elapsed() < Duration::from_millis(4_500), "refused after {:?}", sent.elapsed());
        let after = quiver_tests::read_msg(&mut recv, &mut buf).await;
        assert!(after.is_none(), "nothing is served past the expiry: {after:?}");
        assert_eq!(closed_with(&conn).await.0, ErrorCode::TokenExpired);
        server.stop().await;
    })
    .await;
}

/// A connection is welcomed as soon as its Hello is served, not after the requests pipelined behind it in the same
/// chunk. Here a Join in Hello's chunk waits for a stream the client never grants (5 s), and meanwhile (0.5 s in) a
/// newer connection arrives with `budget.max_awaiting_hello` at 1: the welcomed connection used to be still in the table of
/// those awaiting Hello (it was let out only after the whole chunk), so the newer one closed it to make room
/// (`TooManyConnections` after its Welcome, its Join refused as if the server were shutting down). Now the newer one
/// waits its turn and the Join is answered as it would be alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_welcomed_at_its_hello_not_after_the_requests_pipelined_behind_it() {
    use quiver_proto::{Join, RequestBody, ServerMsg};
    use quiver_server::{Budget, ServerConfig};
    use quiver_tests::hostile::{frame, hello};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().into());
        let budget = Budget { max_awaiting_hello: 1, ..Budget::default() };
        let server = TestServer::start_with(ServerConfig { budget, ..dev }, dir);
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(0u32.into());
        let (_endpoint, conn) = connect_with(&server, transport).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut chunk = frame(0, hello(server.token("first")));
        chunk.extend_from_slice(&frame(1, RequestBody::Join(Join { room: "r".into(), since: None, redundant: false })));
        send.write_all(&chunk).await.unwrap();
        // While the Join waits (its Welcome is written with the Join's reply, after the chunk), a newer connection,
        // which never says Hello, takes the one place for a connection awaiting Hello.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let newer = server.try_raw().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let welcome = quiver_tests::read_msg(&mut recv, &mut buf).await.expect("Welcome");
        assert!(matches!(welcome, ServerMsg::Reply { req_id: 0, result: Ok(_) }), "{welcome:?}");
        match quiver_tests::read_msg(&mut recv, &mut buf).await.expect("the Join's reply") {
            ServerMsg::Reply { req_id: 1, result: Err(failure) } => {
                assert_eq!(failure.code, ErrorCode::TooManyRooms, "{failure:?}");
            }
            other => panic!("the waiting Join: {other:?}"),
        }
        // Still served after the Join.
        send.write_all(&frame(2, RequestBody::Ping { client_time_us: 1 })).await.unwrap();
        let pong = quiver_tests::read_msg(&mut recv, &mut buf).await;
        assert!(
            matches!(pong, Some(ServerMsg::Reply { req_id: 2, result: Ok(_) })),
            "{pong:?} {:?}",
            conn.close_reason()
        );
        assert_eq!(server.stats.snapshot().connections_closed_awaiting_hello, 0);
        drop(newer);
        server.stop().await;
    })
    .await;
}

/// A session of protocol 4 gets one id per channel for its subscription and its claim, also for requests in its
/// Hello's own chunk: those used to be served before the session's version was taken in (after the whole chunk),
/// with the ids of protocol 5 (a subscription and a claim of one channel 1 and 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_the_hellos_chunk_are_served_in_the_hellos_protocol_version() {
    use quiver_proto::{Hello, Reply, RequestBody, ServerMsg, OLDEST_PROTOCOL_VERSION};
    use quiver_tests::hostile::frame;
    bounded(async {
        let server = TestServer::start(Limits::default());
        let conn = server.try_raw().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Hello {
            version: OLDEST_PROTOCOL_VERSION,
            agent: "hostile".into(),
            name: None,
            token: Some(server.token("four")),
        };
        let mut chunk = frame(0, RequestBody::Hello(hello));
        chunk.extend_from_slice(&frame(1, RequestBody::Subscribe { channel: "c".into() }));
        chunk.extend_from_slice(&frame(2, RequestBody::Publish { channel: "c".into(), max_age_ms: None }));
        send.write_all(&chunk).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut ids = Vec::new();
        for req in 0..3 {
            match quiver_tests::read_msg(&mut recv, &mut buf).await.expect("a reply") {
                ServerMsg::Reply { req_id, result: Ok(reply) } if req_id == req => match reply {
                    Reply::Subscribed { channel_id, .. } | Reply::Publishing { channel_id, .. } => ids.push(channel_id),
                    _ => {}
                },
                other => panic!("request {req}: {other:?}"),
            }
        }
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "protocol 4: one id for the channel's subscription and claim");
        server.stop().await;
    })
    .await;
}
