//! A room's catch-up after the node's Pub/Sub connection came back: what was published meanwhile is lost to the
//! node, so what is still missing after a grace period is filled from the room's stream (or the room reset).

use std::sync::Arc;

use super::{NodeRoom, NodeState, CATCH_UP_RETRY_MAX, RESUBSCRIBE_GRACE};
use crate::{
    cluster::rollback::Delivered,
    hub::{lock::lock, Delivery},
};

impl NodeRoom {
    /// After a Pub/Sub reconnect: events published while the node was not subscribed are lost to it. What Redis
    /// queued before the reconnect arrives first; after a grace period, what is still missing (the room's `op`
    /// beyond the node's) is filled from the stream, and if presence events are among it, the room's subscriptions
    /// are reset.
    ///
    /// Not an `async fn`: the node's position (what the rollback check compares Redis with) is taken when this is
    /// called, before the Pub/Sub loop handles any event of the new connection, not when the returned future
    /// first runs.
    pub(in crate::cluster) fn on_resubscribed(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send {
        let started = match &mut *lock(&self.state) {
            state if state.live => {
                state.catch_ups += 1;
                Some((state.generation, state.catch_ups, Delivered::at_reconnect(state)))
            }
            _ => None,
        };
        async move {
            if let Some(started) = started {
                self.catch_up(started);
            }
        }
    }

    /// The catch-up of [`Self::on_resubscribed`], on a task of its own: the Pub/Sub loop goes on to what Redis
    /// queued meanwhile.
    fn catch_up(self: Arc<Self>, (generation, mine, delivered): (u64, u64, Delivered)) {
        tokio::spawn(async move {
            // Read until it is read (the events lost meanwhile may be a quiet room's last: no later event would
            // show the gap), or until it no longer matters: the node stopping, the room reset, or a later
            // reconnect's catch-up taking over. Members here or not: a live room its last member left stays live,
            // and its next join goes on from the node's position (until 2026-12-07 one failed read gave up the
            // catch-up and the rollback check of such a room, where a read that worked went on to both).
            let current = |state: &NodeState| state.live && state.generation == generation && state.catch_ups == mine;
            let mut retry = RESUBSCRIBE_GRACE / 4;
            // `None`: reset meanwhile, nothing left to fill; the rollback check still runs.
            let meta = loop {
                let mut conn = self.ctx.broker.conn();
                let read: redis::RedisResult<(Option<String>, Option<u64>, Option<u64>)> = redis::cmd("HMGET")
                    .arg(&self.keys.meta)
                    .arg("epoch")
                    .arg("seq")
                    .arg("op")
                    .query_async(&mut conn)
                    .await;
                match read {
                    Ok(read) => break Some(read),
                    Err(err) => self.ctx.broker.failed(&err),
                }
                if self.ctx.broker.stopped() || lock(&self.state).catch_ups != mine {
                    return; // a later catch-up takes over, with this one's check
                }
                if !current(&lock(&self.state)) {
                    break None;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(CATCH_UP_RETRY_MAX);
            };
            // The check is for the room whatever became of it here (members, liveness, resets: see `check`), until
            // a later catch-up takes it over.
            let checking = |state: &NodeState| state.catch_ups == mine;
            if crate::cluster::rollback::check(&self, delivered, checking).await {
                return;
            }
            let Some(meta) = meta else { return };
            let (epoch, seq, op) = match meta {
                (Some(epoch), Some(seq), Some(op)) => (epoch.parse::<u64>().ok(), seq, op),
                _ => (None, 0, 0),
            };
            tokio::time::sleep(RESUBSCRIBE_GRACE).await;
            // Reset meanwhile: the next join sets the room's position afresh, after this reconnect.
            let behind = |state: &NodeState| {
                state.live && state.generation == generation && (epoch != Some(state.epoch) || state.last_op < op)
            };
            // A gap fill under way holds events that did arrive: they are not missing. It ends (its reads are
            // bounded), and this catch-up then takes the room's fill slot itself, so that events arriving during
            // its own fill wait behind it (held) instead of starting a fill beside it, and are applied after it.
            // Until 2026-12-06 it waited 5 s at most and judged the events held by a slower fill as missed.
            loop {
                {
                    let mut state = lock(&self.state);
                    // (A later reconnect's catch-up takes over, as while the read is retried.)
                    if !behind(&state) || state.catch_ups != mine {
                        return;
                    }
                    if !state.filling {
                        state.filling = true;
                        break;
                    }
                }
                if self.ctx.broker.stopped() {
                    return;
                }
                tokio::time::sleep(RESUBSCRIBE_GRACE / 8).await;
            }
            if epoch == Some(lock(&self.state).epoch) {
                self.fill(seq).await;
            }
            let mut delivery = Delivery::default();
            let next = {
                let mut state = lock(&self.state);
                if state.generation != generation {
                    return; // reset meanwhile (which freed the fill slot); what came after is not this one's
                }
                let next = self.apply_held(&mut state, &mut delivery);
                // An event held meanwhile shows a gap of its own: its fill goes on (and resets where it must).
                if next.is_none() && behind(&state) {
                    delivery.extend(self.reset(&mut state, "events missed while the broker's Pub/Sub was down"));
                }
                next
            };
            delivery.flush();
            if let Some((upto, published)) = next {
                self.fill_then_apply(upto, published, generation).await;
            }
        });
    }
}
