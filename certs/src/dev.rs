//! The dev certificate: self-signed ECDSA P-256 for `localhost`, `127.0.0.1` and `::1`, valid from one hour ago for
//! 14 days in total. Browsers accept such a certificate through `serverCertificateHashes` (they refuse a validity
//! over 14 days and any key but ECDSA P-256); native clients pin its SHA-256. It lives in the server's data
//! directory so that restarts keep the same hash, and is renewed once less than [`RENEW_BEFORE`] is left.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::CertificateDer;

use crate::{pem, CertError, CertKey};

/// File name of the dev certificate (PEM) in the data directory.
pub const CERT_FILE: &str = "dev-cert.pem";
/// File name of the dev certificate's private key (PEM, PKCS#8) in the data directory.
pub const KEY_FILE: &str = "dev-key.pem";
/// Total validity: the most browsers allow for `serverCertificateHashes`.
pub const VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// How far before "now" validity starts, so that clients with a clock slightly behind accept it.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// A stored certificate with less validity left than this is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// Whether [`load_or_generate`] reused the stored certificate or made a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevCertStatus {
    /// The stored certificate had more than [`RENEW_BEFORE`] left.
    Reused,
    /// A new certificate was generated and stored, for the reason given.
    Generated(String),
}

/// The dev certificate from `data_dir`, generated (and the directory created) when absent, unusable, or within
/// [`RENEW_BEFORE`] of expiry at `now`.
pub fn load_or_generate(data_dir: &Path, now: SystemTime) -> Result<(CertKey, DevCertStatus), CertError> {
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    // A dev key others can read lets them present this server's pinned certificate: private again, or refused.
    match crate::files::keep_private(&key_path) {
        Ok(Some(mode)) => {
            tracing::warn!(path = %key_path.display(), "the dev TLS key was readable by others (mode {mode:o}): now 0600")
        }
        Ok(None) => {}
        Err(source) => return Err(CertError::NotPrivate { path: key_path, source }),
    }
    let reason = match pem::load(&cert_path, &key_path) {
        Ok(stored) if !key_matches(&stored, &key_path) => {
            // A key replaced without its certificate (a write cut short between the two): ours to repair.
            tracing::warn!(path = %key_path.display(), "the dev key does not match the dev certificate; replacing both");
            "stored key does not match the certificate".to_string()
        }
        Ok(stored) => {
            let (not_before, not_after) = validity(&stored.chain[0], &cert_path)?;
            match not_after.duration_since(now) {
                // Made under a clock that ran ahead (corrected since, or another machine's data directory).
                _ if not_before > now => "stored certificate not valid yet".to_string(),
                Ok(left) if left > RENEW_BEFORE => return Ok((stored, DevCertStatus::Reused)),
                _ => format!("stored certificate expires within {} h", RENEW_BEFORE.as_secs() / 3600),
            }
        }
        Err(CertError::Missing { path }) => format!("{} does not exist", path.display()),
        // A corrupt dev certificate is ours to replace; a file we cannot read is the user's to fix.
        Err(err @ (CertError::Malformed { .. } | CertError::NoCertificate { .. } | CertError::NoPrivateKey { .. })) => {
            tracing::warn!(%err, "replacing unusable dev certificate");
            format!("stored certificate unusable: {err}")
        }
        Err(other) => return Err(other),
    };
    let (cert_pem, key_pem) = generate_pem(now)?;
    std::fs::create_dir_all(data_dir).map_err(|e| CertError::Write { path: data_dir.to_owned(), source: e })?;
    write_atomic(&key_path, key_pem.as_bytes(), true)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), false)?;
    let stored = pem::load(&cert_path, &key_path)?;
    tracing::info!(path = %cert_path.display(), %reason, "generated dev certificate");
    Ok((stored, DevCertStatus::Generated(reason)))
}

/// Reads the dev certificate a server stored in `data_dir`, without generating one (for clients that pin it).
pub fn read(data_dir: &Path) -> Result<CertificateDer<'static>, CertError> {
    let path = data_dir.join(CERT_FILE);
    let mut chain = pem::load_chain(&path)?;
    Ok(chain.swap_remove(0))
}

/// `(not_before, not_after)` of a DER certificate; `path` is only used to name it in errors.
pub fn validity(cert: &CertificateDer<'_>, path: &Path) -> Result<(SystemTime, SystemTime), CertError> {
    let malformed = |reason: String| CertError::Malformed { path: path.to_owned(), reason };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| malformed(format!("{e}")))?;
    let to_system = |t: &x509_parser::time::ASN1Time| -> Result<SystemTime, CertError> {
        let secs = u64::try_from(t.timestamp()).map_err(|_| malformed("validity before 1970".into()))?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    Ok((to_system(&parsed.validity().not_before)?, to_system(&parsed.validity().not_after)?))
}

