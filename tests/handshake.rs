//! The session handshake and the control stream end to end: real quinn endpoints on 127.0.0.1, port 0.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use quiver_client::{Client, ConnectError, ConnectOptions, RequestError, TrustOptions};
use quiver_proto::{
    varint, ErrorCode, FrameCodec, Hello, Limits, Reply, Request, RequestBody, ServerMsg, PROTOCOL_VERSION,
};
use quiver_tests::{closed_with, read_msg, TestServer};

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

fn hello_frame(version: u32, token: String) -> BytesMut {
    let hello = Hello { version, agent: "test".into(), name: None, token: Some(token) };
    codec().encode_to_vec(&Request { req_id: 0, body: RequestBody::Hello(hello) }).unwrap()
}

#[tokio::test]
async fn hello_welcome_and_pings() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions { name: Some("alice".into()), ..ConnectOptions::default() };
    let client = server.client_with(options).await.unwrap();
    let welcome = client.welcome().clone();
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    assert_eq!(welcome.identity, "alice");
    assert_eq!(welcome.limits, Limits::default());
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    assert!(welcome.server_time_us.abs_diff(now_us) < 10_000_000, "server time is the wall clock");
    for _ in 0..20 {
        let pong = client.ping().await.unwrap();
        assert!(pong.server_time_us >= welcome.server_time_us);
    }
    // Pipelined requests from many tasks each get their own reply.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let client = client.clone();
        tasks.spawn(async move { client.ping().await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_naming_both_versions() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions { protocol_version: 99, ..ConnectOptions::default() };
    let err = server.client_with(options).await.unwrap_err();
    let ConnectError::Refused(failure) = &err else { panic!("not a refusal: {err}") };
    assert_eq!(failure.code, ErrorCode::UnsupportedVersion);
    assert!(err.to_string().contains("version 99"), "{err}");
    assert!(err.to_string().contains(&format!("speaks {PROTOCOL_VERSION}")), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn future_hello_that_does_not_decode_is_refused_for_its_version() {
    let server = TestServer::start(Limits::default());
    let conn = server.raw().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // req_id 5, Hello (variant 0), the next version (one LEB128 byte), then fields this version does not know.
    let next = u8::try_from(PROTOCOL_VERSION + 1).unwrap();
    assert!(next < 0x80, "one byte of LEB128");
    let body = [0x05, 0x00, next, 0xff, 0xff, 0xff, 0x01];
    let mut frame = BytesMut::new();
    varint::encode(body.len() as u64, &mut frame).unwrap();
    frame.extend_from_slice(&body);
    send.write_all(&frame).await.unwrap();
    let reply = read_msg(&mut recv, &mut BytesMut::new()).await.expect("a reply");
    let ServerMsg::Reply { req_id: 5, result: Err(failure) } = reply else { panic!("{reply:?}") };
    assert_eq!(failure.code, ErrorCode::UnsupportedVersion);
    assert!(failure.message.contains(&format!("version {next}")), "{}", failure.message);
    assert_eq!(closed_with(&conn).await.0, ErrorCode::UnsupportedVersion);
    server.stop().await;
}

#[tokio::test]
async fn wrong_pin_fails_with_a_trust_error() {
    let server = TestServer::start(Limits::default());
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let token = Some(server.token("pinned"));
    let options = ConnectOptions { trust: TrustOptions::Pin(pin), token: token.clone(), ..ConnectOptions::default() };
    let err = Client::connect_with(&server.addr.to_string(), options).await.unwrap_err();
    let ConnectError::PinMismatch { expected, presented } = &err else { panic!("not a pin mismatch: {err}") };
    assert_eq!(*expected, pin);
    let real = quiver_certs::sha256(&quiver_certs::dev::read(server.data_dir.path()).unwrap());
    assert_eq!(*presented, real);
    assert!(err.to_string().contains("pin mismatch"), "{err}");
    // The right pin works.
    let options = ConnectOptions { trust: TrustOptions::Pin(real), token, ..ConnectOptions::default() };
    Client::connect_with(&server.addr.to_string(), options).await.unwrap().ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn ca_file_trust_accepts_the_dev_certificate_as_its_own_root() {
    let server = TestServer::start(Limits::default());
    let ca = server.data_dir.path().join(quiver_certs::dev::CERT_FILE);
    let token = Some(server.token("ca"));
    let options = ConnectOptions { trust: TrustOptions::CaFile(ca), token, ..ConnectOptions::default() };
    Client::connect_with(&server.addr.to_string(), options).await.unwrap().ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn auto_trust_without_a_dev_certificate_says_what_to_do() {
    let server = TestServer::start(Limits::default());
    let empty = tempfile::tempdir().unwrap();
    let trust = TrustOptions::Auto { data_dir: empty.path().to_owned() };
    let err = Client::connect(&server.addr.to_string(), trust).await.unwrap_err();
    assert!(err.to_string().contains("--cert-hash"), "{err}");
    server.stop().await;
}

/// Garbage on one connection's control stream closes that connection with a protocol error; a well-behaved
/// client on the same server keeps working throughout.
async fn hostile_control_stream(bytes: &[u8], expected: ErrorCode) {
    let server = TestServer::start(Limits::default());
    let good = server.client().await;
    good.ping().await.unwrap();

    let conn = server.raw().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello_frame(PROTOCOL_VERSION, server.token("hostile"))).await.unwrap();
    send.write_all(bytes).await.unwrap();
    let (code, reason) = closed_with(&conn).await;
    assert_eq!(code, expected, "closed with {code}: {reason}");

    for _ in 0..10 {
        good.ping().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    // A frame of 4 bytes whose content is not a Request.
    hostile_control_stream(&[0x04, 0xff, 0xff, 0xff, 0xff], ErrorCode::ProtocolViolation).await;
}

#[tokio::test]
async fn oversized_length_prefix_closes_only_that_connection() {
    // Announces 2^30 - 1 bytes; the server must refuse on seeing the prefix, without waiting for the body.
    hostile_control_stream(&[0xbf, 0xff, 0xff, 0xff], ErrorCode::FrameTooLarge).await;
}

#[tokio::test]
async fn garbage_before_hello_is_a_protocol_error() {
    let server = TestServer::start(Limits::default());
    let conn = server.raw().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x03, 0xde, 0xad, 0xbe]).await.unwrap();
    assert_eq!(closed_with(&conn).await.0, ErrorCode::ProtocolViolation);
    server.stop().await;
}

#[tokio::test]
async fn another_protocol_waits_for_its_frame_and_times_out() {
    // "GE" reads as a 2-byte length of 1,861: under the frame limit, so the server waits for the rest, which never
    // comes; the handshake timeout closes the connection.
    let server = TestServer::start(Limits { handshake_timeout_ms: 300, ..Limits::default() });
    let conn = server.raw().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(closed_with(&conn).await.0, ErrorCode::HandshakeTimeout);
    server.stop().await;
}

#[tokio::test]
async fn request_before_hello_is_refused() {
    let server = TestServer::start(Limits::default());
    let conn = server.raw().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let ping = codec().encode_to_vec(&Request { req_id: 9, body: RequestBody::Ping { client_time_us: 1 } }).unwrap();
    send.write_all(&ping).await.unwrap();
    let reply = read_msg(&mut recv, &mut BytesMut::new()).await.expect("a reply");
    assert!(matches!(reply, ServerMsg::Reply { req_id: 9, result: Err(ref f) } if f.code == ErrorCode::HelloRequired));
    assert_eq!(closed_with(&conn).await.0, ErrorCode::HelloRequired);
    server.stop().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let server = TestServer::start(Limits { handshake_timeout_ms: 300, ..Limits::default() });
    // One connection opens no stream at all, another opens the control stream but never sends Hello.
    let silent = server.raw().await;
    let mute = server.raw().await;
    let (mut send, _recv) = mute.open_bi().await.unwrap();
    send.write_all(&[]).await.unwrap();
    // Opening a stream is only visible to the server once a frame is sent on it: send half a frame.
    send.write_all(&[0x10]).await.unwrap();
    assert_eq!(closed_with(&silent).await.0, ErrorCode::HandshakeTimeout);
    assert_eq!(closed_with(&mute).await.0, ErrorCode::HandshakeTimeout);
    server.stop().await;
}

#[tokio::test]
async fn a_failed_request_is_answered_and_the_connection_stays() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    let err = client.request(RequestBody::Unsubscribe { channel: "prices".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined), "{err}");
    client.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let server = TestServer::start(Limits::default());
    let options = ConnectOptions { reconnect: false, ..ConnectOptions::default() };
    let client = server.client_with(options).await.unwrap();
    client.ping().await.unwrap();
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    let (code, reason) = tokio::time::timeout(Duration::from_secs(5), client.closed()).await.unwrap();
    assert_eq!(code, ErrorCode::GoingAway, "{reason}");
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, RequestError::Closed { code: ErrorCode::GoingAway, .. }), "{err}");
}

