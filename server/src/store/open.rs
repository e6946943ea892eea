//! Opening the store: the checks before fjall touches anything (a keyspace half there), the opening itself (journal
//! replay, the format marker, every keyspace present), and the errors that tell a damaged store from an unusable
//! directory.

use std::{path::Path, sync::Arc};

use super::*;

/// Refuses a store with a keyspace folder that holds tables but lost its `current` file (a partial copy or
/// restore): fjall takes such a folder for one whose creation was cut short and deletes it at open, tables and
/// all, before anything here could refuse the store; checked first, so that the refusal changes nothing.
///
/// And a store whose keyspace 0 (fjall's own, its map of keyspace names to folders) lost its `current` file or is
/// gone while other keyspaces are there: fjall opens it as a new, empty map, finds every other keyspace
/// unreferenced and deletes it, and the store opened empty (a review's find). fjall makes keyspace 0 before any
/// other, so no creation cut short leaves it so.
fn refuse_half_there_keyspaces(path: &Path) -> Result<(), StoreError> {
    let Ok(folders) = std::fs::read_dir(path.join("keyspaces")) else { return Ok(()) };
    let folders: Vec<_> = folders.flatten().collect();
    let map = path.join("keyspaces").join("0");
    let others = folders.iter().any(|folder| folder.file_name() != "0" && folder.path().is_dir());
    if others && !map.join("current").exists() {
        let detail = format!(
            "{} (the map of keyspace names) is missing or has no `current` file while other keyspaces are there \
             (a partial copy or restore?)",
            map.display()
        );
        return Err(damaged(path, detail));
    }
    for folder in folders {
        let dir = folder.path();
        if !dir.is_dir() || dir.join("current").exists() {
            continue;
        }
        let has_tables = std::fs::read_dir(dir.join("tables")).is_ok_and(|mut tables| tables.next().is_some());
        if has_tables {
            let detail = format!("{} holds tables but no `current` file (a partial copy or restore?)", dir.display());
            return Err(damaged(path, detail));
        }
    }
    Ok(())
}

fn damaged(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged { path: path.to_path_buf(), detail: detail.to_string() }
}

/// Why the store at `path` could not be opened: the I/O errors that say nothing about its bytes (permissions, too
/// many open files, a full disk, a device error) as [`StoreError::Open`], fixable in place; the rest (checksums,
/// formats, bytes that do not decode, a file that ends early) as [`StoreError::Damaged`], whose advice is to move
/// the store aside. Moving a sound store aside over a low `ulimit -n` would lose every room's epoch and history.
pub(super) fn open_failed(path: &Path, err: fjall::Error) -> StoreError {
    let open = |detail: String| StoreError::Open { path: path.to_path_buf(), detail };
    match &err {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) if environmental(io) => {
            open(io.to_string())
        }
        // (A server takes the data directory's lock first and names its holder's pid; a tool may open the store
        // without it.)
        fjall::Error::Locked => open(
            "the store is open in another process (a server on this data directory, or a tool that opened the store \
             itself): stop it, then try again"
                .into(),
        ),
        _ => damaged(path, format!("{err:?}")),
    }
}

/// An I/O error about the machine rather than the store's files: listed, so that anything else (a file missing
/// from the store, bytes that do not decode, a file that ends early) stays damage.
fn environmental(io: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    // EPERM, EIO, ENOMEM, EACCES, EBUSY, ENFILE, EMFILE, ENOSPC, EROFS (the same numbers on Linux and macOS).
    matches!(io.raw_os_error(), Some(1 | 5 | 12 | 13 | 16 | 23 | 24 | 28 | 30))
        || matches!(
            io.kind(),
            K::PermissionDenied
                | K::StorageFull
                | K::QuotaExceeded
                | K::ReadOnlyFilesystem
                | K::OutOfMemory
                | K::ResourceBusy
        )
}

