//! Redis that came back with older data than this node delivered: restarted from an RDB snapshot or an AOF with
//! `appendfsync everysec`, or failed over to a replica that had not received the latest writes. Within the same
//! epoch the room's seq and op went back: the next posts would get seqs members have seen with other messages, the
//! node would skip them as delivered, and a client resuming from such a seq would be told it missed nothing. Every
//! such event drops the nodes' connections, so a live room checks at its Pub/Sub catch-up
//! ([`NodeRoom::on_resubscribed`]): the room then starts a new epoch (compare and set in Redis, the first node to
//! notice wins) and its subscriptions here are reset, so members rejoin from their position and are told
//! `recovered: false`.

use super::{
    node_room::{new_epoch, NodeRoom},
    scripts,
};
use crate::hub::{lock::lock, Delivery};

/// Tries of the switch to a new epoch (Redis just answered the catch-up's read), and the pause between two.
const SWITCH_TRIES: usize = 3;
const SWITCH_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Where Redis' `meta` of the room stands: epoch (unreadable: `None`), seq, op.
pub(super) type Meta = (Option<u64>, u64, u64);

/// True when `meta` is behind what this node delivered in the same epoch: the room was moved to a new epoch (or
/// found moved) and its subscriptions here reset (unless reset meanwhile: `generation`).
pub(super) async fn check(room: &NodeRoom, (epoch, seq, op): Meta, generation: u64) -> bool {
    let behind = {
        let state = lock(&room.state);
        let same = state.live && state.generation == generation && epoch == Some(state.epoch);
        (same && (seq < state.last_seq || op < state.last_op)).then_some((state.epoch, state.last_seq, state.last_op))
    };
    let Some((old, last_seq, last_op)) = behind else { return false };
    let mut switched: redis::RedisResult<Option<String>> = Ok(None);
    for attempt in 0..SWITCH_TRIES {
        if attempt > 0 {
            tokio::time::sleep(SWITCH_RETRY).await;
        }
        let mut conn = room.ctx.broker.conn();
        switched = scripts::ROLLED_BACK_SCRIPT
            .key(&room.keys.meta)
            .arg(old.to_string())
            .arg(last_seq)
            .arg(last_op)
            .arg(new_epoch().to_string())
            .invoke_async(&mut conn)
            .await;
        if switched.is_ok() || room.ctx.broker.stopped() {
            break;
        }
    }
    let why = "Redis came back with older data than this node delivered (a snapshot, a lagging replica)";
    match switched {
        Ok(epoch) => {
            tracing::warn!(room = %room.name, seq, last_seq, op, last_op, ?epoch, "{why}: the room starts a new epoch");
        }
        Err(err) => {
            // The members here still rejoin, told they missed messages, but in the old epoch: a client that
            // resumes elsewhere from a seq given again may miss the message given it (as before this check).
            room.ctx.broker.failed(&err);
            tracing::warn!(room = %room.name, %err, "{why}: could not start a new epoch");
        }
    }
    let delivery = {
        let mut state = lock(&room.state);
        match state.live && state.generation == generation {
            true => room.reset(&mut state, why),
            false => Delivery::default(),
        }
    };
    delivery.flush();
    true
}
