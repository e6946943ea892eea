//! How a client decides to trust the server's certificate: a pinned SHA-256, a CA file, or (for a server on this
//! machine) the dev certificate the server keeps in its data directory.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use crate::sessions::Trusted;
use quiver_certs::{CertError, Fingerprint};
use quiver_transport::{tls::TlsError, TransportTuning};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

/// Which certificates the client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustOptions {
    /// For a loopback server: pin the dev certificate found in this data directory (what `quiver-server` uses by
    /// default: `./.quiver`). For any other server: an error asking for a pin or a CA.
    Auto {
        /// The server's data directory.
        data_dir: PathBuf,
    },
    /// Accept exactly the certificate with this SHA-256 (as `quiver-server` prints it).
    Pin(Fingerprint),
    /// Accept certificates that chain to a CA in this PEM file, for the name the client connects to.
    CaFile(PathBuf),
}

impl Default for TrustOptions {
    fn default() -> Self {
        TrustOptions::Auto { data_dir: PathBuf::from(".quiver") }
    }
}

/// Why no trust could be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Auto trust found no dev certificate to pin.
    #[error(
        "no dev certificate to trust ({0}); run the client where the server's data directory is (TrustOptions::Auto's \
         data_dir; the CLI's --data-dir), or pin the hash quiver-server prints (TrustOptions::Pin; --cert-hash)"
    )]
    NoDevCert(CertError),
    /// Auto trust is only for servers on this machine.
    #[error(
        "{0} is not a loopback address: say which certificate to trust (TrustOptions::Pin or CaFile; the CLI's \
         --cert-hash HEX or --ca PEM)"
    )]
    NotLoopback(SocketAddr),
    /// The CA file could not be loaded.
    #[error("CA file: {0}")]
    Ca(CertError),
    /// rustls refused the CA or configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The QUIC configuration could not be built from the TLS one.
    #[error(transparent)]
    Quic(#[from] TlsError),
}

/// What the pin verifier's error says, before the fingerprint the server presented ([`presented_in`]).
const PRESENTED: &str = "the server presented sha256 ";

/// The certificate a pinned server presented instead of the pinned one: the pin verifier's error, carried by
/// rustls in the handshake's error (its text, as quinn and tokio-rustls report it), from which the connect error is
/// made. (The verifier is shared by every attempt under one pin, [`crate::sessions`], so it cannot keep the
/// presented certificate for an attempt of its own.)
struct Presented(Fingerprint);

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PRESENTED}{}", self.0)
    }
}

impl std::fmt::Display for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Presented {}

/// The certificate a pinned server presented, from the text of a handshake that failed on it: only ever read from
/// this client's own TLS errors (a QUIC connection's locally made transport error, a TLS stream's error), never
/// from a peer's close reason.
pub(crate) fn presented_in(error_text: &str) -> Option<Fingerprint> {
    let at = error_text.find(PRESENTED)? + PRESENTED.len();
    error_text.get(at..at + 64)?.parse().ok()
}

/// A quinn client configuration for `server` with Quiver's transport settings and `alpn`, for code that drives quinn
/// itself (benchmark baselines, tests of hostile peers).
pub fn quinn_client_config(
    trust: &TrustOptions,
    server: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TrustError> {
    // Tickets of its own (rustls' default): code that makes one configuration per connection, as one per process
    // (`quiver bench connections`' full handshakes), must not resume another's session.
    Ok(quiver_transport::tls::client_config(tls_config(trust, server, alpn, false)?.0, &TransportTuning::quiver())?)
}

/// A rustls client configuration (ring, TLS 1.3) for `server`, and the pin it checks (if it pins). With `resume`,
/// the configuration is the one kept for this certificate check, with the ticket store of this ALPN
/// ([`crate::sessions`]): a client's reconnect resumes its session. Without, it has a verifier and tickets of its own.
pub(crate) fn tls_config(
    trust: &TrustOptions,
    server: SocketAddr,
    alpn: &[u8],
    resume: bool,
) -> Result<(rustls::ClientConfig, Option<Fingerprint>), TrustError> {
    let (trusted, roots) = match trust {
        TrustOptions::Pin(pin) => (Trusted::Pin(*pin), Vec::new()),
        TrustOptions::Auto { data_dir } if server.ip().is_loopback() => {
            let cert = quiver_certs::dev::read(data_dir).map_err(TrustError::NoDevCert)?;
            (Trusted::Pin(quiver_certs::sha256(&cert)), Vec::new())
        }
        TrustOptions::Auto { .. } => return Err(TrustError::NotLoopback(server)),
        TrustOptions::CaFile(path) => {
            let certs = quiver_certs::pem::load_chain(path).map_err(TrustError::Ca)?;
            (Trusted::roots(certs.iter().map(|cert| cert.as_ref())), certs)
        }
    };
    let make = || -> Result<rustls::ClientConfig, TrustError> {
        let builder = quiver_transport::tls::client_builder()?;
        Ok(match trusted {
            Trusted::Pin(pin) => {
                let verifier = PinVerifier { pin, provider: quiver_transport::tls::provider() };
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
            }
            Trusted::Roots(_) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in roots {
                    store.add(cert)?;
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
        })
    };
    let mut config = match resume {
        true => crate::sessions::config(trusted, alpn, make)?,
        false => make()?,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let pin = match trusted {
        Trusted::Pin(pin) => Some(pin),
        Trusted::Roots(_) => None,
    };
    Ok((config, pin))
}

/// Accepts exactly one certificate, by the SHA-256 of its DER, and still checks the handshake signature with it.
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = quiver_certs::sha256(end_entity);
        if presented == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = rustls::OtherError(Arc::new(Presented(presented)));
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(presented)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificate a pinned server presented comes back out of the handshake's error text, as quinn and
    /// tokio-rustls word it (rustls' own Display of the verifier's error); other text names none.
    #[test]
    fn the_presented_certificate_is_read_back_from_the_handshakes_error() {
        let presented = Fingerprint([0xcd; 32]);
        let err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            Presented(presented),
        ))));
        assert_eq!(presented_in(&err.to_string()), Some(presented), "{err}");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(presented_in(&io.to_string()), Some(presented), "{io}");
        assert_eq!(presented_in("invalid peer certificate: UnknownIssuer"), None);
        assert_eq!(presented_in(&format!("{PRESENTED}{}", "ab".repeat(31))), None, "cut short");
    }
}
