//! Redundant delivery's IO on the client: the post copies due, sent when the connection's probe timer fires.

use std::sync::Mutex;

use bytes::Bytes;
use quiver_proto::copies::CopyQueue;
use quiver_transport::Probed;

use crate::sync::lock;

/// The probe timer fired: the path's loss so far to `queue`, then the post copies due in it, or the tail probe (when
/// `probe`) if there were none; called again when the next copy is due. A copy never pushes a tick out of quinn's
/// datagram buffer: without room it is skipped (the control stream carries the post anyway).
pub(crate) fn send_round(quic: &quinn::Connection, queue: &Mutex<CopyQueue>, probe: bool) -> Probed {
    let now = std::time::Instant::now();
    // (Not `match lock(queue).is_empty()`: the guard would live through the match, which locks again.)
    let empty = lock(queue).is_empty();
    let (datagrams, next) = match empty {
        true => (Vec::new(), None),
        false => {
            // quinn's statistics take its connection lock: only read when copies wait.
            let (path, max) = (quic.stats().path, quic.max_datagram_size().unwrap_or(0));
            let mut queue = lock(queue);
            queue.observe(path.sent_packets, path.lost_packets);
            (queue.take(now, max), queue.next_due(now))
        }
    };
    let mut sent = false;
    for datagram in datagrams {
        if quic.datagram_send_buffer_space() < datagram.len() {
            continue;
        }
        match quic.send_datagram(datagram) {
            Ok(()) => sent = true,
            Err(quinn::SendDatagramError::TooLarge) => {}
            Err(_) => return Probed::Gone,
        }
    }
    if !sent && probe && quic.send_datagram(Bytes::from_static(quiver_proto::PROBE)).is_err() {
        return Probed::Gone;
    }
    next.map_or(Probed::Sent, Probed::Again)
}
