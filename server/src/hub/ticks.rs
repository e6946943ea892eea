//! Tick channels: a monotonic seq per channel and fan-out to every subscriber's [`TickSink`], with no queue of
//! its own (each sink conflates: latest wins). Reached through [`TickHub`] so that a clustered backend (ticks
//! across nodes over Redis Pub/Sub or NATS, DESIGN.md §6) can replace [`LocalTicks`].

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;

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
    /// Offers a tick for the subscriber's `channel_id`; must not block (conflate instead).
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>);
}

/// Identifies one subscription.
pub type TickSubscriberId = u64;

/// Access to tick channels, whatever backs them.
pub trait TickHub: Send + Sync + std::fmt::Debug + 'static {
    /// Subscribes `sink` to `channel`; its ticks are offered with `channel_id`.
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> TickSubscriberId;
    /// Ends a subscription (idempotent).
    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId);
    /// Notes a publisher's maximum tick age for `channel` (the smallest asked for wins).
    fn set_max_age(&self, channel: &str, max_age_us: u64);
    /// Stamps the channel's next seq on a tick and offers it to every subscriber; returns the seq.
    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> u64;
}

#[derive(Debug, Default)]
struct Channel {
    last_seq: u64,
    max_age_us: Option<u64>,
    subscribers: HashMap<TickSubscriberId, (u64, Arc<dyn TickSink>)>,
}

/// Tick channels in this process's memory.
#[derive(Debug, Default)]
pub struct LocalTicks {
    channels: Mutex<HashMap<String, Channel>>,
    next_subscriber: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TickHub for LocalTicks {
    fn subscribe(&self, channel: &str, channel_id: u64, sink: Arc<dyn TickSink>) -> TickSubscriberId {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        lock(&self.channels).entry(channel.to_string()).or_default().subscribers.insert(id, (channel_id, sink));
        id
    }

    fn unsubscribe(&self, channel: &str, subscriber: TickSubscriberId) {
        if let Some(c) = lock(&self.channels).get_mut(channel) {
            c.subscribers.remove(&subscriber);
        }
    }

    fn set_max_age(&self, channel: &str, max_age_us: u64) {
        let mut channels = lock(&self.channels);
        let c = channels.entry(channel.to_string()).or_default();
        c.max_age_us = Some(c.max_age_us.map_or(max_age_us, |old| old.min(max_age_us)));
    }

    fn publish(&self, channel: &str, sent_time_us: u64, received_us: u64, payload: Bytes) -> u64 {
        // Offering never blocks (sinks conflate), so fanning out under the lock keeps one order per channel.
        let mut channels = lock(&self.channels);
        // Look up before inserting: `entry` would allocate the name on every tick.
        if !channels.contains_key(channel) {
            channels.insert(channel.to_string(), Channel::default());
        }
        let Some(c) = channels.get_mut(channel) else { return 0 };
        c.last_seq += 1;
        let tick = Tick { seq: c.last_seq, sent_time_us, received_us, payload };
        for (channel_id, sink) in c.subscribers.values() {
            sink.offer(*channel_id, tick.clone(), c.max_age_us);
        }
        c.last_seq
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

    #[test]
    fn seqs_are_per_channel_and_every_subscriber_gets_each_tick() {
        let hub = LocalTicks::default();
        let (a, b) = (Arc::new(Record::default()), Arc::new(Record::default()));
        let sub_a = hub.subscribe("prices", 1, a.clone());
        hub.subscribe("prices", 9, b.clone());
        assert_eq!(hub.publish("prices", 0, 0, Bytes::new()), 1);
        assert_eq!(hub.publish("other", 0, 0, Bytes::new()), 1);
        hub.set_max_age("prices", 500);
        hub.set_max_age("prices", 900);
        assert_eq!(hub.publish("prices", 0, 0, Bytes::new()), 2);
        hub.unsubscribe("prices", sub_a);
        hub.publish("prices", 0, 0, Bytes::new());
        assert_eq!(*a.0.lock().unwrap(), [(1, 1, None), (1, 2, Some(500))]);
        assert_eq!(*b.0.lock().unwrap(), [(9, 1, None), (9, 2, Some(500)), (9, 3, Some(500))]);
    }
}
