//! Scripted servers that break the protocol: a reply that does not decode, room streams each left inside one large
//! frame.

use quiver_proto::{varint, FrameCodec, Limits, Reply, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION};

/// Frames of up to 4 MiB announced in the Welcome (the client's bound on unfinished frame bytes stays 64 MiB).
const LARGE_FRAME: u32 = 4 << 20;

/// Answers Hello with a Welcome allowing frames of [`LARGE_FRAME`] bytes and Pings, then opens `streams` room
/// streams and writes into each the start of one frame announcing [`LARGE_FRAME`] − 16 bytes: its length prefix
/// and `per_stream` bytes of it, never the rest.
pub async fn unfinished_frames(endpoint: quinn::Endpoint, streams: usize, per_stream: usize) {
    let Some(incoming) = endpoint.accept().await else { return };
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let limits = Limits { max_frame: LARGE_FRAME, ..Limits::default() };
    let codec = FrameCodec::new(LARGE_FRAME as usize);
    let mut inbound = bytes::BytesMut::new();
    while let Some(request) = super::next_request(&codec, &mut inbound, &mut recv).await {
        let reply = match request.body {
            RequestBody::Hello(_) => Reply::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                session_id: 1,
                server_time_us: 0,
                identity: "ann".into(),
                limits: limits.clone(),
            }),
            RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
            other => super::violation(format!("unexpected request {other:?}")),
        };
        let hello = matches!(reply, Reply::Welcome(_));
        let msg = ServerMsg::Reply { req_id: request.req_id, result: Ok(reply) };
        if send.write_all(&codec.encode_to_vec(&msg).unwrap()).await.is_err() {
            return;
        }
        if !hello {
            continue;
        }
        for _ in 0..streams {
            let Ok(mut stream) = conn.open_uni().await else { return };
            let mut start = bytes::BytesMut::new();
            varint::encode(u64::from(LARGE_FRAME) - 16, &mut start).unwrap();
            start.extend_from_slice(&vec![0u8; per_stream]);
            let conn = conn.clone();
            tokio::spawn(async move {
                let _ = stream.write_all(&start).await;
                conn.closed().await; // held open, never finished
                drop(stream);
            });
        }
    }
}

/// A server that answers Hello with a Welcome, then answers the next request with a frame that does not decode
/// (an unknown message variant).
pub async fn garbage_after_welcome(endpoint: quinn::Endpoint) {
    use quiver_proto::{FrameCodec, Request, RequestBody, ServerMsg};
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let mut inbound = bytes::BytesMut::new();
    loop {
        let Some(Request { req_id, body }) = super::next_request(&codec, &mut inbound, &mut recv).await else { return };
        if let RequestBody::Hello(_) = body {
            let reply = ServerMsg::Reply { req_id, result: Ok(super::welcome("ann")) };
            send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
        } else {
            send.write_all(&[0x01, 0x7f]).await.unwrap(); // a one-byte body: message variant 127
            conn.closed().await;
            return;
        }
    }
}
