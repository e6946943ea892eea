//! Tick channels: a monotonic seq per channel and its subscribers. Publishing stamps the seq under the channel's
//! lock and returns a [`Fanout`] (the tick and a shared snapshot of the subscribers); the caller offers the tick to
//! each [`TickSink`] after the lock is released. Sinks conflate (latest wins), so there is no queue here. Reached
//! through [`TickHub`] so that a clustered engine (ticks across nodes, DESIGN.md §6) can replace [`LocalTicks`].
//!
//! A channel exists while it has a subscriber or a publisher (a granted Publish claim); the last one to go removes
//! it, and at most `Budget::max_channels` exist at once (a new one beyond is refused with `ServerFull`).

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::{BufMut, Bytes, BytesMut};
use quiver_proto::{varint, ErrorCode, Failure};

use super::{
    lock::{lock, HubGuard},
    members::Members,
};

/// One tick as the server forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The channel's seq, stamped by the server.
    pub seq: u64,
    /// When the publisher sent it (publisher's estimate of the server clock, µs since the Unix epoch).
    pub sent_time_us: u64,
    /// When the server received it ([`crate::tick_clock_us`], monotonic), for the channel's max age.
    pub received_us: u64,
    /// Application payload.
    pub payload: Bytes,
}

/// Where one subscriber's ticks go.
pub trait TickSink: Send + Sync + std::fmt::Debug {
    /// Offers a tick for the subscriber's `channel_id`; must not block (conflate instead). A sink that sends at
    /// once takes the datagram from `datagrams`, shared by the whole fan-out. Called with a [`Fanout`], never under
    /// a hub lock.
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>, datagrams: &mut TickDatagrams);

    /// A subscription of the channel as `channel_id` begins, the channel's ticks so far having seqs up to
    /// `last_seq`: offers of ticks after it follow. Called by [`TickHub::subscribe`] under the channel's lock, at
    /// the moment the subscriber joins its fan-outs, so nothing stamped before (a fan-out that raced an earlier
    /// Unsubscribe of the same id) is taken for new; must be quick and must not call the hub.
    fn open(&self, channel_id: u64, last_seq: u64) {
        let _ = (channel_id, last_seq);
    }
}

/// One tick's datagrams for a whole fan-out, cut from a few allocations: what every subscriber's datagram shares
/// (seq, send time, payload) is encoded once, and each datagram is the subscriber's channel id in front of a copy
/// of it (`quiver_proto::TickHeader`'s layout), in buffers of at most [`TickDatagrams::PER_BUFFER`] datagrams. A
/// datagram quinn holds keeps its whole buffer alive, so the buffers stay small; a sink whose queue is not empty
/// (the datagram would wait there) takes an exact copy instead ([`Tick`]'s own encoding).
#[derive(Debug)]
pub struct TickDatagrams {
    /// Seq, send time and payload, encoded on first use.
    shared: Option<Bytes>,
    /// Room for the datagrams still to come in the current buffer.
    arena: BytesMut,
    /// Datagrams cut from the current buffer so far.
    in_arena: usize,
    /// Datagrams still expected.
    left: usize,
}

impl TickDatagrams {
    /// Datagrams per buffer: one allocation per this many deliveries, and at most this many held by one.
    pub const PER_BUFFER: usize = 32;

    /// For a fan-out to `subscribers` (allocates nothing until the first datagram).
    pub fn new(subscribers: usize) -> TickDatagrams {
        TickDatagrams { shared: None, arena: BytesMut::new(), in_arena: 0, left: subscribers.max(1) }
    }

    /// `tick`'s datagram for `channel_id`. Every call of one fan-out must pass the same tick. `None` only for a
    /// seq, time or id above 2^62, which real counters and clocks do not reach.
    pub fn datagram(&mut self, channel_id: u64, tick: &Tick) -> Option<Bytes> {
        let shared = match &self.shared {
            Some(shared) => shared.clone(),
            None => {
                let shared = encode_shared(tick)?;
                self.shared = Some(shared.clone());
                shared
            }
        };
        let len = varint::encoded_len(channel_id) + shared.len();
        if self.arena.capacity() < len || self.in_arena == Self::PER_BUFFER {
            // The next buffer: room for up to PER_BUFFER more (an id's varint is at most 8 bytes).
            let datagrams = self.left.clamp(1, Self::PER_BUFFER);
            self.arena = BytesMut::with_capacity(datagrams * (8 + shared.len()));
            self.in_arena = 0;
        }
        self.in_arena += 1;
        varint::encode(channel_id, &mut self.arena).ok()?;
        self.arena.put_slice(&shared);
        self.left = self.left.saturating_sub(1);
        Some(self.arena.split().freeze())
    }
}

