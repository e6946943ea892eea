//! A tick subscription's bookkeeping, without IO: latest wins (a tick not newer than the newest accepted one is
//! stale and dropped), seq gaps count as lost, and a short bounded backlog of accepted ticks for readers that want
//! every one; readers that fall further behind lose the oldest (superseded), never read stale data.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;
use quiver_proto::TickHeader;

use crate::latency::{LatencyRecorder, LatencySummary};

/// Accepted ticks a subscription holds for `next_batch`; older ones beyond this are dropped (counted as
/// superseded). `next` takes only the newest and clears the rest.
pub const TICK_BACKLOG: usize = 64;

/// A tick as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The channel's seq (stamped by the server; increases by one per published tick).
    pub seq: u64,
    /// When the publisher sent it, in µs since the Unix epoch on the server's clock (as the publisher estimated it).
    pub sent_time_us: u64,
    /// When it arrived here, in µs since the Unix epoch on the server's clock (as this client estimates it).
    pub received_time_us: u64,
    /// Application payload.
    pub payload: Bytes,
}

impl Tick {
    /// One-way latency estimate: arrival minus send time, both on the server's clock.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.received_time_us.saturating_sub(self.sent_time_us))
    }
}

/// What a subscription has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickStats {
    /// Ticks accepted (newer than every tick before them).
    pub received: u64,
    /// Seqs skipped when a newer tick arrived (dropped on the way, or replaced by a newer tick at the server) that
    /// have not arrived since (one that arrives late, among the 64 before the newest, counts as stale instead).
    pub lost: u64,
    /// Ticks that arrived after a newer one (reordered on the way) and were dropped.
    pub stale_dropped: u64,
    /// Accepted ticks the reader never saw because a newer one replaced them first (latest wins: `next()` skipped
    /// them, or they fell off the backlog of `next_batch()`).
    pub superseded: u64,
    /// One-way latency of the received ticks.
    pub latency: LatencySummary,
}

/// One subscription's ticks and counters.
#[derive(Debug, Default)]
pub struct LatestWins {
    latest: Option<Tick>,
    /// Seq of the newest accepted tick; `None` until the first (and again after a resubscribe).
    last_seq: Option<u64>,
    /// The connection the subscription's ticks come on (the first tick's, or the one it was subscribed again on):
    /// a late datagram of an earlier connection, whose seqs may run higher, is not taken for one of this one's.
    connection: Option<usize>,
    /// Accepted ticks not returned yet, oldest first, at most [`TICK_BACKLOG`].
    pending: VecDeque<Tick>,
    /// The seqs before `last_seq` counted lost, as bits: bit `i` for seq `last_seq - 1 - i` (64 of them).
    missing: u64,
    received: u64,
    lost: u64,
    stale_dropped: u64,
    superseded: u64,
    latency: LatencyRecorder,
}

impl LatestWins {
    /// The channel is subscribed again on `connection`: its seqs may start over, and ticks that still arrive on
    /// earlier connections are dropped. Again on the connection its ticks already come on (a reconnect's resubscribe
    /// and the subscribing call's own, both on the new connection), nothing changes: the server answers the same
    /// subscription, and forgetting the last seq let a tick reordered on the path in as the newest.
    pub fn resync(&mut self, connection: usize) {
        if self.connection == Some(connection) {
            return;
        }
        self.last_seq = None;
        self.missing = 0;
        self.connection = Some(connection);
    }

    /// A datagram for this subscription arrived on `connection` at `now_us` (server clock). True when it was
    /// accepted.
    pub fn on_tick(&mut self, connection: usize, header: TickHeader, payload: Bytes, now_us: u64) -> bool {
        if *self.connection.get_or_insert(connection) != connection {
            self.stale_dropped += 1; // a late one of an earlier connection
            return false;
        }
        if let Some(last) = self.last_seq {
            if header.seq <= last {
                self.stale_dropped += 1;
                // Counted lost when a newer one overtook it: it was not (reordered on the way, not dropped).
                let bit = (last - header.seq).checked_sub(1).filter(|bit| *bit < 64).map(|bit| 1u64 << bit);
                if let Some(bit) = bit.filter(|bit| self.missing & bit != 0) {
                    self.missing &= !bit;
                    self.lost -= 1;
                }
                return false;
            }
            let skipped = header.seq - last - 1;
            self.lost = self.lost.saturating_add(skipped);
            // The skipped seqs take the lowest bits, below `last` (not missing) and what was before it.
            let shifted = self.missing.checked_shl(u32::try_from(skipped + 1).unwrap_or(u32::MAX)).unwrap_or(0);
            let skipped_bits = if skipped >= 64 { u64::MAX } else { (1u64 << skipped) - 1 };
            self.missing = shifted | skipped_bits;
        }
        self.last_seq = Some(header.seq);
        self.received += 1;
        // A copy of its own: `payload` is cut from the buffer quinn read a batch of datagrams into (up to ~64 KiB with
        // GRO), which a tick kept in the backlog, or by the application, held whole (until 2026-12-07).
        let payload = Bytes::copy_from_slice(&payload);
        let tick = Tick { seq: header.seq, sent_time_us: header.sent_time_us, received_time_us: now_us, payload };
        self.latency.record(tick.latency());
        if self.pending.len() >= TICK_BACKLOG {
            self.pending.pop_front();
            self.superseded += 1;
        }
        self.pending.push_back(tick.clone());
        self.latest = Some(tick);
        true
    }

