//! A scripted server that refuses the first request of each kind that lets something go (Leave, Unsubscribe,
//! Unpublish) for its rate.

use std::sync::{Arc, Mutex};

use quiver_proto::{ErrorCode, Failure, FrameCodec, Limits, Reply, RequestBody, RoomFrame, ServerMsg};

/// Welcomes the client, answers its Joins (an empty room, its stream opened), Subscribes, claims and Pings, and
/// refuses the first Leave, Unsubscribe and Unpublish `RateLimited` each (over a rate: nothing done, the membership,
/// subscription or claim kept), answering the later ones; with `then_close`, closes the connection right after the
/// first refusal instead. Notes each request's kind in `seen` ("join", "leave", "subscribe", …).
pub async fn refuses_each_first_release(
    endpoint: quinn::Endpoint,
    seen: Arc<Mutex<Vec<&'static str>>>,
    then_close: bool,
) {
    let Some(incoming) = endpoint.accept().await else { return };
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let (mut inbound, mut streams) = (bytes::BytesMut::new(), Vec::new());
    while let Some(quiver_proto::Request { req_id, body }) = super::next_request(&codec, &mut inbound, &mut recv).await
    {
        let kind = match &body {
            RequestBody::Join(_) => "join",
            RequestBody::Leave { .. } => "leave",
            RequestBody::Subscribe { .. } => "subscribe",
            RequestBody::Unsubscribe { .. } => "unsubscribe",
            RequestBody::Publish { .. } => "publish",
            RequestBody::Unpublish { .. } => "unpublish",
            _ => "other",
        };
        let first = {
            let mut seen = seen.lock().unwrap();
            seen.push(kind);
            seen.iter().filter(|k| **k == kind).count() == 1
        };
        let refused = first && matches!(kind, "leave" | "unsubscribe" | "unpublish");
        let result = match body {
            _ if refused => Err(Failure::new(ErrorCode::RateLimited, "over the rate on this connection; slow down")),
            RequestBody::Hello(_) => Ok(super::welcome("ann")),
            RequestBody::Ping { client_time_us } => Ok(Reply::Pong { client_time_us, server_time_us: 0 }),
            RequestBody::Join(join) => {
                let joined = super::joined_empty(&join.room, req_id);
                let Ok(mut stream) = conn.open_uni().await else { return };
                if stream.write_all(&codec.encode_to_vec(&RoomFrame::Open(joined.clone())).unwrap()).await.is_err() {
                    return;
                }
                streams.push(stream); // open until the connection ends
                Ok(Reply::Joined(joined))
            }
            RequestBody::Leave { room } => Ok(Reply::Left { room }),
            RequestBody::Subscribe { channel } => Ok(Reply::Subscribed { channel, channel_id: 1 }),
            RequestBody::Unsubscribe { channel } => Ok(Reply::Unsubscribed { channel }),
            RequestBody::Publish { channel, .. } => Ok(Reply::Publishing { channel, channel_id: 2 }),
            RequestBody::Unpublish { channel } => Ok(Reply::Unpublished { channel }),
            other => Err(Failure::new(ErrorCode::Unsupported, format!("not in this fake: {other:?}"))),
        };
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
