//! This node's link to Redis: a reconnecting, pipelined connection for commands and scripts; one Pub/Sub connection,
//! re-established with backoff and re-subscribed to every channel a handler holds (each handler is then told, to
//! fill what it may have missed: Pub/Sub is at-most-once); and the heartbeat: every `heartbeat` the node stamps its
//! entry in `q:{nodes}` (on Redis' clock) and buries nodes that have not beaten for `presence_expiry` (their
//! members leave, their tick interest is dropped). A node that finds itself buried (it was cut off from Redis for
//! longer than the expiry) announces its members again.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio_util::sync::CancellationToken;

use super::error::{BrokerError, Unreachable};
use crate::hub::lock::lock;

mod heartbeat;
mod info;

/// A boxed future, as handlers and hooks return them.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a graceful shutdown spends removing the node from Redis at most ([`Broker::retire`]).
const RETIRE_LIMIT: Duration = Duration::from_secs(2);

/// Where a broker is and how it is watched. (Its `Debug` shows the URL without credentials.)
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// A node silent for this long is dead.
    pub presence_expiry: Duration,
    /// How often this node beats.
    pub heartbeat: Duration,
    /// How long a request may take before it fails.
    pub request_timeout: Duration,
    /// Ready although Redis may evict keys (`broker.allow_eviction`).
    pub allow_eviction: bool,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &super::BrokerSettings::redact(&self.url))
            .field("presence_expiry", &self.presence_expiry)
            .field("heartbeat", &self.heartbeat)
            .field("request_timeout", &self.request_timeout)
            .field("allow_eviction", &self.allow_eviction)
            .finish()
    }
}

/// Receives the messages of one Pub/Sub channel.
pub(crate) trait ChannelHandler: Send + Sync {
    /// One message, in the channel's order. Must not wait: the node's Pub/Sub reader hands every channel's
    /// messages over one at a time, so a handler that waits (a gap read from the stream, say) holds every other
    /// channel's messages behind it, and they pile up in the client's buffer meanwhile.
    fn message(self: Arc<Self>, payload: Vec<u8>);
    /// The Pub/Sub connection was re-established: messages may have been missed meanwhile (called before the
    /// messages Redis queued since the subscription are handled: what it starts must not wait for them).
    fn resubscribed(self: Arc<Self>) -> BoxFuture<'static, ()>;
}

/// Cleans up after a dead node; false when it could not finish (the node stays listed, to be tried again).
type DeadHook = Arc<dyn Fn(String) -> BoxFuture<'static, bool> + Send + Sync>;
/// Counts this node's members again after it was buried; false when it could not finish (tried again at the next
/// heartbeat).
type RevivedHook = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;
/// Runs on a task of its own each time the Pub/Sub connection is made (Redis may have come back with other data).
type ConnectedHook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default)]
struct Hooks {
    dead: Vec<DeadHook>,
    revived: Vec<RevivedHook>,
    connected: Vec<ConnectedHook>,
}

