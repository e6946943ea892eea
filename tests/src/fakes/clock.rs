//! A scripted server for the client's clock measurement.

use std::time::Duration;

use quiver_proto::Limits;

/// A server whose clock Pongs come slowly but the last: the first after 100 ms, with its clock 10 s ahead of the
/// client's; the next three after 150 ms each; the fifth and later after 5 ms, with its clock 20 s ahead (the
/// midpoint of each round trip is what the server's clock says). Counts the Pongs it sends; the second Ping is
/// not answered before `release` is notified.
pub async fn slow_clock_pongs(
    endpoint: quinn::Endpoint,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<tokio::sync::Notify>,
) {
    use quiver_proto::{FrameCodec, Reply, RequestBody, ServerMsg};
    let Some(incoming) = endpoint.accept().await else { return };
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let mut inbound = bytes::BytesMut::new();
    let mut pings = 0u64;
    while let Some(quiver_proto::Request { req_id, body }) = super::next_request(&codec, &mut inbound, &mut recv).await
    {
        let reply = match body {
            RequestBody::Hello(_) => super::welcome("ann"),
            RequestBody::Ping { client_time_us } => {
                pings += 1;
                if pings == 2 {
                    release.notified().await;
                }
                let (delay_ms, ahead_s) = match pings {
                    1 => (100, 10),
                    2..=4 => (150, 10),
                    _ => (5, 20),
                };
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let server_time_us = client_time_us + ahead_s * 1_000_000 + delay_ms * 500;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Reply::Pong { client_time_us, server_time_us }
            }
            other => super::violation(format!("unexpected request {other:?}")),
        };
        let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
        if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
            return;
        }
    }
}
