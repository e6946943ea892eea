//! Key files: HS256 secrets written as hex (the dev key in the data directory, and the `--hs256-key` files of
//! production servers and the token command: one format, read by one function), and the dev key's creation.

use std::path::{Path, PathBuf};

/// The dev signing key's file in the data directory.
pub const DEV_KEY_FILE: &str = "token-hs256.key";

/// Shortest HS256 secret accepted, in bytes (written as twice as many hex digits).
pub const MIN_HS256_SECRET: usize = 32;

/// Why auth could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Reads an HS256 secret from `path`: hex digits (surrounding whitespace ignored), at least [`MIN_HS256_SECRET`]
/// bytes. The dev key and `--hs256-key` files have this format.
pub fn read_hs256_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.into(), source })?;
    parse_hs256_secret(&text).ok_or_else(|| AuthError::BadKey {
        path: path.into(),
        reason: format!("expected at least {} hex digits", 2 * MIN_HS256_SECRET),
    })
}

/// What to say of a token signing key file other users of the machine may read (a umask's 0644, a container's
/// secret volume): any of them can mint tokens with every right. Warned of, not refused (a secret volume may be
/// shared with this server's user alone in its container), as the dev key's own mode is made 0600 (since
/// 2026-12-08: read in silence before). `None` where the file (its target, for a link) is private.
pub fn exposed_key(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then(|| {
            format!(
                "{} is readable by other users (mode {mode:03o}): any of them can mint tokens with every right; make \
                 it private (chmod 600, owned by the server's user)",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Warns of each of `files` (the setting `key` names) that other users may read ([`exposed_key`]).
pub fn warn_exposed(key: &str, files: &[std::path::PathBuf]) {
    for why in files.iter().filter_map(|path| exposed_key(path)) {
        tracing::warn!("{key}: {why}");
    }
}

/// An HS256 secret written as hex (surrounding whitespace ignored), if it is one of at least [`MIN_HS256_SECRET`]
/// bytes: the format of key files, and of a secret given inline in the server's configuration.
pub fn parse_hs256_secret(text: &str) -> Option<Vec<u8>> {
    hex_decode(text.trim()).filter(|s| s.len() >= MIN_HS256_SECRET)
}

/// The dev key in `data_dir`, if the server has made one.
pub fn dev_key_exists(data_dir: &Path) -> bool {
    data_dir.join(DEV_KEY_FILE).is_file()
}

/// Reads the dev HS256 key, or generates 32 random bytes (file mode 0600) when there is none.
pub fn load_or_generate_dev_key(data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    let path = data_dir.join(DEV_KEY_FILE);
    if path.is_file() {
        keep_private(&path)?;
        return read_hs256_key(&path);
    }
    // A link whose target is gone (a data directory restored without the secret it linked to): said so, not
    // replaced (the link was made on purpose) and not reported as the file missing (until 2026-12-08: "No such file
    // or directory", after a key was generated and could not be linked into place).
    let dangling = std::fs::metadata(&path).is_err_and(|err| err.kind() == std::io::ErrorKind::NotFound);
    if dangling && std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        let target = std::fs::read_link(&path).map_or_else(|_| "?".into(), |t| t.display().to_string());
        let reason = format!("a link to {target}, which does not exist: restore it, or remove the link for a new key");
        return Err(AuthError::BadKey { path, reason });
    }
    std::fs::create_dir_all(data_dir).map_err(|source| AuthError::Io { path: data_dir.into(), source })?;
    let secret: [u8; MIN_HS256_SECRET] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Written whole under a name of its own, then linked into place: a link never replaces an existing file, so
    // two processes generating at once agree on whichever key was linked first.
    let tmp = data_dir.join(format!("{DEV_KEY_FILE}.{}.{:08x}.tmp", std::process::id(), rand::random::<u32>()));
    write_private(&tmp, hex.as_bytes()).map_err(|source| AuthError::Io { path: tmp.clone(), source })?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret.to_vec()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read_hs256_key(&path),
        Err(source) => Err(AuthError::Io { path, source }),
    }
}

/// A key file others may read (copied, restored from a backup, written by hand) lets any user of the machine mint
/// tokens with every right: it is made readable by its owner only again, with a warning; one that cannot be (owned by
/// another user, a read-only file system) is refused, not used.
fn keep_private(path: &Path) -> Result<(), AuthError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
        if meta.file_type().is_symlink() {
            // A link (to a secret shared on purpose, say): its target's mode is not this server's to change, so a
            // target others can read is refused (it was used, with a warning, until 2026-12-06).
            return match std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777) {
                Ok(mode) if mode & 0o077 != 0 => Err(AuthError::BadKey {
                    path: path.into(),
                    reason: format!(
                        "a link to a file others can read (mode {mode:o}): any user here could mint tokens with it; \
                         make its target private (chmod 600)"
                    ),
                }),
                _ => Ok(()),
            };
        }
        if !meta.file_type().is_file() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return Ok(());
        }
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "the dev key was readable by others (mode {mode:o}): now 0600")
            }
            Err(err) => {
                return Err(AuthError::BadKey {
                    path: path.into(),
                    reason: format!(
                        "readable by others (mode {mode:o}) and it cannot be made 0600 ({err}): any user here could \
                         mint tokens with it; make it private (chmod 600, owned by this user) or delete it"
                    ),
                })
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Hex digits only: `from_str_radix` alone would take a sign ("+0" is 0), and a key of "+0" pairs passed the
/// 64-digit rule as 32 zero bytes, anyone's guess (as `quiver_certs`' fingerprints found before).
fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The DER of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410) before its 32-byte key.
pub(crate) const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Checks that `pem` has one `PUBLIC KEY` block (text around it allowed), holding an Ed25519 key of 32 bytes, and
/// no other block: the PEM
/// reader behind the verifier takes the first block of any kind (a certificate too), the first algorithm it finds
/// in it, and a key of any length, so a wrong file was accepted and every token then refused.
pub(crate) fn check_ed25519_pem(pem: &[u8]) -> Result<(), AuthError> {
    ed25519_key(pem).map(|_| ())
}

