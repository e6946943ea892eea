//! Ticks on the client: [`TickSubscription`] (latest value, or every accepted tick in order from a short bounded
//! backlog; never goes back; loss, staleness, supersession and latency statistics) and [`TickPublisher`] (sends a datagram per tick, refusing what cannot fit).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use quiver_proto::TickHeader;
use tokio::sync::Notify;

use crate::{
    latency::{LatencyRecorder, LatencySummary},
    session::lock,
    Client, RequestError,
};

/// Accepted ticks a subscription holds for [`TickSubscription::next_batch`]; older ones beyond this are dropped
/// (counted as superseded). [`TickSubscription::next`] takes only the newest and clears the rest.
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
    /// Seqs skipped when a newer tick arrived (dropped on the way, or replaced by a newer tick at the server).
    pub lost: u64,
    /// Ticks that arrived after a newer one (reordered on the way) and were dropped.
    pub stale_dropped: u64,
    /// Accepted ticks the reader never saw because a newer one replaced them first (latest wins: `next()` skipped
    /// them, or they fell off the backlog of `next_batch()`).
    pub superseded: u64,
    /// One-way latency of the received ticks.
    pub latency: LatencySummary,
}

#[derive(Debug, Default)]
struct SubState {
    latest: Option<Tick>,
    /// Seq of the newest accepted tick; `None` until the first (and again after a resubscribe).
    last_seq: Option<u64>,
    /// Accepted ticks not returned yet, oldest first, at most [`TICK_BACKLOG`].
    pending: std::collections::VecDeque<Tick>,
    received: u64,
    lost: u64,
    stale_dropped: u64,
    superseded: u64,
    latency: LatencyRecorder,
}

/// What the client keeps per subscription.
#[derive(Debug)]
pub(crate) struct SubShared {
    pub(crate) channel: String,
    state: Mutex<SubState>,
    arrived: Notify,
}

impl SubShared {
    pub(crate) fn new(channel: String) -> Arc<SubShared> {
        Arc::new(SubShared { channel, state: Mutex::default(), arrived: Notify::new() })
    }

    /// The channel was subscribed again on a new connection: its seqs may start over.
    pub(crate) fn resync(&self) {
        let mut state = lock(&self.state);
        state.last_seq = None;
    }

    /// The newest pending tick; the older pending ones count as superseded.
    fn take_latest(&self) -> Option<Tick> {
        let mut state = lock(&self.state);
        let latest = state.pending.pop_back()?;
        state.superseded += state.pending.len() as u64;
        state.pending.clear();
        Some(latest)
    }

    /// Every pending tick, oldest first.
    fn take_all(&self) -> Vec<Tick> {
        lock(&self.state).pending.drain(..).collect()
    }

    /// A datagram for this subscription arrived at `now_us` (server clock).
    pub(crate) fn on_tick(&self, header: TickHeader, payload: Bytes, now_us: u64) {
        let mut state = lock(&self.state);
        if let Some(last) = state.last_seq {
            if header.seq <= last {
                state.stale_dropped += 1;
                return;
            }
            state.lost += header.seq - last - 1;
        }
        state.last_seq = Some(header.seq);
        state.received += 1;
        let tick = Tick { seq: header.seq, sent_time_us: header.sent_time_us, received_time_us: now_us, payload };
        state.latency.record(tick.latency());
        if state.pending.len() >= TICK_BACKLOG {
            state.pending.pop_front();
            state.superseded += 1;
        }
        state.pending.push_back(tick.clone());
        state.latest = Some(tick);
        drop(state);
        self.arrived.notify_waiters();
    }
}

/// A subscription to a tick channel.
#[derive(Debug)]
pub struct TickSubscription {
    pub(crate) shared: Arc<SubShared>,
    pub(crate) client: Client,
}

impl TickSubscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The newest tick received, without waiting.
    pub fn latest(&self) -> Option<Tick> {
        lock(&self.shared.state).latest.clone()
    }

    /// Waits for a tick not returned yet and returns the newest: ticks come in seq order (older arrivals are
    /// dropped as stale) and a slow reader skips to the latest value instead of working through old ones (those
    /// count as superseded).
    pub async fn next(&mut self) -> Tick {
        loop {
            let arrived = self.shared.arrived.notified();
            if let Some(latest) = self.shared.take_latest() {
                return latest;
            }
            arrived.await;
        }
    }

    /// Waits for ticks not returned yet and returns all of them in arrival order, which is seq order within one
    /// connection (after a reconnect the server's seqs start over): for readers that want every tick that
    /// arrived (market-data deltas, measurements), not only the newest. At most [`TICK_BACKLOG`] are held; a
    /// reader further behind loses the oldest (counted as superseded), so it never works through stale data.
    pub async fn next_batch(&mut self) -> Vec<Tick> {
        loop {
            let arrived = self.shared.arrived.notified();
            let ticks = self.shared.take_all();
            if !ticks.is_empty() {
                return ticks;
            }
            arrived.await;
        }
    }

    /// Counters and latency so far.
    pub fn stats(&self) -> TickStats {
        let state = lock(&self.shared.state);
        TickStats {
            received: state.received,
            lost: state.lost,
            stale_dropped: state.stale_dropped,
            superseded: state.superseded,
            latency: state.latency.summary(),
        }
    }

    /// Stops the subscription.
    pub async fn unsubscribe(self) -> Result<(), RequestError> {
        self.client.unsubscribe(&self.shared.channel).await
    }
}

