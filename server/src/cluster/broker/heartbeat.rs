//! The node's heartbeat: every `heartbeat` it stamps its entry in `q:{nodes}` (on Redis' clock) and buries the
//! nodes that have not beaten for `presence_expiry`; a node that finds itself buried announces its members again.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use redis::AsyncCommands;

use super::Broker;
use crate::cluster::{keys, scripts};
use crate::hub::lock::lock;

impl Broker {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        // The mark is created by the first beat that reaches Redis, then only refreshed (`SET XX`): burying deletes
        // it, so a beat that finds it gone tells this node it was buried (a late write from before a partition
        // cannot bring it back). The token makes the mark this incarnation's.
        let token = format!("{:016x}", rand::random::<u64>());
        let mut first = true;
        // Whether the mark exists (the beats only check it) or is to be made (the first beat, and after a burial).
        let mut refresh = false;
        // Set when this node found itself buried, until every revive hook succeeded (they are idempotent). The hooks
        // run on a task of their own while the beats go on: a node re-registering many members must not stop
        // beating, or it is buried again meanwhile.
        let announce_due = Arc::new(AtomicBool::new(false));
        let reviving = Arc::new(AtomicBool::new(false));
        let mut failed_beats = 0u32;
        // Since when this node's beats have reached Redis without an outage. Others are buried only once that is
        // `presence_expiry` ago: after an outage of Redis (a restart with its data, a network cut) every node's
        // score is old, and the first node back would otherwise bury every other one, live or not (their members
        // leaving everywhere, then joining again). By then every live node has beaten too. An outage is failed
        // beats for half the expiry or more (a beat lost now and then on a flaky link must not put burials off for
        // good); `failing_since` is when the first beat of the current run of failures was sent.
        let mut beating_since: Option<tokio::time::Instant> = None;
        let mut failing_since: Option<tokio::time::Instant> = None;
        // Redis' time at this node's last beat: a later beat that finds the node's stamp older than that learns that
        // Redis lost its beats since (restarted at once from an older snapshot, failed over to a lagging replica):
        // every node's stamp is then as old as the snapshot, and it waits a whole expiry of beats again before it
        // buries anyone, as after an outage (a restart quicker than half the expiry did not count as one, and the
        // first node back buried the others, live).
        let mut last_beat_ms: Option<u64> = None;
        // And when this node sent that beat: Redis' clock moving ahead of this node's by more than a beat and the
        // request timeout (an NTP step, a failover to a replica whose clock is ahead) makes every other node look
        // silent, live or not; it is taken for an outage too.
        let mut last_beat_at: Option<tokio::time::Instant> = None;
        let slack = self.config.heartbeat + self.config.request_timeout;
        let checking_pubsub = Arc::new(AtomicBool::new(false));
        let looking = Arc::new(AtomicBool::new(false));
        let mut interval = tokio::time::interval(self.config.heartbeat);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let started = tokio::time::Instant::now();
            let (now_ms, marked, stamped_ms) = match self.beat(&token, refresh).await {
                Some(beat) => beat,
                None => {
                    self.heartbeat_ok.store(false, Ordering::Relaxed);
                    failed_beats += 1;
                    failing_since.get_or_insert(started);
                    // A creating beat whose reply was lost may have made the mark: check it from now on (a burial
                    // between that beat and the next would otherwise go unseen under a second `create`).
                    refresh = !first;
                    // A connection that stalled (a partition: requests written and never answered) can stay
                    // wedged after the path heals; three missed beats in a row get a new one.
                    if failed_beats.is_multiple_of(3) {
                        tracing::warn!(failed_beats, "the broker does not answer; making the command connection again");
                        if let Ok(conn) = Broker::command_connection(&self.client, &self.config) {
                            *lock(&self.conn) = conn;
                        }
                    }
                    continue;
                }
            };
            failed_beats = 0;
            if failing_since.take().is_some_and(|failing| failing.elapsed() >= self.config.presence_expiry / 2) {
                beating_since = None;
            }
            let (previous_ms, previous_at) = (last_beat_ms, last_beat_at.replace(started));
            if let Some(jump) = clock_jump(previous_ms.zip(previous_at), (now_ms, started), slack) {
                tracing::warn!(node = %self.node, ?jump, "the broker's clock moved ahead of this node's: no node is buried for a whole expiry");
                beating_since = None;
            }
            if last_beat_ms.replace(now_ms).is_some_and(|last| stamped_ms < last) {
                // (No stamp at all: this node was buried meanwhile, which it says below.)
                if stamped_ms > 0 {
                    tracing::warn!(
                        node = %self.node,
                        "the broker lost this node's latest heartbeats (Redis back from older data?): no node is \
                         buried for a whole expiry; the Pub/Sub connection is made again"
                    );
                    // Its rooms' rollback check, catch-up and presence repair run at a new Pub/Sub connection: a
                    // failover behind an address that keeps sessions (a demoted primary answers the old Pub/Sub
                    // connection still) dropped none, and a rollback went unnoticed (until 2026-12-08, a review's
                    // find).
                    lock(&self.pubsub_stale).cancel();
                }
                beating_since = None;
            }
            if refresh && marked == 0 {
                // The mark was there and is gone: this node was buried, or Redis lost its keys. Its stamp does not
                // tell the second apart any more (an addition to this node's lists stamps it anew when it is gone,
                // `scripts::LISTED`), and every other node's may be as old as Redis' data: no burial for a whole
                // expiry, as after an outage.
                beating_since = None;
            }
            let beating_since = *beating_since.get_or_insert_with(tokio::time::Instant::now);
            self.heartbeat_ok.store(true, Ordering::Relaxed);
            first = false;
            refresh = true;
            if marked == 0 {
                // Buried (or, after a lost reply, maybe never marked): the mark first, then the members again, so
                // that a burial finishing after this is seen by the next beat, which announces them once more.
                tracing::warn!(node = %self.node, "this node was declared dead by the others; announcing its members again");
                refresh = self.beat(&token, false).await.is_some();
                announce_due.store(true, Ordering::Release);
            }
            // Only with the mark made: a burial finishing after the members are announced must show at a check.
            if refresh && announce_due.load(Ordering::Acquire) && !reviving.swap(true, Ordering::AcqRel) {
                let (hooks, due, running) = (lock(&self.hooks).revived.clone(), announce_due.clone(), reviving.clone());
                let stop = self.stop.clone();
                tokio::spawn(async move {
                    due.store(false, Ordering::Release);
                    let mut done = true;
                    for hook in hooks {
                        // Retired meanwhile (the node buried itself): nothing may be counted again after that.
                        if stop.is_cancelled() {
                            break;
                        }
                        done &= hook().await;
                    }
                    if !done {
                        due.store(true, Ordering::Release);
                    }
                    running.store(false, Ordering::Release);
                });
            }
            // Off the beat's path: a PING that takes the whole timeout must not delay the next beat.
            // (And what INFO says: an INFO that stalls must not delay the beat either.)
            if !checking_pubsub.swap(true, Ordering::Relaxed) {
                let (me, flag) = (self.clone(), checking_pubsub.clone());
                tokio::spawn(async move {
                    me.check_pubsub().await;
                    me.check_broker().await;
                    flag.store(false, Ordering::Relaxed);
                });
            }
            if beating_since.elapsed() < self.config.presence_expiry {
                continue;
            }
            // Off the beat's path too: the query waits up to the request timeout, and the next beat waited behind
            // it, so that a live node's stamps on a slow Redis could be three request timeouts and more apart, past
            // an expiry the settings accept (a review's find). One query at a time.
            if !looking.swap(true, Ordering::AcqRel) {
                let (me, flag) = (self.clone(), looking.clone());
                tokio::spawn(async move {
                    me.bury_silent(now_ms).await;
                    flag.store(false, Ordering::Release);
                });
            }
        }
    }

    /// Buries the nodes whose stamps are older than `presence_expiry` at Redis' time `now_ms` (a beat's), each on a
    /// task of its own (a dead node with many rooms must not hold up the next query), and not this node.
    async fn bury_silent(self: Arc<Self>, now_ms: u64) {
        let expiry_ms = self.config.presence_expiry.as_millis() as u64;
        // Redis' own clock: nodes' clocks may disagree.
        let mut conn = self.conn();
        let silent = conn.zrangebyscore(keys::NODES, "-inf", now_ms.saturating_sub(expiry_ms));
        let dead: Vec<String> = match tokio::time::timeout(self.config.request_timeout, silent).await {
            Ok(Ok(dead)) => dead,
            Ok(Err(err)) => return self.failed(&err),
            Err(_) => return,
        };
        if self.stop.is_cancelled() {
            return;
        }
        for node in dead.into_iter().filter(|n| *n != self.node) {
            if lock(&self.burying).insert(node.clone()) {
                tracing::info!(%node, "a node stopped beating: its members leave their rooms");
                let me = self.clone();
                tokio::spawn(async move {
                    me.bury(node.clone()).await;
                    lock(&me.burying).remove(&node);
                });
            }
        }
    }

    /// One heartbeat (`create` the mark, or check that it is still this node's): {Redis' time in ms, 1 when the mark
    /// is this node's, the node's stamp before it}, or `None` when Redis did not answer.
    async fn beat(&self, token: &str, refresh: bool) -> Option<(u64, u8, u64)> {
        let mut conn = self.conn();
        let mut invocation = scripts::BEAT_SCRIPT.prepare_invoke();
        let mode = if refresh { "refresh" } else { "create" };
        invocation.key(keys::NODES).key(keys::node_mark(&self.node)).arg(&self.node).arg(token).arg(mode);
        match tokio::time::timeout(self.config.request_timeout, invocation.invoke_async::<(u64, u8, u64)>(&mut conn))
            .await
        {
            Ok(Ok(beat)) => Some(beat),
            Ok(Err(err)) => {
                self.failed(&err);
                None
            }
            Err(_) => None,
        }
    }

    /// Runs the dead hooks for `node`, then deletes its entries, unless a hook could not finish (the node stays
    /// listed and the next heartbeat tries again). Idempotent: several nodes may bury one.
    pub(super) async fn bury(&self, node: String) {
        // The mark first (and again at the end): a node buried while alive (cut off from Redis for a while) finds
        // itself buried at its next beat and announces its members again, even if this burial stops half-way (this
        // node dies, Redis goes) with some of its members already ended and nothing left to delete the mark.
        let mut conn = self.conn();
        let marked: redis::RedisResult<()> = conn.del(keys::node_mark(&node)).await;
        if let Err(err) = marked {
            return self.failed(&err);
        }
        let hooks = lock(&self.hooks).dead.clone();
        let mut done = true;
        for hook in hooks {
            done &= hook(node.clone()).await;
        }
        if !done {
            tracing::warn!(%node, "could not clean up after a dead node yet; trying again at the next heartbeat");
            // The mark again: a node that came back meanwhile (it made its mark anew and announced its members)
            // may have had some of them ended by the hooks that did run, and it beats now, so no later burial
            // comes; without its mark it finds itself buried at its next beat and announces them again.
            let unmarked: redis::RedisResult<()> = self.conn().del(keys::node_mark(&node)).await;
            if let Err(err) = unmarked {
                self.failed(&err);
            }
            return;
        }
        // Unless it came back meanwhile (`scripts::BURIED`); a node retiring itself is buried whatever its beats.
        let mut conn = self.conn();
        let mut invocation = scripts::BURIED_SCRIPT.prepare_invoke();
        invocation.key(keys::node_rooms(&node)).key(keys::node_ticks(&node)).key(keys::node_mark(&node));
        let retiring = node == self.node;
        let expiry_ms = self.config.presence_expiry.as_millis() as u64;
        invocation.key(keys::NODES).arg(&node).arg(expiry_ms).arg(if retiring { "1" } else { "0" });
        invocation.arg(keys::CONTROL).arg(format!("dead {node}"));
        match invocation.invoke_async::<u8>(&mut conn).await {
            Ok(0) => tracing::warn!(%node, "a node came back while it was buried: it announces its members again"),
            Ok(_) => {}
            Err(err) => self.failed(&err),
        }
    }
}

