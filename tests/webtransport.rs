//! WebTransport on the native endpoint, driven by web-transport-quinn's client (an HTTP/3 CONNECT like a
//! browser's): the same control stream, room streams and tick datagrams as a native connection, in one room with
//! a native client; the path and origin checks; and native clients refused for streams they must not open.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quiver_client::RoomEvent;
use quiver_proto::{
    frame, EventKind, FrameCodec, Hello, Join, Limits, Post, Reply, Request, RequestBody, RoomFrame, ServerMsg,
    TickHeader, PROTOCOL_VERSION,
};
use quiver_server::WebConfig;
use quiver_tests::TestServer;
use web_transport_quinn::{http, proto::ConnectRequest, ClientBuilder, RecvStream, SendStream, Session};

const WAIT: Duration = Duration::from_secs(10);

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

async fn browser(server: &TestServer, path: &str, origin: &str) -> Result<Session, web_transport_quinn::ClientError> {
    let hash = quiver_certs::dev::load_or_generate(server.data_dir.path(), std::time::SystemTime::now())
        .unwrap()
        .0
        .fingerprint();
    let client = ClientBuilder::new().with_server_certificate_hashes(vec![hash.0.to_vec()]).unwrap();
    let url = format!("https://127.0.0.1:{}{path}", server.addr.port()).parse::<url::Url>().unwrap();
    let request =
        ConnectRequest::new(url).with_header(http::header::ORIGIN, http::HeaderValue::from_str(origin).unwrap());
    tokio::time::timeout(WAIT, client.connect(request)).await.expect("connect in time")
}

struct Control {
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    next_id: u64,
}

impl Control {
    async fn open(session: &Session, token: String) -> Control {
        let (send, recv) = session.open_bi().await.unwrap();
        let mut control = Control { send, recv, buf: BytesMut::new(), next_id: 1 };
        let hello = Hello { version: PROTOCOL_VERSION, agent: "wt-test".into(), name: None, token: Some(token) };
        match control.request(RequestBody::Hello(hello)).await {
            Reply::Welcome(welcome) => assert_eq!(welcome.identity, "web"),
            other => panic!("{other:?}"),
        }
        control
    }

