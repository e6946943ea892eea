//! The memory budget's side of the room map: what rooms retain is accounted as it changes, and over the budget
//! rooms shed (idle ones unloaded, emptied ones removed), with a pass that frees nothing throttled.

use super::*;

/// How the last pass over the rooms to shed memory ended.
#[derive(Debug, Default)]
pub(super) struct ShedState {
    /// It could not get under the low-water mark and gave nothing up (memory no room gives up: the dedupe windows
    /// of durable rooms with members): the total it left, and when. The next pass waits until the total grew by a
    /// tenth of the budget or a second passed, instead of scanning every room at every post.
    stuck: Option<(u64, u64)>,
}

/// The longest a stuck shedding waits before it looks again (µs).
const SHED_RETRY_US: u64 = 1_000_000;

impl LocalRooms {
    pub(super) fn account(&self, before: u64, after: u64) {
        account(&self.counters.retained, before, after);
    }

    /// Takes a room out of the map (its lock held by the caller) and returns its memory to the budget.
    fn remove(&self, rooms: &mut RoomMap, name: &str, slot: &mut Slot) {
        slot.removed = true;
        rooms.remove(name);
        self.removals_of(name).fetch_add(1, Ordering::Release);
        self.account(slot.room.retained_bytes(), 0);
    }

    /// At `max_rooms`, evicts idle rooms for a new one ([`LocalRooms::evict_idle`]); false when none could go. A
    /// scan that found none is not made again for [`FULL_RESCAN_US`]: every room had members, and each new name
    /// (free for anyone to send, and retried by clients) scanned every room under the map's lock.
    /// Not again after a leave, a sweep or a stored post that left its room without members evictable
    /// ([`super::super::release`]; a room still storing a retention deletion or its creation counts at the next
    /// sweep) since the scan began, nor when the scan passed busy rooms by (their lock held:
    /// one may be free a moment later), nor when the clock went back.
    pub(super) fn evict_for_new(&self, rooms: &mut HubGuard<'_, RoomMap>, now_us: u64) -> bool {
        let c = &self.counters;
        let freed = c.freed.load(Ordering::Acquire);
        let full_at = c.full_at_us.load(Ordering::Relaxed);
        let unchanged = c.full_freed.load(Ordering::Relaxed) == freed;
        if full_at != 0 && unchanged && (full_at..full_at + FULL_RESCAN_US).contains(&now_us) {
            return false;
        }
        #[cfg(test)]
        c.full_scans.fetch_add(1, Ordering::Relaxed);
        let (evicted, passed_busy) = self.evict_idle_counting(rooms, "at max_rooms");
        c.full_freed.store(freed, Ordering::Relaxed);
        c.full_at_us.store(if evicted || passed_busy { 0 } else { now_us.max(1) }, Ordering::Relaxed);
        evicted
    }

    /// Evicts the rooms without members idle longest: a 64th of `max_rooms` at once (at least one), so that a
    /// stream of new names does not scan every room for each one. False when no room is without members.
    pub(super) fn evict_idle(&self, rooms: &mut HubGuard<'_, RoomMap>, why: &'static str) -> bool {
        self.evict_idle_counting(rooms, why).0
    }

    /// [`LocalRooms::evict_idle`], and whether it passed rooms by whose lock was held.
    fn evict_idle_counting(&self, rooms: &mut HubGuard<'_, RoomMap>, why: &'static str) -> (bool, bool) {
        let mut busy = false;
        // The idle longest first, but memory rooms that remember posts for the dedupe window after every other: such
        // a room evicted forgets them, and a client's retry after it was stored twice.
        let mut idle: Vec<((bool, u64), String, Shared)> = rooms
            .iter()
            .filter_map(|(name, shared)| {
                let Some(mut slot) = try_lock(shared) else {
                    busy = true;
                    return None;
                };
                let order = (slot.room.eviction_forgets_retries(), slot.room.last_active_us());
                slot.room.evictable().then(|| (order, name.clone(), shared.clone()))
            })
            .collect();
        if idle.is_empty() {
            return (false, busy);
        }
        let batch = (self.budget.max_rooms as usize / 64).max(1).min(idle.len());
        idle.select_nth_unstable_by_key(batch - 1, |(order, _, _)| *order);
        let mut evicted = false;
        for (_, name, shared) in &idle[..batch] {
            let Some(mut slot) = try_lock(shared) else { continue };
            // Checked again under the lock: a joiner that found the room before the map lock was taken may have
            // joined since the scan.
            if !slot.room.evictable() {
                continue;
            }
            let freed = slot.room.retained_bytes();
            self.remove(rooms, name, &mut slot);
            // Shed for the budget only when evicted for it (an eviction for `max_rooms` frees bytes by the way).
            if why == OVER_RETAINED {
                self.counters.shed.fetch_add(freed, Ordering::Relaxed);
            }
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(room = %name, freed, why, "idle room evicted");
            evicted = true;
        }
        (evicted, busy)
    }