/// Seq, send time and payload as every subscriber's datagram carries them after its channel id.
fn encode_shared(tick: &Tick) -> Option<Bytes> {
    let mut head = [0u8; 16];
    let mut rest = &mut head[..];
    varint::encode(tick.seq, &mut rest).ok()?;
    varint::encode(tick.sent_time_us, &mut rest).ok()?;
    let head_len = 16 - rest.len();
    let mut shared = BytesMut::with_capacity(head_len + tick.payload.len());
    shared.put_slice(&head[..head_len]);
    shared.put_slice(&tick.payload);
    Some(shared.freeze())
}

/// Identifies one subscription.
pub type TickSubscriberId = u64;

pub use super::members::{Member, Subscribers};

/// A published tick and whom to offer it to.
#[derive(Debug)]
#[must_use = "offer the tick to the subscribers"]
pub struct Fanout {
    /// The tick, with the channel's seq.
    pub tick: Tick,
    /// The channel's max age, if a publisher asked for one.
    pub max_age_us: Option<u64>,
    /// The subscribers when the tick was stamped (a shared snapshot: no allocation per tick).
    pub subscribers: Subscribers,
    /// Which life of the channel stamped it: a channel removed (no publisher, no subscriber left) and made again
    /// numbers its ticks from 1 again, and a later life's number is higher. (The cluster's relay orders ticks by
    /// `(incarnation, seq)`.)
    pub incarnation: u64,
}

impl Fanout {
    /// Offers the tick to every subscriber (call with no hub lock held).
    pub fn offer(self) {
        let mut datagrams = TickDatagrams::new(self.subscribers.len());
        for (_, channel_id, sink) in self.subscribers.iter() {
            sink.offer(*channel_id, self.tick.clone(), self.max_age_us, &mut datagrams);
        }
    }
}

/// Access to tick channels, whatever backs them.
pub trait TickHub: Send + Sync + std::fmt::Debug + 'static {
    /// Subscribes `sink` to `channel` (opening it, [`TickSink::open`]); its ticks are offered with `channel_id`.
    /// `ServerFull` when the channel is new and the server has as many as it allows.
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> Result<TickSubscriberId, Failure>;
    /// Ends a subscription (idempotent).
    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId);
    /// Adds a publisher to `channel` (a granted Publish claim), with the maximum tick age it asked for (the
    /// smallest asked for wins). `ServerFull` like [`TickHub::subscribe`].
    fn claim(&self, channel: &str, max_age_us: Option<u64>) -> Result<(), Failure>;
    /// Removes a publisher added by [`TickHub::claim`] (the connection ended), with the max age its claim holds:
    /// the channel's max age is the smallest of its publishers' *now*, not of every publisher it ever had.
    fn release(&self, channel: &str, max_age_us: Option<u64>);
    /// A repeated claim changed its publisher's max age from `from` to `to` (the smaller of the two).
    fn set_max_age(&self, channel: &str, from: Option<u64>, to: u64);
    /// Stamps the channel's next seq on a tick; returns it with the subscribers to offer it to (`None` when the
    /// channel has no publisher: the claim that let the tick in was released).
    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout>;
    /// [`TickHub::publish`] for a claim given up within its grace (`hub::connection::UNPUBLISH_GRACE`: a tick sent
    /// before the Unpublish, read after it): the claim is released already, so the channel may have no publisher
    /// left; the tick still goes to its subscribers, if it has any.
    fn publish_given_up(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout> {
        self.publish(channel, sent_time_us, received_us, payload)
    }
    /// Channels in use now.
    fn channels(&self) -> usize;

    /// Ticks relayed from other nodes that arrived older than their channel's max age, and were dropped (none on
    /// a single node).
    fn relays_expired(&self) -> u64 {
        0
    }
}