/// How far Redis' clock ran ahead of this node's between two beats (each Redis' time in ms and when this node sent
/// the beat), when that is more than `slack`.
fn clock_jump(
    previous: Option<(u64, tokio::time::Instant)>,
    (now_ms, sent): (u64, tokio::time::Instant),
    slack: std::time::Duration,
) -> Option<std::time::Duration> {
    let (previous_ms, previous_sent) = previous?;
    let redis = std::time::Duration::from_millis(now_ms.saturating_sub(previous_ms));
    let here = sent.saturating_duration_since(previous_sent);
    (redis > here + slack).then(|| redis - here)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::clock_jump;

    /// A step of Redis' clock ahead of the node's (an NTP step, a failover to a replica whose clock is ahead) made
    /// every other node's stamp look a whole step old: with a step over the expiry, the next beat buried every live
    /// node (their members left everywhere, then joined again). Beats that keep pace, or a clock that goes back
    /// (handled as lost beats), are no jump.
    #[test]
    fn a_step_of_redis_clock_ahead_of_the_nodes_is_seen() {
        let at = tokio::time::Instant::now();
        let slack = Duration::from_secs(3);
        let beat = |ms: u64, after: Duration| clock_jump(Some((1_000_000, at)), (ms, at + after), slack);
        assert_eq!(clock_jump(None, (5_000_000, at), slack), None, "the first beat has nothing to compare");
        assert_eq!(beat(1_001_000, Duration::from_secs(1)), None, "in step");
        assert_eq!(beat(1_003_500, Duration::from_secs(1)), None, "within the slack (a slow reply)");
        assert_eq!(beat(1_031_000, Duration::from_secs(1)), Some(Duration::from_secs(30)), "30 s ahead");
        assert_eq!(beat(900_000, Duration::from_secs(1)), None, "back: not this check's");
    }
}
