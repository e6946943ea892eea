//! Tick datagrams that arrive before their subscription's route. The server starts a subscription's ticks as it
//! answers the Subscribe, and a tick can overtake the answer: quinn puts datagram frames ahead of stream frames in a
//! packet, and the datagram reader and the control stream's reader are tasks of their own. Dropped, such ticks were
//! neither delivered nor counted lost (the subscription begins at its first tick): a channel published only when its
//! value changes left `latest()` empty, or at the previous connection's value after a reconnect, until the next
//! change. While a Subscribe is unanswered, a datagram for a channel id with no route is held instead, and handed
//! to the route the answer makes, before anything after it.

use std::collections::VecDeque;

use bytes::Bytes;
use quiver_proto::TickHeader;

/// Tick datagrams held at most, across channels, while Subscribes are unanswered: the oldest is dropped first.
pub(crate) const UNROUTED_HELD: usize = 64;

/// A connection's held tick datagrams.
#[derive(Debug, Default)]
pub(crate) struct Unrouted {
    /// Subscribes written and not answered (or given up) yet.
    subscribing: usize,
    held: VecDeque<(TickHeader, Bytes)>,
}

impl Unrouted {
    /// A Subscribe is about to be written.
    pub(crate) fn began(&mut self) {
        self.subscribing += 1;
    }

    /// A Subscribe was answered and its route made, or given up: with none left unanswered, nothing is held.
    pub(crate) fn ended(&mut self) {
        self.subscribing = self.subscribing.saturating_sub(1);
        if self.subscribing == 0 {
            self.held.clear();
        }
    }

    /// Holds a datagram for a channel id with no route while a Subscribe is unanswered (its answer may name the id);
    /// false when none is, and the datagram is dropped.
    pub(crate) fn hold(&mut self, header: TickHeader, payload: Bytes) -> bool {
        if self.subscribing == 0 {
            return false;
        }
        if self.held.len() >= UNROUTED_HELD {
            self.held.pop_front();
        }
        self.held.push_back((header, payload));
        true
    }

    /// Takes the datagrams held for `channel_id`, in the order they arrived.
    pub(crate) fn take(&mut self, channel_id: u64) -> Vec<(TickHeader, Bytes)> {
        let mut taken = Vec::new();
        self.held.retain(|(header, payload)| {
            let ours = header.channel_id == channel_id;
            if ours {
                taken.push((*header, payload.clone()));
            }
            !ours
        });
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(channel_id: u64, seq: u64) -> (TickHeader, Bytes) {
        (TickHeader { channel_id, seq, sent_time_us: 1 }, Bytes::from(seq.to_string()))
    }

    #[test]
    fn datagrams_are_held_only_while_a_subscribe_is_unanswered_and_handed_out_by_channel_in_order() {
        let mut unrouted = Unrouted::default();
        let (h, p) = tick(1, 1);
        assert!(!unrouted.hold(h, p), "no Subscribe unanswered: dropped");
        unrouted.began();
        for (channel, seq) in [(1, 5), (2, 9), (1, 6)] {
            let (h, p) = tick(channel, seq);
            assert!(unrouted.hold(h, p));
        }
        let seqs = |taken: Vec<(TickHeader, Bytes)>| taken.iter().map(|(h, _)| h.seq).collect::<Vec<_>>();
        assert_eq!(seqs(unrouted.take(1)), [5, 6]);
        assert_eq!(seqs(unrouted.take(1)), Vec::<u64>::new(), "taken once");
        unrouted.ended();
        assert_eq!(seqs(unrouted.take(2)), Vec::<u64>::new(), "none held once no Subscribe is unanswered");
    }

    #[test]
    fn at_most_unrouted_held_are_kept_the_oldest_dropped_first() {
        let mut unrouted = Unrouted::default();
        unrouted.began();
        for seq in 1..=UNROUTED_HELD as u64 + 10 {
            let (h, p) = tick(3, seq);
            assert!(unrouted.hold(h, p));
        }
        let taken = unrouted.take(3);
        assert_eq!(taken.len(), UNROUTED_HELD);
        assert_eq!(taken.first().map(|(h, _)| h.seq), Some(11));
    }
}
