//! A scripted server that stops reading a client's control stream and keeps the connection open.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use quiver_proto::Limits;

/// Answers Hello and Pings on every connection. On the first, once it has answered the first Ping (the client's
/// connect waits for one), it stops reading the control stream (STOP_SENDING) and keeps the connection open and
/// acknowledging, answering nothing more; on later ones it answers Posts too (seq 1, 2, …). Counts connections.
pub async fn stops_reading_after_welcome(endpoint: quinn::Endpoint, connections: Arc<AtomicUsize>) {
    let (mut held, mut streams) = (Vec::new(), Vec::new());
    let mut seq = 0;
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
        let Ok((mut send, mut recv)) = conn.accept_bi().await else { continue };
        held.push(conn);
        let codec = quiver_proto::FrameCodec::new(Limits::default().max_frame as usize);
        let mut inbound = bytes::BytesMut::new();
        if first {
            for _hello_then_ping in 0..2 {
                if let Some(request) = super::next_request(&codec, &mut inbound, &mut recv).await {
                    let _ = send.write_all(&reply(&codec, request, &mut seq)).await;
                }
            }
            let _ = recv.stop(7u32.into());
            streams.push((send, recv)); // held open (its replies' side unfinished), never read again
            continue;
        }
        tokio::spawn(async move {
            while let Some(request) = super::next_request(&codec, &mut inbound, &mut recv).await {
                let mut unused = 0;
                if send.write_all(&reply(&codec, request, &mut unused)).await.is_err() {
                    return;
                }
            }
        });
        seq += 1;
    }
}

fn reply(codec: &quiver_proto::FrameCodec, request: quiver_proto::Request, seq: &mut u64) -> bytes::BytesMut {
    use quiver_proto::{Reply, RequestBody, ServerMsg};
    let reply = match request.body {
        RequestBody::Hello(_) => super::welcome("ann"),
        RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: client_time_us },
        RequestBody::Post(post) => {
            *seq += 1;
            Reply::Posted { room: post.room, seq: *seq, duplicate: false }
        }
        other => super::violation(format!("unexpected request {other:?}")),
    };
    codec.encode_to_vec(&ServerMsg::Reply { req_id: request.req_id, result: Ok(reply) }).unwrap()
}
