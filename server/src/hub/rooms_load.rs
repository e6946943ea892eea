//! Reading rooms from the store: a room not in memory, with its first trim planned, and the sweep's walk over the
//! stored rooms for history past its age. On the blocking pool, never on the runtime's threads.

use quiver_proto::{ErrorCode, Failure};

use super::{plan_at_load, LocalRooms, StoredRoom, TrimPlan, AGED_EXAMINED_PER_SWEEP, AGED_LOADS_PER_SWEEP};
use crate::hub::lock::lock;

impl LocalRooms {
    /// The room named `name` as stored (none without a store), read on the blocking pool, with its first trim
    /// planned there too (a room whose history all aged past `history_max_age_s` is read whole for that plan).
    pub(super) async fn load_stored(
        &self,
        name: &str,
        now_us: u64,
        permit: Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>,
    ) -> Result<Option<(StoredRoom, Option<TrimPlan>)>, Failure> {
        let Some(store) = &self.store else { return Ok(None) };
        let window_us = u64::from(self.limits.dedupe_window_s) * 1_000_000;
        let entries = self.limits.dedupe_max_entries as usize;
        let (store, owned, retention) = (store.clone(), name.to_string(), self.retention());
        let loaded = tokio::task::spawn_blocking(move || {
            let _permit = permit; // let go when the read is done, however long the waiter waited
            let stored = store.load_room(&owned, now_us, window_us, entries)?;
            Ok::<_, crate::store::StoreError>(stored.map(|stored| {
                let plan = plan_at_load(&store, &stored, &retention, now_us);
                (stored, plan)
            }))
        })
        .await;
        let failed = |detail: String| {
            tracing::error!(room = %name, %detail, "cannot load a room from the store");
            Failure::new(ErrorCode::Internal, format!("room {name} cannot be read from the store"))
        };
        match loaded {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(err)) => Err(failed(err.to_string())),
            Err(join) => Err(failed(join.to_string())),
        }
    }

    /// Loads a few rooms that are not in memory but hold history older than `history_max_age_s`, found by a walk
    /// over the stored rooms that goes on from sweep to sweep, so that the sweep trims them like the rooms in use
    /// and the next sweep unloads them: rooms nobody uses would otherwise keep their history on disk forever. A
    /// load at `max_rooms` evicts an idle room, as any load does (rooms with members are never evicted).
    pub(super) async fn load_aged(&self, now_us: u64) {
        let (Some(store), Some(max_age_us)) = (&self.store, self.limits.history_max_age_us()) else { return };
        let cutoff_us = now_us.saturating_sub(max_age_us);
        // The walk reads the store too: on the blocking pool, with the names of the rooms in memory (skipped) taken
        // before it, and the cursor (only the sweep moves it) put back after.
        let in_memory: std::collections::HashSet<String> = lock(&self.rooms).keys().cloned().collect();
        let (store, cursor) = (store.clone(), lock(&self.aged_cursor).clone());
        let (examined, loads) = (AGED_EXAMINED_PER_SWEEP, AGED_LOADS_PER_SWEEP);
        let walked = tokio::task::spawn_blocking(move || {
            store.aged_rooms(cursor.as_deref(), examined, loads, cutoff_us, |name| in_memory.contains(name))
        })
        .await;
        let aged = match walked {
            Ok(Ok(aged)) => {
                *lock(&self.aged_cursor) = aged.cursor;
                aged.names
            }
            Ok(Err(err)) => return tracing::error!(%err, "retention: cannot read the stored rooms"),
            Err(err) => return tracing::error!(%err, "retention: the walk over the stored rooms failed"),
        };
        for name in &aged {
            match self.room(name, false, now_us).await {
                // Every room in memory has members: this one waits for the walk's next round.
                Err(err) if err.code == ErrorCode::ServerFull => tracing::debug!(room = %name, %err, "retention"),
                Err(err) => tracing::warn!(room = %name, %err, "retention: cannot load a room with aged history"),
                // Trimmed at once: its deletion in flight keeps it from being evicted by the next one's load
                // (untouched, it was the idlest room in memory: at `max_rooms` the second load evicted the first,
                // untrimmed, every round).
                Ok(_) => {
                    self.trim_room(name, now_us).await;
                }
            }
        }
    }

    /// One room's retention step in a sweep: its cut planned (reading the store, off the room's lock, on the
    /// blocking pool: under it a slow disk held every post and join of the room, and with two of them both runtime
    /// threads), then made. Whether it is idle and empty after (`None`: not in memory).
    pub(super) async fn trim_room(&self, name: &str, now_us: u64) -> Option<bool> {
        if let Some(Some(input)) = self.with_loaded(name, |r| r.trim_input(now_us)) {
            if let Some(plan) = input.plan_off_runtime().await {
                self.with_loaded(name, |r| r.planned(plan));
            }
        }
        // Trimmed here, off the lock: a room loaded from the store (by the walk over aged rooms) is not planned again
        // under its lock, on a runtime thread, at its first use (until 2026-12-08 it was: a review's find).
        self.with_slot(name, |slot| {
            slot.untrimmed = false;
            slot.room.trim_with(now_us, false);
            slot.room.is_idle_and_empty(now_us)
        })
    }
}
