//! How a client decides to trust the server's certificate: a pinned SHA-256, a CA file, or (for a server on this
//! machine) the dev certificate the server keeps in its data directory.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

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

/// Records the fingerprint a pinned server presented when it did not match, so the connect error can say so.
#[derive(Debug, Default, Clone)]
pub(crate) struct PinReport(Arc<Mutex<Option<Fingerprint>>>);

impl PinReport {
    pub(crate) fn mismatch(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A quinn client configuration for `server` with Quiver's transport settings and `alpn`, for code that drives quinn
/// itself (benchmark baselines, tests of hostile peers).
pub fn quinn_client_config(
    trust: &TrustOptions,
    server: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TrustError> {
    Ok(quiver_transport::tls::client_config(tls_config(trust, server, alpn)?.0, &TransportTuning::quiver())?)
}

/// A rustls client configuration (ring, TLS 1.3) for `server`, and where pin mismatches are reported.
pub(crate) fn tls_config(
    trust: &TrustOptions,
    server: SocketAddr,
    alpn: &[u8],
) -> Result<(rustls::ClientConfig, Option<(Fingerprint, PinReport)>), TrustError> {
    let provider = quiver_transport::tls::provider();
    let builder = quiver_transport::tls::client_builder()?;
    let pinned = |pin: Fingerprint| {
        let report = PinReport::default();
        let verifier = PinVerifier { pin, report: report.clone(), provider: provider.clone() };
        let config =
            builder.clone().dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth();
        (config, Some((pin, report)))
    };
    let (mut config, pin) = match trust {
        TrustOptions::Pin(pin) => pinned(*pin),
        TrustOptions::Auto { data_dir } if server.ip().is_loopback() => {
            let cert = quiver_certs::dev::read(data_dir).map_err(TrustError::NoDevCert)?;
            pinned(quiver_certs::sha256(&cert))
        }
        TrustOptions::Auto { .. } => return Err(TrustError::NotLoopback(server)),
        TrustOptions::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in quiver_certs::pem::load_chain(path).map_err(TrustError::Ca)? {
                roots.add(cert)?;
            }
            (builder.with_root_certificates(roots).with_no_client_auth(), None)
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok((config, pin))
}

/// Accepts exactly one certificate, by the SHA-256 of its DER, and still checks the handshake signature with it.
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    report: PinReport,
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
        *self.report.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(presented);
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
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
