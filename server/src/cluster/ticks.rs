//! [`ClusterTicks`]: ticks across nodes. Every tick is fanned out to this node's subscribers exactly as on a single
//! node ([`LocalTicks`]); it is also relayed through Redis, but only for channels some *other* node has subscribers
//! on (interest tracking: each node lists its channels in `q:node:<id>:ticks` and announces changes on
//! `q:control`). Relaying conflates too: a relay task publishes the newest tick of each channel waiting, so a slow
//! broker never queues stale ticks. The receiving node stamps its own seq and applies the stricter max age.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use bytes::Bytes;
use quiver_proto::Failure;
use tokio::sync::Notify;

use super::{
    broker::{BoxFuture, Broker, ChannelHandler},
    interest::{Change, RemoteInterest},
    keys,
    transit::Transit,
};
use crate::hub::{
    lock::lock,
    ticks::{Fanout, LocalTicks, TickHub, TickSink, TickSubscriberId, TooOld},
};

/// The pause before an interest change or a reload of other nodes' interest that Redis did not take is tried again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// A tick on its way to other nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Relayed {
    origin: String,
    sent_time_us: u64,
    max_age_us: Option<u64>,
    payload: Vec<u8>,
    /// When the origin node received it (its clock): the tick's age, and its max age, count from there, not from
    /// when it came out of Redis (which a slow or paused Redis can hold for seconds). Last, so that a node of the
    /// version before (which reads the fields above and ignores the rest) still takes it.
    received_us: u64,
}

/// A relayed tick waiting to be fanned out ([`Inner::incoming`]).
#[derive(Debug)]
struct Arrived {
    sent_time_us: u64,
    /// When its origin received it, on this node's clock.
    received_us: u64,
    max_age_us: Option<u64>,
    payload: Bytes,
}

/// One channel's relay slot ([`Inner::outgoing`]).
#[derive(Debug, Default)]
struct Outgoing {
    /// The newest local stamp put in the slot, `(incarnation, seq)` ([`Fanout::incarnation`]: a channel made
    /// again numbers from 1 and is newer): a tick stamped before it (two publishers of the channel, their stamps
    /// taken in one order and their relays put here in the other) is older, and must not replace it, nor follow it
    /// to the other nodes once it has gone (they would keep the older value as the latest).
    stamp: (u64, u64),
    tick: Option<Relayed>,
}

/// [`Relayed`] as a node of the version before sends it (no `received_us`): its age is unknown, counted as none.
#[derive(Debug, serde::Deserialize)]
struct RelayedBefore {
    origin: String,
    sent_time_us: u64,
    max_age_us: Option<u64>,
    payload: Vec<u8>,
}

impl Relayed {
    fn decode(bytes: &[u8]) -> Option<(Relayed, bool)> {
        if let Ok(tick) = postcard::from_bytes::<Relayed>(bytes) {
            return Some((tick, true));
        }
        let RelayedBefore { origin, sent_time_us, max_age_us, payload } = postcard::from_bytes(bytes).ok()?;
        Some((Relayed { origin, sent_time_us, max_age_us, payload, received_us: 0 }, false))
    }
}

struct Inner {
    broker: Arc<Broker>,
    local: Arc<LocalTicks>,
    /// Subscriptions on this node per channel.
    interest: Mutex<HashMap<String, usize>>,
    /// Interest changes not yet made in Redis, channel → interested (coalesced: a channel toggled many times is
    /// one change).
    changes: Mutex<HashMap<String, bool>>,
    changed: Notify,
    /// Channel → the other nodes with subscribers on it.
    remote: RwLock<RemoteInterest>,
    /// One reload at a time (each keeps the journal of the changes made while it reads).
    reloading: tokio::sync::Mutex<()>,
    /// Some other node has some interest (the hot path's first, lock-free check).
    any_remote: AtomicBool,
    /// Per channel relayed to other nodes: the newest tick waiting to be relayed, and the highest local seq given
    /// to the relay so far.
    outgoing: Mutex<HashMap<String, Outgoing>>,
    wake: Notify,
    /// Per channel, the newest tick other nodes relayed, waiting for [`Inner::deliver`] to fan it out: the Pub/Sub
    /// reader only puts it here (a fan-out to thousands of subscribers on the reader would hold up every other
    /// channel's messages, and the Redis client buffers what the reader has not taken without bound), and a newer
    /// one replaces it.
    incoming: Mutex<HashMap<String, Arrived>>,
    delivered: Notify,
    relayed: AtomicU64,
    /// Relayed ticks that arrived older than their channel's max age, dropped.
    relays_expired: AtomicU64,
    /// How long relayed ticks take from each origin node, beyond its clock's offset from this one's.
    transit: Mutex<Transit>,
}

