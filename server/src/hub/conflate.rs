//! Latest-wins queueing toward one subscriber: per channel at most one tick waits. A newer tick replaces the
//! waiting one, so a subscriber that cannot keep up gets the newest value next, never a backlog of old ones.

use std::collections::{HashMap, VecDeque};

use super::ticks::Tick;

/// What [`Conflation::offer`] did with a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The channel had nothing waiting; the tick waits now.
    Queued,
    /// The channel's waiting tick was replaced by this newer one.
    Replaced,
    /// The tick is not newer than the one waiting; it was dropped.
    Older,
}

/// The waiting ticks of one subscriber, at most one per channel, handed out in the order channels became ready.
#[derive(Debug, Default)]
pub struct Conflation {
    waiting: HashMap<u64, Tick>,
    ready: VecDeque<u64>,
}

impl Conflation {
    /// Offers `tick` for `channel_id` (the subscriber's id for the channel).
    pub fn offer(&mut self, channel_id: u64, tick: Tick) -> Offered {
        match self.waiting.get_mut(&channel_id) {
            Some(waiting) if waiting.seq >= tick.seq => Offered::Older,
            Some(waiting) => {
                *waiting = tick;
                Offered::Replaced
            }
            None => {
                self.waiting.insert(channel_id, tick);
                self.ready.push_back(channel_id);
                Offered::Queued
            }
        }
    }

    /// Takes every waiting tick, oldest-ready channel first.
    pub fn take(&mut self) -> Vec<(u64, Tick)> {
        let mut out = Vec::with_capacity(self.ready.len());
        while let Some(id) = self.ready.pop_front() {
            if let Some(tick) = self.waiting.remove(&id) {
                out.push((id, tick));
            }
        }
        out
    }

    /// True when a tick of `channel_id` is waiting.
    pub fn is_waiting(&self, channel_id: u64) -> bool {
        self.waiting.contains_key(&channel_id)
    }

    /// Forgets a channel (unsubscribed).
    pub fn remove(&mut self, channel_id: u64) {
        self.waiting.remove(&channel_id);
        self.ready.retain(|id| *id != channel_id);
    }

    /// Number of channels with a tick waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn tick(seq: u64) -> Tick {
        Tick { seq, sent_time_us: seq, received_us: seq, payload: Bytes::from(seq.to_string()) }
    }

    #[test]
    fn many_ticks_to_a_blocked_subscriber_leave_exactly_one() {
        let mut c = Conflation::default();
        assert_eq!(c.offer(7, tick(1)), Offered::Queued);
        for seq in 2..=10_000 {
            assert_eq!(c.offer(7, tick(seq)), Offered::Replaced);
        }
        let taken = c.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 7);
        assert_eq!(taken[0].1.seq, 10_000, "the newest one");
        assert!(c.is_empty());
    }

    #[test]
    fn one_slot_per_channel_in_ready_order_and_older_ticks_are_dropped() {
        let mut c = Conflation::default();
        c.offer(2, tick(5));
        c.offer(1, tick(3));
        c.offer(2, tick(6));
        assert_eq!(c.offer(1, tick(2)), Offered::Older);
        assert_eq!(c.len(), 2);
        let taken: Vec<(u64, u64)> = c.take().into_iter().map(|(id, t)| (id, t.seq)).collect();
        assert_eq!(taken, [(2, 6), (1, 3)]);
        c.offer(3, tick(1));
        c.remove(3);
        assert!(c.take().is_empty());
    }
}
