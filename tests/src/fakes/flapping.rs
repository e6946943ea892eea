//! A scripted server whose connections each last a moment.

use std::time::Duration;

use quiver_proto::Limits;

/// Welcomes every connection (answering its Hello and Pings) and closes it `after` that (a server that keeps
/// failing shortly after each connect).
pub async fn welcomes_then_closes(endpoint: quinn::Endpoint, after: Duration) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = quiver_proto::FrameCodec::new(Limits::default().max_frame as usize);
            let mut inbound = bytes::BytesMut::new();
            let answer = async {
                while let Some(request) = super::next_request(&codec, &mut inbound, &mut recv).await {
                    use quiver_proto::{Reply, RequestBody, ServerMsg};
                    let reply = match request.body {
                        RequestBody::Hello(_) => super::welcome("ann"),
                        RequestBody::Ping { client_time_us } => {
                            Reply::Pong { client_time_us, server_time_us: client_time_us }
                        }
                        other => super::violation(format!("unexpected request {other:?}")),
                    };
                    let reply = ServerMsg::Reply { req_id: request.req_id, result: Ok(reply) };
                    if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(after, answer).await;
            conn.close(0u32.into(), b"test: the server fails again");
        });
    }
}
