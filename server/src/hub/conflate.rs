//! Latest-wins queueing toward one subscriber: per channel at most one tick waits, and nothing older than what was
//! already handed out is ever handed out again. A newer tick replaces the waiting one, so a subscriber that cannot
//! keep up gets the newest value next, never a backlog of old ones; a waiting tick older than its channel's max age
//! when its turn comes is dropped instead of sent late.

use std::collections::{HashMap, VecDeque};

use super::ticks::Tick;

/// What [`Conflation::offer`] decided about a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Nothing waits, nothing is being sent, and there is room: send this tick now.
    Send(Tick),
    /// The channel had nothing waiting; the tick waits now.
    Queued,
    /// The channel's waiting tick was replaced by this newer one.
    Replaced,
    /// The tick is not newer than one already waiting or handed out; it was dropped.
    Older,
    /// The channel is not subscribed (any more): a fan-out snapshot taken before the Unsubscribe. Dropped, and
    /// nothing is remembered for it.
    Unsubscribed,
}

/// What [`Conflation::take`] handed out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// (channel id, tick): the oldest-ready channel's, in flight until [`Conflation::sent`].
    pub next: Option<(u64, Tick)>,
    /// The max age `next` was offered with: if waiting for room takes it past that, it is dropped then.
    pub max_age_us: Option<u64>,
    /// Ticks dropped on the way for being older than their channel's max age.
    pub expired: u64,
}

#[derive(Debug)]
struct Waiting {
    tick: Tick,
    max_age_us: Option<u64>,
}

/// The waiting ticks of one subscriber, at most one per channel, handed out in the order channels became ready.
#[derive(Debug, Default)]
pub struct Conflation {
    waiting: HashMap<u64, Waiting>,
    ready: VecDeque<u64>,
    /// Per subscribed channel (and only those), the newest seq sent or waiting; before the first, the channel's seq
    /// when the subscription was made ([`Conflation::open`]). Offers for any
    /// other id are dropped, so a fan-out that raced an Unsubscribe cannot leave an entry behind (ids are never
    /// reused, so nothing would ever remove it).
    newest: HashMap<u64, u64>,
    /// The channel whose tick the sender has taken and is sending (it may wait for room a long time): a newer tick
    /// of it waits in its slot meanwhile instead of being sent at once, which would put it on the wire (or, on a
    /// WebSocket, in the lane the older one then replaces it in) before the older one.
    in_flight: Option<u64>,
}

impl Conflation {
    /// Offers `tick` for `channel_id` (the subscriber's id for the channel). `room`: the transport can take a
    /// datagram now, so a tick with nothing waiting before it (of any channel) is sent at once. Behind others it
    /// takes its turn: jumping ahead whenever a little room opened, small ticks of other channels took it before a
    /// large waiting one ever fitted, which then went late (stale) or, without a max age, never.
    pub fn offer(&mut self, channel_id: u64, tick: Tick, max_age_us: Option<u64>, room: bool) -> Offered {
        match self.newest.get_mut(&channel_id) {
            None => return Offered::Unsubscribed,
            Some(newest) if *newest >= tick.seq => return Offered::Older,
            Some(newest) => *newest = tick.seq,
        }
        match self.waiting.get_mut(&channel_id) {
            Some(waiting) => {
                *waiting = Waiting { tick, max_age_us };
                Offered::Replaced
            }
            None if room && self.in_flight.is_none() && self.ready.is_empty() => Offered::Send(tick),
            None => {
                self.waiting.insert(channel_id, Waiting { tick, max_age_us });
                self.ready.push_back(channel_id);
                Offered::Queued
            }
        }
    }

    /// A tick [`Conflation::offer`] said to send found no room after all (another sender took it first): it waits
    /// in its channel's slot instead, as if offered without room.
    pub fn wait(&mut self, channel_id: u64, tick: Tick, max_age_us: Option<u64>) {
        if self.waiting.insert(channel_id, Waiting { tick, max_age_us }).is_none() {
            self.ready.push_back(channel_id);
        }
    }

