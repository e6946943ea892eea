//! Durable room state in the data directory: every room's epoch and last seq, its history within retention, and
//! its dedupe window, on [fjall](https://docs.rs/fjall) (an LSM tree with a write-ahead journal; why fjall:
//! `tools/store-eval/RESULTS.md`). The layout (all integers big-endian, so keys sort by room, then seq):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `meta` | `format` | [`FORMAT`] |
//! | `meta` | `next_room_id` | u64 |
//! | `meta` | `open` | the durability and boot id of the server that has the store open, removed at a clean close (`mark.rs`) |
//! | `rooms` | room name | room id u64, epoch u64, last seq u64 (as of its creation or last retention deletion) |
//! | `rooms` | `ROOM_COUNTER_KEY` (no room name: it starts with NUL) | `next_room_id` again, flushed with the records |
//! | `messages` | room id u64, seq u64 | time µs u64, the event's encoded `RoomFrame::Event` |
//! | `dedupe_runs` | room id u64, last seq u64 | the dedupe entries of up to 128 posts whose messages retention deleted while the window remembered them (`runs.rs`) |
//! | `dedupe` | room id u64, seq u64 | time µs u64, client_msg_id u64, identity: one such entry, as formats 1 and 2 kept them (read, deleted, never written) |
//!
//! Under `fsync` writes go through one writer thread (`writer.rs`) that commits whatever arrived while the previous
//! commit ran as one batch with one fdatasync (group commit); under `os` the posting tasks write themselves, one
//! taking along what others queued while it wrote (`inline.rs`). A post is acknowledged, and delivered, only once
//! its batch is stored with the configured durability.
//! Reads ([`Store::load_room`], [`Store::page`]) go straight to the database from any thread.

/// The key of the room id counter's copy in the `rooms` keyspace: no room name starts with NUL (names have no
/// control characters), and it sorts before every name.
pub(crate) const ROOM_COUNTER_KEY: &[u8] = b"\0next_room_id";

/// No room's seq reaches this (a million posts a second for 146,000 years): a stored seq at or past it is damage (a
/// record or key whose bytes changed), and the room is refused rather than sequenced on towards `u64::MAX`.
pub(crate) const MAX_SEQ: u64 = 1 << 62;

mod backlog;
mod batch;
mod cold;
pub(crate) mod disk;
mod reads;
pub(crate) use reads::{Closed, READS_AT_ONCE};
mod inbox;
mod inline;
mod journal;
mod journal_scan;
mod load;
mod mark;
mod open;
#[cfg(test)]
use open::open_failed;
mod runs;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use backlog::Backlog;
pub use cold::AgedRooms;
pub use disk::{Change as DiskChange, DiskFloor};
pub(crate) use writer::{Append, Op, Record, Remembered};
pub use writer::{Commit, StoreFailed, WriterStats};

/// What `meta/format` holds in a store this version writes. Version 3: the dedupe entries kept for deleted messages
/// are packed into runs (`dedupe_runs`) instead of one key each. Version 2: a room's record is no longer rewritten
/// with every post (its last seq is read from its newest stored message). Older stores are read as they are (their
/// single `dedupe` entries too) and marked version 3 when opened, so that an older server refuses them instead of
/// missing the runs or finding messages past the recorded seq.
pub const FORMAT: &[u8] = b"quiver-store 3";

/// The store's keyspaces (fjall's column families).
const KEYSPACES: [&str; 5] = ["meta", "rooms", "messages", "dedupe_runs", "dedupe"];

/// The formats before [`FORMAT`], opened and upgraded (nothing in them changes but the marker).
const OLDER_FORMATS: [&[u8]; 2] = [b"quiver-store 1", b"quiver-store 2"];

/// Bytes of journal kept before memtables are flushed to tables (what a start replays at most).
const MAX_JOURNALING_BYTES: u64 = 64 << 20;

/// fjall's block cache (its default is 32 MiB). Replays and history reads are sequential and mostly recent, so a
/// small cache serves them; the memory is the server's (docs/security.md, "Soak").
const CACHE_BYTES: u64 = 16 << 20;

/// Bytes a keyspace's memtable holds before it is flushed to a table (fjall's default is 64 MiB).
const MEMTABLE_BYTES: u64 = 16 << 20;

