use super::*;

/// No page of this server can be framed by another site (clickjacking), and none sends a Referer (the demo page's
/// address may carry `?token=`).
#[test]
fn every_answer_forbids_framing_and_referers() {
    let text = String::from_utf8(Response::error(404, "not here").to_bytes()).unwrap();
    for header in ["X-Frame-Options: DENY\r\n", "frame-ancestors 'none'", "Referrer-Policy: no-referrer\r\n"] {
        assert!(text.contains(header), "{text}");
    }
}

/// The blank line is found wherever it lies against what was searched before, also split across reads, and
/// bytes searched before are not searched again.
#[test]
fn a_heads_end_is_found_in_what_is_new() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let end = head.len() - 4;
    for searched in 0..=head.len() {
        assert_eq!(head_end(head, searched), Some(end).filter(|_| searched <= end + 3), "searched {searched}");
    }
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
    // Searched before: a blank line wholly in the old bytes is not looked for again.
    assert_eq!(head_end(b"\r\n\r\nmore", 8), None);
}

/// With every slot held by connections that say nothing, one more is answered 503 at once (it waited in the
/// kernel's queue before, where a health check times out), and the silent ones get 408 after the head timeout
/// (they held their slots for the whole request timeout before).
#[tokio::test]
async fn a_full_server_answers_503_at_once_and_silent_connections_408_after_the_head_timeout() {
    let listener = TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    // Counted (`quiver_http_refused_total`): a flood of the page's or the admin's listener showed in no metric.
    let stats = Arc::new(crate::stats::ServerStats::default());
    let bounds = HttpBounds::default().counted(&stats);
    let most = bounds.max_connections;
    let server =
        tokio::spawn(serve_http(listener, (shutdown.clone(), bounds), |_, _| Response::error(404, "not here")));
    let started = tokio::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..most + LOOPBACK_RESERVE {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let answer = |mut stream: TcpStream| async move {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text
    };
    // A refused peer that sent its request reads the status (not a reset from unread bytes).
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(2), answer(extra)).await.expect("answered at once");
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert_eq!((stats.snapshot().http_refused_busy, stats.snapshot().http_refused_per_address), (1, 0));
    let silent = tokio::time::timeout(HEAD_TIMEOUT + Duration::from_secs(2), answer(held.remove(0))).await;
    let silent = silent.expect("closed within the head timeout");
    assert!(silent.starts_with("HTTP/1.1 408 "), "{silent}");
    assert!(started.elapsed() >= HEAD_TIMEOUT, "not before the head timeout");
    shutdown.cancel();
    drop(held);
    server.await.unwrap();
}

/// A refused peer gets its status whatever it sends: one still sending its head (over 8 KiB, and more after) reads
/// it rather than a reset from bytes left unread, and one that has not finished its head within the refusal's time
/// gets it too (it got nothing: the refusal's time ran out before the write).
#[tokio::test]
async fn a_refusal_is_read_by_a_peer_still_sending_and_by_one_that_is_slow() {
    let listener = TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let bounds = HttpBounds::default();
    let most = bounds.max_connections;
    let server =
        tokio::spawn(serve_http(listener, (shutdown.clone(), bounds), |_, _| Response::error(404, "not here")));
    let mut held = Vec::new();
    for _ in 0..most + LOOPBACK_RESERVE {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // (Read to a clean end: a reset, from bytes the server left unread, is an error here.)
    let answer = |mut stream: TcpStream| async move {
        let mut text = Vec::new();
        stream.read_to_end(&mut text).await.expect("a clean end, not a reset");
        String::from_utf8_lossy(&text).into_owned()
    };
    let mut large = TcpStream::connect(addr).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: ".to_vec();
    head.resize(30 * 1024, b'a');
    large.write_all(&head).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(3), answer(large)).await.expect("answered");
    assert!(refused.starts_with("HTTP/1.1 503 "), "still sending: {refused:?}");
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap(); // and no more
    let refused = tokio::time::timeout(Duration::from_secs(3), answer(slow)).await.expect("answered");
    assert!(refused.starts_with("HTTP/1.1 503 "), "slow: {refused:?}");
    shutdown.cancel();
    drop(held);
    server.await.unwrap();
}

