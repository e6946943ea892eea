//! A tick channel's subscribers, kept in chunks that the fan-outs share. A publish takes a snapshot of the list (an
//! `Arc` per chunk, made again only after a change); a subscribe or unsubscribe copies at most the chunk it
//! touches and a neighbour it merges with (and only when a fan-out still holds them) plus the list of chunks at the
//! next publish: at most about `2 × CHUNK + n / CHUNK` pointer copies for n subscribers, where a flat list copied all
//! n. So one client subscribing and unsubscribing between every tick of a channel with 10,000 subscribers costs
//! the server at most about 330 copies per tick, not 10,000 (a CPU amplification a single client could cause
//! within its request rate).

use std::sync::Arc;

use super::ticks::{TickSink, TickSubscriberId};

/// One subscription: its id, the subscriber's channel id, its sink.
pub type Member = (TickSubscriberId, u64, Arc<dyn TickSink>);

/// Subscriptions per chunk: a change copies at most twice this many (its chunk and a neighbour it merges with).
const CHUNK: usize = 128;

/// The subscribers of a channel when a tick was stamped: shared, never changed (a later subscription or
/// unsubscription makes a new one, which shares every chunk it did not touch).
#[derive(Clone, Debug)]
pub struct Subscribers {
    chunks: Arc<[Arc<Vec<Member>>]>,
    len: usize,
}

impl Subscribers {
    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// In the order they subscribed.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// The very same snapshot (no change between the two).
    pub fn ptr_eq(a: &Subscribers, b: &Subscribers) -> bool {
        Arc::ptr_eq(&a.chunks, &b.chunks)
    }

    /// How many of this snapshot's chunks `other` shares (the same allocation), and how many it has.
    #[cfg(test)]
    pub(crate) fn chunks_shared_with(&self, other: &Subscribers) -> (usize, usize) {
        let shared = self.chunks.iter().filter(|c| other.chunks.iter().any(|o| Arc::ptr_eq(c, o))).count();
        (shared, self.chunks.len())
    }
}

/// A channel's subscriptions, sorted by id, in chunks of at most [`CHUNK`], none empty.
#[derive(Default)]
pub(super) struct Members {
    chunks: Vec<Arc<Vec<Member>>>,
    len: usize,
    /// The chunks as the last publish shared them (`None` after a change).
    snapshot: Option<Subscribers>,
}

