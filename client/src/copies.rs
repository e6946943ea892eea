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

/// A server's room copy, read from `datagram` (`None`: not a room copy, or malformed), its frames cut from a copy of
/// the datagram's own: the datagram is a slice of the buffer quinn read a batch of datagrams into (up to ~64 KiB
/// with GRO), which copies kept ahead of a room stream's position (up to `merge::AHEAD` of them) held whole (until
/// 2026-12-07).
pub(crate) fn room_copy(datagram: &[u8], max_frame: usize) -> Option<(u64, u64, Vec<bytes::Bytes>)> {
    match quiver_proto::copies::Copy::decode(&bytes::Bytes::copy_from_slice(datagram), max_frame) {
        Ok(quiver_proto::copies::Copy::Room { slot, first, frames }) => Some((slot, first, frames)),
        Ok(quiver_proto::copies::Copy::Posts { .. }) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    /// A room copy kept ahead of its stream holds its own bytes, not the receive buffer it was cut from.
    #[test]
    fn a_room_copy_holds_its_own_bytes_not_the_buffer_it_was_read_from() {
        let body = Bytes::from_static(b"a room event's frame");
        let frame = Bytes::from([&[body.len() as u8][..], &body[..]].concat()); // length prefix included
        let mut datagram = bytes::BytesMut::new();
        quiver_proto::copies::encode_room(2, 9, &[frame], &mut datagram).unwrap();
        let mut batch = vec![0u8; 65_536];
        batch[..datagram.len()].copy_from_slice(&datagram);
        let batch = Bytes::from(batch);
        let (slot, first, frames) = super::room_copy(&batch.slice(..datagram.len()), 1_024).expect("a room copy");
        assert_eq!((slot, first, &frames), (2, 9, &vec![body]));
        assert!(batch.is_unique(), "the batch is held by the copy's frames");
        drop(frames);
        assert_eq!(super::room_copy(&batch.slice(..3), 1_024), None, "truncated");
    }
}