struct Channel {
    last_seq: u64,
    /// This life of the channel ([`Fanout::incarnation`]).
    incarnation: u64,
    /// The max ages its publishers asked for (value → publishers asking it): the smallest applies.
    max_ages: BTreeMap<u64, u32>,
    /// Its subscriptions, in the order they were made, and the snapshot ticks are offered to (made again at the
    /// first publish after a change, so a tick allocates nothing): a subscribe or unsubscribe copies at most one
    /// chunk of them under the shard's lock, however many subscribe (10,000 resubscribing after a restart was
    /// O(n²) when each copied the whole list; one client's churn between ticks copied all n at every tick).
    members: Members,
    publishers: u32,
}

impl Default for Channel {
    fn default() -> Self {
        // (One count for the process: lives of any channel are told apart, which is all the relay needs.)
        static LIVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let incarnation = LIVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Channel { last_seq: 0, incarnation, max_ages: BTreeMap::new(), members: Members::default(), publishers: 0 }
    }
}

impl Channel {
    fn in_use(&self) -> bool {
        self.publishers > 0 || !self.members.is_empty()
    }

    /// The smallest max age a publisher of the channel asked for.
    fn max_age_us(&self) -> Option<u64> {
        self.max_ages.keys().next().copied()
    }

    fn add_max_age(&mut self, max_age_us: Option<u64>) {
        if let Some(max_age_us) = max_age_us {
            *self.max_ages.entry(max_age_us).or_default() += 1;
        }
    }

    fn remove_max_age(&mut self, max_age_us: Option<u64>) {
        let Some(max_age_us) = max_age_us else { return };
        if let std::collections::btree_map::Entry::Occupied(mut entry) = self.max_ages.entry(max_age_us) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// A relayed tick older than its channel's max age on arrival: dropped, and no seq taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// Shards of the channel table: publishes on different channels rarely wait for each other.
const SHARDS: usize = 16;

type Shard = HashMap<String, Channel>;

/// Tick channels in this process's memory, in 16 independently locked shards, at most `max_channels` at once.
pub struct LocalTicks {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    next_subscriber: AtomicU64,
    max_channels: usize,
    channels: AtomicUsize,
    refused: AtomicU64,
}

impl std::fmt::Debug for LocalTicks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTicks").field("channels", &self.channels()).finish()
    }
}

impl Default for LocalTicks {
    /// At most `Budget::default().max_channels` channels.
    fn default() -> Self {
        LocalTicks::new(crate::budget::Budget::default().max_channels)
    }
}

impl LocalTicks {
    /// Ends a subscription; false when it was not there (ended already): a hub counting subscribers on top (the
    /// cluster's interest) counts each once.
    pub(crate) fn unsubscribed(&self, channel: &str, subscriber: TickSubscriberId) -> bool {
        let mut shard = self.shard(channel);
        let removed = shard.get_mut(channel).is_some_and(|c| c.members.remove(subscriber));
        self.remove_if_unused(&mut shard, channel);
        removed
    }

