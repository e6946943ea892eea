//! Ticks on the client: [`TickSubscription`] (latest value, an in-order stream that never goes back, and loss,
//! staleness and latency statistics) and [`TickPublisher`] (sends a datagram per tick, refusing what cannot fit).

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
    /// One-way latency of the received ticks.
    pub latency: LatencySummary,
}

#[derive(Debug, Default)]
struct SubState {
    latest: Option<Tick>,
    /// Seq of the newest accepted tick; `None` until the first (and again after a resubscribe).
    last_seq: Option<u64>,
    /// True when `latest` has not been returned by `next()` yet.
    fresh: bool,
    received: u64,
    lost: u64,
    stale_dropped: u64,
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
        state.latest = Some(tick);
        state.fresh = true;
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
    /// dropped as stale) and a slow reader skips to the latest value instead of working through old ones.
    pub async fn next(&mut self) -> Tick {
        loop {
            let arrived = self.shared.arrived.notified();
            {
                let mut state = lock(&self.shared.state);
                if state.fresh {
                    if let Some(latest) = state.latest.clone() {
                        state.fresh = false;
                        return latest;
                    }
                }
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
