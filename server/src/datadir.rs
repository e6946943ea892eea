//! One server per data directory: an advisory lock on `DATA_DIR/lock` (flock on Unix, LockFileEx on Windows), taken
//! before anything in the directory is touched and held while the [`crate::Server`] or its room store lives (a
//! connection left open past the drain timeout can keep the store a little longer), with the holder's pid
//! written in the file so that a second server can say who holds it. The lock goes with the process, so a killed
//! server never leaves a stale one behind (a stale pid in the file is harmless: only the lock counts).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "lock";

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error(
        "data directory {dir} is in use by another quiver-server (pid {pid}); stop that one, or give this one its \
         own --data-dir"
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// What the holder wrote in the lock file (its pid), or "unknown".
        pid: String,
    },
    /// The directory is not this user's alone to write: whoever else can write there could put in their own token
    /// key or certificate, or replace the store.
    #[error("data directory {dir} {why}: a server keeps its keys and store only where no other user can write; {fix}")]
    NotPrivate {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
        /// What to do.
        fix: String,
    },
    /// The directory is to be made inside another server's data directory: most likely an upgrade that moved the
    /// data directory one level down (the Docker image's, from `/var/lib/quiver` to `/var/lib/quiver/data`), which
    /// would start on empty state (no rooms, a new dev certificate and token key) beside the old.
    #[error(
        "data directory {dir} does not exist, and {parent} holds a quiver-server's data (its lock file): to keep it, \
         give this server {parent} (QUIVER_DATA_DIR or --data-dir; the Docker image's default moved to \
         /var/lib/quiver/data on 2026-12-06), or move its contents into {dir} first"
    )]
    InsideAnother {
        /// The data directory asked for.
        dir: PathBuf,
        /// The data directory it would be made in.
        parent: PathBuf,
    },
    /// The directory or its lock file could not be created or locked.
    #[error("data directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock of a data directory; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Takes `dir`'s lock (creating the directory if needed), or says which process has it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        if let Some(parent) = dir.parent().filter(|parent| !dir.exists() && parent.join(LOCK_FILE).is_file()) {
            // Named whole: a relative `--data-dir node-b`'s parent is the working directory, `""` as a path (the
            // message named it as nothing, twice).
            let whole = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            return Err(DataDirError::InsideAnother { dir: whole(dir), parent: whole(parent) });
        }
        private_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse { dir: dir.to_path_buf(), pid: holder(&mut file) });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(DataDirError::Io { path, source }),
        }
        // Written over what is there, then cut to its length: a server that starts meanwhile reads this pid (its
        // first line) or the one before, never an empty file or part of a pid.
        let line = format!("{}\n", std::process::id());
        file.rewind().and_then(|()| file.write_all(line.as_bytes())).map_err(io(&path))?;
        file.set_len(line.len() as u64).map_err(io(&path))?;
        Ok(DataDirLock { file, dir: dir.to_path_buf() })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid the lock file names (its first line), read again for a moment while it is empty: its holder may have