/// Why a tick was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TickError {
    /// The payload does not fit one datagram on this path.
    #[error(
        "tick payload of {size} bytes does not fit a datagram on this path: the maximum payload is {max_payload} bytes"
    )]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest payload that fits now.
        max_payload: usize,
    },
    /// Not connected (reconnecting) or the channel is not claimed on the current connection yet.
    #[error("not connected")]
    NotConnected,
    /// The server or the path does not carry datagrams.
    #[error("the connection does not carry datagrams")]
    Unsupported,
}

/// What the client keeps per publisher.
#[derive(Debug)]
pub(crate) struct PubShared {
    pub(crate) channel: String,
    pub(crate) max_age_ms: Option<u32>,
    /// (connection id, channel id on that connection).
    pub(crate) claim: Mutex<Option<(usize, u64)>>,
    next_seq: AtomicU64,
}

impl PubShared {
    pub(crate) fn new(channel: String, max_age_ms: Option<u32>) -> Arc<PubShared> {
        Arc::new(PubShared { channel, max_age_ms, claim: Mutex::new(None), next_seq: AtomicU64::new(1) })
    }
}

/// The right to publish ticks on a channel.
#[derive(Debug)]
pub struct TickPublisher {
    pub(crate) shared: Arc<PubShared>,
    pub(crate) client: Client,
}

impl TickPublisher {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The largest payload that fits one datagram now (it can change with the path MTU).
    pub fn max_payload(&self) -> Result<usize, TickError> {
        let conn = self.client.connection().ok_or(TickError::NotConnected)?;
        let max = conn.max_datagram_size().ok_or(TickError::Unsupported)?;
        Ok(max.saturating_sub(TickHeader::MAX_LEN))
    }

    /// Sends one tick; returns the publisher's own seq for it. Never waits: if quinn's datagram buffer is full,
    /// its oldest datagram makes room (latest wins).
    pub fn send(&self, payload: impl Into<Bytes>) -> Result<u64, TickError> {
        let payload = payload.into();
        let (conn, conn_id) = self.client.connection_with_id().ok_or(TickError::NotConnected)?;
        let channel_id = match *lock(&self.shared.claim) {
            Some((claimed_on, id)) if claimed_on == conn_id => id,
            _ => return Err(TickError::NotConnected),
        };
        let max = conn.max_datagram_size().ok_or(TickError::Unsupported)?;
        // The limit counts the largest header, so it does not shift as seqs and ids grow.
        let max_payload = max.saturating_sub(TickHeader::MAX_LEN);
        if payload.len() > max_payload {
            return Err(TickError::TooLarge { size: payload.len(), max_payload });
        }
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let header = TickHeader { channel_id, seq, sent_time_us: self.client.server_clock_us() };
        let mut datagram = BytesMut::with_capacity(header.encoded_len() + payload.len());
        header.encode(&mut datagram).map_err(|_| TickError::Unsupported)?;
        datagram.put_slice(&payload);
        conn.send_datagram(datagram.freeze()).map_err(|err| match err {
            quinn::SendDatagramError::TooLarge => TickError::TooLarge { size: payload.len(), max_payload },
            quinn::SendDatagramError::ConnectionLost(_) => TickError::NotConnected,
            _ => TickError::Unsupported,
        })?;
        Ok(seq)
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
        let sub = SubShared::new("c".into());
        for seq in [1, 2, 3] {
            sub.on_tick(header(seq), Bytes::from_static(b"x"), 10);
        }
        sub.on_tick(header(2), Bytes::new(), 10); // reordered: stale
        assert_eq!(sub.take_latest().map(|t| t.seq), Some(3));
        assert_eq!(sub.take_latest(), None);
        for seq in [5, 6] {
            sub.on_tick(header(seq), Bytes::new(), 10);
        }
        assert_eq!(sub.take_all().iter().map(|t| t.seq).collect::<Vec<_>>(), [5, 6]);
        assert!(sub.take_all().is_empty());
        let state = lock(&sub.state);
        assert_eq!((state.received, state.lost, state.stale_dropped, state.superseded), (5, 1, 1, 2));
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest() {
        let sub = SubShared::new("c".into());
        let n = TICK_BACKLOG as u64 + 10;
        for seq in 1..=n {
            sub.on_tick(header(seq), Bytes::new(), 10);
        }
        let batch = sub.take_all();
        assert_eq!(batch.len(), TICK_BACKLOG);
        assert_eq!(batch.first().map(|t| t.seq), Some(11));
        assert_eq!(batch.last().map(|t| t.seq), Some(n));
        assert_eq!(lock(&sub.state).superseded, 10);
    }
}