/// Tick channels of a node in a cluster.
pub struct ClusterTicks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterTicks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTicks").field("channels", &self.inner.local.channels()).finish_non_exhaustive()
    }
}

impl ClusterTicks {
    /// Ticks on `broker`, with at most `max_channels` channels on this node. Routes the control channel (call
    /// before [`Broker::connect`]) and starts the relay and interest tasks.
    pub fn new(broker: Arc<Broker>, max_channels: u32) -> ClusterTicks {
        let inner = Arc::new(Inner {
            broker: broker.clone(),
            local: Arc::new(LocalTicks::new(max_channels)),
            interest: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            remote: RwLock::new(RemoteInterest::default()),
            reloading: tokio::sync::Mutex::new(()),
            any_remote: AtomicBool::new(false),
            outgoing: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            incoming: Mutex::new(HashMap::new()),
            delivered: Notify::new(),
            relayed: AtomicU64::new(0),
            relays_expired: AtomicU64::new(0),
            transit: Mutex::new(Transit::default()),
        });
        broker.route(keys::CONTROL, Arc::new(Control(inner.clone())));
        let dead = inner.clone();
        broker.on_dead(Arc::new(move |node| {
            let dead = dead.clone();
            Box::pin(async move {
                dead.forget(&node);
                true
            })
        }));
        let revived = inner.clone();
        broker.on_revived(Arc::new(move || {
            let revived = revived.clone();
            Box::pin(async move {
                // Under the interest lock, as subscribe and unsubscribe make their changes: a last unsubscribe
                // between a copy of the list and the changes made from it was undone by this "interested", and the
                // node stayed listed for a channel it had no subscriber of (other nodes relaying to it for nothing).
                let interest = lock(&revived.interest);
                for channel in interest.keys() {
                    revived.change(channel, true);
                }
                true
            })
        }));
        tokio::spawn(inner.clone().relay());
        tokio::spawn(inner.clone().deliver());
        tokio::spawn(inner.clone().interest_changes());
        ClusterTicks { inner }
    }

    /// Ticks published to Redis so far (relayed to other nodes).
    pub fn relayed(&self) -> u64 {
        self.inner.relayed.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Notes that this node's interest in `channel` changed (made in Redis by the interest task).
    fn change(&self, channel: &str, interested: bool) {
        lock(&self.changes).insert(channel.to_string(), interested);
        self.changed.notify_one();
    }

    fn remote(&self) -> std::sync::RwLockWriteGuard<'_, RemoteInterest> {
        self.remote.write().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, node: &str) {
        lock(&self.transit).forget(node);
        self.apply(Change::Dead { node: node.to_string() });
    }

    fn set_remote(&self, node: &str, channel: &str, interested: bool) {
        if node == self.broker.node() {
            return;
        }
        self.apply(Change::Interest { node: node.to_string(), channel: channel.to_string(), interested });
    }

    fn apply(&self, change: Change) {
        let mut remote = self.remote();
        remote.apply(change);
        self.any_remote.store(!remote.is_empty(), Ordering::Relaxed);
    }

