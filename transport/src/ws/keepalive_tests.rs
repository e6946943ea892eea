//! The writer's keep-alive: a ping once nothing was written for the keep-alive interval, counted from the last
//! write, whatever the check for a peer that only receives did meanwhile.

use std::time::Duration;

use super::tests::{addr, raw_pair};
use super::*;

/// A Rust client over the WebSocket (keep-alive 8 s) and a server (10 s) exchange a request and a reply, then go
/// idle: the client pings 8 s after its write, and the pong reaches it within its 12 s `dead_server_after`. Until
/// 2026-12-08 the idle check, firing first, restarted the keep-alive's clock: the client's ping went at 16 s, the
/// server's at 20 s, and the client, hearing nothing for 12 s, dropped a healthy connection every 13 s.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_pings_a_keep_alive_after_its_last_write() {
    let (server_ws, client_ws) = raw_pair(&WsConfig::default()).await;
    let client_config = WsConfig::with_keep_alive(Some(Duration::from_secs(8)));
    let server_config = WsConfig::with_keep_alive(Some(Duration::from_secs(10)));
    let server = WsSession::start(server_ws, Role::Server, server_config, addr());
    let client = WsSession::start(client_ws, Role::Client, client_config, addr());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut send, mut recv) = client.open_bi().unwrap();
    send.write_all(b"hello").await.unwrap();
    let (mut reply, mut request) = server.accept_bi().await.unwrap();
    assert_eq!(request.read_chunk().await.unwrap().as_deref(), Some(&b"hello"[..]));
    reply.write_all(b"welcome").await.unwrap();
    assert_eq!(recv.read_chunk().await.unwrap().as_deref(), Some(&b"welcome"[..]));
    let (wrote, heard) = (tokio::time::Instant::now(), client.received());
    let mut waited = Duration::ZERO;
    while client.received() == heard {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited = wrote.elapsed();
        assert!(waited < Duration::from_secs(12), "nothing received for {waited:?} after the last exchange");
    }
    assert!(waited >= Duration::from_secs(7), "a keep-alive, not something sooner: {waited:?}");
}
