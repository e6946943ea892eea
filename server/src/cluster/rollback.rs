//! Redis that came back with older data than this node delivered: restarted from an RDB snapshot or an AOF with
//! `appendfsync everysec`, or failed over to a replica that had not received the latest writes. Within the same
//! epoch the room's seq and op went back: the next posts would get seqs members have seen with other messages, the
//! node would skip them as delivered, and a client resuming from such a seq would be told it missed nothing. Such an
//! event drops the nodes' connections (or the heartbeat drops the Pub/Sub one, finding its stamp gone back or
//! `INFO` naming another Redis: a failover behind an address that keeps sessions drops none), so a live room checks
//! at its Pub/Sub catch-up
//! ([`NodeRoom::on_resubscribed`]): Redis, in one script, compares its copy with what the node delivered (behind in
//! seq or op, or another message at the node's last seq) and starts a new epoch if so (compare and set: the first
//! node to notice wins); the room's subscriptions here are then reset, so members rejoin from their position and
//! are told `recovered: false`.

use super::{
    node_room::{new_epoch, NodeRoom, NodeState, CATCH_UP_RETRY_MAX},
    scripts,
};
use crate::hub::{lock::lock, Delivery};

/// The first pause between two tries of the check; it doubles up to [`CATCH_UP_RETRY_MAX`].
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// What a node had delivered of a room when its Pub/Sub connection came back: the position the rollback check
/// compares Redis with. Taken before the node handles any event of the new connection
/// ([`NodeRoom::on_resubscribed`], called before the Pub/Sub loop reads on; for a channel subscribed again after a
/// stray subscription's end, once its SUBSCRIBE is confirmed, on the same connection, where Redis cannot have gone
/// back meanwhile): until 2026-12-07 the check read the
/// node's position when it ran, after the catch-up's first read, and events delivered meanwhile moved it. A post
/// given a lost seq again then looked delivered (skipped), the next post's seq was the node's last + 1 (delivered),
/// and the check compared Redis with that last one, which Redis held: the rollback went unnoticed for good.
#[derive(Debug, Clone)]
pub(super) struct Delivered {
    epoch: u64,
    last_seq: u64,
    last_op: u64,
    /// The op and time of the message at `last_seq`: "" each when unknown (the room went live through a join after
    /// it: the script then compares seqs and ops only).
    message: (String, String),
}

impl Delivered {
    fn of(state: &NodeState) -> Delivered {
        let message =
            state.last_message.map_or((String::new(), String::new()), |(op, t)| (op.to_string(), t.to_string()));
        Delivered { epoch: state.epoch, last_seq: state.last_seq, last_op: state.last_op, message }
    }

    /// The position a reconnect's check compares Redis with: an earlier catch-up's not answered yet in the room's
    /// epoch, taken over (the node may have delivered since what Redis gave the seqs it lost: a later reconnect's
    /// own position then matched Redis, and the rollback went unnoticed; until 2026-12-07, a review's find), else
    /// the node's now. Kept in `state` until Redis answers.
    pub(super) fn at_reconnect(state: &mut NodeState) -> Delivered {
        let delivered = match state.unchecked.take() {
            Some(earlier) if earlier.epoch == state.epoch => earlier,
            _ => Delivered::of(state),
        };
        state.unchecked = Some(delivered.clone());
        delivered
    }
}

/// True when the room's epoch in Redis is no longer the one this node delivered in (moved by this check, or
/// found moved): its subscriptions here were reset if the room is live in that epoch still. False when Redis holds
/// what the node delivered (events published since are the catch-up's to follow), or the check stopped mattering:
/// the node stopping, or `current` (the catch-up's: no later catch-up took over, with this position) no longer
/// true. Not the room's members here, nor its liveness: a live room its last member left stays live, and its next
/// join goes on from the node's position; and a room reset meanwhile (the events that follow a rollback are out of
/// line: the first resets the room, before the check's first read can answer) is still in the epoch that went
/// back, whose members rejoin from their positions and are told `recovered: true` over the posts that took their
/// seqs. Until 2026-12-07 a reset ended the check (a review's find): the epoch stayed, and the rollback went
/// unnoticed for good.
///
/// A check that fails is tried again until Redis answers it. Until 2026-12-07 it gave up after three tries (750
/// ms), and a rollback then went unnoticed for good: a script that writes can fail where the catch-up's read
/// worked (`READONLY` from a demoted primary the node's address still reaches after a failover, `NOPERM`, `BUSY`),
/// the very failover the check is for, and the posts given seqs and ops again were skipped here as delivered, the
/// members told nothing. Events meanwhile are still skipped, but the check that answers at last sees the room gone
/// back (Redis behind, or another message at the node's last seq) and resets it: members rejoin and are told
/// `recovered: false`.
pub(super) async fn check(room: &NodeRoom, delivered: Delivered, current: impl Fn(&NodeState) -> bool) -> bool {
    if !current(&lock(&room.state)) {
        return false;
    }
    let Delivered { epoch: old, last_seq, last_op, message: (message_op, message_time) } = delivered;
    let mut retry = RETRY;
    let checked: Option<String> = loop {
        let mut conn = room.ctx.broker.conn();
        let checked = scripts::ROLLED_BACK_SCRIPT
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
        let err = match checked {
            Ok(checked) => break checked,
            Err(err) => err,
        };
        room.ctx.broker.failed(&err);
        match retry == RETRY {
            true => tracing::warn!(room = %room.name, %err, "could not check the broker's copy of the room after a \
                reconnect; trying again until it answers"),
            false => tracing::debug!(room = %room.name, %err, "the room's rollback check failed again"),
        }
        if room.ctx.broker.stopped() {
            return false;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(CATCH_UP_RETRY_MAX);
        if !current(&lock(&room.state)) {
            return false;
        }
    };
    {
        let mut state = lock(&room.state);
        if current(&state) {
            state.unchecked = None; // answered
        }
    }
    // The room's meta is gone (flushed, expired): the catch-up resets the room as for a new epoch.
    let Some(epoch) = checked else { return false };
    if epoch == old.to_string() {
        return false;
    }
    let why = "the broker's copy of the room went back (Redis restarted from a snapshot, a lagging replica)";
    tracing::warn!(room = %room.name, last_seq, last_op, %epoch, "{why}: the room is in a new epoch");
    let delivery = {
        let mut state = lock(&room.state);
        match state.live && state.epoch == old {
            true => room.reset(&mut state, why),
            false => Delivery::default(),
        }
    };
    delivery.flush();
    true
}
