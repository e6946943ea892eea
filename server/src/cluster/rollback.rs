//! Redis that came back with older data than this node delivered: restarted from an RDB snapshot or an AOF with
//! `appendfsync everysec`, or failed over to a replica that had not received the latest writes. Within the same
//! epoch the room's seq and op went back: the next posts would get seqs members have seen with other messages, the
//! node would skip them as delivered, and a client resuming from such a seq would be told it missed nothing. Every
//! such event drops the nodes' connections, so a live room checks at its Pub/Sub catch-up
//! ([`NodeRoom::on_resubscribed`]): Redis, in one script, compares its copy with what the node delivered (behind in
//! seq or op, or another message at the node's last seq) and starts a new epoch if so (compare and set: the first
//! node to notice wins); the room's subscriptions here are then reset, so members rejoin from their position and
//! are told `recovered: false`.

use super::{
    node_room::{new_epoch, NodeRoom},
    scripts,
};
use crate::hub::{lock::lock, Delivery};

/// Tries of the check (Redis just answered the catch-up's read), and the pause between two.
const TRIES: usize = 3;
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// True when the room's epoch in Redis is no longer the one this node delivered in (moved by this check, or
/// found moved): its subscriptions here were reset (unless reset meanwhile: `generation`). False when Redis holds
/// what the node delivered (events published since are the catch-up's to follow), or the check failed.
pub(super) async fn check(room: &NodeRoom, generation: u64) -> bool {
    let delivered = {
        let state = lock(&room.state);
        // An unknown message (the room went live through a join after it) is not compared: "" (the script skips it).
        let (op, time_us) =
            state.last_message.map_or((String::new(), String::new()), |(op, t)| (op.to_string(), t.to_string()));
        (state.live && state.generation == generation).then_some((
            state.epoch,
            state.last_seq,
            state.last_op,
            op,
            time_us,
        ))
    };
    let Some((old, last_seq, last_op, message_op, message_time)) = delivered else { return false };
    let mut checked: redis::RedisResult<Option<String>> = Ok(None);
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(RETRY).await;
        }
        let mut conn = room.ctx.broker.conn();
        checked = scripts::ROLLED_BACK_SCRIPT
            .key(&room.keys.meta)
            .key(&room.keys.log)
            .arg(old.to_string())
            .arg(last_seq)
            .arg(last_op)
            .arg(new_epoch().to_string())
            .arg(&message_op)
            .arg(&message_time)
            .invoke_async(&mut conn)
            .await;
        if checked.is_ok() || room.ctx.broker.stopped() {
            break;
        }
    }
    let epoch = match checked {
        Ok(Some(epoch)) => epoch,
        // The room's meta is gone (flushed, expired): the catch-up resets the room as for a new epoch.
        Ok(None) => return false,
        Err(err) => {
            // A rollback, if there was one, goes unnoticed here: the members keep the old epoch, and a client
            // resuming from a seq given again may miss the message given it.
            room.ctx.broker.failed(&err);
            tracing::warn!(room = %room.name, %err, "could not check the broker's copy of the room after a reconnect");
            return false;
        }
    };
    if epoch == old.to_string() {
        return false;
    }
    let why = "the broker's copy of the room went back (Redis restarted from a snapshot, a lagging replica)";
    tracing::warn!(room = %room.name, last_seq, last_op, %epoch, "{why}: the room is in a new epoch");
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