/// Commands, Pub/Sub and heartbeat of this node.
pub struct Broker {
    config: BrokerConfig,
    client: redis::Client,
    /// The command connection (replaced when it stops answering: see the heartbeat).
    conn: Mutex<ConnectionManager>,
    node: String,
    handlers: Mutex<HashMap<String, Arc<dyn ChannelHandler>>>,
    sink: Mutex<Option<PubSubSink>>,
    pubsub_up: AtomicBool,
    heartbeat_ok: AtomicBool,
    /// The Redis reached is older than 7.0 (the post script needs `SET … NX GET`).
    too_old: AtomicBool,
    /// The Redis reached may evict keys (a `maxmemory` with a `maxmemory-policy` other than `noeviction`).
    evicting: AtomicBool,
    /// The Redis reached refuses `INFO` (a user whose ACL leaves it out): whether it may evict keys is unknown.
    info_refused: AtomicBool,
    /// `INFO` was read once (the version and eviction flags above are known): not ready before.
    info_read: AtomicBool,
    /// The Redis reached, as `INFO` last named it (its run id and replication id): another one is a restart or a
    /// failover, whose data may be older than what this node delivered.
    identity: Mutex<info::IdentityWatch>,
    hooks: Mutex<Hooks>,
    /// Cancelled when the current Pub/Sub connection stops answering PING: it is dropped and made again.
    pubsub_stale: Mutex<CancellationToken>,
    /// Dead nodes being buried now (by this node).
    burying: Mutex<std::collections::HashSet<String>>,
    /// Redis requests that failed (unreachable, timed out, refused).
    failures: AtomicU64,
    /// Pub/Sub connections made so far (each may have missed what was published before it).
    pubsub_connections: AtomicU64,
    /// Channels subscribed with nothing routing them, being unsubscribed ([`Broker::unsubscribe_orphan`]).
    orphans: Mutex<std::collections::HashSet<String>>,
    /// Stray subscriptions ended so far (each may have undone a join's SUBSCRIBE for a moment).
    orphans_ended: AtomicU64,
    stop: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("node", &self.node).field("ready", &self.ready().is_ok()).finish()
    }
}

/// A stray subscription being ended ([`Broker::unsubscribe_orphan`]): its channel leaves the broker's list when
/// this is dropped, however the task ends.
struct Orphan {
    broker: Arc<Broker>,
    channel: String,
}

impl Drop for Orphan {
    fn drop(&mut self) {
        lock(&self.broker.orphans).remove(&self.channel);
    }
}

/// A handler [`Broker::subscribe`] put in place, taken away again when dropped unless `kept`.
struct Registered<'a> {
    handlers: &'a Mutex<HashMap<String, Arc<dyn ChannelHandler>>>,
    channel: &'a str,
    handler: Arc<dyn ChannelHandler>,
    kept: bool,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut handlers = lock(self.handlers);
        let ours = handlers.get(self.channel).is_some_and(|current| Arc::ptr_eq(current, &self.handler));
        if ours {
            handlers.remove(self.channel);
        }
    }
}

/// How long a Pub/Sub connection must have held for its loss to be met by a reconnect at once (the backoff starts
/// over); one lost sooner is made again after the backoff's pause.
const PUBSUB_HELD: Duration = Duration::from_secs(5);

