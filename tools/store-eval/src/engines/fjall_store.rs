//! fjall: LSM-tree with a shared write-ahead journal. One keyspace keyed by (room, seq).

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::store::{decode_key, encode_key, HistoryStore, Post, Result, Spec};

pub struct FjallStore {
    db: Database,
    history: Keyspace,
    /// Persist mode applied by every write batch.
    mode: PersistMode,
}

impl FjallStore {
    pub fn open(spec: Spec, dir: &Path) -> Result<Self> {
        let mode = match spec {
            Spec::FjallSyncAll => PersistMode::SyncAll,
            Spec::FjallSyncData => PersistMode::SyncData,
            Spec::FjallBuffer => PersistMode::Buffer,
            other => return Err(format!("{other} is not a fjall spec").into()),
        };
        let db = Database::builder(dir).open()?;
        let history = db.keyspace("history", KeyspaceCreateOptions::default)?;
        Ok(FjallStore { db, history, mode })
    }
}

impl HistoryStore for FjallStore {
    fn append_batch(&mut self, posts: &[Post<'_>]) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        for &(room, seq, body) in posts {
            batch.insert(&self.history, &encode_key(room, seq)[..], body);
        }
        batch.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.mode != PersistMode::Buffer {
            return Ok(());
        }
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn range(&self, room: u64, from_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for guard in self
            .history
            .range(encode_key(room, from_seq)..=encode_key(room, u64::MAX))
            .take(limit)
        {
            let (k, v) = guard.into_inner()?;
            out.push((decode_key(&k).1, v.to_vec()));
        }
        Ok(out)
    }

    fn delete_before(&mut self, room: u64, seq: u64) -> Result<()> {
        // No public range delete: one tombstone per message, in one atomic batch.
        let mut batch = self.db.batch().durability(Some(self.mode));
        for guard in self
            .history
            .range(encode_key(room, 0)..encode_key(room, seq))
        {
            batch.remove(&self.history, guard.key()?);
        }
        batch.commit()?;
        Ok(())
    }

    fn last_seq(&self, room: u64) -> Result<Option<u64>> {
        let last = self
            .history
            .range(encode_key(room, 0)..=encode_key(room, u64::MAX))
            .next_back();
        match last {
            Some(guard) => Ok(Some(decode_key(&guard.key()?).1)),
            None => Ok(None),
        }
    }

    fn compact(&mut self) -> Result<()> {
        // Both are #[doc(hidden)] in fjall 3.1: compaction is normally left to background workers.
        self.db.persist(PersistMode::SyncAll)?;
        self.history.rotate_memtable_and_wait()?;
        self.history.major_compact()?;
        Ok(())
    }
}
