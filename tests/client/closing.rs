//! A client closed by its application while a reconnect measures its clock: the new connection is closed too.

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, ConnectionState, TrustOptions};
use quiver_proto::{FrameCodec, Limits, Reply, RequestBody, ServerMsg};
use quiver_tests::fakes::{fake_endpoint, next_request, welcome};

/// A server whose first connection ends after 300 ms and whose second holds its first Ping unanswered: it tells
/// `held` when that Ping came, and `closed` once the client closed that connection.
async fn holds_a_reconnects_first_ping(
    endpoint: quinn::Endpoint,
    held: tokio::sync::oneshot::Sender<()>,
    closed: tokio::sync::oneshot::Sender<()>,
) {
    let mut signals = Some((held, closed));
    for number in 0u64.. {
        let Some(incoming) = endpoint.accept().await else { return };
        let Ok(conn) = incoming.await else { continue };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else { continue };
        let codec = FrameCodec::new(Limits::default().max_frame as usize);
        let mut inbound = bytes::BytesMut::new();
        let signals = if number == 1 { signals.take() } else { None };
        tokio::spawn(async move {
            if number == 0 {
                let conn = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    conn.close(0u32.into(), b"crashed");
                });
            }
            while let Some(request) = next_request(&codec, &mut inbound, &mut recv).await {
                let result = match request.body {
                    RequestBody::Hello(_) => welcome("ann"),
                    RequestBody::Ping { .. } if number == 1 => {
                        let Some((held, closed)) = signals else { return };
                        let _ = held.send(());
                        conn.closed().await;
                        let _ = closed.send(());
                        return;
                    }
                    RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
                    _ => return,
                };
                let reply = ServerMsg::Reply { req_id: request.req_id, result: Ok(result) };
                if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `close()` while a reconnect waits for its first clock Ping closes that connection too. Before, `close` found no
/// connection published to close, and the reconnect, seeing the end, returned without closing it: the session
/// stayed open on the server (its keep-alives answered) until the process exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_during_a_reconnects_clock_ping_closes_that_connection() {
    let (dir, endpoint, addr) = fake_endpoint();
    let (held, held_rx) = tokio::sync::oneshot::channel();
    let (closed, closed_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(holds_a_reconnects_first_ping(endpoint, held, closed));
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(100),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), held_rx).await.expect("a reconnect's first Ping").unwrap();
    assert!(matches!(*client.state().borrow(), ConnectionState::Reconnecting { .. }));
    client.close().await;
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx).await;
    assert!(closed.is_ok(), "the reconnect's connection was left open");
    server.abort();
}
