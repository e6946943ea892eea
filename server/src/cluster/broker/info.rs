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
        let seen = Identity {
            run_id: field("run_id:").unwrap_or("").to_string(),
            role: field("role:").unwrap_or("").to_string(),
            replid: field("master_replid:").unwrap_or("").to_string(),
        };
        // A promotion keeps the replication id it had as the second one; a primary that makes or frees its backlog
        // (a first replica, an hour without one) gets a new id and a second one of zeros: not another Redis.
        let promoted = field("master_replid2:").is_some_and(|id| id.bytes().any(|b| b != b'0'));
        if crate::hub::lock::lock(&self.identity).look(seen, promoted) {
            // A restart or a failover that left this node's connections open (an address that keeps sessions):
            // its rooms' rollback check, catch-up and presence repair run at a new Pub/Sub connection. The
            // heartbeat notices only a rollback that lost this node's own latest beat (a failover within a beat of
            // lag does not). After a restart that dropped the connections this makes a second one: one made since
            // the last look may have come before the change, and is not taken for covering it.
            tracing::warn!(
                "the broker is another Redis than before (restarted, or failed over): the Pub/Sub connection is made \
                 again"
            );
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

/// Which Redis `INFO` names: its run id (a new process), role and replication id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    run_id: String,
    role: String,
    replid: String,
}

/// The Redis a node has been reaching ([`Broker::check_broker`]), and one another `INFO` named, seen once.
#[derive(Debug, Default)]
pub(super) struct IdentityWatch {
    accepted: Option<Identity>,
    pending: Option<Identity>,
    unnamed: bool,
}

impl IdentityWatch {
    /// `INFO` named `seen` (`promoted`: its replication id is a promotion's). True when it is another Redis than the
    /// one reached so far (restarted, or a replica promoted, or a primary demoted), seen at two looks in a row (a
    /// proxy answering from several processes would otherwise have every node reconnect at every heartbeat).
    pub(super) fn look(&mut self, seen: Identity, promoted: bool) -> bool {
        if seen.run_id.is_empty() && seen.replid.is_empty() {
            if !std::mem::replace(&mut self.unnamed, true) {
                tracing::warn!(
                    "the broker's INFO names no run_id or master_replid (a proxy?): a failover that keeps this node's \
                     connections cannot be noticed from it"
                );
            }
            return false;
        }
        let Some(accepted) = &self.accepted else {
            self.accepted = Some(seen);
            return false;
        };
        let another = seen.run_id != accepted.run_id
            || seen.role != accepted.role
            || (seen.replid != accepted.replid && promoted);
        if !another {
            (self.accepted, self.pending) = (Some(seen), None);
            return false;
        }
        if self.pending.as_ref() == Some(&seen) {
            (self.accepted, self.pending) = (Some(seen), None);
            return true;
        }
        self.pending = Some(seen);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{Identity, IdentityWatch};

    fn redis(run_id: &str, role: &str, replid: &str) -> Identity {
        Identity { run_id: run_id.into(), role: role.into(), replid: replid.into() }
    }

    /// Another Redis counts once seen twice in a row: a restart (run id), a promotion (a new replication id kept
    /// with the old as the second), a demotion (role). A backlog made or freed (a new id, the second of zeros) and
    /// a proxy's mix of answers do not.
    #[test]
    fn another_redis_is_a_restart_a_promotion_or_a_demotion_seen_twice() {
        let mut watch = IdentityWatch::default();
        assert!(!watch.look(redis("a", "master", "r1"), false), "the first look");
        assert!(!watch.look(redis("a", "master", "r2"), false), "a backlog made: a new id, the second zeros");
        let promoted = redis("a", "master", "r3");
        assert!(!watch.look(promoted.clone(), true), "seen once");
        assert!(watch.look(promoted, true), "a promotion, seen twice");
        let restarted = redis("b", "master", "r3");
        assert!(!watch.look(restarted.clone(), false), "seen once");
        assert!(watch.look(restarted, false), "a restart, seen twice");
        let demoted = redis("b", "slave", "r4");
        assert!(!watch.look(demoted.clone(), false));
        assert!(watch.look(demoted, false), "a demotion");
        // A proxy answering from two processes in turn: never the same other one twice in a row.
        let mut watch = IdentityWatch::default();
        watch.look(redis("p", "master", "r"), false);
        for _ in 0..10 {
            assert!(!watch.look(redis("q", "master", "r"), false));
            assert!(!watch.look(redis("p", "master", "r"), false));
        }
        assert!(!watch.look(redis("", "", ""), false), "nothing named: nothing noticed");
    }
}
