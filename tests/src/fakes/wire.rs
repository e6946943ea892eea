//! What the scripted servers share: reading a request, and the replies they all make.

use quiver_proto::Limits;

/// The next request on a fake's control stream (`inbound` keeps what was read past it); `None` once the stream
/// ends or fails.
pub async fn next_request(
    codec: &quiver_proto::FrameCodec,
    inbound: &mut bytes::BytesMut,
    recv: &mut quinn::RecvStream,
) -> Option<quiver_proto::Request> {
    loop {
        let decoded = codec.decode::<quiver_proto::Request>(inbound);
        if let Some(request) = decoded.unwrap_or_else(|err| violation(format!("a malformed request: {err}"))) {
            return Some(request);
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
            _ => return None,
        }
    }
}

/// A client that broke what a fake expects of it (a request it did not expect, a malformed frame). The fakes run
/// in tasks nobody joins, where a panic only dropped the fake's connection, which the client's tests take for the
/// faults they inject: so the test process ends instead, loudly, and the suite fails.
pub(super) fn violation(what: impl std::fmt::Display) -> ! {
    eprintln!("!!!! a fake server found the client breaking the protocol: {what}");
    std::process::abort()
}

/// The reply to Join `req_id` of an empty room (epoch 1, no message yet) where `ann` is.
pub(super) fn joined_empty(room: &str, req_id: u64) -> quiver_proto::Joined {
    quiver_proto::Joined {
        room: room.into(),
        epoch: 1,
        recovered: true,
        replay_from: 1,
        last_seq: 0,
        members: vec!["ann".into()],
        req_id,
    }
}

/// A Welcome for `identity`, with the default limits.
pub fn welcome(identity: &str) -> quiver_proto::Reply {
    quiver_proto::Reply::Welcome(quiver_proto::Welcome {
        version: quiver_proto::PROTOCOL_VERSION,
        session_id: 1,
        server_time_us: 0,
        identity: identity.into(),
        limits: Limits::default(),
    })
}
