//! A connection's tick channels: ids assigned per connection, datagrams in (publish) and out (subscriptions).
//! Outgoing ticks wait in a [`Conflation`] (one per channel, latest wins) in front of quinn's small datagram
//! buffer; the sender waits for room in that buffer, so a slow path is sent the newest tick, never a backlog.
//! Nothing here waits on a reliable stream.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Instant, SystemTime},
};

use bytes::{BufMut, BytesMut};
use quiver_proto::{ErrorCode, Failure, Limits, Reply, TickHeader};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use web_transport_quinn::{Session, SessionError};

use crate::{
    hub::{
        conflate::{Conflation, Offered},
        ticks::{Tick, TickHub, TickSink, TickSubscriberId},
    },
    rate::TokenBucket,
    session::TickRequest,
    stats::{bump, ServerStats},
};

fn now_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection's outgoing ticks.
#[derive(Debug)]
struct DatagramSink {
    conn: Session,
    waiting: Mutex<(Conflation, HashMap<u64, u64>)>,
    wake: Notify,
    stats: Arc<ServerStats>,
}

fn datagram(channel_id: u64, tick: &Tick) -> Option<bytes::Bytes> {
    let header = TickHeader { channel_id, seq: tick.seq, sent_time_us: tick.sent_time_us };
    let mut datagram = BytesMut::with_capacity(header.encoded_len() + tick.payload.len());
    // Fails only for seq or time above 2^62, which real clocks and counters do not reach.
    header.encode(&mut datagram).ok()?;
    datagram.put_slice(&tick.payload);
    Some(datagram.freeze())
}

impl DatagramSink {
    fn sent(&self, result: &Result<(), SessionError>) {
        match result {
            Ok(()) => bump(&self.stats.ticks_sent),
            Err(SessionError::SendDatagramError(quinn::SendDatagramError::TooLarge)) => {
                bump(&self.stats.ticks_too_large)
            }
            Err(_) => {}
        }
    }
}

impl TickSink for DatagramSink {
    /// Sends at once when quinn has room and no older tick of the channel waits (no task hop, no conflation of
    /// ticks that merely arrived together); otherwise the tick waits in the channel's slot, replacing an older one.
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>) {
        let mut waiting = lock(&self.waiting);
        let (conflation, max_ages) = &mut *waiting;
        if let Some(age) = max_age_us {
            max_ages.insert(channel_id, age);
        }
        if !conflation.is_waiting(channel_id) {
            let Some(datagram) = datagram(channel_id, &tick) else { return };
            if self.conn.datagram_send_buffer_space() >= datagram.len() {
                self.sent(&self.conn.send_datagram(datagram));
                return;
            }
        }
        if conflation.offer(channel_id, tick) != Offered::Queued {
            bump(&self.stats.ticks_conflated);
        }
        drop(waiting);
        self.wake.notify_one();
    }
}

