//! Remembers which `(identity, client_msg_id)` got which seq, for a bounded time and count, so that a post retried
//! after a reconnect is acknowledged with its original seq instead of being delivered twice.

use std::collections::{HashMap, VecDeque};

/// The dedupe memory of one room.
#[derive(Debug)]
pub struct DedupeWindow {
    seqs: HashMap<(String, u64), u64>,
    order: VecDeque<((String, u64), u64)>,
    window_us: u64,
    max_entries: usize,
}

impl DedupeWindow {
    /// Remembers each post for `window_us`, and at most `max_entries` posts.
    pub fn new(window_us: u64, max_entries: usize) -> Self {
        DedupeWindow { seqs: HashMap::new(), order: VecDeque::new(), window_us, max_entries }
    }

    /// The seq an earlier post with this key got, if it is still remembered at `now_us`.
    pub fn lookup(&mut self, identity: &str, client_msg_id: u64, now_us: u64) -> Option<u64> {
        self.expire(now_us);
        self.seqs.get(&(identity.to_string(), client_msg_id)).copied()
    }

    /// Remembers that this post got `seq` at `now_us`.
    pub fn record(&mut self, identity: &str, client_msg_id: u64, seq: u64, now_us: u64) {
        let key = (identity.to_string(), client_msg_id);
        self.seqs.insert(key.clone(), seq);
        self.order.push_back((key, now_us));
        while self.order.len() > self.max_entries {
            self.forget_oldest();
        }
    }

    fn expire(&mut self, now_us: u64) {
        while self.order.front().is_some_and(|(_, at)| now_us.saturating_sub(*at) > self.window_us) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.seqs.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_only() {
        let mut d = DedupeWindow::new(1_000, 100);
        d.record("alice", 7, 42, 0);
        assert_eq!(d.lookup("alice", 7, 1_000), Some(42));
        assert_eq!(d.lookup("bob", 7, 1_000), None, "keys are per identity");
        assert_eq!(d.lookup("alice", 7, 1_001), None);
    }

    #[test]
    fn bounded_in_count() {
        let mut d = DedupeWindow::new(u64::MAX, 2);
        for id in 1..=3 {
            d.record("a", id, id, 0);
        }
        assert_eq!(d.lookup("a", 1, 0), None);
        assert_eq!(d.lookup("a", 3, 0), Some(3));
    }
}
