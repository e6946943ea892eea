//! The datagram lane of a WebSocket connection: datagrams (ticks) waiting for the socket, at most
//! [`super::WsConfig::datagram_buffer`] bytes, a newer tick in place of the waiting one of its channel.

use bytes::Bytes;

use super::shared::State;

/// Puts `datagram` in the lane (`state` locked): in place of a waiting tick of its channel (or, older than that one,
/// nowhere), else at the end; over `buffer` bytes, the oldest waiting datagrams go (never the newest).
pub(super) fn queue_datagram(state: &mut State, datagram: Bytes, buffer: usize) {
    let tick = tick_key(&datagram);
    let waiting = tick.and_then(|(channel, _)| {
        state
            .datagrams
            .iter()
            .enumerate()
            .find_map(|(at, d)| tick_key(d).filter(|(waiting, _)| *waiting == channel).map(|(_, seq)| (at, seq)))
    });
    match waiting {
        // Two senders' ticks can reach the lane out of their order (a fan-out offers outside the conflation's
        // lock): an older tick never replaces a newer one.
        Some((_, seq)) if tick.is_some_and(|(_, new)| new <= seq) => state.lane_superseded.1 += 1,
        Some((at, _)) => {
            state.datagram_bytes = state.datagram_bytes - state.datagrams[at].len() + datagram.len();
            state.datagrams[at] = datagram;
            state.lane_superseded.0 += 1;
        }
        None => {
            state.datagram_bytes += datagram.len();
            state.datagrams.push_back(datagram);
        }
    }
    while state.datagram_bytes > buffer && state.datagrams.len() > 1 {
        let Some(old) = state.datagrams.pop_front() else { break };
        state.datagram_bytes -= old.len();
    }
}

/// The channel id and seq of a tick datagram (its first two varints; channel 0 is the copies', never conflated).
fn tick_key(datagram: &[u8]) -> Option<(u64, u64)> {
    let (channel, len) = quiver_proto::varint::decode(datagram).filter(|(id, _)| *id != 0)?;
    let (seq, _) = quiver_proto::varint::decode(&datagram[len..])?;
    Some((channel, seq))
}
