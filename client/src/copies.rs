//! Redundant delivery's IO on the client: the post copies due, sent when the connection's probe timer fires.

use std::sync::Mutex;

use quiver_proto::copies::CopyQueue;
use quiver_transport::{Probed, Sent};

/// The probe timer fired: the post copies due in `queue`, or the tail probe (when `probe`: the time of the last
/// write, and only if that may still be unacknowledged)
/// ([`quiver_transport::copy_round`]).
pub(crate) fn send_round(
    quic: &quinn::Connection,
    queue: &Mutex<CopyQueue>,
    probe: Option<tokio::time::Instant>,
) -> Probed {
    // Never into a full buffer, where quinn would make room by dropping the oldest datagram: a tick published since
    // the round checked the room ([`quiver_transport::if_ready`]).
    let send = |datagram| match quiver_transport::if_ready(quic.send_datagram_wait(datagram)) {
        Some(Ok(())) => Sent::Yes,
        None | Some(Err(quinn::SendDatagramError::TooLarge)) => Sent::Skipped,
        Some(Err(_)) => Sent::Gone,
    };
    let max_size = || quic.max_datagram_size().unwrap_or(0);
    let (path_loss, space) = (|| quiver_transport::path_loss(quic), || quic.datagram_send_buffer_space());
    let probe_helps = || quiver_transport::probe_helps(quic, probe);
    quiver_transport::copy_round(path_loss, queue, probe_helps, max_size, space, send).0
}