    /// Takes the next waiting tick at `now_us` (the tick clock), oldest-ready channel first, and marks its channel
    /// in flight until [`Conflation::sent`]; ticks older than their channel's max age (since the server received
    /// them) are dropped on the way and counted. One at a time, so that each is checked for age just before it is
    /// sent, and the others stay where newer ticks replace them.
    pub fn take(&mut self, now_us: u64) -> Taken {
        let mut taken = Taken::default();
        while let Some(id) = self.ready.pop_front() {
            let Some(Waiting { tick, max_age_us }) = self.waiting.remove(&id) else { continue };
            if max_age_us.is_some_and(|max| now_us.saturating_sub(tick.received_us) > max) {
                taken.expired += 1;
            } else {
                self.in_flight = Some(id);
                taken.next = Some((id, tick));
                taken.max_age_us = max_age_us;
                break;
            }
        }
        taken
    }

    /// The tick last taken was sent (or given up): its channel's newer ticks may go at once again.
    pub fn sent(&mut self) {
        self.in_flight = None;
    }

    /// Takes ticks for `channel_id` from now on (subscribed), those after `last_seq`: the channel's seq when the
    /// subscription was made, so that a fan-out stamped before it (one that raced an Unsubscribe of the same id, as
    /// a protocol-4 session's Subscribe after an Unsubscribe reuses its claim's id) cannot come after newer ticks.
    pub fn open(&mut self, channel_id: u64, last_seq: u64) {
        self.newest.insert(channel_id, last_seq);
    }

    /// Forgets a channel (unsubscribed): its waiting tick, and what was handed out; later offers are dropped.
    pub fn remove(&mut self, channel_id: u64) {
        self.waiting.remove(&channel_id);
        self.newest.remove(&channel_id);
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

    /// Everything waiting at `now`, as the sender takes it (one at a time, each sent before the next).
    fn take_all(c: &mut Conflation, now: u64) -> (Vec<(u64, Tick)>, u64) {
        let (mut ready, mut expired) = (Vec::new(), 0);
        loop {
            let taken = c.take(now);
            expired += taken.expired;
            let Some(next) = taken.next else { return (ready, expired) };
            ready.push(next);
            c.sent();
        }
    }

    /// A conflation with channels 1 to 9 subscribed.
    fn conflation() -> Conflation {
        let mut c = Conflation::default();
        (1..10).for_each(|id| c.open(id, 0));
        c
    }

    #[test]
    fn many_ticks_to_a_blocked_subscriber_leave_exactly_one() {
        let mut c = conflation();
        assert_eq!(c.offer(7, tick(1), None, false), Offered::Queued);
        for seq in 2..=10_000 {
            assert_eq!(c.offer(7, tick(seq), None, seq % 2 == 0), Offered::Replaced, "room or not, it waits");
        }
        let (taken, _) = take_all(&mut c, 0);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 7);
        assert_eq!(taken[0].1.seq, 10_000, "the newest one");
        assert!(c.is_empty());
    }

    /// A tick told to send that found no room after all waits its turn like one offered without room, and a newer
    /// one of its channel then replaces it.
    #[test]
    fn a_tick_that_found_no_room_waits_in_its_slot() {
        let mut c = conflation();
        let Offered::Send(first) = c.offer(4, tick(1), Some(9), true) else { panic!("sent at once") };
        c.wait(4, first, Some(9));
        assert_eq!(c.len(), 1);
        assert_eq!(c.offer(4, tick(2), None, true), Offered::Replaced, "not sent ahead of the waiting one");
        let taken = c.take(0);
        assert_eq!(taken.next.map(|(id, t)| (id, t.seq)), Some((4, 2)));
        assert!(c.is_empty());
    }

