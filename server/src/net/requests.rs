//! The control stream's next request: decoded from the bytes read so far, answered from its copy when a datagram
//! copy sequenced it already, else put through the throttle and the session.

use bytes::BytesMut;
use quiver_proto::{frame, ErrorCode, Failure, FrameCodec, Request, RequestBody, ServerMsg};

use crate::{
    net::{now_us, replies::Replies},
    post_copies::{Copied, PostCopies, StreamPost},
    session::{ControlSession, Step},
    throttle::ControlThrottle,
};

/// Decodes the next whole request in `inbound` and runs it through the throttle, then the session (a post whose
/// copy was sequenced already is answered with that outcome). `Ok(None)`: wait for more bytes. `Err`: the peer
/// broke the protocol; close with this code and reason.
pub(super) fn next_step(
    codec: &FrameCodec,
    inbound: &mut BytesMut,
    session: &mut ControlSession,
    throttle: &mut ControlThrottle,
    post_copies: &mut PostCopies,
    (replies, completed): (&mut Replies, &mut bool),
) -> Result<Option<Step>, (ErrorCode, String)> {
    loop {
        let Some(body) = codec.next_frame(inbound).map_err(|e| (e.code(), e.to_string()))? else { return Ok(None) };
        return match frame::decode_body::<Request>(&body) {
            Ok(request) if session.identity().is_some() => {
                let post = match &request.body {
                    RequestBody::Post(post) => Some(post),
                    _ => None,
                };
                match post_copies.on_stream(post).map_err(|f| (f.code, f.message))? {
                    StreamPost::Answered(Copied::Now(result)) => {
                        Ok(Some(Step::Reply(ServerMsg::Reply { req_id: request.req_id, result })))
                    }
                    // Its reply joins the replies waiting for commits, in order; the next request is read meanwhile.
                    StreamPost::Answered(Copied::Later(outcome)) => {
                        let req_id = request.req_id;
                        replies.later(async move {
                            let gone = || Err(Failure::new(ErrorCode::Internal, "the post's commit was given up"));
                            ServerMsg::Reply { req_id, result: outcome.await.unwrap_or_else(|_| gone()) }
                        });
                        *completed = true;
                        continue;
                    }
                    StreamPost::New => Ok(Some(match throttle.check(&request, std::time::Instant::now()) {
                        Some(refusal) => refusal,
                        None => session.on_request(request, now_us()),
                    })),
                }
            }
            Ok(request) => Ok(Some(match throttle.check(&request, std::time::Instant::now()) {
                Some(refusal) => refusal,
                None => session.on_request(request, now_us()),
            })),
            Err(err) => match frame::peek_hello(&body) {
                // A Hello of another protocol version need not decode as ours: refuse it for its version.
                Some(hello) if session.identity().is_none() && !quiver_proto::admits_version(hello.version) => {
                    Ok(Some(ControlSession::refuse_version(hello.req_id, hello.version)))
                }
                _ => Err((err.code(), err.to_string())),
            },
        };
    }
}
