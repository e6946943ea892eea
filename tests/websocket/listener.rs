//! The WebSocket listener before the upgrade: a HEAD answered without a body, a shutdown that does not wait for
//! connections still upgrading, a stalled request head counted, a head too large answered.

use std::time::Duration;

use quiver_proto::{ErrorCode, Limits};
use quiver_tests::TestServer;

/// A HEAD to the WebSocket listener (a load balancer's check of the port) is answered without a body, its refusal
/// too: the 404 carried one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_to_the_websocket_listener_gets_no_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(Limits::default());
    let addr = server.websocket.expect("a WebSocket listener");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"HEAD /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(body, "", "{answer}");
    server.stop().await;
}

/// A shutdown does not wait for connections to the WebSocket listener that are still upgrading (half a request
/// head here): the drain used to wait for them until the handshake timeout (60 s in this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_connections_still_upgrading() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(Limits { handshake_timeout_ms: 60_000, ..Limits::default() });
    let addr = server.websocket.expect("a WebSocket listener");
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    // Accepted and upgrading before the stop (not accepted, it would only be dropped with the listener).
    let stats = server.stats.clone();
    let upgrading = || stats.websocket_upgrading.load(std::sync::atomic::Ordering::Relaxed);
    let waiting = std::time::Instant::now();
    while upgrading() != 1 {
        assert!(waiting.elapsed() < Duration::from_secs(10), "the connection was never taken up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    server.stop().await; // at most 10 s
    assert!(stopping.elapsed() < Duration::from_secs(5), "the drain waited {:?}", stopping.elapsed());
    assert_eq!(upgrading(), 0, "the upgrade ended with the stop");
    drop(half);
}

/// A connection to the WebSocket listener whose request head does not complete within `handshake_timeout_ms` is
/// counted as a `HandshakeTimeout` refusal, as the QUIC lanes count theirs (it was counted nowhere). A head too large,
/// sent in one write, is answered 431, not reset by a close with the rest of it unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_counted_and_a_head_too_large_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(Limits { handshake_timeout_ms: 300, ..Limits::default() });
    let addr = server.websocket.expect("a WebSocket listener");
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /quiver HTTP/1.1\r\n").await.unwrap();
    let timeouts = || server.stats.refusals(ErrorCode::HandshakeTimeout);
    let waiting = std::time::Instant::now();
    while timeouts() == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(10), "a stalled head was counted nowhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(timeouts(), 1);
    server.stop().await;
    drop(half);
    // (On a server with the default handshake timeout: 300 ms could pass before a loaded machine reads 16 KiB.)
    let server = TestServer::start(Limits::default());
    let addr = server.websocket.expect("a WebSocket listener");
    let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\nCookie: ".to_vec();
    head.extend(std::iter::repeat_n(b'c', 16 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    big.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), big.read_to_end(&mut answer)).await.unwrap();
    read.expect("answered, not reset");
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    server.stop().await;
}

/// A request head that does not parse (a POST, bytes that are not UTF-8), passed on by a trusted proxy, names no
/// client: it is answered without being admitted as anyone. It was admitted as the proxy's own address, and enough of
/// them in a second took the proxy's new-connection rate: its own upgrades (health checks, clients whose header is
/// missing) were refused 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_do_not_parse_from_a_trusted_proxy_take_nobodys_rate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = quiver_server::WebConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..quiver_server::WebConfig::default()
    };
    let server = TestServer::start_web(Limits { new_connections_per_s_per_ip: 2, ..Limits::default() }, web);
    let addr = server.websocket.expect("a WebSocket listener");
    let ask = |head: &'static [u8]| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head).await.unwrap();
        let mut answer = [0u8; 12];
        tcp.read_exact(&mut answer).await.unwrap();
        (String::from_utf8_lossy(&answer[9..12]).into_owned(), tcp)
    };
    for _ in 0..10 {
        assert_eq!(ask(b"POST /quiver HTTP/1.1\r\nHost: localhost\r\n\r\n").await.0, "405");
        assert_eq!(ask(b"GET /quiver HTTP/1.1\r\nHost: \xff\r\n\r\n").await.0, "400");
    }
    let upgrade = b"GET /quiver HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: quiver\r\n\r\n";
    assert_eq!(ask(upgrade).await.0, "101", "the proxy's own upgrade is not refused for the heads before it");
}
