use std::path::PathBuf;

/// Why a certificate or key could not be had. Each variant names the file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The file does not exist.
    #[error("{}: no such file", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, a directory, I/O error).
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content is not what it should be.
    #[error("{}: malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PEM file holds no `CERTIFICATE` block.
    #[error("{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key block.
    #[error("{}: no PEM private key found (expected PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A private key file other users can read, which cannot be made readable by its owner only.
    #[error(
        "{}: readable by other users, and it cannot be made 0600 ({source}): make it private (chmod 600, owned by \
         this user) or delete it",
        path.display()
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Why its mode could not be changed.
        source: std::io::Error,
    },
    /// The certificate is not valid now: expired, or valid only from a later time.
    #[error("{}: {reason}", path.display())]
    NotValidNow {
        /// The file.
        path: PathBuf,
        /// When it is valid, and what to do.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate hash given as text is not 64 hex digits.
    #[error("bad certificate hash {input:?}: {reason}")]
    BadFingerprint {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl CertError {
    /// Maps a read failure of `path` to `Missing` or `Unreadable`.
    pub(crate) fn reading(path: &std::path::Path, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => CertError::Missing { path: path.to_owned() },
            _ => CertError::Unreadable { path: path.to_owned(), source },
        }
    }
}
