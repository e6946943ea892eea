//! Redundant delivery's IO on the server: a round of room-frame copies each time the connection's probe timer
//! fires (in place of the tail probe), and posts sequenced from their copies ahead of their control-stream
//! requests ([`PostCopies`] decides which).

use std::sync::Mutex;

use bytes::Bytes;
use quiver_proto::{copies::CopyQueue, frame, ErrorCode, Request, RequestBody, ServerMsg};
use quiver_transport::Probed;
use web_transport_quinn::{Session, SessionError};

use super::{dispatch::Connection, lock, now_us};
use crate::{
    hub::RoomHub,
    post_copies::PostCopies,
    session::{ControlSession, RoomRequest, Step},
    stats::{bump, ServerStats},
    throttle::ControlThrottle,
};

/// The probe timer fired: tells `queue` the path's loss so far (`quic`'s counters), sends the copies due in it, or
/// the tail probe (when `probe`) if there were none; asks to be called again when the next copy is due. A copy
/// never pushes a tick out of quinn's datagram buffer: without room it is skipped (the stream carries the frame).
pub(super) fn send_round(
    (conn, quic): (&Session, &quinn::Connection),
    queue: &Mutex<CopyQueue>,
    probe: bool,
    stats: &ServerStats,
) -> Probed {
    let now = std::time::Instant::now();
    // (Not `match lock(queue).is_empty()`: the guard would live through the match, which locks again.)
    let empty = lock(queue).is_empty();
    let (datagrams, next) = match empty {
        true => (Vec::new(), None),
        false => {
            // quinn's statistics take its connection lock: only read when copies wait.
            let path = quic.stats().path;
            let mut queue = lock(queue);
            queue.observe(path.sent_packets, path.lost_packets);
            (queue.take(now, conn.max_datagram_size()), queue.next_due(now))
        }
    };
    let mut sent = false;
    for datagram in datagrams {
        if conn.datagram_send_buffer_space() < datagram.len() {
            continue;
        }
        match conn.send_datagram(datagram) {
            Ok(()) => {
                sent = true;
                bump(&stats.room_copies_sent);
            }
            Err(SessionError::SendDatagramError(quinn::SendDatagramError::TooLarge)) => {}
            Err(_) => return Probed::Gone,
        }
    }
    if !sent && probe && conn.send_datagram(Bytes::from_static(quiver_proto::PROBE)).is_err() {
        return Probed::Gone;
    }
    next.map_or(Probed::Sent, Probed::Again)
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
) -> Option<(ErrorCode, String)> {
    if !connection.grants_copies() {
        return None;
    }
    for index in copies.due(first, frames.len()) {
        let Ok(request) = frame::decode_body::<Request>(&frames[index]) else { return None };
        let RequestBody::Post(post) = &request.body else { return None };
        let post = post.clone();
        // The same order as a request's (`next_step`): the throttle, then the session's checks.
        let outcome = match throttle.check(&request, std::time::Instant::now()) {
            Some(Step::Reply(ServerMsg::Reply { result, .. })) => result,
            Some(Step::ReplyAndClose(_, code, reason)) => return Some((code, reason)),
            Some(_) => return None,
            None => match session.on_request(request, now_us()) {
                Step::Room { identity, request: RoomRequest::Post(checked), .. } => {
                    let outcome = connection.room(&identity, RoomRequest::Post(checked), now_us()).await;
                    if outcome.is_ok() {
                        bump(&connection.stats().post_copies_used);
                    }
                    outcome
                }
                // Refused by the session's checks (rights, sizes): the request gets the same answer.
                Step::Reply(ServerMsg::Reply { result, .. }) => result,
                _ => return None,
            },
        };
        copies.handled_copy(post, outcome);
    }
    None
}
