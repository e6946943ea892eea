//! redb: copy-on-write B-tree in one file. One table keyed by the 16-byte (room, seq) key.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::store::{decode_key, encode_key, HistoryStore, Post, Result, Spec};

const HISTORY: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("history");

pub struct RedbStore {
    db: Database,
    spec: Spec,
}

impl RedbStore {
    pub fn open(spec: Spec, dir: &Path) -> Result<Self> {
        let db = Database::create(dir.join("history.redb"))?;
        let store = RedbStore { db, spec };
        // Create the table on first use, so read transactions can open it. An existing store is
        // opened without a write (no commit, no fsync).
        let exists = match store.db.begin_read()?.open_table(HISTORY) {
            Ok(_) => true,
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !exists {
            let tx = store.begin_write()?;
            tx.open_table(HISTORY)?;
            tx.commit()?;
        }
        Ok(store)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        let mut tx = self.db.begin_write()?;
        match self.spec {
            Spec::RedbImmediate => tx.set_durability(Durability::Immediate)?,
            Spec::Redb2pc => {
                tx.set_durability(Durability::Immediate)?;
                tx.set_two_phase_commit(true);
            }
            Spec::RedbQuickRepair => {
                tx.set_durability(Durability::Immediate)?;
                tx.set_quick_repair(true);
            }
            Spec::RedbNone => tx.set_durability(Durability::None)?,
            other => return Err(format!("{other} is not a redb spec").into()),
        }
        Ok(tx)
    }
}

impl HistoryStore for RedbStore {
    fn append_batch(&mut self, posts: &[Post<'_>]) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(HISTORY)?;
            for &(room, seq, body) in posts {
                table.insert(encode_key(room, seq), body)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.spec.durable() {
            return Ok(());
        }
        // An empty Immediate commit persists every earlier Durability::None commit.
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    fn range(&self, room: u64, from_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HISTORY)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in table.range(encode_key(room, from_seq)..=encode_key(room, u64::MAX))? {
            if out.len() == limit {
                break;
            }
            let (k, v) = entry?;
            out.push((decode_key(&k.value()).1, v.value().to_vec()));
        }
        Ok(out)
    }

    fn delete_before(&mut self, room: u64, seq: u64) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(HISTORY)?;
            table.retain_in(encode_key(room, 0)..encode_key(room, seq), |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn last_seq(&self, room: u64) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HISTORY)?;
        let last = table
            .range(encode_key(room, 0)..=encode_key(room, u64::MAX))?
            .next_back()
            .transpose()?;
        Ok(last.map(|(k, _)| decode_key(&k.value()).1))
    }

    fn compact(&mut self) -> Result<()> {
        self.sync()?;
        while self.db.compact()? {}
        Ok(())
    }
}
