//! A scripted server whose subscription's first tick overtakes the Subscribe's answer.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use quiver_proto::{ErrorCode, Failure, FrameCodec, Limits, Reply, RequestBody, ServerMsg, TickHeader};

/// Welcomes the client and answers Pings; answers a Subscribe with channel id 1, but sends the channel's tick seq
/// 7 (payload "first") as a datagram 50 ms before the answer, as a live channel's fan-out may (quinn puts datagram
/// frames ahead of stream frames), and no tick after it.
pub async fn tick_before_subscribed(endpoint: quinn::Endpoint) {
    let Some(incoming) = endpoint.accept().await else { return };
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let mut inbound = BytesMut::new();
    while let Some(quiver_proto::Request { req_id, body }) = super::next_request(&codec, &mut inbound, &mut recv).await
    {
        let result = match body {
            RequestBody::Hello(_) => Ok(super::welcome("ann")),
            RequestBody::Ping { client_time_us } => Ok(Reply::Pong { client_time_us, server_time_us: 0 }),
            RequestBody::Subscribe { channel } => {
                let mut datagram = BytesMut::new();
                TickHeader { channel_id: 1, seq: 7, sent_time_us: 1 }.encode(&mut datagram).unwrap();
                datagram.put_slice(b"first");
                if conn.send_datagram(datagram.freeze()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Reply::Subscribed { channel, channel_id: 1 })
            }
            other => Err(Failure::new(ErrorCode::Unsupported, format!("not in this fake: {other:?}"))),
        };
        if send.write_all(&codec.encode_to_vec(&ServerMsg::Reply { req_id, result }).unwrap()).await.is_err() {
            return;
        }
    }
}
