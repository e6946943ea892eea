//! Redundant delivery's merge, without IO: one room stream's frames arrive on the stream (in order, complete, the
//! source of truth) and as datagram copies (any order, maybe twice, maybe never). Each frame has its position on
//! the stream; the merge hands out every position exactly once and in order, from whichever path brought it
//! first. A copy ahead of the next position waits (at most [`AHEAD`] positions ahead) until the positions before
//! it arrive, by copy or by stream.

use std::collections::BTreeMap;

/// How far ahead of the next position a copy is kept; further ones are dropped (the stream brings them).
pub const AHEAD: u64 = 256;

/// The merge of one stream.
#[derive(Debug)]
pub struct Merge<T> {
    next: u64,
    ahead: BTreeMap<u64, T>,
}

impl<T> Merge<T> {
    /// A merge whose next position to hand out is `next`.
    pub fn new(next: u64) -> Self {
        Merge { next, ahead: BTreeMap::new() }
    }

    /// The next position to hand out.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The frame at `position` read from the stream: `Some` to hand out now, `None` when a copy brought it already.
    /// (The stream brings every position in order, so it is never ahead of the merge.)
    pub fn stream(&mut self, position: u64, frame: T) -> Option<T> {
        if position < self.next {
            return None;
        }
        self.next = position + 1;
        // Copies at or below it are no longer needed.
        self.ahead = self.ahead.split_off(&self.next);
        Some(frame)
    }

    /// A copy of the frame at `position`: kept if not handed out yet (see [`Merge::ready`]).
    pub fn copy(&mut self, position: u64, frame: T) {
        if position >= self.next && position - self.next < AHEAD {
            self.ahead.entry(position).or_insert(frame);
        }
    }

    /// True when the next position is here (from a copy).
    pub fn has_ready(&self) -> bool {
        self.ahead.contains_key(&self.next)
    }

    /// The next position's frame, if a copy brought it; handed out (call until `None`).
    pub fn ready(&mut self) -> Option<T> {
        let frame = self.ahead.remove(&self.next)?;
        self.next += 1;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    #[test]
    fn copies_go_first_in_order_and_the_stream_fills_what_they_miss() {
        let mut merge = Merge::new(2);
        merge.copy(3, 'b');
        assert!(!merge.has_ready(), "3 waits for 2");
        merge.copy(2, 'a');
        assert_eq!((merge.ready(), merge.ready(), merge.ready()), (Some('a'), Some('b'), None));
        assert_eq!(merge.stream(2, 'a'), None, "delivered by copy");
        assert_eq!(merge.stream(3, 'b'), None);
        assert_eq!(merge.stream(4, 'c'), Some('c'), "lost as a copy: the stream brings it");
        merge.copy(4, 'c');
        assert!(!merge.has_ready(), "a late copy is dropped");
        merge.copy(4 + AHEAD + 1, 'z');
        merge.copy(6, 'e');
        assert_eq!(merge.stream(5, 'd'), Some('d'));
        assert_eq!(merge.ready(), Some('e'));
        assert_eq!(merge.next_position(), 7);
        assert!(merge.ahead.is_empty(), "too far ahead: not kept");
    }

    /// One run: `n` frames on the stream (in order) and copies of each (each lost with `loss`, duplicated,
    /// reordered), interleaved at random; everything handed out is each position once, in order.
    fn run(seed: u64, n: u64, loss: f64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut copies: Vec<u64> = Vec::new();
        for position in 0..n {
            for _ in 0..rng.gen_range(0..=3u32) {
                if !rng.gen_bool(loss) {
                    copies.push(position);
                }
            }
        }
        // Reordered: each copy moves up to 8 places.
        for i in 0..copies.len() {
            let j = (i + rng.gen_range(0..8usize)).min(copies.len() - 1);
            copies.swap(i, j);
        }
        let (mut merge, mut out, mut stream, mut copy) = (Merge::new(0), Vec::new(), 0u64, 0usize);
        while stream < n || copy < copies.len() {
            let from_stream = copy == copies.len() || (stream < n && rng.gen_bool(0.3));
            if from_stream {
                out.extend(merge.stream(stream, stream));
                stream += 1;
            } else {
                merge.copy(copies[copy], copies[copy]);
                copy += 1;
            }
            while let Some(frame) = merge.ready() {
                out.push(frame);
            }
        }
        assert_eq!(out, (0..n).collect::<Vec<_>>(), "seed {seed}");
    }

    #[test]
    fn seeded_loss_duplication_and_reordering_never_lose_double_or_reorder() {
        for seed in 0..200 {
            run(seed, 200, [0.0, 0.1, 0.5, 1.0][(seed % 4) as usize]);
        }
    }

    proptest! {
        #[test]
        fn any_interleaving_hands_out_each_position_once_in_order(seed in any::<u64>(), loss in 0.0..1.0f64) {
            run(seed, 64, loss);
        }
    }
}