impl Members {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a subscription. Ids grow, so it nearly always goes at the end; one drawn just before another's but
    /// added after it goes in its place.
    pub(super) fn insert(&mut self, member: Member) {
        self.snapshot = None;
        self.len += 1;
        let id = member.0;
        let at = self.chunks.partition_point(|c| c.last().is_some_and(|last| last.0 < id));
        if at == self.chunks.len() {
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(member),
                _ => self.chunks.push(Arc::new(vec![member])),
            }
            return;
        }
        let chunk = Arc::make_mut(&mut self.chunks[at]);
        let place = chunk.partition_point(|m| m.0 < id);
        chunk.insert(place, member);
        if chunk.len() > CHUNK {
            let second = chunk.split_off(chunk.len() / 2);
            self.chunks.insert(at + 1, Arc::new(second));
        }
    }

    /// Removes a subscription; false when it is not there.
    pub(super) fn remove(&mut self, id: TickSubscriberId) -> bool {
        let at = self.chunks.partition_point(|c| c.last().is_some_and(|last| last.0 < id));
        let Some(place) = self.chunks.get(at).and_then(|c| c.binary_search_by_key(&id, |m| m.0).ok()) else {
            return false;
        };
        self.snapshot = None;
        self.len -= 1;
        Arc::make_mut(&mut self.chunks[at]).remove(place);
        if self.chunks[at].is_empty() {
            self.chunks.remove(at);
            return true;
        }
        // Two neighbours that fit in one become one, so that churn leaves no trail of small chunks.
        for first in [at, at.wrapping_sub(1)] {
            let Some(second) = first.checked_add(1).filter(|s| *s < self.chunks.len()) else { continue };
            if self.chunks[first].len() + self.chunks[second].len() <= CHUNK {
                let moved = self.chunks.remove(second);
                Arc::make_mut(&mut self.chunks[first]).extend(moved.iter().cloned());
                break;
            }
        }
        true
    }

    /// The subscribers now (made again only after a change).
    pub(super) fn snapshot(&mut self) -> Subscribers {
        let (chunks, len) = (&self.chunks, self.len);
        self.snapshot.get_or_insert_with(|| Subscribers { chunks: chunks.iter().cloned().collect(), len }).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ticks::{Tick, TickDatagrams};

    #[derive(Debug)]
    struct Nobody;
    impl TickSink for Nobody {
        fn offer(&self, _: u64, _: Tick, _: Option<u64>, _: &mut TickDatagrams) {}
    }

    fn ids(s: &Subscribers) -> Vec<u64> {
        s.iter().map(|m| m.0).collect()
    }

    fn member(id: u64) -> Member {
        (id, id * 10, Arc::new(Nobody))
    }

    /// The amplification this fixes: with 10,000 subscribers, one subscription made and ended between every two
    /// ticks copied all 10,000 at each tick. Now the next snapshot shares every chunk but the one it touched.
    #[test]
    fn a_change_copies_one_chunk_and_the_next_snapshot_shares_the_rest() {
        let mut members = Members::default();
        (1..=10_000).for_each(|id| members.insert(member(id)));
        let before = members.snapshot();
        assert_eq!(before.len(), 10_000);
        assert!(Subscribers::ptr_eq(&before, &members.snapshot()), "no change, the same snapshot");

        members.insert(member(10_001));
        assert!(members.remove(10_001));
        assert!(members.remove(5_000));
        let after = members.snapshot();
        let (shared, chunks) = after.chunks_shared_with(&before);
        assert_eq!(chunks, 10_000usize.div_ceil(CHUNK));
        assert_eq!(
            shared,
            chunks - 2,
            "copied: the chunk that lost 5,000 and the last (which took 10,001 and lost it)"
        );
        assert_eq!(ids(&before), (1..=10_000).collect::<Vec<_>>(), "a snapshot taken before is untouched");
        assert_eq!(ids(&after), (1..=10_000).filter(|id| *id != 5_000).collect::<Vec<_>>());
        assert_eq!(after.len(), 9_999);
    }

    #[test]
    fn an_id_added_out_of_order_goes_in_its_place_and_a_full_chunk_splits() {
        let mut members = Members::default();
        (0..CHUNK as u64).map(|n| n * 2).for_each(|id| members.insert(member(id)));
        members.insert(member(7));
        members.insert(member(1_000));
        members.insert(member(3));
        let s = members.snapshot();
        let mut expected: Vec<u64> = (0..CHUNK as u64).map(|n| n * 2).chain([3, 7, 1_000]).collect();
        expected.sort_unstable();
        assert_eq!(ids(&s), expected);
        assert_eq!(s.len(), CHUNK + 3);
        assert!(members.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        assert!(!members.remove(5), "never added");
        assert!(members.remove(7) && !members.remove(7), "removed once");
    }

    /// Subscribers leaving from everywhere leave no trail of small chunks behind: neighbours that fit in one merge.
    #[test]
    fn churn_leaves_few_chunks_and_the_last_one_out_leaves_none() {
        let mut members = Members::default();
        (0..2_000).for_each(|id| members.insert(member(id)));
        (0..2_000).filter(|id| id % 10 != 0).for_each(|id| assert!(members.remove(id)));
        assert_eq!(members.snapshot().len(), 200);
        assert!(members.chunks.len() <= 2 * 200usize.div_ceil(CHUNK), "{} chunks for 200", members.chunks.len());
        (0..2_000).filter(|id| id % 10 == 0).for_each(|id| assert!(members.remove(id)));
        assert!(members.is_empty() && members.chunks.is_empty());
        assert!(members.snapshot().is_empty());
    }
}
