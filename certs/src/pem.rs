//! Production certificates: a PEM chain (leaf first) and its private key, with errors that name the file.

use std::path::Path;

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
