//! Filling a gap in a room's events from its stream: messages Pub/Sub did not bring (it is at-most-once) are read
//! from the room's stream and delivered in order before the events held behind them.

use super::{stream, Delivery, Entry, NodeRoom, GAP_READ_RETRY_LAST};
use crate::hub::lock::lock;

impl NodeRoom {
    /// Reads the messages after the node's last seq up to `upto` from the stream and delivers them (outside the
    /// live bound: [`crate::hub::Outbox::push_catch_up`]); every one must follow on (ops too: a hole between them is a
    /// presence event missed). Resets the room's subscriptions
    /// when that cannot be done.
    pub(super) async fn fill(&self, upto: u64) {
        let (after, epoch, generation) = {
            let state = lock(&self.state);
            (state.last_seq, state.epoch, state.generation)
        };
        if after >= upto {
            return;
        }
        let missing = (upto - after) as usize;
        let read = match missing <= self.ctx.limits.history_max_messages as usize {
            true => self.read_gap((after, upto), missing, (epoch, generation)).await,
            false => None,
        };
        let mut delivery = Delivery::default();
        {
            let mut state = lock(&self.state);
            // Another fill (after a resubscribe, say) may have delivered some or all of it meanwhile: what is left
            // goes on from there, rather than the room being reset for a gap that is not there.
            let reset = state.generation != generation;
            if !state.live || reset || state.last_seq < after || state.last_seq >= upto || state.epoch != epoch {
                return;
            }
            let from = state.last_seq;
            // (Outside the live bound: a gap larger than `room_queue_bytes` overflowed every member at once.)
            state.catching_up = true;
            for Entry { op, event, .. } in read.unwrap_or_default().into_iter().filter(|e| e.event.seq > from) {
                if event.seq != state.last_seq + 1 || op != state.last_op + 1 {
                    break;
                }
                self.deliver(&mut state, op, event, &mut delivery);
            }
            state.catching_up = false;
            if state.last_seq == upto {
                tracing::debug!(room = %self.name, from = after + 1, upto, "gap filled from the stream");
            } else {
                delivery.extend(self.reset(&mut state, "messages missed and not in the stream (or not in order)"));
            }
        }
        delivery.flush();
    }

    /// The stream's messages after `after` up to `upto`, read again (after 100, 200 and 400 ms) while Redis fails: a
    /// passing error (a blip, a failover) reset every member of the room, although the stream held the gap. `None`
    /// once it keeps failing, when the room was reset meanwhile, or when the room is in another epoch than the
    /// node's (the same seqs are other messages then).
    async fn read_gap(
        &self,
        (after, upto): (u64, u64),
        missing: usize,
        (epoch, generation): (u64, u64),
    ) -> Option<Vec<Entry>> {
        let mut pause = std::time::Duration::from_millis(100);
        let keys = (self.keys.meta.as_str(), self.keys.log.as_str());
        loop {
            let mut conn = self.ctx.broker.conn();
            match stream::range_in_epoch(&mut conn, keys, epoch, (after, upto, missing), &self.ctx.codec).await {
                Ok(Some(read)) => return Some(read),
                Ok(None) => {
                    tracing::info!(room = %self.name, "the room's epoch changed under a gap read");
                    return None;
                }
                Err(err) if pause <= GAP_READ_RETRY_LAST => {
                    tracing::debug!(room = %self.name, %err, "a gap read failed; trying again");
                }
                Err(err) => {
                    tracing::warn!(room = %self.name, %err, "a gap read failed four times: the room's members are reset");
                    return None;
                }
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            if lock(&self.state).generation != generation || self.ctx.broker.stopped() {
                return None;
            }
        }
    }
}
