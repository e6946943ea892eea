//! Remembers which `(identity, client_msg_id)` got which seq, for a bounded time and count, so that a post retried
//! after a reconnect is acknowledged with its original seq instead of being delivered twice.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

/// Memory one remembered post costs: its queue slot (40 bytes) and its slot in its identity's map (16), with the
/// room both leave for growth (an estimate, kept on the high side).
const ENTRY_COST: u64 = 112;

/// Memory an identity with remembered posts costs besides them: its shared copy, its slot in the outer map and its
/// own map's smallest table, with allocation headers (an estimate, kept on the high side).
fn identity_cost(identity: &str) -> u64 {
    identity.len() as u64 + 256
}

/// The dedupe memory of one room.
#[derive(Debug)]
pub struct DedupeWindow {
    /// identity → client_msg_id → seq. Keyed by identity first, so that a lookup by `&str` allocates nothing and a
    /// poster's entries share one copy of its identity.
    seqs: HashMap<Arc<str>, HashMap<u64, u64>>,
    /// `(identity, client_msg_id, seq, time)`, oldest first (in seq order: posts are recorded as sequenced).
    order: VecDeque<(Arc<str>, u64, u64, u64)>,
    window_us: u64,
    max_entries: usize,
    bytes: u64,
}

impl DedupeWindow {
    /// Remembers each post for `window_us`, and at most `max_entries` posts.
    pub fn new(window_us: u64, max_entries: usize) -> Self {
        DedupeWindow { seqs: HashMap::new(), order: VecDeque::new(), window_us, max_entries, bytes: 0 }
    }