    /// No channels yet; at most `max_channels` at once.
    pub fn new(max_channels: u32) -> Self {
        LocalTicks {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            next_subscriber: AtomicU64::new(1),
            max_channels: max_channels as usize,
            channels: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// New channels refused with `ServerFull` so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stamps the channel's next seq on a tick published on another node (no local claim needed) and returns it
    /// with the channel's subscribers here (`None` when nobody here subscribes). The stricter of the two maximum
    /// ages applies: a tick older than it at `now_us` (its `received_us`, on this node's tick clock, says how old) is
    /// refused before it takes a seq.
    pub fn relay(
        &self,
        channel: &str,
        (sent_time_us, received_us, now_us): (u64, u64, u64),
        max_age_us: Option<u64>,
        payload: Bytes,
    ) -> Result<Option<Fanout>, TooOld> {
        let mut shard = self.shard(channel);
        let Some(c) = shard.get_mut(channel).filter(|c| !c.members.is_empty()) else { return Ok(None) };
        let max_age_us = match (c.max_age_us(), max_age_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if max_age_us.is_some_and(|max| now_us.saturating_sub(received_us) > max) {
            return Err(TooOld);
        }
        c.last_seq += 1;
        Ok(Some(Fanout {
            tick: Tick { seq: c.last_seq, sent_time_us, received_us, payload },
            max_age_us,
            subscribers: c.members.snapshot(),
            incarnation: c.incarnation,
        }))
    }

    fn shard(&self, channel: &str) -> HubGuard<'_, Shard> {
        lock(&self.shards[self.hasher.hash_one(channel) as usize % SHARDS])
    }

    /// Runs `f` on `channel`'s entry, created if the budget has place for it (looked up first: `entry` would
    /// allocate the name on every call).
    fn with_new_channel<T>(
        &self,
        shard: &mut Shard,
        channel: &str,
        f: impl FnOnce(&mut Channel) -> T,
    ) -> Result<T, Failure> {
        if let Some(c) = shard.get_mut(channel) {
            return Ok(f(c));
        }
        let taken = self
            .channels
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.max_channels).then_some(n + 1));
        if taken.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let max = self.max_channels;
            return Err(Failure::new(
                ErrorCode::ServerFull,
                format!("the server has {max} tick channels in use; cannot open channel {channel} now"),
            ));
        }
        Ok(f(shard.entry(channel.to_string()).or_default()))
    }

    /// Removes `channel` if nobody subscribes to or publishes on it any more.
    fn remove_if_unused(&self, shard: &mut Shard, channel: &str) {
        if shard.get(channel).is_some_and(|c| !c.in_use()) {
            shard.remove(channel);
            self.channels.fetch_sub(1, Ordering::Relaxed);
            if shard.capacity() > 2 * shard.len() + 64 {
                shard.shrink_to_fit();
            }
        }
    }
}

impl TickHub for LocalTicks {
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> Result<TickSubscriberId, Failure> {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        self.with_new_channel(&mut self.shard(channel), channel, |c| {
            sink.open(channel_id, c.last_seq);
            c.members.insert((id, channel_id, sink));
        })?;
        Ok(id)
    }

    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId) {
        self.unsubscribed(channel, subscriber);
    }

    fn claim(&self, channel: &str, max_age_us: Option<u64>) -> Result<(), Failure> {
        self.with_new_channel(&mut self.shard(channel), channel, |c| {
            c.publishers += 1;
            c.add_max_age(max_age_us);
        })
    }

    fn set_max_age(&self, channel: &str, from: Option<u64>, to: u64) {
        if let Some(c) = self.shard(channel).get_mut(channel) {
            c.remove_max_age(from);
            c.add_max_age(Some(to));
        }
    }

    fn release(&self, channel: &str, max_age_us: Option<u64>) {
        let mut shard = self.shard(channel);
        if let Some(c) = shard.get_mut(channel) {
            c.publishers = c.publishers.saturating_sub(1);
            c.remove_max_age(max_age_us);
        }
        self.remove_if_unused(&mut shard, channel);
    }

    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout> {
        self.stamp(channel, (sent_time_us, received_us), payload, false)
    }

    fn publish_given_up(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Option<Fanout> {
        self.stamp(channel, (sent_time_us, received_us), payload, true)
    }

    fn channels(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }
}

impl LocalTicks {
    /// [`TickHub::publish`]; on a channel without publishers too when `given_up`.
    fn stamp(
        &self,
        channel: &str,
        (sent_time_us, received_us): (u64, u64),
        payload: Bytes,
        given_up: bool,
    ) -> Option<Fanout> {
        // A copy of its own (one per tick published, not per delivery; made before the shard's lock is taken):
        // `payload` is cut from the buffer quinn read a batch of datagrams into (up to ~64 KiB with GRO), which a tick
        // waiting for a slow subscriber (its slot, or in flight) held whole: ~60 KiB for a 1-byte tick, per channel
        // waiting (until 2026-12-07).
        let payload = Bytes::copy_from_slice(&payload);
        let mut shard = self.shard(channel);
        let c = shard.get_mut(channel).filter(|c| given_up || c.publishers > 0)?;
        c.last_seq += 1;
        Some(Fanout {
            tick: Tick { seq: c.last_seq, sent_time_us, received_us, payload },
            max_age_us: c.max_age_us(),
            subscribers: c.members.snapshot(),
            incarnation: c.incarnation,
        })
    }
}

#[cfg(test)]
#[path = "ticks_tests.rs"]
mod tests;
