//! SQLite (bundled) in WAL mode: one WITHOUT ROWID table with PRIMARY KEY (room, seq), so a
//! room's messages are stored together in key order (as in the two KV engines).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{HistoryStore, Post, Result, Spec};

pub struct SqliteStore {
    conn: Connection,
    spec: Spec,
    wal_path: PathBuf,
}

impl SqliteStore {
    pub fn open(spec: Spec, dir: &Path) -> Result<Self> {
        let synchronous = match spec {
            Spec::SqliteFull => "FULL",
            Spec::SqliteNormal => "NORMAL",
            Spec::SqliteOff => "OFF",
            other => return Err(format!("{other} is not a sqlite spec").into()),
        };
        let path = dir.join("history.sqlite");
        let conn = Connection::open(&path)?;
        // 8 KiB pages: in a WITHOUT ROWID table a row longer than ~1,000 bytes spills to an
        // overflow page with 4 KiB pages (1 KiB messages took 4.4 GB for 1 GB of data); with
        // 8 KiB pages rows up to ~2,000 bytes stay inline. Only takes effect on a new file.
        conn.pragma_update(None, "page_size", 8192)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS history (
                 room INTEGER NOT NULL,
                 seq  INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 PRIMARY KEY (room, seq)
             ) WITHOUT ROWID;",
        )?;
        let mut wal_path = path.into_os_string();
        wal_path.push("-wal");
        Ok(SqliteStore {
            conn,
            spec,
            wal_path: wal_path.into(),
        })
    }
}

// SQLite integers are i64; room ids and seqs stay below 2^63.
fn i(v: u64) -> i64 {
    v as i64
}

impl HistoryStore for SqliteStore {
    fn append_batch(&mut self, posts: &[Post<'_>]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO history (room, seq, body) VALUES (?1, ?2, ?3)")?;
            for &(room, seq, body) in posts {
                insert.execute(params![i(room), i(seq), body])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.spec.durable() {
            return Ok(());
        }
        // synchronous=NORMAL/OFF: commits sit in the WAL (page cache). fsync it ourselves.
        std::fs::File::open(&self.wal_path)?.sync_data()?;
        Ok(())
    }

    fn range(&self, room: u64, from_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut select = self.conn.prepare_cached(
            "SELECT seq, body FROM history WHERE room = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = select.query_map(params![i(room), i(from_seq), limit as i64], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn delete_before(&mut self, room: u64, seq: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM history WHERE room = ?1 AND seq < ?2")?
            .execute(params![i(room), i(seq)])?;
        Ok(())
    }

    fn last_seq(&self, room: u64) -> Result<Option<u64>> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM history WHERE room = ?1")?
            .query_row(params![i(room)], |row| row.get(0))
            .optional()?
            .flatten();
        Ok(last.map(|s| s as u64))
    }

    fn compact(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
        )?;
        Ok(())
    }
}
