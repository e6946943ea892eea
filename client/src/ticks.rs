//! Ticks as the application holds them: a [`TickSubscription`] (the latest value, or every accepted tick in order
//! from a short bounded backlog; never goes back; loss, staleness, supersession and latency statistics) and a
//! [`TickPublisher`] (a datagram per tick, refusing what cannot fit).

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::ErrorCode;

use crate::{
    driver::{DriverHandle, PubEntry, SubEntry},
    sync::lock,
    RequestError,
};
pub use crate::{
    error::TickError,
    state::ticks::{Tick, TickStats, TICK_BACKLOG},
};

/// A subscription to a tick channel. Several handles of one channel share it, and share its ticks too: a tick one
/// handle takes (`next`, `next_batch`) is gone for the others, so give each consumer of a channel
/// its ticks from one reader. Dropping the last handle unsubscribes.
#[derive(Debug)]
pub struct TickSubscription {
    pub(crate) entry: Arc<SubEntry>,
    pub(crate) handle: DriverHandle,
}

impl TickSubscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.entry.channel
    }

    /// The newest tick received, without waiting.
    pub fn latest(&self) -> Option<Tick> {
        lock(&self.entry.state).latest().cloned()
    }

    /// The newest tick not returned yet, without waiting (`None` when nothing new arrived since the last read):
    /// for a game loop that reads once a frame.
    pub fn try_next(&mut self) -> Option<Tick> {
        lock(&self.entry.state).take_latest()
    }

    /// Waits for a tick not returned yet and returns the newest: ticks come in seq order (older arrivals are
    /// dropped as stale) and a slow reader skips to the latest value instead of working through old ones (those
    /// count as superseded).
    ///
    /// `None` once the subscription has ended (unsubscribed, or refused by the server after a reconnect) or the
    /// client has (closed, or gave up reconnecting), and nothing new is left: [`TickSubscription::end_reason`]
    /// says why.
    pub async fn next(&mut self) -> Option<Tick> {
        loop {
            let arrived = self.entry.arrived.notified();
            if let Some(latest) = lock(&self.entry.state).take_latest() {
                return Some(latest);
            }
            if !self.wait(arrived).await {
                return lock(&self.entry.state).take_latest();
            }
        }
    }

    /// Waits for `arrived`; false when the subscription or the client ended instead.
    async fn wait(&self, arrived: tokio::sync::futures::Notified<'_>) -> bool {
        tokio::select! {
            biased;
            () = arrived => true,
            () = self.entry.ended.cancelled() => false,
            () = self.handle.driver.stop.cancelled() => false,
        }
    }

    /// Why [`TickSubscription::next`] returns `None`: the subscription's end (unsubscribed, or the server's
    /// refusal to take it back), or why the client ended; `None` while the subscription goes on.
    pub fn end_reason(&self) -> Option<(ErrorCode, String)> {
        match self.entry.end_reason() {
            Some(why) => Some(why),
            None if self.handle.driver.stop.is_cancelled() => Some(self.handle.driver.end_reason()),
            None => None,
        }
    }

    /// Waits for ticks not returned yet and returns all of them in arrival order, which is seq order within one
    /// connection (after a reconnect the server's seqs start over): for readers that want every tick that
    /// arrived (market-data deltas, measurements), not only the newest. At most [`TICK_BACKLOG`] are held; a
    /// reader further behind loses the oldest (counted as superseded), so it never works through stale data.
    /// `None` when [`TickSubscription::next`] would be.
    pub async fn next_batch(&mut self) -> Option<Vec<Tick>> {
        loop {
            let arrived = self.entry.arrived.notified();
            let ticks = lock(&self.entry.state).take_all();
            if !ticks.is_empty() {
                return Some(ticks);
            }
            if !self.wait(arrived).await {
                let ticks = lock(&self.entry.state).take_all();
                return (!ticks.is_empty()).then_some(ticks);
            }
        }
    }

    /// Counters and latency so far. The latency summary walks the subscription's histogram (tens of µs, while
    /// arriving ticks wait for it): for a display now and then, not at every tick; [`TickSubscription::counts`]
    /// reads the counters alone.
    pub fn stats(&self) -> TickStats {
        lock(&self.entry.state).stats()
    }

    /// The counters of [`TickSubscription::stats`] without the latency summary (its `latency` is all 0): cheap
    /// enough to read at every batch.
    pub fn counts(&self) -> TickStats {
        lock(&self.entry.state).counts()
    }

    /// Stops the subscription, for every handle of the channel (they share it); `Ok` at once if it had ended.
    pub async fn unsubscribe(self) -> Result<(), RequestError> {
        self.handle.driver.unsubscribe(&self.entry).await
    }
}

impl Drop for TickSubscription {
    /// The channel's last handle dropped unsubscribes it (in the background), as a dropped [`crate::Room`] leaves.
    fn drop(&mut self) {
        self.handle.driver.subscription_dropped(&self.entry);
    }
}

/// The right to publish ticks on a channel.
#[derive(Debug)]
pub struct TickPublisher {
    pub(crate) entry: Arc<PubEntry>,
    pub(crate) handle: DriverHandle,
}

impl TickPublisher {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.entry.channel
    }

    /// The largest payload that fits one datagram on this path and every subscriber's: 1,124 bytes
    /// (`TickHeader::MAX_PORTABLE_PAYLOAD`), less on a path that carries less.
    pub fn max_payload(&self) -> Result<usize, TickError> {
        self.handle.driver.max_payload()
    }

    /// Sends one tick; returns the publisher's own seq for it. Never waits: if quinn's datagram buffer is full,
    /// its oldest datagram makes room (latest wins). [`TickError::Ended`] once the server refused to take the claim
    /// back after a reconnect, or once the client ended.
    pub fn send(&self, payload: impl Into<Bytes>) -> Result<u64, TickError> {
        self.handle.driver.send_tick(&self.entry, payload.into())
    }

    /// Why the claim ended (the server refused to take it back after a reconnect, or it was unpublished; or the
    /// client ended: the client's end reason), once it did.
    pub fn end_reason(&self) -> Option<(ErrorCode, String)> {
        match self.entry.end_reason() {
            Some(why) => Some(why),
            None if self.handle.driver.stop.is_cancelled() => Some(self.handle.driver.end_reason()),
            None => None,
        }
    }

    /// Gives the claim up on the server (Unpublish), for every publisher of the channel sharing it (their sends
    /// fail with [`TickError::Ended`] from now on): the channel no longer counts against the connection's
    /// `max_publish_channels`, so a long-lived publisher can go through many channels (one per match, say). A
    /// later [`crate::Client::publisher`] of the channel claims it anew. `Ok` if the claim had ended already or
    /// went with its connection. On a session of protocol version 4 (which has no Unpublish) the publishers end
    /// and the claim stays on the server until the connection ends: it still counts, and a later publisher of the
    /// channel is given the same claim back.
    pub async fn unpublish(self) -> Result<(), RequestError> {
        self.handle.driver.unpublish(&self.entry).await
    }
}

impl Drop for TickPublisher {
    /// The channel's last publisher dropped: its claim is given up (Unpublish, in the background 250 ms later, so
    /// that ticks sent just before arrive first; not if a new publisher of the channel came first), and not put
    /// back after a reconnect.
    fn drop(&mut self) {
        self.handle.driver.publisher_dropped(&self.entry);
    }
}
