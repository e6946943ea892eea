//! The TLS side of the QUIC configurations: TLS 1.3 only, with ring as the one crypto provider (pinned explicitly:
//! two compiled-in providers make rustls' process default panic), the ALPNs and, on the server, 0-RTT off.

use std::sync::Arc;

use quiver_proto::{Limits, ALPN_H3, ALPN_QUIVER};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
};

use crate::{client_transport, server_transport, TransportTuning};

/// The crypto provider of every Quiver endpoint.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration builder with [`provider`] and TLS 1.3 only; the caller chooses how the server's
/// certificate is verified.
pub fn client_builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])
}

/// A quinn client configuration from a TLS 1.3 `tls` configuration, with the client transport for `tuning`.
pub fn client_config(tls: rustls::ClientConfig, tuning: &TransportTuning) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|_| TlsError::NoTls13)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(client_transport(&Limits::default(), tuning));
    Ok(config)
}

/// A quinn server configuration presenting `chain` (leaf first) with `key`: TLS 1.3, ALPNs `quiver/1` and `h3`, no
/// 0-RTT (replayable requests such as posts must not be accepted before the handshake completes), and the server
/// transport for `tuning`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    limits: &Limits,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN_QUIVER.to_vec(), ALPN_H3.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|_| TlsError::NoTls13)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(server_transport(limits, tuning));
    Ok(server)
}

/// Why a QUIC configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration (e.g. a key that does not match the certificate, an unsupported key type).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The TLS configuration offers no TLS 1.3 cipher suite QUIC can use.
    #[error("TLS configuration: QUIC needs TLS 1.3 with an initial cipher suite")]
    NoTls13,
}
