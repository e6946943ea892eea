//! The storage abstraction the server needs for durable room history, and the engine specs.
//!
//! A room's history is an append-only log. Keys are `(room u64, seq u64)` big-endian, so one
//! room's messages are contiguous and ordered by seq in every engine.

use std::fmt;
use std::path::Path;

pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type Result<T> = std::result::Result<T, Error>;

/// One post: (room id, seq within the room, encoded message).
pub type Post<'a> = (u64, u64, &'a [u8]);

/// What the server needs from an embedded store.
///
/// Group commit: one writer calls `append_batch` with every post that arrived while the previous
/// commit ran. In a *durable* mode `append_batch` returns only once the batch is on disk (the
/// engine's commit includes the fsync); in a *buffered* mode it returns once the batch is written
/// (visible to readers, in the OS page cache or engine buffers) and `sync` makes it durable.
pub trait HistoryStore {
    /// Write all posts atomically (one transaction / write batch).
    fn append_batch(&mut self, posts: &[Post<'_>]) -> Result<()>;
    /// Make everything appended so far durable. A no-op in the durable modes.
    fn sync(&mut self) -> Result<()>;
    /// Up to `limit` messages of `room` with seq >= `from_seq`, in seq order.
    fn range(&self, room: u64, from_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Delete every message of `room` with seq < `seq` (retention), atomically.
    fn delete_before(&mut self, room: u64, seq: u64) -> Result<()>;
    /// Highest seq stored for `room`.
    fn last_seq(&self, room: u64) -> Result<Option<u64>>;
    /// Give freed space back to the file system, if the engine can (may be slow, blocks writes).
    fn compact(&mut self) -> Result<()>;
}

pub fn encode_key(room: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&room.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn decode_key(k: &[u8]) -> (u64, u64) {
    let room = u64::from_be_bytes(k[..8].try_into().expect("16-byte key"));
    let seq = u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"));
    (room, seq)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Redb,
    Fjall,
    Sqlite,
}

/// An engine plus its durability configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spec {
    /// redb, `Durability::Immediate`, default 1-phase commit (checksummed commit slots).
    RedbImmediate,
    /// redb, `Durability::Immediate` + `set_two_phase_commit(true)`.
    Redb2pc,
    /// redb, `Durability::Immediate` + `set_quick_repair(true)` (2PC + allocator state saved).
    RedbQuickRepair,
    /// redb, `Durability::None` (not persisted until a later Immediate commit).
    RedbNone,
    /// fjall, write batch committed with `PersistMode::SyncAll` (fsync).
    FjallSyncAll,
    /// fjall, write batch committed with `PersistMode::SyncData` (fdatasync).
    FjallSyncData,
    /// fjall, `PersistMode::Buffer` (journal flushed to the OS, not synced).
    FjallBuffer,
    /// SQLite WAL, `synchronous=FULL` (WAL fsynced at every commit).
    SqliteFull,
    /// SQLite WAL, `synchronous=NORMAL` (WAL fsynced only at checkpoints).
    SqliteNormal,
    /// SQLite WAL, `synchronous=OFF`.
    SqliteOff,
}

pub const ALL_SPECS: &[Spec] = &[
    Spec::RedbImmediate,
    Spec::Redb2pc,
    Spec::RedbQuickRepair,
    Spec::RedbNone,
    Spec::FjallSyncAll,
    Spec::FjallSyncData,
    Spec::FjallBuffer,
    Spec::SqliteFull,
    Spec::SqliteNormal,
    Spec::SqliteOff,
];

impl Spec {
    pub fn name(self) -> &'static str {
        match self {
            Spec::RedbImmediate => "redb:immediate",
            Spec::Redb2pc => "redb:2pc",
            Spec::RedbQuickRepair => "redb:quick-repair",
            Spec::RedbNone => "redb:none",
            Spec::FjallSyncAll => "fjall:sync-all",
            Spec::FjallSyncData => "fjall:sync-data",
            Spec::FjallBuffer => "fjall:buffer",
            Spec::SqliteFull => "sqlite:full",
            Spec::SqliteNormal => "sqlite:normal",
            Spec::SqliteOff => "sqlite:off",
        }
    }

    pub fn parse(s: &str) -> Result<Spec> {
        ALL_SPECS
            .iter()
            .copied()
            .find(|spec| spec.name() == s)
            .ok_or_else(|| format!("unknown engine spec {s:?}").into())
    }

    pub fn engine(self) -> Engine {
        match self {
            Spec::RedbImmediate | Spec::Redb2pc | Spec::RedbQuickRepair | Spec::RedbNone => {
                Engine::Redb
            }
            Spec::FjallSyncAll | Spec::FjallSyncData | Spec::FjallBuffer => Engine::Fjall,
            Spec::SqliteFull | Spec::SqliteNormal | Spec::SqliteOff => Engine::Sqlite,
        }
    }

    /// Is a batch on disk when `append_batch` returns?
    pub fn durable(self) -> bool {
        !matches!(
            self,
            Spec::RedbNone | Spec::FjallBuffer | Spec::SqliteNormal | Spec::SqliteOff
        )
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Open (creating if needed) the store for `spec` in directory `dir`.
pub fn open(spec: Spec, dir: &Path) -> Result<Box<dyn HistoryStore>> {
    std::fs::create_dir_all(dir)?;
    Ok(match spec.engine() {
        Engine::Redb => Box::new(crate::engines::redb_store::RedbStore::open(spec, dir)?),
        Engine::Fjall => Box::new(crate::engines::fjall_store::FjallStore::open(spec, dir)?),
        Engine::Sqlite => Box::new(crate::engines::sqlite_store::SqliteStore::open(spec, dir)?),
    })
}