/// fjall's background threads (flushes and compactions) for a machine of `cores`: fjall's own choice (one per core,
/// at most 4), but never fewer than 3. fjall keeps its first worker for flushes by having it put every compaction it
/// receives back into the queue; with two workers, while the other one compacts, the first takes that compaction
/// out and puts it back in a loop, a spinning thread for as long as the compaction runs (3 % of a 2-core machine's
/// CPU under `quiver bench post --modes os`, `perf`: docs/durability.md, "fjall's spinning worker"). With a third,
/// a free worker takes the compaction within moments.
pub(super) fn store_workers(cores: usize) -> usize {
    cores.clamp(3, 4)
}

/// The store's directory inside the data directory.
pub const STORE_DIR: &str = "store";

/// When a post counts as stored (and is acknowledged and delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written and fsynced: survives a power cut. Group commit: one fsync covers every post that arrived while the
    /// previous one ran. The default.
    #[default]
    Fsync,
    /// Written to the OS, not synced: survives a crash of the server process, not of the machine.
    Os,
    /// Not stored: history, epochs and dedupe live in memory and a restart forgets them.
    Memory,
}

impl Durability {
    /// The name used by `--durability` and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
            Durability::Memory => "memory",
        }
    }
}

/// A durability name that is none of `fsync`, `os`, `memory`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown durability {0:?}: fsync, os or memory")]
pub struct UnknownDurability(pub String);

impl std::str::FromStr for Durability {
    type Err = UnknownDurability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            "memory" => Ok(Durability::Memory),
            other => Err(UnknownDurability(other.to_string())),
        }
    }
}

/// The store cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store exists but cannot be read: a damaged or truncated file, or a format this version does not know.
    #[error(
        "the room store in {path} is damaged or unreadable: {detail}. Nothing was changed. To start anyway, move \
         it aside (`mv {path} {path}.damaged`; the server then starts with empty history and new room epochs), or \
         restore it from a backup"
    )]
    Damaged {
        /// The store's directory.
        path: PathBuf,
        /// What the database said.
        detail: String,
    },
    /// The store's directory cannot be created or opened (permissions, disk full).
    #[error("cannot open the room store in {path}: {detail}")]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A read failed while the server ran.
    #[error("room store read failed: {0}")]
    Read(String),
}

/// What the store knows of a room when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    /// The room's id in the store's keys.
    pub id: u64,
    /// The room's epoch (fixed when it was created).
    pub epoch: u64,
    /// Seq of the newest stored message (0 before the first).
    pub last_seq: u64,
    /// Seq of the oldest retained message (`last_seq + 1` when none is retained).
    pub first_seq: u64,
    /// Time of the oldest retained message.
    pub first_time_us: Option<u64>,
    /// Messages and their bytes (encoded frames) retained.
    pub extent: Extent,
    /// The dedupe window: `(identity, client_msg_id, seq, time_us)`, oldest first.
    pub dedupe: Vec<(String, u64, u64, u64)>,
}

impl StoredRoom {
    /// A room just created: nothing stored yet.
    pub fn new(id: u64, epoch: u64) -> StoredRoom {
        StoredRoom {
            id,
            epoch,
            last_seq: 0,
            first_seq: 1,
            first_time_us: None,
            extent: Extent::default(),
            dedupe: Vec::new(),
        }
    }
}

/// How much of a room's history is retained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extent {
    /// Messages retained.
    pub messages: u64,
    /// Bytes of their encoded frames.
    pub bytes: u64,
}

/// A retained message as read back: its seq, time and frame (ready to send).
#[derive(Debug, Clone)]
pub struct StoredFrame {
    /// The message's seq.
    pub seq: u64,
    /// When it was posted, µs since the Unix epoch.
    pub time_us: u64,
    /// The encoded `RoomFrame::Event`.
    pub frame: Bytes,
}

/// The durable room store of one data directory.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    keyspaces: Keyspaces,
    next_room_id: AtomicU64,
    writer: writer::Handle,
    durability: Durability,
    disk: DiskFloor,
    /// `os` durability: the journal's background sync (`journal.rs`).
    _journal_sync: Option<journal::JournalSync>,
    /// Removed at a clean close, after the writer's last sync (declaration order): `mark.rs`.
    open_mark: mark::OpenMark,
    /// The data directory's lock, when the server's: released after the fields above (declaration order), so that
    /// the directory stays locked until the writer threads have committed, synced and let go of the database, also
    /// when a connection left open after the drain timeout keeps the store past its server.
    _data_dir: Option<Arc<crate::datadir::DataDirLock>>,
    /// The threads rooms were loaded on (`load_room`), and retention planned on (`plan_trim`), for the tests of
    /// where reads run.
    #[cfg(test)]
    pub(crate) loaded_on: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    #[cfg(test)]
    pub(crate) planned_on: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    /// Turns of the reads of History and replay pages ([`Store::read_off_runtime`]), [`READS_AT_ONCE`] of them.
    reads: Arc<tokio::sync::Semaphore>,
    /// Tests: stops [`Store::page`] until opened, counting the reads stopped there.
    #[cfg(test)]
    pub(crate) read_gate: test_hooks::ReadGate,
    /// Set once everything above is dropped (the store closed cleanly): last, for [`Store::closed_flag`].
    closed: Closed,
}

