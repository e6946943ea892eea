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
    // Where the datagram just queued is: never dropped below for the room it needs.
    let mut newest = state.datagrams.len();
    match waiting {
        // Two senders' ticks can reach the lane out of their order (a fan-out offers outside the conflation's
        // lock): an older tick never replaces a newer one.
        Some((_, seq)) if tick.is_some_and(|(_, new)| new <= seq) => {
            state.lane_superseded.1 += 1;
            return;
        }
        Some((at, _)) => {
            state.datagram_bytes = state.datagram_bytes - state.datagrams[at].len() + datagram.len();
            state.datagrams[at] = datagram;
            state.lane_superseded.0 += 1;
            newest = at;
        }
        None => {
            state.datagram_bytes += datagram.len();
            state.datagrams.push_back(datagram);
        }
    }
    // Over the buffer: the oldest others go. (Popping from the front dropped a tick that had just replaced its
    // channel's waiting one in place at the front: the newest, and its channel's only one.)
    while state.datagram_bytes > buffer && state.datagrams.len() > 1 {
        let victim = usize::from(newest == 0);
        let Some(old) = state.datagrams.remove(victim) else { break };
        state.datagram_bytes -= old.len();
        newest = newest.saturating_sub(1 - victim);
    }
}

/// The channel id and seq of a tick datagram (its first two varints; channel 0 is the copies', never conflated).
fn tick_key(datagram: &[u8]) -> Option<(u64, u64)> {
    let (channel, len) = quiver_proto::varint::decode(datagram).filter(|(id, _)| *id != 0)?;
    let (seq, _) = quiver_proto::varint::decode(&datagram[len..])?;
    Some((channel, seq))
}

#[cfg(test)]
mod tests {
    use quiver_proto::TickHeader;

    use super::*;

    fn tick(channel_id: u64, seq: u64, size: usize) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        TickHeader { channel_id, seq, sent_time_us: 1 }.encode(&mut buf).unwrap_or_else(|err| panic!("{err}"));
        buf.resize(size, 0);
        buf.freeze()
    }

    fn seqs(state: &State) -> Vec<(u64, u64)> {
        state.datagrams.iter().filter_map(|d| tick_key(d)).collect()
    }

    /// A tick that replaces its channel's waiting one at the front, larger than it, pushes the lane over its
    /// buffer: the oldest other goes, not the tick just queued (before, the front was popped: that channel lost its
    /// newest and only tick, and the other channel's older one stayed).
    #[test]
    fn a_tick_replacing_its_channels_at_the_front_is_not_the_one_dropped() {
        let mut state = State::default();
        queue_datagram(&mut state, tick(1, 1, 1_000), 4_096);
        queue_datagram(&mut state, tick(2, 1, 3_000), 4_096);
        assert_eq!(seqs(&state), [(1, 1), (2, 1)]);
        queue_datagram(&mut state, tick(1, 2, 1_200), 4_096);
        assert_eq!(seqs(&state), [(1, 2)], "channel 1's newest stays; channel 2's older tick goes");
        assert_eq!(state.datagram_bytes, 1_200);
        // At the back, as before: the oldest at the front goes.
        queue_datagram(&mut state, tick(3, 1, 3_500), 4_096);
        assert_eq!(seqs(&state), [(3, 1)]);
        assert_eq!(state.datagram_bytes, 3_500);
    }
}