/// A stop does not wait for a request that says nothing (a browser's preconnect) until its head timeout: the
/// server's drain waited for it (3 s; 10 s for a peer that reads no answer). And a head too large, sent in one
/// write, is answered 431 rather than reset by a close with the rest of it unread; one that ends a little past
/// the bound within its last read is refused too.
#[tokio::test]
async fn a_stop_does_not_wait_for_silent_requests_and_a_head_too_large_is_answered() {
    let listener = TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let bounds = HttpBounds::default();
    let server = tokio::spawn(serve_http(listener, (shutdown.clone(), bounds), |_, _| Response::error(404, "no")));
    let answer = |head: Vec<u8>| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&head).await.unwrap();
        let mut text = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut text)).await.unwrap();
        read.expect("answered, not reset");
        String::from_utf8_lossy(&text).into_owned()
    };
    let mut big = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    big.extend(std::iter::repeat_n(b'c', 16 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let refused = answer(big).await;
    assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    let mut over = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    over.extend(std::iter::repeat_n(b'c', MAX_REQUEST_HEAD + 200 - over.len()));
    over.extend_from_slice(b"\r\n\r\n");
    let refused = answer(over).await;
    assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), server).await.expect("the stop waited for the silent one").unwrap();
    assert!(stopping.elapsed() < HEAD_TIMEOUT);
    drop(silent);
}

#[test]
fn connections_per_peer_address_are_bounded_but_not_from_loopback() {
    let peers = Arc::new(PeerSlots::default());
    let max_per_peer = peers.1.max_per_peer;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut held: Vec<PeerSlot> = (0..max_per_peer).map(|_| peers.take(ip("203.0.113.7")).unwrap()).collect();
    assert!(peers.take(ip("203.0.113.7")).is_none(), "one more from the address");
    assert!(peers.take(ip("::ffff:203.0.113.7")).is_none(), "the same address, IPv4-mapped");
    assert!(peers.take(ip("203.0.113.8")).is_some(), "another address");
    // An IPv6 host's whole /64 is one peer.
    let v6: Vec<PeerSlot> = (0..max_per_peer).map(|i| peers.take(ip(&format!("2001:db8::{i}"))).unwrap()).collect();
    assert!(peers.take(ip("2001:db8::ffff")).is_none());
    let local: Vec<PeerSlot> = (0..100).map(|_| peers.take(ip("127.0.0.1")).unwrap()).collect();
    assert_eq!(local.len(), 100, "loopback is not limited");
    held.pop();
    let again = peers.take(ip("203.0.113.7"));
    assert!(again.is_some(), "a finished connection gives its place back");
    drop(v6);
    drop(local);
    assert_eq!(peers.peers(), (1, 1), "addresses with nothing in service are forgotten");
}

/// One network (an IPv6 /48, an IPv4 /24) holds at most an eighth of the connections, whatever its addresses:
/// before, 32 /64s of one /48 held every one of them, and every other peer was refused. The bounds are the
/// budget's: a larger one takes more.
#[test]
fn connections_per_network_are_bounded() {
    let larger = crate::Budget { http_max_connections: 1_000, http_max_connections_per_ip: 20, ..Default::default() };
    for bounds in [HttpBounds::default(), HttpBounds::of(&larger)] {
        per_network(bounds);
    }
}

fn per_network(bounds: HttpBounds) {
    let (max_connections, max_per_peer, max_per_group) =
        (bounds.max_connections, bounds.max_per_peer, bounds.max_per_group());
    let peers = Arc::new(PeerSlots(Mutex::default(), bounds));
    let ip = |s: String| s.parse::<IpAddr>().unwrap();
    let from_48: Vec<PeerSlot> =
        (0..max_connections).filter_map(|i| peers.take(ip(format!("2001:db8:7:{:x}::1", i / max_per_peer)))).collect();
    assert_eq!(from_48.len(), max_per_group, "one /48's connections");
    assert!(peers.take(ip("2001:db8:8::1".into())).is_some(), "another /48");
    let from_24: Vec<PeerSlot> =
        (0..max_connections).filter_map(|i| peers.take(ip(format!("198.51.100.{}", i / max_per_peer)))).collect();
    assert_eq!(from_24.len(), max_per_group, "one /24's connections");
    assert!(peers.take(ip("198.51.101.1".into())).is_some(), "another /24");
}

/// A host without IPv6: `[::]` (the default listen address) becomes `0.0.0.0` at the same port; an IPv6 address of
/// its own, or another error, does not.
#[cfg(unix)]
#[test]
fn every_ipv6_address_on_a_host_without_ipv6_is_every_ipv4_address() {
    let no_ipv6 = std::io::Error::from_raw_os_error(nix::errno::Errno::EAFNOSUPPORT as i32);
    let any: SocketAddr = "[::]:4433".parse().unwrap();
    assert_eq!(ipv4_instead(any, &no_ipv6), Some("0.0.0.0:4433".parse().unwrap()));
    assert_eq!(ipv4_instead("[::1]:4433".parse().unwrap(), &no_ipv6), None, "an address asked for by name");
    let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    assert_eq!(ipv4_instead(any, &in_use), None);
}