    /// Over `retained_bytes`: the rooms idle longest shed their oldest messages (then dedupe entries, memory rooms
    /// only) until the total is under the low-water mark; rooms left without members and empty are removed, then
    /// durable rooms without members unloaded.
    pub(super) fn shed_if_over(&self, now_us: u64) {
        if self.counters.retained.load(Ordering::Relaxed) <= self.budget.retained_bytes {
            return;
        }
        // One shedder at a time; the others go on (the one shedding brings the total down for all).
        let Ok(mut shedding) = self.shedding.try_lock() else { return };
        if let Some((left, at_us)) = shedding.stuck {
            let grown =
                self.counters.retained.load(Ordering::Relaxed) >= left.saturating_add(self.budget.retained_bytes / 10);
            if !grown && now_us.saturating_sub(at_us) < SHED_RETRY_US {
                return;
            }
        }
        #[cfg(test)]
        self.counters.shed_passes.fetch_add(1, Ordering::Relaxed);
        // Bytes given up (by shedding and by evicting rooms that held some; removing empty rooms frees none).
        let progress = || self.counters.shed.load(Ordering::Relaxed);
        let before = progress();
        let low_water = self.budget.retained_low_water();
        let mut rooms: Vec<(u64, String)> = {
            let map = lock(&self.rooms);
            map.iter()
                .filter_map(|(name, shared)| Some((try_lock(shared)?.room.last_active_us(), name.clone())))
                .collect()
        };
        rooms.sort_unstable();
        let mut emptied = Vec::new();
        for (_, name) in rooms {
            let retained = self.counters.retained.load(Ordering::Relaxed);
            if retained <= low_water {
                break;
            }
            let shed = self.with_loaded(&name, |r| (r.shed(retained - low_water), r.is_idle_and_empty(now_us)));
            if let Some((freed, empty)) = shed {
                self.counters.shed.fetch_add(freed, Ordering::Relaxed);
                if empty {
                    emptied.push(name);
                }
            }
        }
        self.remove_if_empty(emptied, now_us);
        // Durable rooms shed no dedupe entry above: those without members leave memory instead, losing nothing
        // (their window is read back from the store when they are next used).
        // One batch per call: when rooms with members hold most of it, more would unload every other room at each
        // post, each to be read back at its next use.
        if self.store.is_some() && self.counters.retained.load(Ordering::Relaxed) > low_water {
            self.evict_idle(&mut lock(&self.rooms), OVER_RETAINED);
        }
        // Stuck only when it freed no byte: a pass that freed some (one batch of idle rooms evicted) runs again at
        // the next post, as before.
        let left = self.counters.retained.load(Ordering::Relaxed);
        shedding.stuck = (left > low_water && progress() == before).then_some((left, now_us));
    }

    /// Removes the named rooms that (still) have no members and nothing retained.
    pub(super) fn remove_if_empty(&self, names: Vec<String>, now_us: u64) {
        if names.is_empty() {
            return;
        }
        let mut rooms = lock(&self.rooms);
        for name in names {
            let Some(shared) = rooms.get(&name).cloned() else { continue };
            let Some(mut slot) = try_lock(&shared) else { continue }; // in use: not empty for long
            if slot.room.is_idle_and_empty(now_us) {
                self.remove(&mut rooms, &name, &mut slot);
                self.counters.removed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if rooms.capacity() > 2 * rooms.len() + 64 {
            rooms.shrink_to_fit();
        }
    }
}

/// A room's retained bytes went from `before` to `after`: `retained`, the count of all rooms, follows.
pub(in crate::hub) fn account(retained: &AtomicU64, before: u64, after: u64) {
    if after >= before {
        retained.fetch_add(after - before, Ordering::Relaxed);
    } else {
        retained.fetch_sub(before - after, Ordering::Relaxed);
    }
}

/// How long after a scan at `max_rooms` found no room to evict a new room is refused without scanning again.
const FULL_RESCAN_US: u64 = 100_000;

/// Why rooms are evicted when over `retained_bytes` (the log's, and what counts their bytes as shed).
const OVER_RETAINED: &str = "over retained_bytes";