/// Whether the stored key (`key_path`, PEM) is the one whose public key the stored certificate carries.
fn key_matches(stored: &CertKey, key_path: &Path) -> bool {
    let Ok(pem) = std::fs::read_to_string(key_path) else { return false };
    let Ok(key) = KeyPair::from_pem(&pem) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&stored.chain[0]) else { return false };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// A new dev certificate and key as PEM text, valid from `now - BACKDATE` for `VALIDITY`.
fn generate_pem(now: SystemTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Quiver dev certificate");
    params.distinguished_name = name;
    // Whole seconds: X.509 times have no fractions, and a truncated end must not land past 14 days.
    let start = now - BACKDATE;
    let start_secs = start.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(start_secs);
    params.not_before = start.into();
    params.not_after = (start + VALIDITY).into();
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_atomic(path: &Path, content: &[u8], private: bool) -> Result<(), CertError> {
    crate::files::write_atomic(path, content, private)
        .map_err(|source| CertError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::{extensions::GeneralName, prelude::*};

    #[test]
    fn generated_certificate_is_what_browsers_accept() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (cert, status) = load_or_generate(dir.path(), now).unwrap();
        assert!(matches!(status, DevCertStatus::Generated(_)));
        let (_, parsed) = parse_x509_certificate(&cert.chain[0]).unwrap();

        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        assert!(not_after - not_before <= 14 * 24 * 3600, "validity over 14 days");
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now_secs - 3601..=now_secs - 3599).contains(&not_before), "starts one hour ago");
        assert!(not_after - now_secs > 13 * 24 * 3600, "valid for about 14 days from now");

        // ECDSA with the P-256 curve.
        let spki = parsed.public_key();
        assert_eq!(spki.algorithm.algorithm, oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki.algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve, oid_registry::OID_EC_P256);

        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["localhost", "[127, 0, 0, 1]", "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]"]);
    }

    /// A dev key others can read (a copied data directory) is made private again before it is used: with it, any
    /// user could present this server's pinned certificate while it is down.
    #[cfg(unix)]
    #[test]
    fn a_dev_key_others_can_read_is_made_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        let key = dir.path().join(KEY_FILE);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (again, status) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        assert_eq!((status, again.fingerprint()), (DevCertStatus::Reused, first.fingerprint()));
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn reused_while_valid_with_a_stable_hash() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (first, _) = load_or_generate(dir.path(), now).unwrap();
        let later = now + Duration::from_secs(12 * 24 * 3600); // 1 day 23 h left
        let (second, status) = load_or_generate(dir.path(), later).unwrap();
        assert_eq!(status, DevCertStatus::Reused);
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(read(dir.path()).unwrap(), first.chain[0]);
    }

    #[test]
    fn regenerated_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (first, _) = load_or_generate(dir.path(), now).unwrap();
        let near_end = now + Duration::from_secs(13 * 24 * 3600 - 3600 + 60); // 23 h left
        let (second, status) = load_or_generate(dir.path(), near_end).unwrap();
        assert!(matches!(status, DevCertStatus::Generated(ref why) if why.contains("expires")), "{status:?}");
        assert_ne!(first.fingerprint(), second.fingerprint());
        let (_, not_after) = validity(&second.chain[0], Path::new("x")).unwrap();
        assert!(not_after.duration_since(near_end).unwrap() > Duration::from_secs(13 * 24 * 3600));
    }

    #[test]
    fn corrupt_stored_certificate_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path(), SystemTime::now()).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), b"garbage").unwrap();
        let (_, status) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        assert!(matches!(status, DevCertStatus::Generated(ref why) if why.contains("unusable")), "{status:?}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), other.serialize_pem()).unwrap();
        let (second, status) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        assert!(matches!(status, DevCertStatus::Generated(ref why) if why.contains("does not match")), "{status:?}");
        assert_ne!(first.fingerprint(), second.fingerprint());
        let (_, status) = load_or_generate(dir.path(), SystemTime::now()).unwrap();
        assert_eq!(status, DevCertStatus::Reused, "the new pair matches");
    }

    #[test]
    fn a_certificate_not_valid_yet_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        load_or_generate(dir.path(), now + Duration::from_secs(3 * 3600)).unwrap(); // a clock 3 h ahead
        let (cert, status) = load_or_generate(dir.path(), now).unwrap();
        assert!(matches!(status, DevCertStatus::Generated(ref why) if why.contains("not valid yet")), "{status:?}");
        assert!(validity(&cert.chain[0], Path::new("x")).unwrap().0 <= now);
    }

    #[test]
    fn unreadable_stored_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(CERT_FILE)).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"").unwrap();
        assert!(matches!(load_or_generate(dir.path(), SystemTime::now()), Err(CertError::Unreadable { .. })));
    }

    #[test]
    fn key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path(), SystemTime::now()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
    }
}