impl Broker {
    /// A broker client for `config` (nothing is connected before [`Broker::connect`]; the hubs route their
    /// channels first).
    pub fn new(config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        let url_error = |source| BrokerError::Url { url: super::BrokerSettings::redact(&config.url), source };
        let client = redis::Client::open(config.url.as_str()).map_err(url_error)?;
        let conn = Broker::command_connection(&client, &config).map_err(url_error)?;
        let node = format!("{:016x}", rand::random::<u64>());
        let broker = Arc::new(Broker {
            config,
            client,
            conn: Mutex::new(conn),
            node,
            handlers: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            pubsub_up: AtomicBool::new(false),
            heartbeat_ok: AtomicBool::new(false),
            too_old: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            info_refused: AtomicBool::new(false),
            info_read: AtomicBool::new(false),
            identity: Mutex::new(info::IdentityWatch::default()),
            hooks: Mutex::new(Hooks::default()),
            pubsub_stale: Mutex::new(CancellationToken::new()),
            burying: Mutex::new(std::collections::HashSet::new()),
            failures: AtomicU64::new(0),
            pubsub_connections: AtomicU64::new(0),
            orphans: Mutex::new(std::collections::HashSet::new()),
            orphans_ended: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        Ok(broker)
    }

    /// Connects (a Redis that is down now is retried with backoff, and the node reports not ready meanwhile) and
    /// starts the Pub/Sub and heartbeat tasks. Needs a Tokio runtime.
    pub fn connect(self: &Arc<Self>) {
        tokio::spawn(self.clone().pubsub());
        tokio::spawn(self.clone().heartbeat());
        tracing::info!(node = %self.node, url = %super::BrokerSettings::redact(&self.config.url), "broker");
    }

    /// This node's id (random per process).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The settings the broker was started with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// A handle on the command connection (cheap: the connection is shared and pipelined).
    pub(crate) fn conn(&self) -> ConnectionManager {
        lock(&self.conn).clone()
    }

    /// A reconnecting, pipelined command connection (connected on first use).
    fn command_connection(client: &redis::Client, config: &BrokerConfig) -> redis::RedisResult<ConnectionManager> {
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.request_timeout))
            .set_connection_timeout(Some(config.request_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_lazy_with_config(client.clone(), manager)
    }

    /// Counts a failed request.
    pub(crate) fn failed(&self, err: &redis::RedisError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%err, "broker request failed");
    }

    /// Pub/Sub connections made so far: a change means events published meanwhile may not have reached this node.
    pub(crate) fn pubsub_connections(&self) -> u64 {
        self.pubsub_connections.load(Ordering::Acquire)
    }

    /// [`Broker::pubsub_connections`], and the stray subscriptions ended so far: a change means a channel routed
    /// meanwhile may have missed what was published (a join compares them from before its SUBSCRIBE until its
    /// room is live, and catches up).
    pub(crate) fn pubsub_generation(&self) -> (u64, u64) {
        (self.pubsub_connections(), self.orphans_ended.load(Ordering::Acquire))
    }

    /// True once the broker is retired (the node is shutting down).
    pub(crate) fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes once the broker is retired: the node's tasks on it end then.
    pub(crate) async fn retired(&self) {
        self.stop.cancelled().await;
    }

    /// Requests that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Runs `hook` with the id of every node found dead (before its entries are deleted).
    pub(crate) fn on_dead(&self, hook: DeadHook) {
        lock(&self.hooks).dead.push(hook);
    }

    /// Runs `hook` when this node finds it was buried by the others (cut off for longer than the expiry).
    pub(crate) fn on_revived(&self, hook: RevivedHook) {
        lock(&self.hooks).revived.push(hook);
    }

    /// Runs `hook`, on a task of its own, each time the Pub/Sub connection is made (after the channels' handlers
    /// were told).
    pub(crate) fn on_pubsub_connected(&self, hook: ConnectedHook) {
        lock(&self.hooks).connected.push(hook);
    }

    /// Routes `channel`'s messages to `handler` and subscribes to it; returns once Redis confirmed the
    /// subscription (so nothing published after this returns is missed, unless the connection drops, which the
    /// handler is told of).
    pub(crate) async fn subscribe(&self, channel: &str, handler: Arc<dyn ChannelHandler>) -> Result<(), Unreachable> {
        lock(&self.handlers).insert(channel.to_string(), handler.clone());
        // Routed only once confirmed: a subscribe that fails, or is dropped on the way (its join given up when its
        // connection ended), leaves no handler behind (the next Pub/Sub connection would subscribe it again, and the
        // node take the room's events for good). Not a newer subscribe's handler of the channel.
        let mut registered = Registered { handlers: &self.handlers, channel, handler, kept: false };
        let sink = lock(&self.sink).clone();
        let outcome = match sink {
            Some(mut sink) => match tokio::time::timeout(self.config.request_timeout, sink.subscribe(channel)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => {
                    self.failed(&err);
                    Err(Unreachable::Request(err))
                }
                Err(_) => Err(Unreachable::Timeout),
            },
            None => Err(Unreachable::NoPubSub),
        };
        registered.kept = outcome.is_ok();
        outcome
    }

    /// Routes `channel`'s messages to `handler` for as long as the node runs: subscribed now when connected
    /// (without waiting for the confirmation), and after every reconnect.
    pub(crate) fn route(&self, channel: &str, handler: Arc<dyn ChannelHandler>) {
        lock(&self.handlers).insert(channel.to_string(), handler);
        if let Some(mut sink) = lock(&self.sink).clone() {
            let channel = channel.to_string();
            tokio::spawn(async move { sink.subscribe(channel).await });
        }
    }

    /// Stops routing `channel` and unsubscribes (best effort: a reconnect drops it anyway).
    pub(crate) async fn unsubscribe(&self, channel: &str) {
        lock(&self.handlers).remove(channel);
        let sink = lock(&self.sink).clone();
        if let Some(mut sink) = sink {
            let _ = tokio::time::timeout(self.config.request_timeout, sink.unsubscribe(channel)).await;
        }
    }

    /// Stops the tasks and removes this node from Redis (its members leave their rooms): a graceful shutdown. At
    /// most 2 s (`RETIRE_LIMIT`, within the 5 s a supervisor is told to give past the drain, with a second to spare; each call is bounded by the request timeout, but a node in many rooms makes many). Past
    /// it the shutdown goes on, and the other nodes bury this one after the presence expiry.
    pub async fn retire(&self) {
        self.stop.cancel();
        if tokio::time::timeout(RETIRE_LIMIT, self.bury(self.node.clone())).await.is_err() {
            tracing::warn!(
                limit_s = RETIRE_LIMIT.as_secs(),
                "leaving the broker took too long: this node's members leave their rooms at the presence expiry"
            );
        }
    }

    async fn pubsub(self: Arc<Self>) {
        let mut delay = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            let connected = tokio::time::timeout(self.config.request_timeout, self.client.get_async_pubsub()).await;
            let pubsub = match connected {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(err)) => {
                    tracing::warn!(%err, retry_ms = delay.as_millis() as u64, "cannot reach the broker (Pub/Sub)");
                    self.backoff(&mut delay).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!(retry_ms = delay.as_millis() as u64, "the broker did not answer (Pub/Sub)");
                    self.backoff(&mut delay).await;
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels: Vec<String> = lock(&self.handlers).keys().cloned().collect();
            if !channels.is_empty() && !self.subscribe_all(&mut sink, &channels).await {
                self.backoff(&mut delay).await;
                continue;
            }
            *lock(&self.sink) = Some(sink.clone());
            // Routed while this connection was being set up: not in the list above, and found no sink then.
            let known: std::collections::HashSet<&String> = channels.iter().collect();
            let late: Vec<String> = lock(&self.handlers).keys().filter(|c| !known.contains(c)).cloned().collect();
            if !late.is_empty() && !self.subscribe_all(&mut sink, &late).await {
                *lock(&self.sink) = None;
                self.backoff(&mut delay).await;
                continue;
            }
            let stale = CancellationToken::new();
            *lock(&self.pubsub_stale) = stale.clone();
            self.pubsub_up.store(true, Ordering::Relaxed);
            let up_since = tokio::time::Instant::now();
            tracing::info!(channels = channels.len() + late.len(), "broker Pub/Sub connected");
            self.pubsub_connections.fetch_add(1, Ordering::AcqRel);
            let handlers: Vec<_> = lock(&self.handlers).values().cloned().collect();
            for handler in handlers {
                handler.resubscribed().await;
            }
            for hook in lock(&self.hooks).connected.clone() {
                tokio::spawn(hook());
            }
            loop {
                let message = tokio::select! {
                    message = stream.next() => message,
                    () = stale.cancelled() => None,
                    () = self.stop.cancelled() => return,
                };
                let Some(message) = message else { break };
                let channel = message.get_channel_name();
                let handler = lock(&self.handlers).get(channel).cloned();
                match handler {
                    Some(handler) => handler.message(message.get_payload_bytes().to_vec()),
                    None => self.clone().unsubscribe_orphan(channel, sink.clone(), stale.clone()),
                }
            }
            self.pubsub_up.store(false, Ordering::Relaxed);
            *lock(&self.sink) = None;
            tracing::warn!(held_ms = up_since.elapsed().as_millis() as u64, "lost the broker's Pub/Sub connection");
            // (Each connection starts a catch-up per live room and a presence repair: one lost soon after it was made,
            // `CLIENT KILL TYPE pubsub` or an output buffer limit hit again, was made again at once, in a loop.)
            match up_since.elapsed() >= PUBSUB_HELD {
                true => delay = Duration::from_millis(100),
                false => self.backoff(&mut delay).await,
            }
        }
    }

    /// A message came on `channel`, which nothing here routes: a subscription left behind (a join given up while
    /// its SUBSCRIBE was on its way, a sweep's UNSUBSCRIBE that found no connection while a reconnect's list had the
    /// channel). Until 2026-12-06 it stayed, Redis sending the room's every event to this node for nothing, until
    /// the next Pub/Sub reconnect. Unsubscribed now, once at a time per channel; a handler routed meanwhile, whose
    /// SUBSCRIBE this may have undone, is subscribed again and told (a room catches up from its stream).
    /// `stale`: the Pub/Sub connection's own (made again if the subscription cannot be put back: not a newer one).
    fn unsubscribe_orphan(self: Arc<Self>, channel: &str, mut sink: PubSubSink, stale: CancellationToken) {
        if !lock(&self.orphans).insert(channel.to_string()) {
            return;
        }
        let orphan = Orphan { broker: self, channel: channel.to_string() };
        tokio::spawn(async move {
            let (broker, channel) = (&orphan.broker, &orphan.channel);
            let timeout = broker.config.request_timeout;
            // Before the UNSUBSCRIBE: a join under way whose SUBSCRIBE it undoes catches up once its room is live.
            broker.orphans_ended.fetch_add(1, Ordering::AcqRel);
            let _ = tokio::time::timeout(timeout, sink.unsubscribe(channel)).await;
            let handler = lock(&broker.handlers).get(channel).cloned();
            if let Some(handler) = handler {
                tracing::debug!(%channel, "a channel routed while its stray subscription ended: subscribed again");
                match tokio::time::timeout(timeout, sink.subscribe(channel)).await {
                    // Counted again once subscribed: a join that read the count after the first one (its SUBSCRIBE
                    // confirmed before this UNSUBSCRIBE landed) and goes live after this, when the handler's catch-up
                    // finds its room not live yet, would see no change and miss what came in between.
                    Ok(Ok(())) => {
                        broker.orphans_ended.fetch_add(1, Ordering::AcqRel);
                        handler.resubscribed().await;
                    }
                    // Made again: every routed channel subscribed, every handler told.
                    _ => stale.cancel(),
                }
            }
        });
    }

    /// Subscribes to `channels` on a new connection, within the request timeout.
    async fn subscribe_all(&self, sink: &mut PubSubSink, channels: &[String]) -> bool {
        match tokio::time::timeout(self.config.request_timeout, sink.subscribe(channels)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot subscribe at the broker");
                false
            }
            Err(_) => {
                tracing::warn!("the broker did not confirm the subscriptions in time");
                false
            }
        }
    }

    /// PINGs the Pub/Sub connection: one that does not answer (half-open: a failover behind a virtual address, a
    /// NAT that forgot it) would otherwise deliver nothing, silently, for ever.
    /// An error reply (`-LOADING`, `-NOPERM`) is an answer: read as a `Value`, it is `Ok`.
    async fn check_pubsub(&self) {
        let Some(mut sink) = lock(&self.sink).clone() else { return };
        // The connection PINGed is the one given up, not the one there when the PING timed out: made again
        // meanwhile (the old one ended), a healthy new one was dropped (until 2026-12-07, a review's find). Taken
        // after the sink: a new sink is set before its token, so this may be the old one's, already ended.
        let stale = lock(&self.pubsub_stale).clone();
        let answered = tokio::time::timeout(self.config.request_timeout, sink.ping::<redis::Value>()).await;
        if !matches!(answered, Ok(Ok(_))) {
            tracing::warn!("the broker's Pub/Sub connection does not answer PING; making it again");
            stale.cancel();
        }
    }

    async fn backoff(&self, delay: &mut Duration) {
        tokio::select! {
            () = tokio::time::sleep(*delay) => {}
            () = self.stop.cancelled() => {}
        }
        *delay = (*delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests;
