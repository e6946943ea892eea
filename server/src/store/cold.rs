//! Finding rooms that are not in memory and hold history past its age: retention for rooms nobody uses. The
//! sweep trims the rooms in memory; this walks the room records a few at a time (from a cursor, round and round)
//! and names the rooms whose oldest message is older than the cutoff, which the hub then loads so that the sweep
//! trims them like any other room (docs/durability.md, "Retention").

use std::ops::Bound;

use super::{key, read_err, u64_at, Store, StoreError};

/// One step of the walk over room records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AgedRooms {
    /// Rooms (among those examined) whose oldest message was stored before the cutoff.
    pub names: Vec<String>,
    /// Where the next step starts: `None` once the walk reached the last record (it starts over).
    pub cursor: Option<Vec<u8>>,
}

impl Store {
    /// Examines up to `limit` room records after `cursor` (from the first when `None`) and names those whose oldest
    /// stored message is older than `cutoff_us`, at most `max_names` (the walk stops at the last one named, so the
    /// next step goes on after it), skipping the rooms `in_memory` names (the sweep trims those, and the first read
    /// of a busy room's messages can walk the tombstones of everything it deleted). One read of a room's first
    /// message each: nothing is loaded.
    pub fn aged_rooms(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
        max_names: usize,
        cutoff_us: u64,
        in_memory: impl Fn(&str) -> bool,
    ) -> Result<AgedRooms, StoreError> {
        // (Past the id counter's copy, which sorts before every name.)
        let start = Bound::Excluded(cursor.unwrap_or(super::ROOM_COUNTER_KEY).to_vec());
        let mut aged = AgedRooms::default();
        let mut examined = 0;
        for guard in self.keyspaces.rooms.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
            let (name, record) = guard.into_inner().map_err(read_err)?;
            examined += 1;
            aged.cursor = Some(name.to_vec());
            // Room names are UTF-8 (the protocol's); a record that is not is left to the damage checks.
            let (Some(id), Ok(name)) = (u64_at(&record, 0), std::str::from_utf8(&name)) else { continue };
            if in_memory(name) {
                continue;
            }
            let Some(first) = self.keyspaces.messages.range(key(id, 0)..=key(id, u64::MAX)).next() else { continue };
            // One room that cannot be read (a damaged block) is skipped, not the walk: stopping here kept every
            // room after it from being trimmed by age, for good (each sweep starts again at this cursor).
            let message = match first.into_inner() {
                Ok((_, message)) => message,
                Err(err) => {
                    tracing::error!(room = %name, %err, "retention: the room's oldest message cannot be read; skipped");
                    continue;
                }
            };
            if u64_at(&message, 0).is_some_and(|time_us| time_us < cutoff_us) {
                aged.names.push(name.to_string());
                if aged.names.len() >= max_names {
                    return Ok(aged);
                }
            }
        }
        if examined < limit {
            aged.cursor = None;
        }
        Ok(aged)
    }
}