/// taken the lock and not written yet.
fn holder(file: &mut std::fs::File) -> String {
    for _ in 0..5 {
        let mut content = String::new();
        let _ = file.rewind().and_then(|()| file.read_to_string(&mut content));
        if let Some(pid) = content.lines().next().map(str::trim).filter(|pid| !pid.is_empty()) {
            return pid.chars().take(32).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    "unknown".to_string()
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // The lock itself goes with the file; the pid goes too, so the file does not name a process that left.
        let _ = self.file.set_len(0);
    }
}

/// Creates `dir` readable and writable by this user only (0700, its missing parents too), or checks the one there:
/// it must belong to this process' user and not be writable by every user (whoever can write in it could put in a
/// token key of their own, a certificate, or another store). One its group can write (a group the operator chose),
/// or others can read, is used with a warning.
pub fn private_dir(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { path: dir.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        // Checked whether it was made now or found (another user may have made it in between), and the link too
        // when it is one: a link another user owns can be pointed elsewhere later.
        let me = nix::unistd::geteuid().as_raw();
        let not_private = |why: String, fix: String| DataDirError::NotPrivate { dir: dir.to_path_buf(), why, fix };
        let link = std::fs::symlink_metadata(dir).map_err(io)?;
        if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
            return Err(not_private(
                format!("is a symbolic link that belongs to another user (uid {})", link.uid()),
                "give this server the directory itself, or a link of its own user's".into(),
            ));
        }
        let meta = std::fs::metadata(dir).map_err(io)?;
        let owner = meta.uid();
        if owner != me {
            return Err(not_private(
                format!("belongs to another user (uid {owner}; this server runs as uid {me})"),
                format!("run the server as uid {owner}, or give it a directory of its own (--data-dir)"),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(not_private(
                format!("is writable by every user (mode {mode:o})"),
                format!(
                    "chmod 700 {} (and look for files others may have put there: a token key, a certificate)",
                    dir.display()
                ),
            ));
        }
        if mode & 0o020 != 0 {
            // (A group the operator chose, e.g. Kubernetes' fsGroup volumes: its members are trusted like the owner.)
            tracing::warn!(
                dir = %dir.display(),
                "the data directory is writable by its group (mode {mode:o}): its members could put in a token key \
                 of their own; chmod 700 it unless they are trusted like this server's user"
            );
        }
        if mode & 0o004 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "the data directory is readable by other users (mode {mode:o}): they can read the rooms' stored \
                 history; chmod 700 it"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io)
}

/// The file holding the stateless-reset key.
pub const RESET_KEY_FILE: &str = "reset-key";

/// The key QUIC stateless resets are derived from, kept in `DATA_DIR/reset-key` (32 random bytes, created owner-only
/// when missing). With the same key across restarts, a restarted (or SIGKILLed and restarted) server answers a
/// packet of a connection it no longer knows with a stateless reset the client can verify, so clients learn at once
/// that their connection is gone and reconnect, instead of waiting out the idle timeout (30 s).
pub fn reset_key(dir: &Path) -> Result<[u8; 32], DataDirError> {
    let path = dir.join(RESET_KEY_FILE);
    let io = |source| DataDirError::Io { path: path.clone(), source };
    // A key others can read lets them forge resets of this server's connections: private again, or refused.
    let kept = quiver_certs::files::keep_private(&path).map_err(|err| {
        let why = format!("readable by other users, and it cannot be made 0600 ({err}): make it private or delete it");
        io(std::io::Error::new(err.kind(), why))
    })?;
    if let Some(mode) = kept {
        tracing::warn!(path = %path.display(), "the stateless-reset key was readable by others (mode {mode:o}): now 0600");
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let invalid =
                || std::io::Error::new(std::io::ErrorKind::InvalidData, "not 32 bytes: delete it to make a new one");
            bytes.try_into().map_err(|_| io(invalid()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // Written aside and renamed into place: a crash in between never leaves a short key behind.
            let key: [u8; 32] = rand::random();
            quiver_certs::files::write_atomic(&path, &key, true).map_err(io)?;
            Ok(key)
        }
        Err(err) => Err(io(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let Err(DataDirError::InUse { pid, .. }) = DataDirLock::acquire(dir.path()) else {
            panic!("a second lock on the same directory")
        };
        assert_eq!(pid, std::process::id().to_string());
        drop(first);
        let again = DataDirLock::acquire(&dir.path().join("fresh/sub")).unwrap();
        drop(again);
        // (Another test of this process spawning a child (a redis-server) at that moment holds a copy of the lock's
        // descriptor between its fork and exec: the lock is free a moment later.)
        let started = std::time::Instant::now();
        while DataDirLock::acquire(dir.path()).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "still held 5 s after the first let go");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A server that finds the lock taken but its pid not written yet (its holder between the two) waits a moment
    /// for it rather than naming no holder; a longer pid left by an earlier holder is not read with it.
    #[test]
    fn the_holder_is_named_even_when_read_between_its_lock_and_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4294967295\n").unwrap(); // an earlier holder's, longer
        let taken = std::fs::File::options().read(true).write(true).open(dir.path().join(LOCK_FILE)).unwrap();
        taken.try_lock().unwrap();
        taken.set_len(0).unwrap(); // as a holder that took the lock and truncated before this change
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            (&taken).write_all(b"4321\n").unwrap();
            taken
        });
        let Err(DataDirError::InUse { pid, .. }) = DataDirLock::acquire(dir.path()) else { panic!("not refused") };
        assert_eq!(pid, "4321");
        drop(writer.join().unwrap());
        // (Free a moment later if a child spawned meanwhile holds a copy of the descriptor: see the test above.)
        let started = std::time::Instant::now();
        let mine = loop {
            match DataDirLock::acquire(dir.path()) {
                Ok(mine) => break mine,
                Err(err) => assert!(started.elapsed() < std::time::Duration::from_secs(5), "{err}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()), "no tail of the longer pid before");
        drop(mine);
    }

    /// A data directory to be made inside another's (an upgrade of the Docker image, whose default moved one level
    /// down) is refused, naming the old one: it would have started on empty state beside it.
    #[cfg(unix)]
    #[test]
    fn a_new_data_directory_inside_another_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDirLock::acquire(dir.path()).unwrap()); // a server ran here: its lock file stays
        let err = DataDirLock::acquire(&dir.path().join("data")).unwrap_err();
        assert!(matches!(err, DataDirError::InsideAnother { .. }), "{err}");
        assert!(err.to_string().contains("QUIVER_DATA_DIR"), "{err}");
        // Made already (its contents moved in, or made on purpose): taken.
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::set_permissions(dir.path().join("data"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        drop(DataDirLock::acquire(&dir.path().join("data")).unwrap());
    }

    /// The stateless-reset key is made owner-only, kept across restarts, and made private again when others could
    /// read it (with it, anyone could forge resets of this server's connections).
    #[cfg(unix)]
    #[test]
    fn the_reset_key_is_kept_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = reset_key(dir.path()).unwrap();
        let path = dir.path().join(RESET_KEY_FILE);
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(reset_key(dir.path()).unwrap(), key, "the same key after a restart");
        assert_eq!(mode(), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_is_made_private_and_one_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let set =
            |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let made = scratch.path().join("made/here");
        drop(DataDirLock::acquire(&made).unwrap());
        assert_eq!(mode(&made), 0o700, "made for this user alone");
        assert_eq!(mode(&scratch.path().join("made")), 0o700, "its missing parents too");
        // Readable by others: used (with a warning); writable by others or the group: refused, the fix named.
        set(&made, 0o755);
        drop(DataDirLock::acquire(&made).expect("readable by others is the operator's choice"));
        for writable in [0o777, 0o1777, 0o702] {
            set(&made, writable);
            let err = DataDirLock::acquire(&made).expect_err("writable by every user");
            let text = err.to_string();
            assert!(matches!(err, DataDirError::NotPrivate { .. }), "{text}");
            assert!(text.contains("writable by every user") && text.contains("chmod 700"), "{text}");
        }
        // Writable by its group (umask 002, Kubernetes' fsGroup): used, with a warning.
        set(&made, 0o770);
        drop(DataDirLock::acquire(&made).expect("a group the operator chose"));
        set(&made, 0o700);
        // Another user's directory (only root can hand one over to test it).
        if nix::unistd::geteuid().is_root() {
            // A link another user owns (to a directory of this user's): it could be pointed elsewhere later.
            let link = scratch.path().join("link");
            std::os::unix::fs::symlink(&made, &link).unwrap();
            std::os::unix::fs::lchown(&link, Some(54_321), None).unwrap();
            let text = DataDirLock::acquire(&link).expect_err("another user's link").to_string();
            assert!(text.contains("symbolic link that belongs to another user"), "{text}");
            std::os::unix::fs::chown(&made, Some(54_321), None).unwrap();
            let text = DataDirLock::acquire(&made).expect_err("another user's").to_string();
            assert!(
                text.contains("belongs to another user (uid 54321") && text.contains("run the server as uid 54321"),
                "{text}"
            );
        } else if std::env::var("QUIVER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("QUIVER_REQUIRE_ALL=1 but not root: the check of another user's data directory cannot run");
        } else {
            // (The stderr handle: `eprintln!` is captured by the test harness for passing tests.)
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!("\n!!! SKIPPED (not root): the check of another user's data directory\n\n"),
            );
        }
    }
}
