//! Redundant delivery's IO on the server: a round of room-frame copies each time the connection's probe timer
//! fires (in place of the tail probe), and posts sequenced from their copies ahead of their control-stream
//! requests ([`PostCopies`] decides which).

use std::{sync::Mutex, time::Duration};

use bytes::Bytes;
use quiver_proto::{copies::CopyQueue, frame, Request, RequestBody};
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

/// The probe timer fired: tells `queue` the path's loss so far (`quic`'s counters), sends a round of the copies
/// waiting in it, or the tail probe (when `probe`) if there were none; asks to be called again after `spacing` while copies are left. A copy never pushes a tick out
/// of quinn's datagram buffer: without room it is skipped (the stream carries the frame anyway).
pub(super) fn send_round(
    (conn, quic): (&Session, &quinn::Connection),
    queue: &Mutex<CopyQueue>,
    probe: bool,
    spacing: Duration,
    stats: &ServerStats,
) -> Probed {
    let path = quic.stats().path;
    let (datagrams, more) = {
        let mut queue = lock(queue);
        queue.observe(path.sent_packets, path.lost_packets);
        let datagrams = if queue.is_empty() { Vec::new() } else { queue.take(conn.max_datagram_size()) };
        (datagrams, !queue.is_empty())
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
    if more {
        Probed::Again(spacing)
    } else {
        Probed::Sent
    }
}

/// A post copy (posts numbered from `first`) arrived: sequences those that are the connection's next posts, each
/// through the same throttle, checks and room hub as its request would go, and records the outcome for the request.
pub(super) async fn on_post_copy<R: RoomHub>(
    connection: &mut Connection<R>,
    session: &mut ControlSession,
    throttle: &mut ControlThrottle,
    copies: &mut PostCopies,
    (first, frames): (u64, Vec<Bytes>),
) {
    for index in copies.due(first, frames.len()) {
        let Ok(request) = frame::decode_body::<Request>(&frames[index]) else { return };
        let RequestBody::Post(post) = &request.body else { return };
        let post = post.clone();
        // Refused or throttled: the request decides, as if the copy had been lost.
        if throttle.check(&request, std::time::Instant::now()).is_some() {
            return;
        }
        let Step::Room { identity, request: RoomRequest::Post(checked), .. } = session.on_request(request, now_us())
        else {
            return;
        };
        let outcome = connection.room(&identity, RoomRequest::Post(checked), now_us()).await;
        bump(&connection.stats().post_copies_used);
        copies.handled_copy(post, outcome);
    }
}
