//! A scripted server that refuses a room's first Leave for its rate.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use quiver_proto::{ErrorCode, Failure, FrameCodec, Limits, Reply, RequestBody, RoomFrame, ServerMsg};

/// Welcomes the client, answers its Joins (an empty room, its stream opened) and Pings, and refuses its first
/// Leave `RateLimited` (over a rate: nothing done, the membership kept), answering the later ones `Left`; with
/// `then_close`, closes the connection right after that refusal instead. Counts the Leaves in `leaves` and the Joins
/// in `joins`.
pub async fn refuses_the_first_leave(
    endpoint: quinn::Endpoint,
    leaves: Arc<AtomicUsize>,
    joins: Arc<AtomicUsize>,
    then_close: bool,
) {
    let Some(incoming) = endpoint.accept().await else { return };
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let (mut inbound, mut streams) = (bytes::BytesMut::new(), Vec::new());
    while let Some(quiver_proto::Request { req_id, body }) = super::next_request(&codec, &mut inbound, &mut recv).await
    {
        let result = match body {
            RequestBody::Hello(_) => Ok(super::welcome("ann")),
            RequestBody::Ping { client_time_us } => Ok(Reply::Pong { client_time_us, server_time_us: 0 }),
            RequestBody::Join(join) => {
                joins.fetch_add(1, Ordering::SeqCst);
                let joined = super::joined_empty(&join.room, req_id);
                let Ok(mut stream) = conn.open_uni().await else { return };
                if stream.write_all(&codec.encode_to_vec(&RoomFrame::Open(joined.clone())).unwrap()).await.is_err() {
                    return;
                }
                streams.push(stream); // open until the connection ends
                Ok(Reply::Joined(joined))
            }
            RequestBody::Leave { room } => match leaves.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    Err(Failure::new(ErrorCode::RateLimited, "over 2 joins and leaves/s on this connection; slow down"))
                }
                _ => Ok(Reply::Left { room }),
            },
            other => Err(Failure::new(ErrorCode::Unsupported, format!("not in this fake: {other:?}"))),
        };
        let refused = result.is_err();
        let reply = ServerMsg::Reply { req_id, result };
        if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
            return;
        }
        if refused && then_close {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await; // (the refusal read first)
            return conn.close(0u32.into(), b"test: the server went");
        }
    }
}
