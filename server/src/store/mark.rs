//! The store's open mark: which durability the server that has the store open runs with, and on which boot of the
//! machine (Linux' `boot_id`), synced at open and removed at a clean close. Under `os` an acknowledged post may be
//! only in the OS's cache: a power cut or kernel crash loses it, and the rooms' last seqs come back lower, so the
//! next posts would get seqs that members saw with other messages, in the same epoch (a member resuming from such a
//! seq would be told it missed nothing). An `os` mark still there at open, from another boot (or an unknown one),
//! says that may have happened: every room gets a new epoch, its history and seqs kept, and its members resume
//! unrecovered. A process crash under `os` (same boot) loses nothing the OS took, and `fsync` loses nothing.

use fjall::PersistMode;

use super::{Durability, Keyspaces, ROOM_COUNTER_KEY};

/// The mark's key in `meta`.
const MARK: &str = "open";

/// Room records given a new epoch per write batch when the machine went down under `os`.
const RENEWAL_BATCH: u64 = 4096;

/// This boot of the machine (`None` where the OS does not say: every `os` mark left behind then counts as a crash
/// of the machine).
pub(super) fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// Gives every room a new epoch if the server before this one ran with `os` and the machine went down under it;
/// then marks the store open by this server. Returns how many rooms got a new epoch.
pub(super) fn open(ks: &Keyspaces, durability: Durability, boot: Option<&str>) -> Result<u64, fjall::Error> {
    let left = ks.meta.get(MARK)?;
    let left = left.as_deref().map(String::from_utf8_lossy);
    let machine_went_down =
        left.as_deref().and_then(|mark| mark.strip_prefix("os ")).is_some_and(|was| Some(was) != boot);
    let mut moved = 0;
    if machine_went_down {
        // In batches of a bounded size (room records are never deleted: a store that saw millions of room names
        // would otherwise be renewed in one batch of that size, in memory, at the start after a crash). A crash
        // midway leaves the mark: the next start renews every room again.
        let mut batch = ks.db.batch();
        for guard in ks.rooms.iter() {
            let (name, record) = guard.into_inner()?;
            if name.as_ref() == ROOM_COUNTER_KEY || record.len() < 16 {
                continue; // (a malformed record is refused when its room is loaded)
            }
            let mut record = record.to_vec();
            record[8..16].copy_from_slice(&rand::random::<u64>().max(1).to_be_bytes());
            batch.insert(&ks.rooms, name, record);
            moved += 1;
            if moved % RENEWAL_BATCH == 0 {
                std::mem::replace(&mut batch, ks.db.batch()).commit()?;
            }
        }
        batch.commit()?;
    }
    ks.meta.insert(MARK, format!("{} {}", durability.name(), boot.unwrap_or("")))?;
    ks.db.persist(PersistMode::SyncAll)?;
    Ok(moved)
}

/// Removes the mark at a clean close (after the writer's last sync).
#[derive(Debug)]
pub(super) struct OpenMark {
    pub(super) keyspaces: Keyspaces,
    /// Tests: leave the mark, as a crash does.
    #[cfg(test)]
    pub(super) crash: std::sync::atomic::AtomicBool,
}

impl OpenMark {
    /// Removes the mark and syncs (the store's writes synced before: a clean close, or an exit sealed by
    /// [`super::Store::seal_for_exit`]).
    pub(super) fn remove(&self) {
        #[cfg(test)]
        if self.crash.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let removed = self.keyspaces.meta.remove(MARK).and_then(|()| self.keyspaces.db.persist(PersistMode::SyncAll));
        if let Err(err) = removed {
            tracing::warn!(?err, "room store: the open mark could not be removed (the next start may renew epochs)");
        }
    }
}

impl Drop for OpenMark {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
#[path = "mark_tests.rs"]
mod tests;