impl Store {
    /// Opens (creating it when absent) the store in `data_dir/store` with the given durability (not `Memory`),
    /// and starts its writer thread. A store that cannot be read is refused with [`StoreError::Damaged`]; nothing
    /// is changed or wiped.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Arc<Store>, StoreError> {
        Store::open_with(data_dir, durability, None)
    }

    /// Like [`Store::open`], in a data directory this process holds `lock` of: the store keeps it until it is
    /// closed.
    pub fn open_locked(
        lock: Arc<crate::datadir::DataDirLock>,
        durability: Durability,
    ) -> Result<Arc<Store>, StoreError> {
        let data_dir = lock.dir().to_path_buf();
        Store::open_with(&data_dir, durability, Some(lock))
    }

    fn open_with(
        data_dir: &Path,
        durability: Durability,
        lock: Option<Arc<crate::datadir::DataDirLock>>,
    ) -> Result<Arc<Store>, StoreError> {
        Store::open_at_boot(data_dir, durability, lock, super::mark::boot_id().as_deref())
    }

    /// [`Store::open`] on the machine's boot `boot` (tests name boots of their own).
    pub(super) fn open_at_boot(
        data_dir: &Path,
        durability: Durability,
        lock: Option<Arc<crate::datadir::DataDirLock>>,
        boot: Option<&str>,
    ) -> Result<Arc<Store>, StoreError> {
        let path = data_dir.join(STORE_DIR);
        let existed = path.exists();
        std::fs::create_dir_all(&path)
            .map_err(|err| StoreError::Open { path: path.clone(), detail: err.to_string() })?;
        // A new store's entry in the data directory synced: fjall syncs the store's directory and what is inside it,
        // not the entry naming it, which a power cut soon after a first start could lose (the next start then made
        // an empty store, with new epochs, under posts acknowledged `fsync`). (Untested: it takes a power cut.)
        #[cfg(unix)]
        if !existed {
            std::fs::File::open(data_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|err| StoreError::Open { path: data_dir.to_path_buf(), detail: err.to_string() })?;
        }
        if existed {
            refuse_half_there_keyspaces(&path)?;
            // Before fjall replays the journals: it would cut one damaged in its middle as if it were a torn tail.
            match super::journal_scan::damaged_journal(&path) {
                Ok(Some(damage)) => return Err(damaged(&path, damage)),
                Ok(None) => {}
                Err(err) => return Err(StoreError::Open { path: path.clone(), detail: err.to_string() }),
            }
        }
        // fjall has panicked on some damaged bytes (debug assertions): a panic on open is damage too.
        // Journals are replayed at start: fjall's smallest bound (64 MiB, default 512 MiB) keeps that replay short
        // after a crash, whatever the store's size (docs/durability.md, "Restarts").
        let builder = || {
            Database::builder(&path)
                .max_journaling_size(MAX_JOURNALING_BYTES)
                .cache_size(CACHE_BYTES)
                .worker_threads(store_workers(std::thread::available_parallelism().map_or(1, usize::from)))
                .open()
        };
        let opened =
            std::panic::catch_unwind(builder).map_err(|_| damaged(&path, "the database panicked while reading it"))?;
        let db = opened.map_err(|err| open_failed(&path, err))?;
        let unreadable = |err: fjall::Error| open_failed(&path, err);
        // Asked before they are opened (opening one that is missing makes it, empty, for good): a store with a format
        // marker was made with all of them, so one missing now was lost (a partial copy or restore, a damaged
        // directory; fjall itself removes a keyspace folder it finds half there), with its rooms' history. Refused
        // before any is made: until 2026-12-06 the missing one was made first, and the next start (a service
        // manager's restart a second later) found nothing missing and opened the store without it.
        let missing: Vec<&str> = KEYSPACES.into_iter().filter(|name| !db.keyspace_exists(name)).collect();
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let open = |name: &str| db.keyspace(name, options).map_err(unreadable);
        let format = match missing.contains(&"meta") {
            false => open("meta")?.get("format").map_err(unreadable)?,
            true => None,
        };
        // Format 3 added `dedupe_runs`: an older store may lack it.
        let lost = |name: &&str| !(*name == "dedupe_runs" && format.as_deref().is_some_and(|f| f != FORMAT));
        let lost: Vec<&str> = missing.iter().copied().filter(lost).collect();
        if format.is_some() && !lost.is_empty() {
            return Err(damaged(&path, format!("keyspace(s) {} missing (their records were lost)", lost.join(", "))));
        }
        if format.is_none() && existed {
            for name in KEYSPACES.into_iter().filter(|name| *name != "meta" && !missing.contains(name)) {
                if !open(name)?.is_empty().map_err(unreadable)? {
                    return Err(damaged(&path, "rooms without a format marker (its journal lost records)"));
                }
            }
        }
        let keyspaces = Keyspaces {
            meta: open("meta")?,
            rooms: open("rooms")?,
            messages: open("messages")?,
            dedupe_runs: open("dedupe_runs")?,
            dedupe: open("dedupe")?,
            db: db.clone(),
        };
        // The marker is written (a new store's, an older format's upgraded) once every check below has passed: a
        // store refused is left as it was.
        let write_marker = match format {
            Some(format) if format.as_ref() == FORMAT => None,
            Some(format) if OLDER_FORMATS.contains(&format.as_ref()) => Some(Some(format)),
            Some(other) => {
                let other = String::from_utf8_lossy(&other);
                let ours = String::from_utf8_lossy(FORMAT);
                return Err(damaged(&path, format!("format {other:?}, this server reads {ours:?}")));
            }
            None => Some(None),
        };
        let counter = |bytes: Option<fjall::Slice>| match bytes {
            Some(bytes) => u64_at(&bytes, 0).ok_or_else(|| damaged(&path, "next_room_id is not a u64")),
            None => Ok(1),
        };
        // The larger of the two copies: each keyspace is flushed on its own, and a lost journal leaves each as
        // of its last flush.
        let next_room_id = counter(keyspaces.meta.get("next_room_id").map_err(unreadable)?)?
            .max(counter(keyspaces.rooms.get(ROOM_COUNTER_KEY).map_err(unreadable)?)?);
        // Cheap consistency checks (no scan): a room id at or past the counter means records were lost.
        let newest_id = keyspaces.newest_room_id().map_err(unreadable)?;
        if newest_id.is_some_and(|id| id >= next_room_id) {
            return Err(damaged(&path, format!("room id {newest_id:?} at or past the id counter {next_room_id}")));
        }
        if let Some(was) = write_marker {
            keyspaces.meta.insert("format", FORMAT).map_err(unreadable)?;
            db.persist(PersistMode::SyncAll).map_err(unreadable)?;
            if let Some(was) = was {
                let was = String::from_utf8_lossy(&was);
                tracing::info!(store = %path.display(), %was, "room store upgraded to format 3 (dedupe runs)");
            }
        }
        let renewed = super::mark::open(&keyspaces, durability, boot).map_err(unreadable)?;
        if renewed > 0 {
            tracing::warn!(
                store = %path.display(),
                rooms = renewed,
                "the machine went down while the store was open with durability os: posts acknowledged in its last \
                 moments may be lost, so every room starts a new epoch (members resume told they missed messages)"
            );
        }
        let open_mark = super::mark::OpenMark {
            keyspaces: keyspaces.clone(),
            #[cfg(test)]
            crash: std::sync::atomic::AtomicBool::new(false),
        };
        let writer = writer::Handle::start(keyspaces.clone(), durability, next_room_id)
            .map_err(|err| StoreError::Open { path: path.clone(), detail: err.to_string() })?;
        let next_room_id = AtomicU64::new(next_room_id);
        let journal_sync = match durability {
            Durability::Os => Some(
                journal::JournalSync::spawn(path.clone())
                    .map_err(|err| StoreError::Open { path: path.clone(), detail: err.to_string() })?,
            ),
            Durability::Fsync | Durability::Memory => None,
        };
        let disk = DiskFloor::default();
        Ok(Arc::new(Store {
            path,
            keyspaces,
            next_room_id,
            writer,
            durability,
            disk,
            _journal_sync: journal_sync,
            open_mark,
            _data_dir: lock,
            #[cfg(test)]
            loaded_on: std::sync::Mutex::default(),
            #[cfg(test)]
            planned_on: std::sync::Mutex::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(super::READS_AT_ONCE)),
            #[cfg(test)]
            read_gate: super::test_hooks::ReadGate::default(),
            closed: Closed::default(),
        }))
    }
}