    async fn request(&mut self, body: RequestBody) -> Reply {
        let req_id = self.next_id;
        self.next_id += 1;
        let bytes = codec().encode_to_vec(&Request { req_id, body }).unwrap();
        self.send.write_all(&bytes).await.unwrap();
        loop {
            if let Some(msg) = codec().decode::<ServerMsg>(&mut self.buf).unwrap() {
                match msg {
                    ServerMsg::Reply { req_id: id, result } if id == req_id => return result.unwrap(),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.recv.read_chunk(usize::MAX, true)).await.unwrap();
            self.buf.extend_from_slice(&chunk.unwrap().unwrap().bytes);
        }
    }
}

async fn next_room_frame(recv: &mut RecvStream, buf: &mut BytesMut) -> RoomFrame {
    loop {
        if let Some(body) = codec().next_frame(buf).unwrap() {
            return frame::decode_body::<RoomFrame>(&body).unwrap();
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(usize::MAX, true)).await.expect("room frame in time");
        buf.extend_from_slice(&chunk.unwrap().expect("room stream open").bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_shares_rooms_and_ticks_with_native_clients() {
    let server = TestServer::start(Limits::default());
    let session = browser(&server, "/quiver", "http://localhost:8080").await.unwrap();
    let mut control = Control::open(&session, server.token("web")).await;
    let native = server.client().await;
    let mut native_room = native.join("mixed").await.unwrap();

    // Join: the reply, then the room stream opening with the same outcome.
    let join = Join { room: "mixed".into(), since: None, redundant: false };
    let Reply::Joined(joined) = control.request(RequestBody::Join(join)).await else { panic!("not joined") };
    assert!(joined.members.contains(&"web".to_string()), "{joined:?}");
    let mut room_stream = tokio::time::timeout(WAIT, session.accept_uni()).await.unwrap().unwrap();
    let mut room_buf = BytesMut::new();
    match next_room_frame(&mut room_stream, &mut room_buf).await {
        RoomFrame::Open(open) => assert_eq!(open, joined),
        other => panic!("{other:?}"),
    }

    // Native → browser.
    native.post("mixed", "from native").await.unwrap();
    let text = loop {
        if let RoomFrame::Event(event) = next_room_frame(&mut room_stream, &mut room_buf).await {
            if let EventKind::Message { body, .. } = event.kind {
                break body;
            }
        }
    };
    assert_eq!(&text[..], b"from native");

    // Browser → native.
    let post = Post { room: "mixed".into(), client_msg_id: 7, body: Bytes::from_static(b"from the browser") };
    let Reply::Posted { seq, duplicate: false, .. } = control.request(RequestBody::Post(post)).await else {
        panic!("not posted")
    };
    let message = loop {
        match tokio::time::timeout(WAIT, native_room.next()).await.unwrap().unwrap() {
            RoomEvent::Message(m) if m.seq == seq => break m,
            _ => {}
        }
    };
    assert_eq!((&message.body[..], message.sender.as_str()), (&b"from the browser"[..], "web"));

    // Ticks from a native publisher arrive as datagrams with the header of the id the browser was given.
    let subscribe = RequestBody::Subscribe { channel: "prices".into() };
    let Reply::Subscribed { channel_id, .. } = control.request(subscribe).await else { panic!("not subscribed") };
    let publisher = native.publisher("prices").await.unwrap();
    let received = async {
        loop {
            publisher.send(Bytes::from_static(b"42.5")).unwrap();
            if let Ok(Ok(datagram)) = tokio::time::timeout(Duration::from_millis(50), session.read_datagram()).await {
                if quiver_proto::is_probe(&datagram) {
                    continue; // the server's tail-loss probe after its replies
                }
                return TickHeader::decode(&datagram).unwrap();
            }
        }
    };
    let (header, payload) = tokio::time::timeout(WAIT, received).await.expect("a tick within 10 s");
    assert_eq!((header.channel_id, &payload[..]), (channel_id, &b"42.5"[..]));
    assert!(server.stats.snapshot().ticks_sent >= 1);

    // A raw QUIC datagram without a valid session id is counted and dropped; the browser's own ticks still flow
    // (seen by a native subscriber: the server's tick count alone would also count the native publisher's).
    let mut from_web = native.subscribe("from-web").await.unwrap();
    let raw: &quinn::Connection = &session;
    raw.send_datagram(Bytes::from_static(&[0x3f, 1, 2])).unwrap();
    let publish = RequestBody::Publish { channel: "from-web".into(), max_age_ms: None };
    let Reply::Publishing { channel_id, .. } = control.request(publish).await else { panic!("not publishing") };
    // A new seq each time: the server drops a publisher's tick whose seq is not above the last it took.
    let tick = |seq: u64| {
        let mut tick = Vec::new();
        TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut tick).unwrap();
        tick.extend_from_slice(b"web");
        Bytes::from(tick)
    };
    let published = async {
        for seq in 1.. {
            session.send_datagram(tick(seq)).unwrap();
            if let Ok(got) = tokio::time::timeout(Duration::from_millis(50), from_web.next()).await {
                return got;
            }
        }
        unreachable!("seqs run out")
    };
    let got = tokio::time::timeout(WAIT, published).await.expect("the browser's ticks are published after the garbage");
    let got = got.expect("the subscription goes on");
    assert_eq!(&got.payload[..], b"web");
    assert!(server.stats.snapshot().datagrams_malformed >= 1, "the garbage came first and was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_404() {
    let server = TestServer::start(Limits::default());
    let err = browser(&server, "/elsewhere", "http://localhost").await.expect_err("refused");
    assert!(err.to_string().contains("404"), "{err}");
    // The refusal cost the server nothing: a good session still works.
    let session = browser(&server, "/quiver", "http://localhost").await.unwrap();
    Control::open(&session, server.token("web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_get_403() {
    let web = WebConfig { allowed_origins: vec!["https://app.example.com".into()], ..WebConfig::default() };
    let test_server = TestServer::start_web(Limits::default(), web);
    let err = browser(&test_server, "/quiver", "https://evil.example.net").await.expect_err("refused");
    assert!(err.to_string().contains("403"), "{err}");
    let session = browser(&test_server, "/quiver", "https://app.example.com").await.unwrap();
    Control::open(&session, test_server.token("web")).await;
    test_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_opening_other_streams_are_closed_with_protocol_violation() {
    let server = TestServer::start(Limits::default());
    let conn = server.raw().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Hello { version: PROTOCOL_VERSION, agent: "test".into(), name: None, token: Some(server.token("n")) };
    let bytes = codec().encode_to_vec(&Request { req_id: 1, body: RequestBody::Hello(hello) }).unwrap();
    send.write_all(&bytes).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(quiver_tests::read_msg(&mut recv, &mut buf).await, Some(ServerMsg::Reply { .. })));
    let mut extra = conn.open_uni().await.unwrap();
    extra.write_all(b"not allowed").await.unwrap();
    let (code, reason) = quiver_tests::closed_with(&conn).await;
    assert_eq!(code, quiver_proto::ErrorCode::ProtocolViolation, "{reason}");
    assert!(reason.contains("unidirectional"), "{reason}");
}

/// Datagrams a connection on the browsers' ALPN sends before its CONNECT are read and dropped as they come (and
/// counted), not held until Hello: each held one kept its whole received packet, so one-byte datagrams in full
/// packets held ~45 times the 64 KiB receive buffer per connection, for `handshake_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_before_a_connect_are_dropped_as_they_come() {
    let server = TestServer::start(Limits::default());
    let config = quiver_client::quinn_client_config(&server.trust(), server.addr, quiver_proto::ALPN_H3).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(server.addr, "localhost").unwrap().await.unwrap();
    for _ in 0..20 {
        conn.send_datagram(bytes::Bytes::from_static(b"x")).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats.snapshot().datagrams_before_session < 20 {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.stats.snapshot().datagrams_before_session);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.close(0u32.into(), b"done");
    server.stop().await;
}

/// A connection on the browsers' ALPN that never sends its CONNECT is closed at `handshake_timeout_ms` and counted
/// as a silent native connection is (`handshake_timeouts`): it was counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_lane_connection_that_never_connects_is_counted_as_a_handshake_timeout() {
    let server = TestServer::start(Limits { handshake_timeout_ms: 300, ..Limits::default() });
    let config = quiver_client::quinn_client_config(&server.trust(), server.addr, quiver_proto::ALPN_H3).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(server.addr, "localhost").unwrap().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("closed by the server");
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(_)), "{closed:?}");
    assert_eq!(server.stats.snapshot().handshake_timeouts, 1);
    server.stop().await;
}
