//! Resolving and racing a server's addresses, without a server.

use super::*;

/// Two addresses answering as `answers` does (by port): what the race reports.
/// (`None`: that address never answers.)
async fn race_of(answers: fn(u16) -> Option<Result<(), ConnectError>>) -> Result<(), ConnectError> {
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let options = ConnectOptions { trust: crate::TrustOptions::Pin(pin), ..ConnectOptions::default() };
    let targets = Target::resolve_all("127.0.0.1:1,127.0.0.1:2", &options).await.unwrap();
    let attempt = move |target: Target| async move {
        let result = match answers(target.addr.port()) {
            Some(result) => result,
            None => std::future::pending().await,
        };
        (target, result)
    };
    Target::race_with(targets, Duration::from_millis(500), attempt).await.map(|_| ())
}

/// Names are resolved at once, and once one has resolved the others have a quarter of `connect_timeout` more: one
/// whose resolver never answers (here a test name) is skipped, listed first or last, and the others are not held
/// back by it. Before, the names were resolved one after the other and the connect timed out with a healthy node
/// listed. A single slow name is not cut short (here 300 ms of a 400 ms timeout).
#[tokio::test]
async fn a_name_whose_resolver_never_answers_holds_back_no_other() {
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let trust = crate::TrustOptions::Pin(pin);
    let options = ConnectOptions { trust, connect_timeout: Duration::from_millis(400), ..ConnectOptions::default() };
    for servers in ["127.0.0.1:1,node-b.hang.test:1", "node-b.hang.test:1,127.0.0.1:2"] {
        let started = std::time::Instant::now();
        let resolved = tokio::time::timeout(Duration::from_secs(2), Target::resolve_all(servers, &options));
        let targets = resolved.await.expect("held back by the name that never resolves").unwrap();
        assert_eq!(targets.len(), 1, "{servers}");
        assert!(started.elapsed() < Duration::from_millis(250), "{servers}: {:?}", started.elapsed());
    }
    let slow = Target::resolve_all("one.slow.test:7", &options).await.unwrap();
    assert_eq!(slow.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>(), ["127.0.0.1:7"]);
    let (fast, slow) = ("127.0.0.1:1,two.slow.test:2", "two.slow.test:2,127.0.0.1:1");
    assert_eq!(Target::resolve_all(fast, &options).await.unwrap().len(), 1, "past the grace: skipped");
    assert_eq!(Target::resolve_all(slow, &options).await.unwrap().len(), 1, "listed first too");
}

/// A server named without a port is dialled at quiver-server's default, [`DEFAULT_PORT`]; with one, at it.
#[tokio::test]
async fn a_server_without_a_port_is_dialled_at_the_default_port() {
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let options = ConnectOptions { trust: crate::TrustOptions::Pin(pin), ..ConnectOptions::default() };
    let addrs = |server: &'static str| {
        let options = options.clone();
        async move {
            let targets = Target::resolve_all(server, &options).await.unwrap();
            targets.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(addrs("127.0.0.1").await, ["127.0.0.1:4433"]);
    assert_eq!(addrs("127.0.0.1:9,127.0.0.2").await, ["127.0.0.1:9", "127.0.0.2:4433"]);
    assert_eq!(DEFAULT_PORT, 4433, "the README's and quiver-server's");
}

fn mismatch() -> ConnectError {
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    ConnectError::PinMismatch { expected: pin, presented: "cd".repeat(32).parse().unwrap() }
}

/// One node presenting another certificate while the other is down for now (restarting) is not the race's
/// answer: that would end a reconnecting client for good, though the other node comes back. Every node
/// presenting it is.
#[tokio::test]
async fn a_certificate_mismatch_is_the_answer_only_when_no_address_failed_for_now() {
    let one_down = race_of(|port| match port {
        1 => Some(Err(mismatch())),
        _ => Some(Err(ConnectError::Timeout(Duration::from_secs(1)))),
    });
    let err = one_down.await.unwrap_err();
    assert!(matches!(err, ConnectError::Timeout(_)), "{err:?}");
    assert!(!err.is_fatal());
    // The same when the other never answers at all (its handshake still running at the deadline).
    let silent = race_of(|port| match port {
        1 => Some(Err(mismatch())),
        _ => None,
    });
    let err = silent.await.unwrap_err();
    assert!(matches!(err, ConnectError::Timeout(_)), "{err:?}");
    let every = race_of(|_| Some(Err(mismatch()))).await.unwrap_err();
    assert!(matches!(every, ConnectError::PinMismatch { .. }), "{every:?}");
}

/// The client as a game links it (no `websocket` feature; `scripts/test.sh` runs these tests so too): `Auto` is
/// QUIC alone, and asking for the WebSocket says what the build lacks.
#[cfg(not(feature = "websocket"))]
#[tokio::test]
async fn without_the_websocket_feature_auto_is_quic_and_the_websocket_is_refused_by_name() {
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let at = |transport| ConnectOptions { trust: crate::TrustOptions::Pin(pin), transport, ..Default::default() };
    // (Nothing answers on port 1: QUIC's race runs to its deadline.)
    let targets = Target::resolve_all("127.0.0.1:1", &at(Transport::Auto)).await.unwrap();
    let timeout = Duration::from_millis(200);
    let auto = Target::connect(targets.clone(), &at(Transport::Auto), timeout, true).await;
    assert!(matches!(auto, Err(ConnectError::Timeout(_))), "{:?}", auto.err());
    let websocket = Target::connect(targets, &at(Transport::WebSocket), timeout, false).await;
    match websocket {
        Err(ConnectError::WebSocket(why)) => assert!(why.contains("without its `websocket` feature"), "{why}"),
        other => panic!("{:?}", other.err()),
    }
}

/// `Auto` where neither transport connects and neither refuses for good: both errors are reported. Here QUIC's
/// address never answers (a timeout, as where UDP is blocked) and the WebSocket's drops every TCP connection at
/// once (its own, telling error). Until 2026-12-08 QUIC's timeout alone was reported, the WebSocket's hidden.
#[cfg(feature = "websocket")]
#[tokio::test]
async fn auto_with_neither_transport_through_reports_both_errors() {
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_port = dropper.local_addr().unwrap().port();
    let drops = tokio::spawn(async move {
        while let Ok((stream, _)) = dropper.accept().await {
            drop(stream);
        }
    });
    let pin: quiver_certs::Fingerprint = "ab".repeat(32).parse().unwrap();
    let options = ConnectOptions {
        trust: crate::TrustOptions::Pin(pin),
        transport: Transport::Auto,
        websocket_port: Some(ws_port),
        fallback_after: Duration::from_millis(50),
        ..ConnectOptions::default()
    };
    let server = blackhole.local_addr().unwrap().to_string();
    for websocket_first in [false, true] {
        let targets = Target::resolve_all(&server, &options).await.unwrap();
        let err = Target::connect(targets, &options, Duration::from_millis(400), websocket_first).await.unwrap_err();
        let ConnectError::Transports { quic, websocket } = &err else { panic!("{err:?}") };
        assert!(matches!(**quic, ConnectError::Timeout(_)), "{quic:?}");
        assert!(matches!(**websocket, ConnectError::WebSocket(_)), "{websocket:?}");
        assert!(err.to_string().contains("; the fallback: WebSocket: "), "{err}");
        assert!(!err.is_fatal());
    }
    drops.abort();
}
