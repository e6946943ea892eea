//! `os` durability: the journal is written back to disk in the background, so that fjall's own syncs find little
//! to write. fjall syncs its journal (`<store>/N.jnl`) whenever it flushes a memtable to a table, and it does so
//! holding the journal's lock, which every commit needs. With `fsync` durability the journal is always nearly
//! clean (every group commit syncs it); with `os` nothing synced it between flushes, so each flush's sync wrote
//! seconds of posts while every post waited: `quiver bench post --modes os` showed single-message commits of
//! 15–40 ms and fsyncs of 60–68 ms on the flush (`perf trace --duration 5`), twice in 8 s, ack p99.9 ~60 ms
//! against ~3 ms in memory.
//!
//! This thread syncs the newest journal file through a descriptor of its own every [`INTERVAL`]: no fjall lock is
//! taken, writers go on appending meanwhile, and what the flush's sync has left to write is at most an interval's
//! worth. What a post's acknowledgement promises does not change (written to the OS); a failed sync here is
//! logged, and fjall's own sync reports it too.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

/// Time between two background syncs of the journal.
const INTERVAL: Duration = Duration::from_millis(100);

/// The background sync's thread; dropping it stops the thread.
#[derive(Debug)]
pub(super) struct JournalSync {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl JournalSync {
    /// Starts syncing the newest journal in the store directory `dir`.
    pub(super) fn spawn(dir: PathBuf) -> std::io::Result<JournalSync> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let thread =
            std::thread::Builder::new().name("quiver-store-journal".into()).spawn(move || run(&dir, &stopped))?;
        Ok(JournalSync { stop, thread: Some(thread) })
    }
}

impl Drop for JournalSync {
    fn drop(&mut self) {
        let (stop, wake) = &*self.stop;
        *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(dir: &Path, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let mut open: Option<(u64, File)> = None;
    let mut warned = false;
    loop {
        {
            let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = wake.wait_timeout_while(guard, INTERVAL, |stop| !*stop).unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
        }
        match sync_newest(dir, &mut open) {
            Ok(()) => warned = false,
            Err(err) if !warned => {
                warned = true;
                tracing::warn!(%err, dir = %dir.display(), "room store: the journal's background sync failed (posts are still written to the OS)");
            }
            Err(_) => {}
        }
    }
}

/// Syncs the newest journal file, opening it when it changed since the last time.
fn sync_newest(dir: &Path, open: &mut Option<(u64, File)>) -> std::io::Result<()> {
    let Some(newest) = newest_journal(dir)? else { return Ok(()) };
    let file = match open {
        Some((id, file)) if *id == newest => file,
        _ => {
            *open = None; // the old journal's descriptor is closed before the new one is opened
                          // Opened for appending, never written: some systems sync only writable descriptors (Linux syncs any).
            let file = OpenOptions::new().append(true).open(dir.join(format!("{newest}.jnl")))?;
            &open.insert((newest, file)).1
        }
    };
    file.sync_data()
}

/// The id of the newest journal (`N.jnl`) in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name.to_str().and_then(|name| name.strip_suffix(".jnl")).and_then(|id| id.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_journal_is_found_and_synced_and_the_thread_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_journal(dir.path()).unwrap(), None);
        let mut open = None;
        sync_newest(dir.path(), &mut open).unwrap();
        assert!(open.is_none(), "no journal yet");
        for name in ["0.jnl", "12.jnl", "3.jnl", "lock", "x.jnl", "7.jnl.tmp"] {
            std::fs::write(dir.path().join(name), b"j").unwrap();
        }
        assert_eq!(newest_journal(dir.path()).unwrap(), Some(12));
        sync_newest(dir.path(), &mut open).unwrap();
        assert_eq!(open.as_ref().map(|(id, _)| *id), Some(12));
        std::fs::write(dir.path().join("13.jnl"), b"j").unwrap();
        sync_newest(dir.path(), &mut open).unwrap();
        assert_eq!(open.as_ref().map(|(id, _)| *id), Some(13), "a rotated journal is followed");
        let started = std::time::Instant::now();
        drop(JournalSync::spawn(dir.path().to_path_buf()).unwrap());
        assert!(started.elapsed() < Duration::from_secs(5), "stopped at once, not after an interval");
    }
}