#[tokio::test]
async fn reply_kinds_match_requests() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    let reply = client.request(RequestBody::Ping { client_time_us: 1234 }).await.unwrap();
    assert!(matches!(reply, Reply::Pong { client_time_us: 1234, .. }), "{reply:?}");
    server.stop().await;
}

/// The server's tail probe goes only for a write that is still unacknowledged: a client whose ACK of each reply
/// comes at once (here with a datagram of its own right after reading the reply) gets no probes, where before
/// every reply drew one 1 ms later. 60 pings 3 ms apart.
#[tokio::test]
async fn the_server_sends_no_tail_probe_for_a_reply_already_acknowledged() {
    let server = TestServer::start(Limits::default());
    let mut control = quiver_tests::hostile::Control::open(&server).await;
    let before = control.conn.stats().frame_rx.datagram;
    const PINGS: u64 = 60;
    for req_id in 1..=PINGS {
        control.ping(req_id).await;
        // ACK-eliciting, so it carries the ACK of the reply now rather than after the delayed-ACK timer.
        control.conn.send_datagram(bytes::Bytes::from_static(quiver_proto::PROBE)).unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let probes = control.conn.stats().frame_rx.datagram - before;
    assert!(probes <= PINGS / 6, "{probes} probes for {PINGS} acknowledged replies");
}

/// A client's reconnect resumes its TLS session (the server opens the ticket it issued: no signature, no
/// certificate chain sent), and so does another client with the same trust; a client pinning another certificate
/// does not present those tickets. Before, every attempt built a TLS configuration with an empty ticket cache of
/// its own, and no reconnect ever resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_its_tls_session() {
    let server = TestServer::start(Limits::default());
    let resumed = || server.stats.tls_tickets_accepted.load(std::sync::atomic::Ordering::Relaxed);
    let options = ConnectOptions { reconnect_delay: Duration::from_millis(20), ..ConnectOptions::default() };
    let client = server.client_with(options.clone()).await.unwrap();
    assert_eq!(resumed(), 0, "a first connection has no ticket");
    client.ping().await.unwrap(); // (the tickets come after the handshake)
    let first = client.connection().unwrap();
    first.close(0u32.into(), b"test: reconnect");
    let mut again = client.connection();
    for _ in 0..500 {
        client.ping().await.unwrap();
        again = client.connection();
        if again.as_ref().is_some_and(|conn| conn.stable_id() != first.stable_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some_and(|conn| conn.stable_id() != first.stable_id()), "reconnected");
    assert_eq!(resumed(), 1, "the reconnect resumed");
    let other = server.client_with(options.clone()).await.unwrap();
    assert_eq!(resumed(), 2, "another client with the same trust resumes too");
    other.close().await;
    // Another pin (here a certificate the server does not have): its handshake is a full one, so it fails the pin,
    // where a resumption of the same server's session would have skipped the check.
    let elsewhere = ConnectOptions {
        trust: TrustOptions::Pin(quiver_certs::Fingerprint([7; 32])),
        first_connect_retry: None,
        ..options
    };
    let refused = Client::connect_with(&server.addr.to_string(), elsewhere).await.map(|_| ()).unwrap_err();
    assert!(matches!(refused, ConnectError::PinMismatch { .. }), "{refused:?}");
    assert_eq!(resumed(), 2);
    client.close().await;
}
