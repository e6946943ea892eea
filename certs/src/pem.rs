//! Production certificates: a PEM chain (leaf first) and its private key, with errors that name the file.

use std::{path::Path, time::SystemTime};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::{CertError, CertKey};

/// Loads a certificate chain from `cert_path` and its key from `key_path`.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertKey, CertError> {
    Ok(CertKey { chain: load_chain(cert_path)?, key: load_key(key_path)? })
}

/// Every `CERTIFICATE` block of a PEM file, in order. Each must be a parsable X.509 certificate.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::reading(path, e))?;
    let mut chain = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = item.map_err(|e| CertError::Malformed { path: path.to_owned(), reason: format!("{e}") })?;
        x509_parser::parse_x509_certificate(&cert).map_err(|e| CertError::Malformed {
            path: path.to_owned(),
            reason: format!("certificate {} is not valid X.509: {e}", i + 1),
        })?;
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: path.to_owned() });
    }
    Ok(chain)
}

/// How far in the future a certificate's `not_before` may be and still count as valid: a certificate issued a moment
/// ago (by a CA that does not backdate) on a machine whose clock is a little behind.
pub const NOT_BEFORE_SLACK: std::time::Duration = std::time::Duration::from_secs(300);

/// `t` as a date and time in UTC, as certificate messages show it.
pub fn date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .map_or_else(|| format!("{secs} s after 1970"), |d| d.to_string())
}

/// Checks that the leaf certificate of `chain` (loaded from `path`) is valid at `now` (its `not_before` within
/// [`NOT_BEFORE_SLACK`]); returns when it expires. A server given an expired certificate (an old file restored, a
/// renewal that did not run) fails every handshake of clients that check dates: the error names the dates.
pub fn check_valid(chain: &[CertificateDer<'_>], path: &Path, now: SystemTime) -> Result<SystemTime, CertError> {
    let Some(leaf) = chain.first() else { return Err(CertError::NoCertificate { path: path.to_owned() }) };
    let (not_before, not_after) = crate::dev::validity(leaf, path)?;
    let reason = if now > not_after {
        format!("the certificate expired at {}; install a renewed one", date(not_after))
    } else if now + NOT_BEFORE_SLACK < not_before {
        format!("the certificate is valid only from {} (is this machine's clock right?)", date(not_before))
    } else {
        return Ok(not_after);
    };
    Err(CertError::NotValidNow { path: path.to_owned(), reason })
}

/// The first private key block (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::reading(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey { path: path.to_owned() },
        other => CertError::Malformed { path: path.to_owned(), reason: format!("{other}") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn loads_what_dev_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (generated, _) = crate::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
        let loaded = load(&dir.path().join(crate::dev::CERT_FILE), &dir.path().join(crate::dev::KEY_FILE)).unwrap();
        assert_eq!(loaded.fingerprint(), generated.fingerprint());
        assert_eq!(loaded.chain.len(), 1);
    }

    #[test]
    fn a_certificate_is_valid_only_between_its_dates() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let made = SystemTime::now();
        let (cert, _) = crate::dev::load_or_generate(dir.path(), made).unwrap();
        let path = dir.path().join(crate::dev::CERT_FILE);
        let not_after = check_valid(&cert.chain, &path, made).unwrap();
        assert!(not_after > made);
        let late = check_valid(&cert.chain, &path, made + Duration::from_secs(15 * 24 * 3600)).unwrap_err();
        assert!(matches!(late, CertError::NotValidNow { .. }) && late.to_string().contains("expired"), "{late}");
        let early = check_valid(&cert.chain, &path, made - Duration::from_secs(2 * 3600)).unwrap_err();
        // (The dev certificate starts an hour back; a few minutes before its start are within the slack.)
        assert!(check_valid(&cert.chain, &path, made - Duration::from_secs(3600 + 60)).is_ok());
        assert!(early.to_string().contains("valid only from"), "{early}");
    }

    #[test]
    fn missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_chain(&dir.path().join("nope.pem")).unwrap_err();
        assert!(matches!(err, CertError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem: no such file"), "{err}");
        assert!(matches!(load_key(&dir.path().join("nope.pem")), Err(CertError::Missing { .. })));
    }

    #[test]
    fn unreadable_file() {
        // A directory cannot be read as a file, whoever runs the test (root ignores permission bits).
        let dir = tempfile::tempdir().unwrap();
        let err = load_chain(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::Unreadable { .. }), "{err}");
        assert!(matches!(load_key(dir.path()), Err(CertError::Unreadable { .. })));
    }

    #[test]
    fn no_pem_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "junk.pem", b"this is not a certificate\n");
        assert!(matches!(load_chain(&path), Err(CertError::NoCertificate { .. })));
        assert!(matches!(load_key(&path), Err(CertError::NoPrivateKey { .. })));
    }

    #[test]
    fn malformed_base64_and_malformed_der() {
        let dir = tempfile::tempdir().unwrap();
        let bad_base64 =
            write(dir.path(), "b64.pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        assert!(matches!(load_chain(&bad_base64), Err(CertError::Malformed { .. })));
        // Valid base64 of bytes that are not X.509.
        let not_x509 =
            write(dir.path(), "der.pem", b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n");
        let err = load_chain(&not_x509).unwrap_err();
        assert!(matches!(err, CertError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("not valid X.509"), "{err}");
        let bad_key = write(dir.path(), "key.pem", b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n");
        assert!(matches!(load_key(&bad_key), Err(CertError::Malformed { .. })));
    }
}