    /// The newest tick received, whether or not it was returned.
    pub fn latest(&self) -> Option<&Tick> {
        self.latest.as_ref()
    }

    /// The newest pending tick; the older pending ones count as superseded.
    pub fn take_latest(&mut self) -> Option<Tick> {
        let latest = self.pending.pop_back()?;
        self.superseded += self.pending.len() as u64;
        self.pending.clear();
        Some(latest)
    }

    /// Every pending tick, oldest first.
    pub fn take_all(&mut self) -> Vec<Tick> {
        self.pending.drain(..).collect()
    }

    /// Counters and latency so far (the latency summary walks the histogram: tens of µs).
    pub fn stats(&self) -> TickStats {
        TickStats { latency: self.latency.summary(), ..self.counts() }
    }

    /// The counters alone, the latency left empty: a few loads.
    pub fn counts(&self) -> TickStats {
        TickStats {
            received: self.received,
            lost: self.lost,
            stale_dropped: self.stale_dropped,
            superseded: self.superseded,
            latency: crate::latency::LatencyRecorder::default_summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> TickHeader {
        TickHeader { channel_id: 1, seq, sent_time_us: 0 }
    }

    #[test]
    fn the_latest_supersedes_the_pending_and_a_batch_returns_every_accepted_tick_in_order() {
        let mut sub = LatestWins::default();
        for seq in [1, 2, 3] {
            assert!(sub.on_tick(1, header(seq), Bytes::from_static(b"x"), 10));
        }
        assert!(!sub.on_tick(1, header(2), Bytes::new(), 10), "reordered: stale");
        assert_eq!(sub.take_latest().map(|t| t.seq), Some(3));
        assert_eq!(sub.take_latest(), None);
        for seq in [5, 6] {
            sub.on_tick(1, header(seq), Bytes::new(), 10);
        }
        assert_eq!(sub.take_all().iter().map(|t| t.seq).collect::<Vec<_>>(), [5, 6]);
        assert!(sub.take_all().is_empty());
        let stats = sub.stats();
        assert_eq!((stats.received, stats.lost, stats.stale_dropped, stats.superseded), (5, 1, 1, 2));
        assert_eq!(stats.latency.count, 5);
        let counts = sub.counts();
        assert_eq!(counts, TickStats { latency: crate::latency::LatencyRecorder::default_summary(), ..stats });
        sub.resync(2);
        assert!(!sub.on_tick(1, header(7), Bytes::new(), 10), "a late tick of the earlier connection");
        assert!(sub.on_tick(2, header(1), Bytes::new(), 10), "after a resubscribe seqs may start over");
        assert!(sub.on_tick(2, header(2), Bytes::new(), 10), "and go on from there");
        sub.on_tick(2, header(5), Bytes::new(), 10);
        sub.resync(2);
        assert!(!sub.on_tick(2, header(3), Bytes::new(), 10), "subscribed again on the same connection: still older");
        assert_eq!(sub.latest().map(|t| t.seq), Some(5));
    }

    /// A tick kept (in the backlog, or by the application) holds its payload alone, not the buffer it was cut from:
    /// quinn reads a batch of datagrams (GRO, up to ~64 KiB) into one allocation, which every kept tick held whole.
    #[test]
    fn a_kept_tick_holds_its_payload_not_the_buffer_it_was_read_from() {
        let mut sub = LatestWins::default();
        let batch = Bytes::from(vec![7u8; 65_536]);
        assert!(sub.on_tick(1, header(1), batch.slice(100..112), 10));
        assert_eq!(sub.latest().map(|t| t.payload.clone()), Some(batch.slice(100..112)));
        assert!(batch.is_unique(), "the batch is held by the kept tick");
    }

    /// A tick overtaken on the way (1, 3, 2) counted lost when 3 came, then stale when it came itself: one of the
    /// two, not both (three ticks published, four counted). Beyond the 64 seqs before the newest it stays lost.
    #[test]
    fn a_reordered_tick_is_stale_not_lost_as_well() {
        let mut sub = LatestWins::default();
        for seq in [1, 3, 2, 2] {
            sub.on_tick(1, header(seq), Bytes::new(), 10);
        }
        let stats = sub.stats();
        assert_eq!((stats.received, stats.lost, stats.stale_dropped), (2, 0, 2), "2 once stale, once a copy");
        sub.on_tick(1, header(10), Bytes::new(), 10); // 4..9 lost
        sub.on_tick(1, header(5), Bytes::new(), 10);
        sub.on_tick(1, header(80), Bytes::new(), 10); // 11..79 lost
        sub.on_tick(1, header(6), Bytes::new(), 10); // 73 before the newest: past the window, still lost
        sub.on_tick(1, header(79), Bytes::new(), 10);
        let stats = sub.stats();
        assert_eq!((stats.received, stats.lost, stats.stale_dropped), (4, 5 + 69 - 1, 5));
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest() {
        let mut sub = LatestWins::default();
        let n = TICK_BACKLOG as u64 + 10;
        for seq in 1..=n {
            sub.on_tick(1, header(seq), Bytes::new(), 10);
        }
        let batch = sub.take_all();
        assert_eq!(batch.len(), TICK_BACKLOG);
        assert_eq!(batch.first().map(|t| t.seq), Some(11));
        assert_eq!(batch.last().map(|t| t.seq), Some(n));
        assert_eq!(sub.stats().superseded, 10);
    }
}
