//! A durable room's retention cut planned off its lock: the store read that finds where the cut goes, made on the
//! blocking pool (as the room is loaded, or by the sweep) and applied under the lock if it still applies.

use std::sync::Arc;

use crate::store::{Extent, Retention, Store, StoredRoom};

/// A retention cut planned off the room's lock (as the room was loaded, [`plan_at_load`], or by the sweep,
/// [`TrimInput::plan`]) from the room as it was then (`extent` from `from` to `upto`, at `at_us`): valid while the
/// room's oldest retained seq is still `from`. Posts stored since only add to what is left after the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TrimPlan {
    from: u64,
    upto: u64,
    cut: u64,
    left: Extent,
    first_time_us: Option<u64>,
    extent: Extent,
    at_us: u64,
}

impl TrimPlan {
    /// The plan as of the room's `first_seq`, `last_seq` and `extent` now: (cut, left, first time), when it still
    /// applies. What was stored after `upto` is left after the cut too (a busy room's sweep plan went stale with
    /// every post delivered during its read, and was thrown away: such a room was never cut by age).
    pub(super) fn now(&self, first_seq: u64, last_seq: u64, extent: Extent) -> Option<(u64, Extent, Option<u64>)> {
        if self.from != first_seq || self.upto > last_seq {
            return None;
        }
        let left = Extent {
            messages: self.left.messages + extent.messages.saturating_sub(self.extent.messages),
            bytes: self.left.bytes + extent.bytes.saturating_sub(self.extent.bytes),
        };
        // Cut through `upto`: the oldest left is one stored since the plan began, if any.
        let first_time_us = self.first_time_us.or((left.messages > 0).then_some(self.at_us));
        Some((self.cut, left, first_time_us))
    }
}

/// What the first trim of a room just loaded as `stored` would cut, planned now: on the blocking pool, where the
/// room is loaded, rather than under the room's lock on a runtime thread (a room idle past `max_age_us` has all of
/// its history to read for the plan, up to `room_history_bytes`). `None` when nothing is to be cut, or the read
/// failed (the trim plans again then).
pub(crate) fn plan_at_load(store: &Store, stored: &StoredRoom, retention: &Retention, now_us: u64) -> Option<TrimPlan> {
    if !needs_trim(stored.extent, stored.first_time_us, retention, now_us) {
        return None;
    }
    // (A failed read: the first trim plans again, under the room's lock, and, failing too, leaves it to the sweep.)
    plan(store, stored.id, (stored.first_seq, stored.last_seq), stored.extent, retention, now_us)
}

/// Whether a room with `extent` retained, its oldest message stored at `first_time_us`, is past a count or bytes
/// bound by the slack a deletion waits for (an eighth), or its oldest message past the age bound.
pub(super) fn needs_trim(extent: Extent, first_time_us: Option<u64>, retention: &Retention, now_us: u64) -> bool {
    over_bounds(extent, retention) || first_time_us.is_some_and(|t| t < now_us.saturating_sub(retention.max_age_us))
}

/// Whether `extent` is past the count or bytes bound by the slack a deletion waits for.
pub(super) fn over_bounds(extent: Extent, retention: &Retention) -> bool {
    let slack = |max: u64| max.saturating_add(max / 8);
    extent.messages > slack(retention.max_messages) || extent.bytes > slack(retention.max_bytes)
}

/// The cut of room `id` (`extent` retained from `from` to `upto`), read from the store (blocking). `None` when the
/// read failed (logged; the caller plans again later).
fn plan(
    store: &Store,
    id: u64,
    (from, upto): (u64, u64),
    extent: Extent,
    retention: &Retention,
    now_us: u64,
) -> Option<TrimPlan> {
    match store.plan_trim(id, from, upto, extent, retention, now_us) {
        Ok((cut, left, first_time_us)) => {
            Some(TrimPlan { from, upto, cut, left, first_time_us, extent, at_us: now_us })
        }
        Err(err) => {
            tracing::error!(room_id = id, %err, "retention read failed");
            None
        }
    }
}

/// What the sweep's trim of a room would read from the store to plan its cut, taken under the room's lock and
/// planned on the blocking pool ([`TrimInput::plan`]), not under the lock on a runtime thread: a slow or stalled
/// disk there held every post and join of the room, and the runtime's threads they run on, for as long as the read.
#[derive(Debug)]
pub(crate) struct TrimInput {
    pub(super) store: Arc<Store>,
    pub(super) id: u64,
    pub(super) from: u64,
    pub(super) upto: u64,
    pub(super) extent: Extent,
    pub(super) retention: Retention,
    pub(super) now_us: u64,
}

impl TrimInput {
    /// The cut (blocking: reads the store). `None` when the read failed (the sweep tries again next time).
    pub(crate) fn plan(self) -> Option<TrimPlan> {
        plan(&self.store, self.id, (self.from, self.upto), self.extent, &self.retention, self.now_us)
    }

    /// [`TrimInput::plan`] on the blocking pool, taking one of the store's turns to read
    /// ([`Store::read_off_runtime`]: posts' plans of many rooms at once, on a slow disk, do not take every blocking
    /// thread). `None` when the read failed.
    pub(crate) async fn plan_off_runtime(self) -> Option<TrimPlan> {
        let store = self.store.clone();
        store.read_off_runtime(move || self.plan()).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan made before more posts were stored still applies (they are left after the cut), until a cut moved
    /// the room's oldest message; one that cut everything it saw leaves the first stored since as the oldest.
    #[test]
    fn a_plan_applies_to_the_room_grown_since_until_a_cut_moved_it() {
        let extent = |messages, bytes| Extent { messages, bytes };
        let plan = TrimPlan {
            from: 1,
            upto: 10,
            cut: 5,
            left: extent(6, 60),
            first_time_us: Some(500),
            extent: extent(10, 100),
            at_us: 900,
        };
        assert_eq!(plan.now(1, 10, extent(10, 100)), Some((5, extent(6, 60), Some(500))), "as planned");
        assert_eq!(plan.now(1, 13, extent(13, 130)), Some((5, extent(9, 90), Some(500))), "three posts since");
        assert_eq!(plan.now(5, 13, extent(9, 90)), None, "cut since: the room's oldest moved");
        assert_eq!(plan.now(1, 9, extent(9, 90)), None, "older than the plan's view (cannot be: refused)");
        let everything = TrimPlan { cut: 11, left: extent(0, 0), first_time_us: None, ..plan };
        assert_eq!(everything.now(1, 12, extent(12, 120)), Some((11, extent(2, 20), Some(900))));
        assert_eq!(everything.now(1, 10, extent(10, 100)), Some((11, extent(0, 0), None)));
    }
}
