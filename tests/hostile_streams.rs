//! Hostile peers opening streams the protocol does not have, beside a bystander ([`quiver_tests::hostile`]):
//! hundreds of bidirectional or unidirectional streams at once, and unidirectional streams sent to the server. Each
//! is closed with the right code, and the bystander loses nothing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quiver_proto::{ErrorCode, Limits};
use quiver_tests::{
    closed_with,
    hostile::{beside_a_bystander, bounded, Control},
    TestServer,
};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_at_once() {
    bounded(async {
        let server = TestServer::start(Limits::default());
        beside_a_bystander(&server, async {
            for bidi in [true, false] {
                let control = Control::open(&server).await;
                let mut opening = JoinSet::new();
                for i in 0..300u32 {
                    let conn = control.conn.clone();
                    opening.spawn(async move {
                        // Most wait for stream credit the server never grants; all end when the connection does.
                        let mut send = if bidi { conn.open_bi().await?.0 } else { conn.open_uni().await? };
                        let _ = send.write_all(&i.to_be_bytes()).await;
                        Ok::<_, quinn::ConnectionError>(())
                    });
                }
                let (code, reason) = closed_with(&control.conn).await;
                assert_eq!(code, ErrorCode::ProtocolViolation, "bidi {bidi}: {reason}");
                let all_done = async { while opening.join_next().await.is_some() {} };
                tokio::time::timeout(Duration::from_secs(5), all_done)
                    .await
                    .expect("the openers end with the connection");
            }
        })
        .await;
        assert_eq!(server.stats.snapshot().protocol_violations, 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_streams_sent_to_the_server() {
    bounded(async {
        let server = TestServer::start(Limits { handshake_timeout_ms: 1_000, ..Limits::default() });
        beside_a_bystander(&server, async {
            let control = Control::open(&server).await;
            let mut uni = control.conn.open_uni().await.unwrap();
            uni.write_all(b"not a room stream").await.unwrap();
            uni.finish().unwrap();
            let (code, reason) = closed_with(&control.conn).await;
            assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
            assert!(reason.contains("unidirectional"), "{reason}");
            // Only unidirectional streams, never a control stream: nobody reads them, and Hello never comes.
            let conn = server.try_raw().await.unwrap();
            for _ in 0..3 {
                let mut uni = conn.open_uni().await.unwrap();
                uni.write_all(b"x").await.unwrap();
            }
            assert_eq!(closed_with(&conn).await.0, ErrorCode::HandshakeTimeout);
        })
        .await;
        server.stop().await;
    })
    .await;
}
