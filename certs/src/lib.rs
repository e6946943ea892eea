//! Certificates for Quiver servers and the pins clients check them against.
//!
//! - [`dev`]: a self-signed ECDSA P-256 certificate valid for 14 days (what browsers accept with
//!   `serverCertificateHashes`), kept in the server's data directory and renewed when less than a day is left.
//! - [`pem`]: a production certificate chain and key from PEM files.
//! - [`files`]: key files written whole and private, and kept private.
//! - [`sha256`] / [`Fingerprint`]: the SHA-256 of a DER certificate, the pin native clients and browsers use.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let (first, _) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
//! let (again, status) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
//! assert_eq!(status, quiver_certs::dev::DevCertStatus::Reused);
//! assert_eq!(first.fingerprint(), again.fingerprint());
//! ```

#![warn(missing_docs)]
pub mod dev;
mod error;
pub mod files;
mod fingerprint;
pub mod pem;

pub use error::CertError;
pub use fingerprint::{sha256, Fingerprint};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain (leaf first) and the leaf's private key.
#[derive(Debug)]
pub struct CertKey {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl CertKey {
    /// SHA-256 of the leaf certificate's DER.
    pub fn fingerprint(&self) -> Fingerprint {
        // A CertKey is only built with a non-empty chain (see `pem::load` and `dev`).
        self.chain.first().map(|leaf| sha256(leaf)).unwrap_or(Fingerprint([0; 32]))
    }
}