/// Sends waiting ticks as datagrams until the connection ends or `stop` is cancelled.
async fn send_ticks(conn: Session, sink: Arc<DatagramSink>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = sink.wake.notified() => {}
            () = stop.cancelled() => return,
        }
        let (batch, max_ages) = {
            let mut waiting = lock(&sink.waiting);
            let (conflation, max_ages) = &mut *waiting;
            (conflation.take(), max_ages.clone())
        };
        for (channel_id, tick) in batch {
            if max_ages.get(&channel_id).is_some_and(|max| now_us().saturating_sub(tick.received_us) > *max) {
                bump(&sink.stats.ticks_expired);
                continue;
            }
            let Some(datagram) = datagram(channel_id, &tick) else { continue };
            tokio::select! {
                sent = conn.send_datagram_wait(datagram) => {
                    sink.sent(&sent);
                    if matches!(sent, Err(ref err) if !matches!(err, SessionError::SendDatagramError(quinn::SendDatagramError::TooLarge))) {
                        // The connection is gone, or the peer takes no datagrams at all.
                        return;
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Reads datagrams: ticks on claimed channels are published up to `ticks_per_s`, anything else is counted and
/// dropped.
async fn read_ticks(
    conn: Session,
    hub: Arc<dyn TickHub>,
    ids: Arc<RwLock<ChannelIds>>,
    stats: Arc<ServerStats>,
    ticks_per_s: u32,
    stop: CancellationToken,
) {
    let mut rate = TokenBucket::per_second(ticks_per_s, Instant::now());
    loop {
        let datagram = tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(datagram) => datagram,
                // A WebTransport datagram for another (or no) session id: the peer's garbage, not the end.
                Err(SessionError::WebTransportError(web_transport_quinn::WebTransportError::UnknownSession)) => {
                    bump(&stats.datagrams_malformed);
                    continue;
                }
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        if quiver_proto::is_probe(&datagram) {
            continue; // a tail-loss probe (net::probe): it only elicits an ACK
        }
        let Ok((header, payload)) = TickHeader::decode(&datagram) else {
            bump(&stats.datagrams_malformed);
            continue;
        };
        let channel = {
            let ids = ids.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            match ids.claimed.get(&header.channel_id) {
                Some(channel) => channel.clone(),
                None if ids.names.contains_key(&header.channel_id) => {
                    bump(&stats.datagrams_unclaimed);
                    continue;
                }
                None => {
                    bump(&stats.datagrams_unknown_channel);
                    continue;
                }
            }
        };
        if !rate.try_take(Instant::now()) {
            bump(&stats.ticks_rate_limited);
            continue;
        }
        hub.publish(&channel, header.sent_time_us, now_us(), payload);
        bump(&stats.ticks_published);
    }
}

/// The ids this connection's channels have, and which of them it may publish on.
#[derive(Debug, Default)]
struct ChannelIds {
    by_name: HashMap<String, u64>,
    names: HashMap<u64, String>,
    /// Shared names, so that each incoming tick clones a pointer, not a string.
    claimed: HashMap<u64, Arc<str>>,
}

impl ChannelIds {
    fn id(&mut self, channel: &str) -> u64 {
        if let Some(id) = self.by_name.get(channel) {
            return *id;
        }
        // Small ids keep the datagram header at one byte for the first 64 channels.
        let id = self.by_name.len() as u64;
        self.by_name.insert(channel.to_string(), id);
        self.names.insert(id, channel.to_string());
        id
    }
}

/// One connection's subscriptions and publish claims.
#[derive(Debug)]
pub(crate) struct ConnectionTicks {
    hub: Arc<dyn TickHub>,
    limits: Limits,
    ids: Arc<RwLock<ChannelIds>>,
    subscriptions: HashMap<u64, TickSubscriberId>,
    sink: Arc<DatagramSink>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl ConnectionTicks {
    /// Starts the connection's datagram reader and tick sender.
    pub(crate) fn start(conn: &Session, hub: Arc<dyn TickHub>, limits: Limits, stats: Arc<ServerStats>) -> Self {
        let ids = Arc::new(RwLock::new(ChannelIds::default()));
        let sink = Arc::new(DatagramSink {
            conn: conn.clone(),
            waiting: Mutex::new((Conflation::default(), HashMap::new())),
            wake: Notify::new(),
            stats: stats.clone(),
        });
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        tasks.spawn(send_ticks(conn.clone(), sink.clone(), stop.clone()));
        tasks.spawn(read_ticks(conn.clone(), hub.clone(), ids.clone(), stats, limits.ticks_per_s, stop.clone()));
        ConnectionTicks { hub, limits, ids, subscriptions: HashMap::new(), sink, tasks, stop }
    }

    fn ids(&self) -> std::sync::RwLockWriteGuard<'_, ChannelIds> {
        self.ids.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Carries out one tick request and returns the reply.
    pub(crate) fn handle(&mut self, request: TickRequest) -> Result<Reply, Failure> {
        match request {
            TickRequest::Subscribe { channel } => {
                let id = self.ids().id(&channel);
                if !self.subscriptions.contains_key(&id) {
                    if self.subscriptions.len() >= self.limits.max_subscriptions as usize {
                        return Err(Failure::new(
                            ErrorCode::TooManySubscriptions,
                            format!("at most {} subscriptions per connection", self.limits.max_subscriptions),
                        ));
                    }
                    let subscriber = self.hub.subscribe(&channel, id, self.sink.clone());
                    self.subscriptions.insert(id, subscriber);
                }
                Ok(Reply::Subscribed { channel, channel_id: id })
            }
            TickRequest::Unsubscribe { channel } => {
                let id = self.ids.read().unwrap_or_else(|p| p.into_inner()).by_name.get(&channel).copied();
                match id.and_then(|id| self.subscriptions.remove(&id).map(|sub| (id, sub))) {
                    Some((id, subscriber)) => {
                        self.hub.unsubscribe(&channel, subscriber);
                        lock(&self.sink.waiting).0.remove(id);
                        Ok(Reply::Unsubscribed { channel })
                    }
                    None => Err(Failure::new(ErrorCode::NotJoined, format!("not subscribed to {channel}"))),
                }
            }
            TickRequest::Publish { channel, max_age_ms } => {
                let max = self.limits.max_publish_channels as usize;
                let mut ids = self.ids();
                let id = ids.id(&channel);
                if !ids.claimed.contains_key(&id) && ids.claimed.len() >= max {
                    return Err(Failure::new(
                        ErrorCode::TooManyChannels,
                        format!("at most {max} publish channels per connection"),
                    ));
                }
                ids.claimed.insert(id, Arc::from(channel.as_str()));
                drop(ids);
                if let Some(ms) = max_age_ms {
                    self.hub.set_max_age(&channel, u64::from(ms) * 1000);
                }
                Ok(Reply::Publishing { channel, channel_id: id })
            }
        }
    }

    /// Ends every subscription and stops the connection's tick tasks.
    pub(crate) async fn stop(&mut self) {
        let names = self.ids.read().unwrap_or_else(|p| p.into_inner()).names.clone();
        for (id, subscriber) in self.subscriptions.drain() {
            if let Some(channel) = names.get(&id) {
                self.hub.unsubscribe(channel, subscriber);
            }
        }
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