    /// Applies this node's interest changes in order: listed, subscribed, announced (or the reverse).
    async fn interest_changes(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                () = self.broker.retired() => return,
            }
            let changes: Vec<(String, bool)> = lock(&self.changes).drain().collect();
            for (channel, interested) in changes {
                self.make_change(channel, interested).await;
            }
        }
    }

    /// Lists (or unlists) this node's interest in `channel`, routes its relayed ticks, and announces it. A change
    /// Redis did not take is made again half a second later (unless a newer one replaced it).
    async fn make_change(self: &Arc<Self>, channel: String, interested: bool) {
        let node = self.broker.node().to_string();
        let mut conn = self.broker.conn();
        let sign = if interested { "+" } else { "-" };
        let mut pipe = redis::pipe();
        if interested {
            // (The node among the nodes again if its entry is gone: a burial must find this list, `scripts::LISTED`.)
            super::scripts::listed(&mut pipe, &node);
        }
        match interested {
            true => pipe.sadd(keys::node_ticks(&node), &channel).ignore(),
            false => pipe.srem(keys::node_ticks(&node), &channel).ignore(),
        };
        pipe.publish(keys::CONTROL, format!("{sign} {node} {channel}")).ignore();
        let handler: Arc<dyn ChannelHandler> = Arc::new(Incoming { inner: self.clone(), channel: channel.clone() });
        match interested {
            true => self.broker.route(&keys::tick_channel(&channel), handler),
            false => self.broker.unsubscribe(&keys::tick_channel(&channel)).await,
        }
        if let Err(err) = pipe.query_async::<()>(&mut conn).await {
            self.broker.failed(&err);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_PAUSE).await;
                // The interest as it is now, not as it was: a newer change may have been made meanwhile (a retried
                // "not interested" must not undo a later subscription's "interested").
                let interest = lock(&me.interest);
                lock(&me.changes).entry(channel.clone()).or_insert(interest.contains_key(&channel));
                drop(interest);
                me.changed.notify_one();
            });
        }
    }

    /// Fans out the ticks other nodes relayed ([`Inner::incoming`]), newest per channel, until the node retires.
    async fn deliver(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.delivered.notified() => {}
                () = self.broker.retired() => return,
            }
            let arrived: Vec<(String, Arrived)> = lock(&self.incoming).drain().collect();
            for (channel, tick) in arrived {
                let now_us = crate::tick_clock_us();
                let times = (tick.sent_time_us, tick.received_us, now_us);
                match self.local.relay(&channel, times, tick.max_age_us, tick.payload) {
                    Ok(Some(fanout)) => fanout.offer(),
                    Ok(None) => {}
                    Err(TooOld) => {
                        self.relays_expired.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn relay(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = self.broker.retired() => return,
            }
            let waiting: Vec<(String, Relayed)> = {
                let mut outgoing = lock(&self.outgoing);
                let waiting =
                    outgoing.iter_mut().filter_map(|(c, slot)| Some((c.clone(), slot.tick.take()?))).collect();
                // Slots of channels no other node wants any more are forgotten (their stamp with them: a channel
                // wanted again starts over, which only a tick stamped before the forgetting could undercut).
                let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
                outgoing.retain(|channel, _| remote.contains(channel));
                waiting
            };
            if waiting.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (channel, tick) in &waiting {
                if let Ok(bytes) = postcard::to_allocvec(tick) {
                    pipe.publish(keys::tick_channel(channel), bytes).ignore();
                }
            }
            let mut conn = self.broker.conn();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    self.relayed.fetch_add(waiting.len() as u64, Ordering::Relaxed);
                }
                // Ticks are latest-wins: the next ones go when the broker is back.
                Err(err) => {
                    self.broker.failed(&err);
                }
            }
        }
    }
}

/// The control channel: other nodes' interest.
struct Control(Arc<Inner>);

impl ChannelHandler for Control {
    fn message(self: Arc<Self>, payload: Vec<u8>) {
        let Ok(text) = std::str::from_utf8(&payload) else { return };
        let mut parts = text.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("+"), Some(node), Some(channel)) => self.0.set_remote(node, channel, true),
            (Some("-"), Some(node), Some(channel)) => self.0.set_remote(node, channel, false),
            (Some("dead"), Some(node), None) => self.0.forget(node),
            _ => tracing::warn!(message = %text, "unknown control message from the broker; skipped"),
        }
    }

    fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()> {
        // On a task of its own: the reload reads Redis (a list of nodes, then each node's channels, each allowed
        // the request timeout) and the Pub/Sub reader waits for this before it reads any message, so a slow Redis
        // held every room's delivery behind it, and the rooms' catch-ups, waiting a grace for those messages,
        // reset their members for nothing. Control messages handled meanwhile are applied again over what the
        // reload reads (`RemoteInterest`), or are in what it reads.
        let inner = self.0.clone();
        tokio::spawn(async move {
            inner.reload().await;
            inner.reassert_until_done();
        });
        Box::pin(std::future::ready(()))
    }
}

/// Ticks of one channel relayed by other nodes.
struct Incoming {
    inner: Arc<Inner>,
    channel: String,
}