/// The 32-byte key of an Ed25519 public key PEM that [`check_ed25519_pem`] takes.
pub(crate) fn ed25519_key(pem: &[u8]) -> Result<[u8; 32], AuthError> {
    let bad = |reason: String| AuthError::BadKey { path: PathBuf::from("(Ed25519 public key)"), reason };
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let text = std::str::from_utf8(pem).map_err(|_| bad("not text (a PEM file is)".into()))?;
    // Text around the block is allowed (RFC 7468: `openssl pkey -pubout -text` writes the key's dump after it).
    let start = text.find(BEGIN).ok_or_else(|| bad("no PEM block labelled PUBLIC KEY".into()))?;
    let body_and_rest = &text[start + BEGIN.len()..];
    let end = body_and_rest.find(END).ok_or_else(|| bad("the PUBLIC KEY block has no end".into()))?;
    let body = &body_and_rest[..end];
    let outside = [&text[..start], &body_and_rest[end + END.len()..]];
    if body.contains("-----") || outside.iter().any(|t| t.contains("-----BEGIN")) {
        return Err(bad("more than one PEM block (one key per file)".into()));
    }
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, base64)
        .map_err(|err| bad(format!("the PEM block is not base64: {err}")))?;
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]).and_then(|key| <[u8; 32]>::try_from(key).ok()) {
        Some(key) => Ok(key),
        _ => Err(bad("the PUBLIC KEY block is not a 32-byte Ed25519 key (SubjectPublicKeyInfo, RFC 8410)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_generating_the_dev_key_at_once_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..8).map(|_| scope.spawn(|| load_or_generate_dev_key(dir.path()).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|pair| pair[0] == pair[1]), "every caller got the same key");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_dev_key_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate_dev_key(dir.path()).unwrap();
        assert_eq!(load_or_generate_dev_key(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(read_hs256_key(&dir.path().join(DEV_KEY_FILE)).unwrap(), first);
        #[cfg(unix)]
        {
            // One others may read (restored from a backup, say) is made private again when it is loaded.
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(DEV_KEY_FILE);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(load_or_generate_dev_key(dir.path()).unwrap(), first);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            // A link to a key others may read is refused (its target's mode is not the server's to change); it
            // was used, with a warning.
            let shared = tempfile::tempdir().unwrap();
            let target = shared.path().join("key");
            std::fs::rename(&path, &target).unwrap();
            std::os::unix::fs::symlink(&target, &path).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = load_or_generate_dev_key(dir.path()).unwrap_err().to_string();
            assert!(refused.contains("a link to a file others can read"), "{refused}");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(load_or_generate_dev_key(dir.path()).unwrap(), first, "a link to a private key is used");
        }
    }

    #[test]
    fn hs256_key_files_are_hex_of_at_least_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.hex");
        std::fs::write(&path, format!("  {}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_hs256_key(&path).unwrap(), vec![0xab; 32]);
        for bad in [
            "ab".repeat(31),
            "zz".repeat(32),
            format!("{}a", "ab".repeat(32)),
            "+0".repeat(32),
            "+a".repeat(32),
            format!("{}+c", "ab".repeat(32)),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_hs256_key(&path).unwrap_err().to_string();
            assert!(err.contains("secret.hex") && err.contains("at least 64 hex digits"), "{err}");
        }
        assert!(parse_hs256_secret(&"+0".repeat(32)).is_none(), "signs are not hex digits");
        let missing = read_hs256_key(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, AuthError::Io { .. }), "{missing}");
    }

    /// A dev key that is a link to a file that is gone is named as such (it was "No such file or directory").
    #[cfg(unix)]
    #[test]
    fn a_dev_key_linked_to_a_file_that_is_gone_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join(DEV_KEY_FILE)).unwrap();
        let err = load_or_generate_dev_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains("which does not exist") && err.contains("gone"), "{err}");
        // A link to what exists but is no key file (a directory): its own error, not "does not exist".
        std::fs::remove_file(dir.path().join(DEV_KEY_FILE)).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join(DEV_KEY_FILE)).unwrap();
        let err = load_or_generate_dev_key(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("does not exist"), "{err}");
    }

    /// An operator's signing key file others may read is warned of (it was read in silence); a private one is not.
    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_warned_of() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.hex");
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        for (mode, warned) in [(0o644, true), (0o640, true), (0o604, true), (0o600, false), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = exposed_key(&path);
            assert_eq!(warning.is_some(), warned, "mode {mode:o}: {warning:?}");
            if let Some(warning) = warning {
                assert!(warning.contains("secret.hex") && warning.contains("chmod 600"), "{warning}");
            }
        }
    }
}
