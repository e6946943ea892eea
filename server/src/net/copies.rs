//! Redundant delivery's IO on the server: a round of room-frame copies each time the connection's probe timer
//! fires (in place of the tail probe), and posts sequenced from their copies ahead of their control-stream
//! requests ([`PostCopies`] decides which).

use std::sync::Mutex;

use bytes::Bytes;
use quiver_proto::{copies::CopyQueue, frame, ErrorCode, Request, RequestBody, ServerMsg};
use quiver_transport::{Probed, Sent};
use web_transport_quinn::{Session, SessionError};

use super::{
    dispatch::{Answer, Connection},
    now_us,
};
use crate::{
    hub::RoomHub,
    post_copies::{Copied, PostCopies},
    session::{ControlSession, RoomRequest, Step},
    stats::{bump, ServerStats},
    throttle::ControlThrottle,
};

/// The probe timer fired: the room-frame copies due in `queue`, or the tail probe (when `probe`: the time of the
/// last write, and only if that may still be unacknowledged)
/// ([`quiver_transport::copy_round`]); copies sent are counted.
pub(super) fn send_round(
    (conn, quic): (&Session, &quinn::Connection),
    queue: &Mutex<CopyQueue>,
    probe: Option<tokio::time::Instant>,
    stats: &ServerStats,
) -> Probed {
    // Never into a full buffer, where quinn would make room by dropping the oldest datagram: a tick a fan-out sent
    // since the round checked the room, counted as sent ([`quiver_transport::if_ready`]).
    let send = |datagram| match quiver_transport::if_ready(conn.send_datagram_wait(datagram)) {
        Some(Ok(())) => Sent::Yes,
        None | Some(Err(SessionError::SendDatagramError(quinn::SendDatagramError::TooLarge))) => Sent::Skipped,
        Some(Err(_)) => Sent::Gone,
    };
    let space = || conn.datagram_send_buffer_space();
    let path_loss = || quiver_transport::path_loss(quic);
    let probe_helps = || quiver_transport::probe_helps(quic, probe);
    let (probed, copies) =
        quiver_transport::copy_round(path_loss, queue, probe_helps, || conn.max_datagram_size(), space, send);
    stats.room_copies_sent.fetch_add(copies as u64, std::sync::atomic::Ordering::Relaxed);
    probed
}

/// A post copy (requests numbered from `first`) arrived: sequences those that are the connection's next requests,
/// each through the same throttle, checks and room hub as its request would go (the request is then answered with
/// the recorded outcome, refusals included, and not charged again). `Some`: close the connection with this code and reason (a flood).
/// Nothing happens where the server grants no copies.
pub(super) async fn on_post_copy<R: RoomHub>(
    connection: &mut Connection<R>,
    session: &mut ControlSession,
    throttle: &mut ControlThrottle,
    copies: &mut PostCopies,
    (first, frames): (u64, Vec<Bytes>),
    room: usize,
) -> Option<(ErrorCode, String)> {
    if !connection.grants_copies() {
        return None;
    }
    // At most `room` of them: the posts in flight stay within the stream's bound (the rest come by stream).
    for index in copies.due(first, frames.len()).take(room) {
        // A copy of something other than a post, or of nothing a request decodes to: dropped, counted as the
        // malformed datagram it is (it was dropped in silence: docs/protocol.md, "Copy datagrams").
        let Some(request) = frame::decode_body::<Request>(&frames[index]).ok().filter(|r| is_post(&r.body)) else {
            bump(&connection.stats().datagrams_malformed);
            return None;
        };
        let RequestBody::Post(post) = &request.body else { return None };
        let post = post.clone();
        // The same order as a request's (`next_step`): the throttle, then the session's checks.
        let outcome = match throttle.check(&request, std::time::Instant::now()) {
            Some(Step::Reply(ServerMsg::Reply { result, .. })) => Copied::Now(result),
            Some(Step::ReplyAndClose(_, code, reason)) => return Some((code, reason)),
            Some(_) => return None,
            None => match session.on_request(request, now_us()) {
                Step::Room { identity, request: RoomRequest::Post(checked), .. } => {
                    // Sequenced now; its commit (an fsync, a Redis call) completes on a task of its own, as a
                    // stream post's does behind the control loop: waiting for it here held the whole loop (and
                    // every later copied post, which could not share its commit).
                    match Box::pin(connection.post(&identity, checked, now_us())).await {
                        Ok(answer) => {
                            bump(&connection.stats().post_copies_used);
                            match answer {
                                Answer::Now(reply) => Copied::Now(Ok(reply)),
                                Answer::Later(reply) => {
                                    let (done, outcome) = tokio::sync::oneshot::channel();
                                    connection.spawn_commit(async move {
                                        let _ = done.send(reply.await);
                                    });
                                    Copied::Later(outcome)
                                }
                            }
                        }
                        Err(failure) => Copied::Now(Err(failure)),
                    }
                }
                // Refused by the session's checks (rights, sizes): the request gets the same answer.
                Step::Reply(ServerMsg::Reply { result, .. }) => Copied::Now(result),
                _ => return None,
            },
        };
        copies.handled_copy(post, outcome);
    }
    None
}

/// A client's post copy, read from `datagram` (`None`: not a posts copy, or malformed). Its frames are cut from a
/// copy of the datagram's own: the datagram is a slice of the buffer quinn read a batch of datagrams into (up to
/// ~64 KiB with GRO), which copies waiting in the connection's queue held whole, for as long as the control loop
/// left them there (a client's refused copies, their requests never sent, keep it from taking copies for good:
/// until 2026-12-07 about 1 MiB a connection for ~80 small datagrams, a review's find).
pub(super) fn post_copy(datagram: &[u8], max_frame: usize) -> Option<(u64, Vec<Bytes>)> {
    match quiver_proto::copies::Copy::decode(&Bytes::copy_from_slice(datagram), max_frame) {
        Ok(quiver_proto::copies::Copy::Posts { first, frames }) => Some((first, frames)),
        Ok(quiver_proto::copies::Copy::Room { .. }) | Err(_) => None,
    }
}

fn is_post(body: &RequestBody) -> bool {
    matches!(body, RequestBody::Post(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A post copy waiting for the control loop holds its own bytes, not the receive buffer it was cut from.
    #[test]
    fn a_post_copy_holds_its_own_bytes_not_the_buffer_it_was_read_from() {
        let body = Bytes::from_static(b"a post's frame");
        let frame = Bytes::from([&[body.len() as u8][..], &body[..]].concat()); // length prefix included
        let mut datagram = bytes::BytesMut::new();
        quiver_proto::copies::encode_posts(7, &[frame], &mut datagram).unwrap();
        let mut batch = vec![0u8; 65_536];
        batch[..datagram.len()].copy_from_slice(&datagram);
        let batch = Bytes::from(batch);
        let (first, frames) = post_copy(&batch.slice(..datagram.len()), 1_024).expect("a posts copy");
        assert_eq!((first, &frames), (7, &vec![body]));
        assert!(batch.is_unique(), "the batch is held by the copy's frames");
        drop(frames);
        assert_eq!(post_copy(&batch.slice(..3), 1_024), None, "truncated");
    }
}
