//! The TLS side of the QUIC configurations: TLS 1.3 only, with ring as the one crypto provider (pinned explicitly:
//! two compiled-in providers make rustls' process default panic), the ALPNs and, on the server, 0-RTT off.

use std::sync::Arc;

use quiver_proto::{Limits, ALPN_H3, ALPN_QUIVER};
/// What makes and opens TLS session tickets ([`session_tickets`]).
pub use rustls::server::ProducesTickets;
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
/// 0-RTT (replayable requests such as posts must not be accepted before the handshake completes), session
/// resumption with `tickets` (from [`session_tickets`]), and the server transport for `tuning`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    limits: &Limits,
    tuning: &TransportTuning,
    tickets: Arc<dyn ProducesTickets>,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = server_tls(chain, key, tickets, vec![ALPN_QUIVER.to_vec(), ALPN_H3.to_vec()])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|_| TlsError::NoTls13)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(server_transport(limits, tuning));
    Ok(server)
}

/// The TLS configuration of the WebSocket fallback's listener (`wss://`, over TCP): the same certificate, TLS 1.3,
/// tickets and no 0-RTT as [`server_config`], ALPN `http/1.1` (the WebSocket upgrade is HTTP/1.1).
pub fn server_tcp_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tickets: Arc<dyn ProducesTickets>,
) -> Result<rustls::ServerConfig, TlsError> {
    server_tls(chain, key, tickets, vec![b"http/1.1".to_vec()])
}

fn server_tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tickets: Arc<dyn ProducesTickets>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = alpn;
    tls.max_early_data_size = 0;
    // Stateless tickets: no per-session memory on the server (rustls' default cache holds 256 sessions in all,
    // useless at ten thousand clients), and a reconnect skips the certificate signature.
    tls.ticketer = tickets;
    Ok(tls)
}

/// TLS 1.3 session tickets for [`server_config`]: stateless (rustls' ring `Ticketer`: ChaCha20-Poly1305 under
/// random keys rotated every 6 hours, held in memory only), so resuming costs the server no memory per session. A
/// resumed handshake still runs a fresh ECDHE (forward secrecy holds) and never carries 0-RTT data. Make one per
/// server and keep it across certificate reloads, or tickets issued before a reload stop resuming.
/// `on_resumed` is called for every ticket a returning client presents that decrypts: a resumption attempt, which
/// rustls then checks further (the ticket's binder, cipher suite and server name).
pub fn session_tickets(on_resumed: impl Fn() + Send + Sync + 'static) -> Result<Arc<dyn ProducesTickets>, TlsError> {
    let inner = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(CountedTickets { inner, on_resumed: Box::new(on_resumed) }))
}

struct CountedTickets {
    inner: Arc<dyn ProducesTickets>,
    on_resumed: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for CountedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedTickets").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl ProducesTickets for CountedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            (self.on_resumed)();
        }
        plain
    }
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