#[derive(Clone)]
pub(crate) struct Keyspaces {
    db: Database,
    meta: Keyspace,
    rooms: Keyspace,
    messages: Keyspace,
    dedupe_runs: Keyspace,
    /// Single dedupe entries written by formats 1 and 2.
    dedupe: Keyspace,
}

impl std::fmt::Debug for Keyspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspaces").finish_non_exhaustive()
    }
}

impl Keyspaces {
    /// Whether a keyspace written per post is on its way to fjall's write stall: half of the 4 sealed memtables at
    /// which it halts writes, or 16 tables in level 0 (it slows writes from 20 runs and halts them at 30).
    fn near_write_stall(&self) -> bool {
        [&self.messages, &self.rooms, &self.dedupe_runs, &self.meta]
            .iter()
            .any(|keyspace| keyspace.sealed_memtable_count() >= 2 || keyspace.l0_table_count() >= 16)
    }

    /// The highest room id with messages or dedupe entries.
    fn newest_room_id(&self) -> Result<Option<u64>, fjall::Error> {
        let mut newest = None;
        for keyspace in [&self.messages, &self.dedupe_runs, &self.dedupe] {
            if let Some(guard) = keyspace.last_key_value() {
                let id = u64_at(&guard.key()?, 0);
                newest = newest.max(id);
            }
        }
        Ok(newest)
    }
}

