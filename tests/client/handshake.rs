//! A server that breaks the protocol where the client waits for an answer (its Hello, a resubscribe): the client
//! says so, with `ProtocolViolation`.

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, TrustOptions};
use quiver_proto::{FrameCodec, Limits, Reply, ServerMsg};
use quiver_tests::fakes::{fake_endpoint, next_request};

/// The close code a client gave a fake server that answered its Hello with `answer` (bytes written as they are).
async fn close_code_for(answer: Vec<u8>) -> quinn::VarInt {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(async move {
        let conn = endpoint.accept().await.expect("the client connects").await.expect("its handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("its control stream");
        let codec = FrameCodec::new(Limits::default().max_frame as usize);
        next_request(&codec, &mut bytes::BytesMut::new(), &mut recv).await.expect("its Hello");
        send.write_all(&answer).await.expect("the answer written");
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => close.error_code,
            other => panic!("not closed by the client: {other}"),
        }
    });
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect: false, ..ConnectOptions::default() };
    let refused = tokio::time::timeout(Duration::from_secs(10), Client::connect_with(&addr, options)).await;
    let err = refused.expect("connect returns").map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("undecodable") || err.to_string().contains("expected Welcome"), "{err}");
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("closed").expect("the fake ran")
}

/// Hello answered with something other than Welcome, or with bytes that do not decode: the client closes with
/// `ProtocolViolation`, as for a Welcome in another version (and as the browser client does). Before, the
/// connection was closed with `NoError` (the caller's "trying another server", or a dropped link's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_answered_with_no_welcome_is_closed_as_a_protocol_violation() {
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let pong = ServerMsg::Reply { req_id: 0, result: Ok(Reply::Pong { client_time_us: 0, server_time_us: 0 }) };
    let violation = quinn::VarInt::from_u32(quiver_proto::ErrorCode::ProtocolViolation.to_u32());
    assert_eq!(close_code_for(codec.encode_to_vec(&pong).unwrap().to_vec()).await, violation, "a Pong for a Welcome");
    assert_eq!(close_code_for(vec![4, 0xff, 0xff, 0xff, 0xff]).await, violation, "undecodable");
}

/// Welcomes every connection and answers its Pings; a Subscribe on the first connection is answered `Subscribed`,
/// which closes 500 ms later, and on every later one with `Unsubscribed` (the wrong reply).
async fn resubscribe_answered_wrongly(endpoint: quinn::Endpoint) {
    use quiver_proto::RequestBody;
    let mut connections = 0u32..;
    while let Some(incoming) = endpoint.accept().await {
        let first = connections.next() == Some(0);
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = FrameCodec::new(Limits::default().max_frame as usize);
            let mut inbound = bytes::BytesMut::new();
            while let Some(request) = next_request(&codec, &mut inbound, &mut recv).await {
                let reply = match request.body {
                    RequestBody::Hello(_) => quiver_tests::fakes::welcome("ann"),
                    RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
                    RequestBody::Subscribe { channel } if first => {
                        let closing = conn.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            closing.close(0u32.into(), b"test: the server went");
                        });
                        Reply::Subscribed { channel, channel_id: 1 }
                    }
                    RequestBody::Subscribe { channel } => Reply::Unsubscribed { channel },
                    _ => continue,
                };
                let reply = ServerMsg::Reply { req_id: request.req_id, result: Ok(reply) };
                if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A resubscribe after a reconnect answered with the wrong reply ends the subscription with `ProtocolViolation`, as
/// a rejoin answered so ends its room; before, with `Internal` ("something failed inside the server").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_answered_with_the_wrong_reply_ends_as_a_protocol_violation() {
    let (dir, endpoint, addr) = fake_endpoint();
    let server = tokio::spawn(resubscribe_answered_wrongly(endpoint));
    let trust = TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let options = ConnectOptions { trust, reconnect_delay: Duration::from_millis(50), ..ConnectOptions::default() };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let subscription = client.subscribe("prices").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(reason) = subscription.end_reason() {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the subscription ends");
    assert_eq!(ended.0, quiver_proto::ErrorCode::ProtocolViolation, "{ended:?}");
    client.close().await;
    server.abort();
}

/// A reconnect has `connect_timeout` for its handshake and again for Hello/Welcome, as the first connect has: on
/// a path of a second's round trip whose token comes from a slow auth service, the first connect worked and every
/// reconnect timed out (one `connect_timeout` for all of it, until 2026-12-08), retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_has_the_connect_timeout_for_its_handshake_and_again_for_hello() {
    use quiver_lab::impair::{DirectionProfile, ImpairmentProfile};
    use std::sync::{atomic::AtomicU32, atomic::Ordering, Arc};
    let server = quiver_tests::TestServer::start(Limits::default());
    let slow = DirectionProfile { delay_ms: 500.0, ..DirectionProfile::default() };
    let relay = server.relay(ImpairmentProfile::symmetric(slow), 4);
    // Tokens at once for the first connect; then after 1.5 s (with the Hello's round trip, 2.5 s of the 3).
    let (dev, calls) = (quiver_client::TokenProvider::dev(server.data_dir.path().into(), "far".into()), Arc::default());
    let counted: Arc<AtomicU32> = Arc::clone(&calls);
    let provider = quiver_client::TokenProvider::new_async(move || {
        let (dev, first) = (dev.clone(), counted.fetch_add(1, Ordering::Relaxed) == 0);
        async move {
            if !first {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            dev.token().await
        }
    });
    let options = ConnectOptions {
        trust: server.trust(),
        token_provider: Some(provider),
        connect_timeout: Duration::from_secs(3),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&relay.local_addr().to_string(), options).await.unwrap();
    let first = client.connection().unwrap();
    first.close(0u32.into(), b"lost");
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client.connection().is_some_and(|c| c.stable_id() != first.stable_id()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let tried = || calls.load(Ordering::Relaxed);
    back.await.unwrap_or_else(|_| panic!("not reconnected in 30 s ({} tokens asked for)", tried()));
    client.ping().await.unwrap();
    drop((client, relay));
    server.stop().await;
}
