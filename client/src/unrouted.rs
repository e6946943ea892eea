//! Tick datagrams that arrive before their subscription's route. The server starts a subscription's ticks as it
//! answers the Subscribe, and a tick can overtake the answer: quinn puts datagram frames ahead of stream frames in a
//! packet, and the datagram reader and the control stream's reader are tasks of their own. Dropped, such ticks were
//! neither delivered nor counted lost (the subscription begins at its first tick): a channel published only when its
//! value changes left `latest()` empty, or at the previous connection's value after a reconnect, until the next
//! change. While a Subscribe is unanswered, the newest datagram of each channel id with no route is held instead,
//! and handed to the route the answer makes before anything after it, its latency counted from its arrival.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use quiver_proto::TickHeader;

/// Channel ids whose tick is held at most, while Subscribes are unanswered: a tick for one more is dropped. The
/// newest tick of each is held (latest wins, as a subscription keeps), so a busy channel cannot push a quiet one's
/// out, as a count of ticks shared by all channels let it after a reconnect's resubscribes.
pub(crate) const UNROUTED_IDS: usize = 256;

/// A connection's held tick datagrams.
#[derive(Debug, Default)]
pub(crate) struct Unrouted {
    /// Subscribes written and not answered (or given up) yet.
    subscribing: usize,
    /// The newest tick of each channel id, and when it arrived.
    held: HashMap<u64, (TickHeader, Bytes, Instant)>,
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
            self.held = HashMap::new();
        }
    }

    /// Holds a datagram for a channel id with no route while a Subscribe is unanswered (its answer may name the id),
    /// in place of an older one of the same id; false when it is dropped (no Subscribe unanswered, an older seq,
    /// or [`UNROUTED_IDS`] other ids held).
    pub(crate) fn hold(&mut self, header: TickHeader, payload: Bytes) -> bool {
        if self.subscribing == 0 || (self.held.len() >= UNROUTED_IDS && !self.held.contains_key(&header.channel_id)) {
            return false;
        }
        match self.held.get(&header.channel_id) {
            Some((newest, ..)) if newest.seq >= header.seq => false,
            _ => {
                self.held.insert(header.channel_id, (header, payload, Instant::now()));
                true
            }
        }
    }

    /// Takes the tick held for `channel_id`, and how long ago it arrived (its latency counts from then).
    pub(crate) fn take(&mut self, channel_id: u64) -> Option<(TickHeader, Bytes, Duration)> {
        let (header, payload, at) = self.held.remove(&channel_id)?;
        Some((header, payload, at.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(channel_id: u64, seq: u64) -> (TickHeader, Bytes) {
        (TickHeader { channel_id, seq, sent_time_us: 1 }, Bytes::from(seq.to_string()))
    }

    fn hold(unrouted: &mut Unrouted, channel_id: u64, seq: u64) -> bool {
        let (header, payload) = tick(channel_id, seq);
        unrouted.hold(header, payload)
    }

    #[test]
    fn the_newest_tick_of_each_channel_is_held_only_while_a_subscribe_is_unanswered() {
        let mut unrouted = Unrouted::default();
        assert!(!hold(&mut unrouted, 1, 1), "no Subscribe unanswered: dropped");
        unrouted.began();
        assert!(hold(&mut unrouted, 1, 5) && hold(&mut unrouted, 2, 9) && hold(&mut unrouted, 1, 6));
        assert!(!hold(&mut unrouted, 1, 4), "older than the one held");
        assert_eq!(unrouted.take(1).map(|(h, ..)| h.seq), Some(6));
        assert!(unrouted.take(1).is_none(), "taken once");
        unrouted.ended();
        assert!(unrouted.take(2).is_none(), "none held once no Subscribe is unanswered");
    }

    /// A busy channel does not push a quiet one's tick out; at most `UNROUTED_IDS` channels are held.
    #[test]
    fn at_most_unrouted_ids_channels_are_held_each_its_newest() {
        let mut unrouted = Unrouted::default();
        unrouted.began();
        assert!(hold(&mut unrouted, 0, 1), "a quiet channel's one tick");
        for seq in 1..1_000 {
            assert!(hold(&mut unrouted, 1, seq), "a busy channel's");
        }
        for id in 2..UNROUTED_IDS as u64 {
            assert!(hold(&mut unrouted, id, 1));
        }
        assert!(!hold(&mut unrouted, 9_999, 1), "one channel more: dropped");
        assert!(hold(&mut unrouted, 1, 1_000), "a held channel's newer one still replaces its own");
        assert_eq!(unrouted.take(0).map(|(h, ..)| h.seq), Some(1));
        assert_eq!(unrouted.take(1).map(|(h, ..)| h.seq), Some(1_000));
    }
}