/// `room id ++ seq`, the key of a message and of a dedupe entry.
pub(crate) fn key(room: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&room.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn seq_of(key: &[u8]) -> Option<u64> {
    (key.len() == 16).then(|| u64_at(key, 8)).flatten()
}

fn read_err(err: fjall::Error) -> StoreError {
    StoreError::Read(format!("{err:?}"))
}

impl Store {
    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer did so far (batches committed, messages stored).
    pub fn writer_stats(&self) -> &WriterStats {
        &self.writer.stats
    }

    /// Posts handed to the writer and not committed yet, and their bound (`Budget::store_backlog_bytes`).
    pub fn backlog(&self) -> &Backlog {
        &self.writer.backlog
    }

    /// What the retention thread did so far (its batches: one deletion each).
    pub fn retention_stats(&self) -> &WriterStats {
        &self.writer.retention_stats
    }

    /// True once the store has closed cleanly (its writes synced, its mark removed, its directory let go): a flag
    /// that outlives the store, for whoever must not cut its close short (a second SIGTERM arriving during it).
    pub fn closed_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.closed.0.clone()
    }

    /// The process is about to exit without the store's clean close (a second SIGTERM: `process::exit` runs no
    /// destructor). Under `os`: nothing more is committed or acknowledged, what was written is synced, and the open
    /// mark is removed, so that a reboot of the machine after this exit is not taken for its crash (every room's
    /// epoch renewed, `mark.rs`). Under `fsync` nothing is needed: what was acknowledged is synced, and its mark
    /// renews nothing. Blocks for the sync.
    pub fn seal_for_exit(&self) {
        if self.writer.seal() {
            self.open_mark.remove();
            tracing::info!("room store synced before exiting");
        }
    }

    /// The durability posts wait for.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// A new room id (recorded by the writer with the room's creation).
    pub(crate) fn allocate_room_id(&self) -> u64 {
        self.next_room_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `op` to the writer; the returned [`Commit`] completes once it (and everything handed over before it)
    /// is stored with the configured durability. A retention deletion goes to the retention thread instead: its
    /// commit completes once it (and every deletion before it) is written to the OS, without an fsync of its own,
    /// and vouches for no post.
    pub(crate) fn submit(&self, op: Op) -> Commit {
        self.writer.submit(op)
    }

    /// [`Store::submit`] for a caller holding a lock (a room's): under `os` the operation is only queued, and
    /// written by [`Commit::write_queued`] (or a wait) once the caller let go.
    pub(crate) fn submit_queued(&self, op: Op) -> Commit {
        self.writer.submit_queued(op)
    }

    /// Retained messages of room `id` with a seq in `after + 1 ..= upto`, oldest first: at most `limit`, and no
    /// more than fit `budget` bytes of frames (the first always does). Contiguous: the page ends before a seq that
    /// is not the next one (`more` set), so a reader finds any gap at the start of a page, where it looks for one.
    /// A room's stored seqs are contiguous, but the read takes no snapshot: a retention deletion applied while it
    /// runs can show it the seqs past the cut with some of those before it already gone.
    pub fn page(&self, id: u64, after: u64, upto: u64, limit: usize, budget: usize) -> Result<Page, StoreError> {
        #[cfg(test)]
        let _stopped = self.read_gate.pass();
        let mut page = Page::default();
        if after >= upto {
            return Ok(page);
        }
        let mut used = 0;
        for guard in self.keyspaces.messages.range(key(id, after + 1)..=key(id, upto)) {
            if page.frames.len() == limit {
                page.more = true;
                break;
            }
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let (Some(seq), Some(time_us)) = (seq_of(&k), u64_at(&v, 0)) else {
                return Err(StoreError::Read(format!("room id {id}: a malformed message record")));
            };
            if page.frames.last().is_some_and(|last| last.seq + 1 != seq) {
                page.more = true;
                break;
            }
            let frame = Bytes::copy_from_slice(&v[8..]);
            if !page.frames.is_empty() && used + frame.len() > budget {
                page.more = true;
                break;
            }
            used += frame.len();
            page.frames.push(StoredFrame { seq, time_us, frame });
        }
        Ok(page)
    }

    /// Where retention cuts room `id`: the first seq to keep so that at most `max_messages` and `max_bytes` of
    /// frames remain and none older than `oldest_us`, scanning from `first_seq` up to `upto` (the room's last
    /// stored and delivered seq: a deletion never reaches a post whose commit may still be on its way) with
    /// `extent` retained. Returns the cut and what remains after it (with the time of the new oldest message). One
    /// cut deletes at most [`MAX_TRIM_MESSAGES`]; the next trim goes on from there.
    pub fn plan_trim(
        &self,
        id: u64,
        first_seq: u64,
        upto: u64,
        extent: Extent,
        retention: &Retention,
        now_us: u64,
    ) -> Result<(u64, Extent, Option<u64>), StoreError> {
        #[cfg(test)]
        self.planned_on.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(std::thread::current().id());
        let oldest_us = now_us.saturating_sub(retention.max_age_us);
        let mut left = extent;
        let mut cut = first_seq;
        if upto < first_seq {
            return Ok((cut, left, None)); // nothing stored to cut: the caller deletes nothing
        }
        for guard in self.keyspaces.messages.range(key(id, first_seq)..=key(id, upto)) {
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let (Some(seq), Some(time_us)) = (seq_of(&k), u64_at(&v, 0)) else {
                return Err(StoreError::Read(format!("room id {id}: a malformed message record")));
            };
            let within = left.messages <= retention.max_messages && left.bytes <= retention.max_bytes;
            if (within && time_us >= oldest_us) || seq - first_seq >= MAX_TRIM_MESSAGES {
                return Ok((seq, left, Some(time_us)));
            }
            left.messages = left.messages.saturating_sub(1);
            left.bytes = left.bytes.saturating_sub(v.len().saturating_sub(8) as u64);
            cut = seq + 1;
        }
        Ok((cut, Extent::default(), None))
    }
}

/// Messages one retention deletion removes at most: a room whose bounds were lowered far (1,000,000 messages to
/// 1,000, after a disk-space scare) is cut down over several trims, each a bounded write, instead of one deletion
/// of a million tombstones that held the store's journal, and every post's commit behind it, for seconds. Readers
/// see the lowered count bound at once (`first_readable`).
pub const MAX_TRIM_MESSAGES: u64 = 4_096;

/// A page of retained messages.
#[derive(Debug, Default)]
pub struct Page {
    /// The messages, oldest first.
    pub frames: Vec<StoredFrame>,
    /// True when the limit or the budget stopped the page before `upto`.
    pub more: bool,
}

/// How much history each room keeps in the store (the oldest goes first once any bound is passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages (`Limits::history_max_messages`).
    pub max_messages: u64,
    /// Bytes of encoded frames (`Budget::room_history_bytes`).
    pub max_bytes: u64,
    /// Age (`Limits::history_max_age_s`), µs; `u64::MAX` for no age bound.
    pub max_age_us: u64,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod test_hooks;

#[cfg(test)]
mod page_tests;

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod damage_tests;