impl ChannelHandler for Incoming {
    fn message(self: Arc<Self>, payload: Vec<u8>) {
        let Some((tick, dated)) = Relayed::decode(&payload) else {
            tracing::warn!(channel = %self.channel, "a relayed tick does not decode; skipped");
            return;
        };
        if tick.origin == self.inner.broker.node() {
            return;
        }
        // Its age on the way (beyond the origin's clock offset, `transit`): a tick Redis held back is not sent as
        // fresh, and is dropped before it takes a seq when older than the channel's max age.
        let now_us = crate::tick_clock_us();
        let age_us = if dated { lock(&self.inner.transit).age_us(&tick.origin, tick.received_us, now_us) } else { 0 };
        let arrived = Arrived {
            sent_time_us: tick.sent_time_us,
            received_us: now_us.saturating_sub(age_us),
            max_age_us: tick.max_age_us,
            payload: Bytes::from(tick.payload),
        };
        // Latest wins: one waiting to be fanned out is replaced (conflated, as a subscriber's own queue would).
        lock(&self.inner.incoming).insert(self.channel.clone(), arrived);
        self.inner.delivered.notify_one();
    }

    fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {}) // ticks are latest-wins: nothing to fill
    }
}

impl ClusterTicks {
    /// `fanout` of a tick published here, queued for the other nodes too where one of them has subscribers.
    fn relay_out(&self, channel: &str, fanout: Fanout, sent_time_us: u64, received_us: u64) -> Fanout {
        if self.inner.any_remote.load(Ordering::Relaxed) {
            let remote = self.inner.remote.read().unwrap_or_else(|p| p.into_inner()).contains(channel);
            if remote {
                let tick = Relayed {
                    origin: self.inner.broker.node().to_string(),
                    sent_time_us,
                    received_us,
                    max_age_us: fanout.max_age_us,
                    payload: fanout.tick.payload.to_vec(),
                };
                let mut outgoing = lock(&self.inner.outgoing);
                let slot = outgoing.entry(channel.to_string()).or_default();
                let stamp = (fanout.incarnation, fanout.tick.seq);
                if stamp > slot.stamp {
                    (slot.stamp, slot.tick) = (stamp, Some(tick));
                    drop(outgoing);
                    self.inner.wake.notify_one();
                }
            }
        }
        fanout
    }
}

impl TickHub for ClusterTicks {
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> Result<TickSubscriberId, Failure> {
        let id = self.inner.local.subscribe(channel, channel_id, sink)?;
        let mut interest = lock(&self.inner.interest);
        let count = interest.entry(channel.to_string()).or_default();
        *count += 1;
        if *count == 1 {
            self.inner.change(channel, true);
        }
        Ok(id)
    }

    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId) {
        // Idempotent, as the trait says: a second unsubscribe of one subscription must not take another's interest
        // (the channel would be un-listed while a subscriber here still waits for other nodes' ticks).
        if !self.inner.local.unsubscribed(channel, subscriber) {
            return;
        }
        let mut interest = lock(&self.inner.interest);
        if let Some(count) = interest.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                interest.remove(channel);
                self.inner.change(channel, false);
            }
        }
    }

    fn claim(&self, channel: &str, max_age_us: Option<u64>) -> Result<(), Failure> {
        self.inner.local.claim(channel, max_age_us)
    }

    fn release(&self, channel: &str, max_age_us: Option<u64>) {
        self.inner.local.release(channel, max_age_us)
    }

    fn set_max_age(&self, channel: &str, from: Option<u64>, to: u64) {
        self.inner.local.set_max_age(channel, from, to)
    }

    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout> {
        let fanout = self.inner.local.publish(channel, sent_time_us, received_us, payload)?;
        Some(self.relay_out(channel, fanout, sent_time_us, received_us))
    }

    fn publish_given_up(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout> {
        let fanout = self.inner.local.publish_given_up(channel, sent_time_us, received_us, payload)?;
        Some(self.relay_out(channel, fanout, sent_time_us, received_us))
    }

    fn channels(&self) -> usize {
        self.inner.local.channels()
    }

    fn relays_expired(&self) -> u64 {
        self.inner.relays_expired.load(Ordering::Relaxed)
    }
}

#[path = "ticks_lists.rs"]
mod lists;

#[cfg(test)]
#[path = "ticks_tests.rs"]
mod tests;
