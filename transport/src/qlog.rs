//! qlog (opt-in): one file per connection, JSON-SEQ as quinn's `qlog` support writes it and qvis reads it.
//!
//! Bounded: a connection's file stops growing at [`MAX_FILE_BYTES`], and all the files this process writes stop at
//! [`MAX_TOTAL_BYTES`] together (no new file is made past it): with qlog on, a peer that publishes fast or opens
//! connection after connection could otherwise fill the disk. An event is written with one call, whole (quinn
//! writes it in many small pieces, inside its connection's lock).

use std::{
    io::Write,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

/// Bytes one connection's qlog file takes at most; its later events are dropped (whole).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Bytes all qlog files of this process take at most together.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;

/// Bytes written into qlog files by this process so far.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// A qlog stream writing to `DIR/<µs since the epoch>-<id>.sqlog`; `None` (logged) when the file cannot be
/// created, or the process wrote [`MAX_TOTAL_BYTES`] of qlog already: the connection goes on without one.
pub fn stream(dir: &Path, id: &str, title: String) -> Option<quinn::QlogStream> {
    if WRITTEN.load(Ordering::Relaxed) >= MAX_TOTAL_BYTES {
        tracing::debug!("qlog: {MAX_TOTAL_BYTES} bytes written already; no file for this connection");
        return None;
    }
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let path = dir.join(format!("{now_us}-{id}.sqlog"));
    let file = match std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(&path)) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot write a qlog file");
            return None;
        }
    };
    let writer = Capped::new(file, MAX_FILE_BYTES, (&WRITTEN, MAX_TOTAL_BYTES));
    let mut config = quinn::QlogConfig::default();
    config.writer(Box::new(writer)).title(Some(title));
    config.into_stream()
}

/// `transport` (a configuration just built, so not shared yet) writing its connection's qlog into `dir`.
pub fn attach(transport: &mut std::sync::Arc<quinn::TransportConfig>, dir: &Path, id: &str, title: String) {
    if let Some(transport) = std::sync::Arc::get_mut(transport) {
        transport.qlog_stream(stream(dir, id, title));
    }
}

/// A file that takes at most `max` bytes, and at most what is left of a shared `total` budget, in whole records:
/// a JSON-SEQ record (it ends with a newline) is gathered and written with one call, or dropped whole once a
/// bound is reached (reported as written: the connection's logging must not fail).
struct Capped<W: Write> {
    out: W,
    record: Vec<u8>,
    written: u64,
    max: u64,
    total: (&'static AtomicU64, u64),
}

impl<W: Write> Capped<W> {
    fn new(out: W, max: u64, total: (&'static AtomicU64, u64)) -> Self {
        Capped { out, record: Vec::new(), written: 0, max, total }
    }

    /// Writes the gathered record if both bounds leave room for it. A record whose write failed counts against
    /// neither and is let go of (it was counted, kept, and counted again with the next one: after a full disk the
    /// shared budget ran out unwritten and qlog stayed off for the process; a review's find). One turned away at the
    /// shared bound stays counted: the budget is spent, and [`stream`] makes no new file.
    fn commit(&mut self) -> std::io::Result<()> {
        let len = self.record.len() as u64;
        let (total, total_max) = self.total;
        let mut written = Ok(());
        if len > 0 && self.written + len <= self.max {
            let reserved = total.fetch_add(len, Ordering::Relaxed) + len <= total_max;
            if reserved {
                written = self.out.write_all(&self.record);
            }
            match (reserved, &written) {
                (true, Ok(())) => self.written += len,
                (true, Err(_)) => drop(total.fetch_sub(len, Ordering::Relaxed)),
                // Kept counted: the shared budget is then spent, and no new file is made (`stream`).
                (false, _) => {}
            }
        }
        self.record.clear();
        written
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.record.extend_from_slice(buf);
        if buf.ends_with(b"\n") {
            self.commit()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.commit()?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_stops_at_its_bound_and_all_files_at_theirs_in_whole_records() {
        static TOTAL: AtomicU64 = AtomicU64::new(0);
        let record = |out: &mut Capped<Vec<u8>>| {
            out.write_all(b"\x1e{\"a\":").unwrap(); // a record in pieces, as serde_json writes one
            out.write_all(b"1}").unwrap();
            out.write_all(b"\n").unwrap();
        };
        let mut first = Capped::new(Vec::new(), 100, (&TOTAL, 150));
        for _ in 0..30 {
            record(&mut first); // 9 bytes each
        }
        first.flush().unwrap();
        assert_eq!(first.out, b"\x1e{\"a\":1}\n".repeat(11), "whole records within the file's 100 bytes");
        let mut second = Capped::new(Vec::new(), 100, (&TOTAL, 150));
        for _ in 0..30 {
            record(&mut second);
        }
        second.flush().unwrap();
        assert_eq!(second.out.len(), 45, "whole records within the rest of the shared budget (150 - 99 = 51)");
    }

    /// A failed write counts nothing against either bound, and the record is not written again with the next one.
    #[test]
    fn a_failed_write_counts_nothing_and_leaves_nothing_behind() {
        struct FailsOnce(Vec<u8>, bool);
        impl Write for FailsOnce {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.1, false) {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        static TOTAL: AtomicU64 = AtomicU64::new(0);
        let mut out = Capped::new(FailsOnce(Vec::new(), true), 100, (&TOTAL, 100));
        assert!(out.write_all(b"first\n").is_err());
        out.write_all(b"second\n").unwrap();
        out.flush().unwrap();
        assert_eq!(out.out.0, b"second\n");
        assert_eq!((out.written, TOTAL.load(Ordering::Relaxed)), (7, 7));
        // A record turned away at the shared bound (another file's, which has room of its own) stays counted: the
        // budget is spent, and no new file is made.
        let mut other = Capped::new(Vec::new(), 1_000, (&TOTAL, 100));
        other.write_all(&[b'x'; 99]).unwrap();
        other.write_all(b"\n").unwrap();
        assert!(other.out.is_empty());
        assert!(TOTAL.load(Ordering::Relaxed) >= 100, "the shared budget is spent");
    }
}