    /// Bytes of memory the remembered posts cost.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn seq_of(&self, identity: &str, client_msg_id: u64) -> Option<u64> {
        self.seqs.get(identity)?.get(&client_msg_id).copied()
    }

    /// The seq an earlier post with this key got, if it is still remembered at `now_us` (`delivered`: as
    /// [`DedupeWindow::expire`]).
    pub fn lookup(&mut self, identity: &str, client_msg_id: u64, now_us: u64, delivered: u64) -> Option<u64> {
        self.expire(now_us, delivered);
        self.seq_of(identity, client_msg_id)
    }

    /// Remembers that this post got `seq` at `now_us`. The count bound forgets the oldest posts, but none after seq
    /// `delivered` (sequenced, not stored yet, as [`DedupeWindow::expire`]): during a disk stall a busy room took
    /// more than `max_entries` posts, forgot the first while they waited, and a retry of one of them (its poster
    /// reconnected) was sequenced anew and stored twice. The window then holds more than `max_entries` until the
    /// store catches up, bounded by the store's backlog (`budget.store_backlog_bytes`).
    pub fn record(&mut self, identity: &str, client_msg_id: u64, seq: u64, now_us: u64, delivered: u64) {
        let shared = match self.seqs.get_key_value(identity) {
            Some((shared, _)) => Arc::clone(shared),
            None => {
                self.bytes += identity_cost(identity);
                Arc::from(identity)
            }
        };
        let ids = self.seqs.entry(Arc::clone(&shared)).or_default();
        if ids.insert(client_msg_id, seq) == Some(seq) {
            return; // already remembered (and queued once)
        }
        self.bytes += ENTRY_COST;
        self.order.push_back((shared, client_msg_id, seq, now_us));
        self.bound(delivered);
    }

    /// Forgets the oldest posts beyond `max_entries`, but none after seq `delivered`.
    fn bound(&mut self, delivered: u64) {
        while self.order.len() > self.max_entries && self.order.front().is_some_and(|(_, _, seq, _)| *seq <= delivered)
        {
            self.forget_oldest();
        }
    }

    /// Forgets `(identity, client_msg_id) → seq` if it is this entry's (after an `unrecord` a newer entry may hold
    /// the key).
    fn forget(&mut self, identity: &str, client_msg_id: u64, seq: u64) {
        let Some(ids) = self.seqs.get_mut(identity) else { return };
        if ids.get(&client_msg_id) == Some(&seq) {
            ids.remove(&client_msg_id);
            if ids.is_empty() {
                self.seqs.remove(identity);
                self.bytes -= identity_cost(identity);
            }
        }
    }

    /// Forgets the posts that got `seq` or later (they were never stored: their seqs are given again). They are the
    /// newest, so the queue stays in seq order.
    pub fn forget_from(&mut self, seq: u64) {
        while self.order.back().is_some_and(|(_, _, newest, _)| *newest >= seq) {
            let Some((identity, client_msg_id, newest, _)) = self.order.pop_back() else { break };
            self.bytes -= ENTRY_COST;
            self.forget(&identity, client_msg_id, newest);
        }
    }

    /// The posts remembered with a seq in `from..before`, oldest first: `(identity, client_msg_id, seq, time_us)`.
    /// The queue is in seq order (posts are recorded as they are sequenced), so this reads only that range.
    pub fn remembered(&self, from: u64, before: u64) -> impl Iterator<Item = (&Arc<str>, u64, u64, u64)> {
        let start = self.order.partition_point(|(_, _, seq, _)| *seq < from);
        self.order
            .range(start..)
            .take_while(move |(_, _, seq, _)| *seq < before)
            .filter(|(identity, client_msg_id, seq, _)| self.seq_of(identity, *client_msg_id) == Some(*seq))
            .map(|(identity, client_msg_id, seq, at)| (identity, *client_msg_id, *seq, *at))
    }

    /// Seq of the oldest post remembered.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.order.front().map(|(_, _, seq, _)| *seq)
    }

    /// Forgets the posts older than the window at `now_us`, but for those after seq `delivered` (sequenced and
    /// not stored yet: a commit held up for longer than the window would otherwise let a retry of its post in as a
    /// new one, and both be stored). The window counts from the post's sequencing.
    pub fn expire(&mut self, now_us: u64, delivered: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, _, seq, at)| *seq <= delivered && now_us.saturating_sub(*at) > self.window_us)
        {
            self.forget_oldest();
        }
        self.bound(delivered); // what the count bound kept while it waited for its commit
        if self.order.is_empty() && self.order.capacity() > 0 {
            self.order = VecDeque::new();
            self.seqs = HashMap::new();
        }
    }

    /// Forgets the oldest remembered post; false when there was none.
    pub fn forget_oldest(&mut self) -> bool {
        let Some((identity, client_msg_id, seq, _)) = self.order.pop_front() else { return false };
        self.bytes -= ENTRY_COST;
        self.forget(&identity, client_msg_id, seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_only() {
        let mut d = DedupeWindow::new(1_000, 100);
        d.record("alice", 7, 42, 0, u64::MAX);
        assert_eq!(d.lookup("alice", 7, 1_000, u64::MAX), Some(42));
        assert_eq!(d.lookup("bob", 7, 1_000, u64::MAX), None, "keys are per identity");
        assert_eq!(d.lookup("alice", 7, 1_001, u64::MAX), None);
        assert_eq!((d.bytes(), d.is_empty()), (0, true));
    }

    /// A post sequenced and not stored yet (its seq after the delivered one) is remembered past the window: a
    /// commit held up that long let a retry of it in as a new post, and both were stored.
    #[test]
    fn a_post_not_stored_yet_is_remembered_past_the_window() {
        let mut d = DedupeWindow::new(1_000, 100);
        d.record("alice", 7, 42, 0, u64::MAX);
        assert_eq!(d.lookup("alice", 7, 5_000, 41), Some(42), "42 waits for its commit");
        assert_eq!(d.lookup("alice", 7, 5_000, 42), None, "stored: the window applies");
    }

    #[test]
    fn memory_is_counted_and_returned() {
        let mut d = DedupeWindow::new(u64::MAX, 100);
        d.record("ann", 1, 1, 0, u64::MAX);
        d.record("ann", 1, 1, 0, u64::MAX);
        d.record("bo", 2, 2, 0, u64::MAX);
        d.record("bo", 3, 3, 0, u64::MAX);
        let bo = identity_cost("bo") + 2 * ENTRY_COST;
        assert_eq!(d.bytes(), identity_cost("ann") + ENTRY_COST + bo, "a key recorded twice counts once");
        assert!(d.forget_oldest());
        assert_eq!((d.bytes(), d.lookup("ann", 1, 0, u64::MAX)), (bo, None), "ann's last post: ann is forgotten too");
        assert!(d.forget_oldest());
        assert!(d.forget_oldest());
        assert!(!d.forget_oldest());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn the_posts_remembered_in_a_seq_range_are_read_oldest_first_without_the_forgotten() {
        let mut d = DedupeWindow::new(u64::MAX, 100);
        for seq in 1..=6 {
            d.record("ann", 100 + seq, seq, seq, u64::MAX);
        }
        let seqs = |d: &DedupeWindow, from, before| d.remembered(from, before).map(|e| e.2).collect::<Vec<_>>();
        assert_eq!(seqs(&d, 2, 6), [2, 3, 4, 5]);
        assert_eq!(seqs(&d, 0, u64::MAX), [1, 2, 3, 4, 5, 6]);
        assert_eq!((seqs(&d, 6, 6), seqs(&d, 7, 100)), (vec![], vec![]));
        assert_eq!(d.remembered(6, 7).map(|(who, id, seq, at)| (&**who, id, seq, at)).next(), Some(("ann", 106, 6, 6)));
        // Posts 5 and 6 never stored: forgotten, and their seqs given to other posts.
        d.forget_from(5);
        assert_eq!((d.lookup("ann", 105, 6, u64::MAX), d.lookup("ann", 104, 6, u64::MAX)), (None, Some(4)));
        d.record("bo", 1, 5, 7, u64::MAX);
        assert_eq!(seqs(&d, 0, u64::MAX), [1, 2, 3, 4, 5], "still in seq order");
        assert_eq!(d.bytes(), identity_cost("ann") + identity_cost("bo") + 5 * ENTRY_COST);
    }

    #[test]
    fn bounded_in_count() {
        let mut d = DedupeWindow::new(u64::MAX, 2);
        for id in 1..=3 {
            d.record("a", id, id, 0, u64::MAX);
        }
        assert_eq!(d.lookup("a", 1, 0, u64::MAX), None);
        assert_eq!(d.lookup("a", 3, 0, u64::MAX), Some(3));
    }

    /// The count bound forgets no post that waits for its commit (a seq after `delivered`): a retry of one forgotten
    /// was sequenced anew and stored twice. Once they are stored, the bound applies again.
    #[test]
    fn the_count_bound_keeps_posts_not_stored_yet() {
        let mut d = DedupeWindow::new(u64::MAX, 2);
        for id in 1..=5 {
            d.record("a", id, id, 0, 0); // a stalled disk: nothing stored
        }
        assert_eq!(d.lookup("a", 1, 0, 0), Some(1), "post 1 waits for its commit: remembered");
        assert_eq!(d.lookup("a", 5, 0, 3), Some(5));
        assert_eq!(d.lookup("a", 1, 0, 3), None, "1 to 3 stored: the bound keeps the newest two of what it may forget");
        assert_eq!((d.lookup("a", 3, 0, 3), d.lookup("a", 4, 0, 3)), (None, Some(4)));
    }
}