    #[test]
    fn one_slot_per_channel_in_ready_order_and_older_ticks_are_dropped() {
        let mut c = conflation();
        c.offer(2, tick(5), None, false);
        c.offer(1, tick(3), None, false);
        c.offer(2, tick(6), None, false);
        assert_eq!(c.offer(1, tick(2), None, false), Offered::Older);
        assert_eq!(c.len(), 2);
        let taken: Vec<(u64, u64)> = take_all(&mut c, 0).0.into_iter().map(|(id, t)| (id, t.seq)).collect();
        assert_eq!(taken, [(2, 6), (1, 3)]);
        assert_eq!(c.offer(1, tick(3), None, true), Offered::Older, "not again once handed out");
        c.offer(3, tick(1), None, false);
        c.remove(3);
        assert!(take_all(&mut c, 0).0.is_empty());
        assert_eq!(c.offer(3, tick(2), None, true), Offered::Unsubscribed, "a late fan-out leaves nothing behind");
        assert!(!c.newest.contains_key(&3));
        c.open(3, 0);
        assert_eq!(c.offer(3, tick(1), None, true), Offered::Send(tick(1)), "a channel made again starts over");
        c.remove(3);
        // Subscribed again to a channel at seq 7 (the same id: a protocol-4 session's claim's): a fan-out stamped
        // before (seq 6, racing the Unsubscribe) is not handed out after the ticks that follow.
        c.open(3, 7);
        assert_eq!(c.offer(3, tick(8), None, true), Offered::Send(tick(8)));
        assert_eq!(c.offer(3, tick(6), None, true), Offered::Older, "stamped before the subscription");
        assert_eq!(c.offer(3, tick(7), None, true), Offered::Older, "the channel's seq at the subscription");
        assert_eq!(c.offer(42, tick(1), None, true), Offered::Unsubscribed, "never subscribed");
    }

    #[test]
    fn with_room_and_nothing_waiting_a_tick_goes_now_never_past_an_older_waiting_one() {
        let mut c = conflation();
        assert_eq!(c.offer(1, tick(1), None, true), Offered::Send(tick(1)));
        assert_eq!(c.offer(1, tick(1), None, true), Offered::Older, "a reordered duplicate is not sent");
        assert_eq!(c.offer(1, tick(2), None, false), Offered::Queued);
        assert_eq!(c.offer(1, tick(3), None, true), Offered::Replaced, "it waits behind nothing older");
        assert_eq!(take_all(&mut c, 0).0, [(1, tick(3))]);
    }

    /// While the sender sends a channel's tick (waiting for room, maybe long), a newer tick of that channel waits
    /// behind it even when there is room: sent at once, it would reach the subscriber first, and the older one
    /// after it (dropped there as stale, or, on a WebSocket, put over it in the lane).
    #[test]
    fn a_newer_tick_waits_while_its_channels_older_tick_is_being_sent() {
        let mut c = conflation();
        assert_eq!(c.offer(1, tick(1), None, false), Offered::Queued);
        assert_eq!(c.take(0).next, Some((1, tick(1))));
        assert_eq!(c.offer(1, tick(2), None, true), Offered::Queued, "room, but its channel is in flight");
        c.sent();
        assert_eq!(take_all(&mut c, 0).0, [(1, tick(2))]);
        assert_eq!(c.offer(1, tick(3), None, true), Offered::Send(tick(3)), "nothing in flight any more");
    }

    /// Other channels' ticks take their turn behind a tick that waits or is being sent, room or not: sent at once
    /// whenever a little room opened, small ticks took it before a large one waiting for room ever fitted (it went
    /// late, or with no max age never: its channel's newer ticks wait behind it).
    #[test]
    fn ticks_of_other_channels_do_not_overtake_one_waiting_for_room() {
        let mut c = conflation();
        assert_eq!(c.offer(1, tick(1), None, false), Offered::Queued, "a large tick, no room for it");
        assert_eq!(c.offer(2, tick(5), None, true), Offered::Queued, "room for a small one, but one waits");
        assert_eq!(c.take(0).next, Some((1, tick(1))), "the large one first");
        assert_eq!(c.offer(3, tick(7), None, true), Offered::Queued, "one is being sent");
        c.sent();
        assert_eq!(take_all(&mut c, 0).0, [(2, tick(5)), (3, tick(7))]);
        assert_eq!(c.offer(2, tick(6), None, true), Offered::Send(tick(6)), "nothing waits any more");
    }

    #[test]
    fn ticks_past_their_max_age_are_dropped_when_their_turn_comes() {
        let mut c = conflation();
        c.offer(1, tick(10), Some(100), false); // received at 10
        c.offer(2, tick(50), Some(100), false); // received at 50
        c.offer(3, tick(20), None, false);
        let (taken, expired) = take_all(&mut c, 140);
        assert_eq!(expired, 1);
        assert_eq!(taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 3]);
    }
}
