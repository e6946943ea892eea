//! What the Redis reached says of itself (`INFO`): its version, and whether it may evict keys.

use std::sync::atomic::Ordering;

use super::Broker;

impl Broker {
    /// What `INFO` says of the Redis reached, at every heartbeat (off the beat's path): a version older than 7.0
    /// (every post would fail: not ready, logged), and whether it may evict keys. With a `maxmemory` and any
    /// `maxmemory-policy` but `noeviction`, the dedupe keys (the only ones with a TTL while a room has members, so
    /// the first to go under the `volatile-*` policies) can vanish, and a post retried after a lost reply is then
    /// stored twice; meta, log or member keys evicted lose a room's epoch or presence. The node reports itself not
    /// ready meanwhile (`CONFIG SET` changes it at run time), and also while Redis refuses `INFO` (an ACL without
    /// it: unknown is not safe), unless `broker.allow_eviction` is set. Each state clears when `INFO` says so: a
    /// node started against Redis 6 is ready once Redis is upgraded in place (the version was checked once, at the
    /// first beat, and a "too old" stayed for the process's life; a refused `INFO` left the node ready).
    pub(super) async fn check_broker(&self) {
        let mut conn = self.conn();
        let info = match redis::cmd("INFO").query_async::<String>(&mut conn).await {
            Ok(info) => info,
            // Answered with an error (NOPERM: an ACL that leaves INFO out; a proxy that does not pass it on; a busy
            // script): whether Redis may evict keys is unknown, which is not safe. Until INFO answers again.
            // (Any answer that is not INFO's: an error reply, or a reply of another kind, from a proxy.)
            Err(err) if !(err.is_io_error() || err.is_timeout() || err.is_connection_dropped()) => {
                if !self.info_refused.swap(true, Ordering::Relaxed) {
                    match self.config.allow_eviction {
                        false => tracing::error!(%err, "the broker answers INFO with an error: whether it may evict \
                            keys cannot be checked; not ready until it answers (an ACL needs +info) or \
                            broker.allow_eviction is set"),
                        true => tracing::warn!(%err, "the broker answers INFO with an error: whether it may evict \
                            keys cannot be checked (allowed by broker.allow_eviction)"),
                    }
                }
                return;
            }
            // No answer at all: the heartbeat says so, and this is tried again at the next beat.
            Err(_) => return,
        };
        if self.info_refused.swap(false, Ordering::Relaxed) {
            tracing::info!("the broker answers INFO again");
        }
        let field = |name: &str| info.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
        let version = field("redis_version:").unwrap_or("");
        let major: u32 = version.split('.').next().and_then(|m| m.trim().parse().ok()).unwrap_or(0);
        let too_old = major < 7;
        if self.too_old.swap(too_old, Ordering::Relaxed) != too_old {
            match too_old {
                true => tracing::error!(
                    version,
                    "the broker is older than Redis 7.0: posts cannot be sequenced (SET … NX GET); not ready"
                ),
                false => tracing::info!(version, "the broker is Redis 7.0 or newer again"),
            }
        }
        let maxmemory: u64 = field("maxmemory:").and_then(|m| m.parse().ok()).unwrap_or(0);
        let policy = field("maxmemory_policy:").unwrap_or("noeviction");
        let evicting = maxmemory > 0 && policy != "noeviction";
        if self.evicting.swap(evicting, Ordering::Relaxed) != evicting {
            match (evicting, self.config.allow_eviction) {
                (true, false) => tracing::error!(
                    maxmemory,
                    policy,
                    "the broker may evict keys: not ready until its maxmemory-policy is noeviction \
                     (or broker.allow_eviction is set)"
                ),
                (true, true) => tracing::warn!(
                    maxmemory,
                    policy,
                    "the broker may evict keys (allowed by broker.allow_eviction): a post retried after its dedupe \
                     key was evicted is stored twice"
                ),
                (false, _) => tracing::info!(policy, "the broker no longer evicts keys"),
            }
        }
        let identity = format!("{} {}", field("run_id:").unwrap_or(""), field("master_replid:").unwrap_or(""));
        let before = crate::hub::lock::lock(&self.identity).replace(identity.clone());
        if before.is_some_and(|before| before != identity) {
            // A restart or a failover (a replica promoted, the old primary demoted: its replication id changes
            // with either) that left this node's connections open (an address that keeps sessions): its rooms'
            // rollback check, catch-up and presence repair run at a new Pub/Sub connection. The heartbeat notices
            // only a rollback that lost this node's own latest beat (a failover within a beat of lag does not).
            // After a restart that dropped the connections this makes a second one: one made since the last look
            // may have come before the change, and is not taken for covering it.
            tracing::warn!(%identity, "the broker is another Redis than at the last heartbeat (restarted, or failed over): the Pub/Sub connection is made again");
            crate::hub::lock::lock(&self.pubsub_stale).cancel();
        }
        self.info_read.store(true, Ordering::Relaxed);
    }

    /// Ready when INFO was read and allows it, and both connections to Redis work.
    pub fn ready(&self) -> Result<(), &'static str> {
        let allow_eviction = self.config.allow_eviction;
        if self.too_old.load(Ordering::Relaxed) {
            return Err("the broker is older than Redis 7.0, which the room scripts need");
        }
        if self.evicting.load(Ordering::Relaxed) && !allow_eviction {
            return Err("the broker may evict keys (maxmemory-policy is not noeviction): a retried post could be \
                        stored twice once its dedupe key is evicted");
        }
        if self.info_refused.load(Ordering::Relaxed) && !allow_eviction {
            return Err("the broker answers INFO with an error (an ACL that leaves it out refuses INFO: grant the \
                        user +info), so whether it may evict keys cannot be checked; or set broker.allow_eviction");
        }
        // (Until 2026-12-07 a node was ready from its first beat, before INFO said whether Redis may evict keys. An
        // operator who allows eviction is not held up by an INFO that never answers.)
        if !(self.info_read.load(Ordering::Relaxed) || allow_eviction) {
            return Err("the broker's INFO (its version and eviction policy) has not been read yet");
        }
        if !self.pubsub_up.load(Ordering::Relaxed) {
            return Err("the broker's Pub/Sub connection is down (Redis unreachable)");
        }
        if !self.heartbeat_ok.load(Ordering::Relaxed) {
            return Err("the broker's heartbeat fails (Redis unreachable)");
        }
        Ok(())
    }
}
