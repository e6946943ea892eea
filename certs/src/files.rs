//! Key files: written whole and private, and kept private.

use std::{io::Write, path::Path};

/// Writes `content` to `path` whole: into a new file of a random name beside it (`create_new`: never an existing
/// file or a link someone left there, whose mode or target would be kept), synced, then renamed over `path`, so a
/// reader never sees half a file. `private` files are readable by their owner only from their creation. The
/// temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, content: &[u8], private: bool) -> std::io::Result<()> {
    let mut suffix = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .map_err(|_| std::io::Error::other("no randomness for a temporary file name"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_file_name(format!(".{name}.{suffix}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself made durable (best effort: not every file system syncs a directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Makes a key file others may read (copied, restored from a backup, written by hand) readable by its owner only
/// again, returning the mode it had (`None`: it was private, or is missing). An error when it cannot be changed
/// (another user's file, a read-only file system), and for a link to a file others may read (a link's target is
/// not this program's to change; until 2026-12-06 a link was used whatever its target's mode): the caller should
/// refuse the key rather than use it.
pub fn keep_private(path: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(None) };
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
            return match target {
                Ok(mode) if mode & 0o077 != 0 => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "a link to a file others can read (mode {mode:o}), which is not this program's to change: \
                         make its target private (chmod 600)"
                    ),
                )),
                _ => Ok(None), // a private target, or a dangling link (read as missing)
            };
        }
        if !meta.file_type().is_file() || mode & 0o077 == 0 {
            return Ok(None);
        }
        // Changed through a handle on the very file looked at (fchmod), not by its name: a link put in its place
        // meanwhile would have the mode of whatever it points to changed.
        let file = std::fs::File::open(path)?;
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(std::io::Error::other("the file was replaced while its mode was being checked"));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(Some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_never_written_through_a_link_or_with_a_mode_left_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, elsewhere) = (dir.path().join("key.pem"), dir.path().join("elsewhere"));
        // What a fixed temporary name let another writer of the directory prepare: a link to a file it can read.
        std::fs::write(&elsewhere, b"").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("key.tmp")).unwrap();
        write_atomic(&path, b"secret", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"", "nothing written through the link");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "no temporary file left: {left:?}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(keep_private(&path).unwrap(), Some(0o644));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(keep_private(&path).unwrap(), None, "private already");

        // A link: its target's mode is not ours to change, so a target others can read is refused (it was used).
        let (target, link) = (dir.path().join("shared.pem"), dir.path().join("linked.pem"));
        std::fs::write(&target, b"secret").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = keep_private(&link).unwrap_err();
        assert!(refused.to_string().contains("mode 644"), "{refused}");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644, "left as it was");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(keep_private(&link).unwrap(), None, "a link to a private file is used");
    }
}
