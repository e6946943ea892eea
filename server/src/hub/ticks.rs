//! Tick channels: a monotonic seq per channel and its subscribers. Publishing stamps the seq under the channel's
//! lock and returns a [`Fanout`] (the tick and a shared snapshot of the subscribers); the caller offers the tick to
//! each [`TickSink`] after the lock is released. Sinks conflate (latest wins), so there is no queue here. Reached
//! through [`TickHub`] so that a clustered engine (ticks across nodes, DESIGN.md §6) can replace [`LocalTicks`].

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;

use super::lock::{lock, HubGuard};

/// One tick as the server forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The channel's seq, stamped by the server.
    pub seq: u64,
    /// When the publisher sent it (publisher's estimate of the server clock, µs since the Unix epoch).
    pub sent_time_us: u64,
    /// When the server received it (server clock), for the channel's max age.
    pub received_us: u64,
    /// Application payload.
    pub payload: Bytes,
}

/// Where one subscriber's ticks go.
pub trait TickSink: Send + Sync + std::fmt::Debug {
    /// Offers a tick for the subscriber's `channel_id`; must not block (conflate instead). Called by the network
    /// layer with a [`Fanout`], never under a hub lock.
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>);
}

/// Identifies one subscription.
pub type TickSubscriberId = u64;

/// A channel's subscribers: (subscription, the subscriber's channel id, its sink).
pub type Subscribers = Arc<[(TickSubscriberId, u64, Arc<dyn TickSink>)]>;

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
}

/// Access to tick channels, whatever backs them.
pub trait TickHub: Send + Sync + std::fmt::Debug + 'static {
    /// Subscribes `sink` to `channel`; its ticks are offered with `channel_id`.
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> TickSubscriberId;
    /// Ends a subscription (idempotent).
    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId);
    /// Notes a publisher's maximum tick age for `channel` (the smallest asked for wins).
    fn set_max_age(&self, channel: &str, max_age_us: u64);
    /// Stamps the channel's next seq on a tick; returns it with the subscribers to offer it to.
    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Fanout;
}

struct Channel {
    last_seq: u64,
    max_age_us: Option<u64>,
    subscribers: Subscribers,
}

impl Default for Channel {
    fn default() -> Self {
        Channel { last_seq: 0, max_age_us: None, subscribers: Arc::new([]) }
    }
}

/// Shards of the channel table: publishes on different channels rarely wait for each other.
const SHARDS: usize = 16;

/// Tick channels in this process's memory, in 16 independently locked shards.
pub struct LocalTicks {
    shards: [Mutex<HashMap<String, Channel>>; SHARDS],
    hasher: RandomState,
    next_subscriber: AtomicU64,
}

impl std::fmt::Debug for LocalTicks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let channels: usize = self.shards.iter().map(|s| lock(s).len()).sum();
        f.debug_struct("LocalTicks").field("channels", &channels).finish()
    }
}

impl Default for LocalTicks {
    fn default() -> Self {
        LocalTicks {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            next_subscriber: AtomicU64::new(1),
        }
    }
}

impl LocalTicks {
    fn shard(&self, channel: &str) -> HubGuard<'_, HashMap<String, Channel>> {
        lock(&self.shards[self.hasher.hash_one(channel) as usize % SHARDS])
    }
}

/// Runs `f` on `channel`'s entry, created on first use. Looks up before inserting: `entry` would allocate the
/// name on every tick.
fn with_channel<T>(shard: &mut HashMap<String, Channel>, channel: &str, f: impl FnOnce(&mut Channel) -> T) -> T {
    if let Some(c) = shard.get_mut(channel) {
        return f(c);
    }
    f(shard.entry(channel.to_string()).or_default())
}

impl TickHub for LocalTicks {
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> TickSubscriberId {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        with_channel(&mut self.shard(channel), channel, |c| {
            let mut subscribers = c.subscribers.to_vec();
            subscribers.push((id, channel_id, sink));
            c.subscribers = subscribers.into();
        });
        id
    }

    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId) {
        if let Some(c) = self.shard(channel).get_mut(channel) {
            if c.subscribers.iter().any(|(id, _, _)| *id == subscriber) {
                c.subscribers = c.subscribers.iter().filter(|(id, _, _)| *id != subscriber).cloned().collect();
            }
        }
    }

    fn set_max_age(&self, channel: &str, max_age_us: u64) {
        with_channel(&mut self.shard(channel), channel, |c| {
            c.max_age_us = Some(c.max_age_us.map_or(max_age_us, |old| old.min(max_age_us)));
        });
    }

    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> Fanout {
        with_channel(&mut self.shard(channel), channel, |c| {
            c.last_seq += 1;
            Fanout {
                tick: Tick { seq: c.last_seq, sent_time_us, received_us, payload },
                max_age_us: c.max_age_us,
                subscribers: c.subscribers.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Record(Mutex<Vec<(u64, u64, Option<u64>)>>);

    impl TickSink for Record {
        fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>) {
            self.0.lock().unwrap().push((channel_id, tick.seq, max_age_us));
        }
    }

    fn offer(fanout: Fanout) -> u64 {
        for (_, channel_id, sink) in fanout.subscribers.iter() {
            sink.offer(*channel_id, fanout.tick.clone(), fanout.max_age_us);
        }
        fanout.tick.seq
    }

    #[test]
    fn seqs_are_per_channel_and_every_subscriber_gets_each_tick() {
        let hub = LocalTicks::default();
        let (a, b) = (Arc::new(Record::default()), Arc::new(Record::default()));
        let sub_a = hub.subscribe("prices", 1, a.clone());
        hub.subscribe("prices", 9, b.clone());
        assert_eq!(offer(hub.publish("prices", 0, 0, Bytes::new())), 1);
        assert_eq!(offer(hub.publish("other", 0, 0, Bytes::new())), 1);
        hub.set_max_age("prices", 500);
        hub.set_max_age("prices", 900);
        assert_eq!(offer(hub.publish("prices", 0, 0, Bytes::new())), 2);
        hub.unsubscribe("prices", sub_a);
        hub.unsubscribe("prices", sub_a);
        offer(hub.publish("prices", 0, 0, Bytes::new()));
        assert_eq!(*a.0.lock().unwrap(), [(1, 1, None), (1, 2, Some(500))]);
        assert_eq!(*b.0.lock().unwrap(), [(9, 1, None), (9, 2, Some(500)), (9, 3, Some(500))]);
    }

    #[test]
    fn a_fanout_is_a_snapshot_taken_when_the_seq_was_stamped() {
        let hub = LocalTicks::default();
        let a = Arc::new(Record::default());
        let fanout = hub.publish("c", 0, 0, Bytes::new());
        hub.subscribe("c", 0, a.clone());
        assert_eq!((fanout.tick.seq, fanout.subscribers.len()), (1, 0), "a later subscriber is not offered it");
        let fanout = hub.publish("c", 0, 0, Bytes::new());
        assert_eq!(fanout.subscribers.len(), 1);
    }
}
