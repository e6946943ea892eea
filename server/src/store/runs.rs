//! Dedupe runs: the dedupe entries a retention deletion keeps (posts whose messages it deletes while the dedupe
//! window still remembers them), packed into one value per run of at most [`RUN_ENTRIES`] posts and keyed by the
//! room and the run's last seq. One write per run instead of one per post, and the window's own deletion
//! (`Op::TrimDedupe`) removes a key per run: a post that outlives its message in the window costs the store a
//! 128th of two writes instead of two (bench post: the retention thread's memtable inserts were most of its CPU).
//!
//! A value is its entries, oldest first, each `seq u64, time µs u64, client_msg_id u64, identity length u32,
//! identity` (big-endian); the key's seq is the last entry's. A run whose key seq is below `before` holds no
//! entry at or past it, so deleting the keys in `from..before` deletes exactly the runs the window forgot whole.

use super::writer::Remembered;

/// Entries per run at most: a deletion of a second's worth of posts (the age bound's sweep) is split into runs of
/// this many, so no value grows past a few KB per hundred entries.
pub(super) const RUN_ENTRIES: usize = 128;

/// Bytes of an entry before its identity.
const HEAD: usize = 28;

/// One entry of a run, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub seq: u64,
    pub time_us: u64,
    pub client_msg_id: u64,
    pub identity: &'a [u8],
}

/// Encodes `entries` (seq ascending, at most [`RUN_ENTRIES`]) as one run's value.
pub(super) fn encode(entries: &[Remembered]) -> Vec<u8> {
    // `decode` refuses anything else, and a room whose run cannot be read cannot be loaded.
    debug_assert!(!entries.is_empty() && entries.len() <= RUN_ENTRIES, "{} entries", entries.len());
    debug_assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq), "seqs must ascend");
    let len = entries.iter().map(|e| HEAD + e.identity.len()).sum();
    let mut value = Vec::with_capacity(len);
    for e in entries {
        value.extend_from_slice(&e.seq.to_be_bytes());
        value.extend_from_slice(&e.time_us.to_be_bytes());
        value.extend_from_slice(&e.client_msg_id.to_be_bytes());
        // Identities come from verified tokens, far below 4 GiB; a longer one would be cut, never wrap.
        let identity = &e.identity.as_bytes()[..e.identity.len().min(u32::MAX as usize)];
        value.extend_from_slice(&(identity.len() as u32).to_be_bytes());
        value.extend_from_slice(identity);
    }
    value
}

/// Decodes a run stored under seq `last`: its entries, oldest first. `None` for a malformed value (truncated,
/// seqs not ascending, or the last seq not the key's).
pub(super) fn decode(value: &[u8], last: u64) -> Option<Vec<Entry<'_>>> {
    let mut entries = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let head = rest.get(..HEAD)?;
        let u64_at = |at: usize| head.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let (seq, time_us, client_msg_id) = (u64_at(0)?, u64_at(8)?, u64_at(16)?);
        let len = u32::from_be_bytes(head.get(24..28)?.try_into().ok()?) as usize;
        let identity = rest.get(HEAD..HEAD.checked_add(len)?)?;
        if entries.last().is_some_and(|prev: &Entry<'_>| prev.seq >= seq) {
            return None;
        }
        entries.push(Entry { seq, time_us, client_msg_id, identity });
        rest = &rest[HEAD + len..];
    }
    (entries.last()?.seq == last).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(seq: u64, identity: &str) -> Remembered {
        Remembered { seq, time_us: seq * 10, client_msg_id: 100 + seq, identity: identity.into() }
    }

    #[test]
    fn a_run_reads_back_as_written() {
        let entries = [kept(3, "ann"), kept(4, ""), kept(9, "bob the builder")];
        let value = encode(&entries);
        let read = decode(&value, 9).expect("decodes");
        assert_eq!(read.len(), 3);
        for (read, written) in read.iter().zip(&entries) {
            assert_eq!(
                (read.seq, read.time_us, read.client_msg_id),
                (written.seq, written.time_us, written.client_msg_id)
            );
            assert_eq!(read.identity, written.identity.as_bytes());
        }
    }

    #[test]
    fn malformed_runs_are_refused_without_a_panic() {
        let value = encode(&[kept(3, "ann"), kept(4, "bob")]);
        assert!(decode(&value, 3).is_none(), "the key's seq is not the last entry's");
        assert!(decode(&[], 0).is_none(), "an empty run");
        for cut in 1..value.len() {
            assert!(decode(&value[..cut], 4).is_none(), "cut at {cut}");
        }
        let backwards = [encode(&[kept(4, "ann")]), encode(&[kept(3, "bob")])].concat();
        assert!(decode(&backwards, 3).is_none(), "seqs must ascend");
        let mut huge = encode(&[kept(5, "ann")]);
        huge[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge, 5).is_none(), "an identity longer than the value");
        // Arbitrary bytes never panic.
        let mut state = 7u64;
        for _ in 0..2000 {
            let len = (state % 97) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = decode(&bytes, state % 8);
        }
    }
}
