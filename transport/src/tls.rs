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

/// The crypto provider of every Quiver endpoint: ring's, with TLS 1.3's AES-128-GCM-SHA256 first (ring's default puts
/// AES-256-GCM-SHA384 first). SHA-256 has instructions on current x86 and ARM CPUs (SHA-NI, the ARMv8 SHA2
/// extension), SHA-384 mostly does not: on this project's machine the handshake's transcript hash and key schedule
/// in SHA-384 were the server's largest single cost per handshake (8 % of its CPU), and AES-128 runs 10 rounds per
/// block to AES-256's 14 on every packet. AES-128-GCM is TLS 1.3's mandatory suite, QUIC's Initial packets use it
/// anyway, and browsers prefer it; the other two suites stay offered. The server follows the client's order (a
/// client without AES instructions may prefer ChaCha20), so this order is what Quiver's own clients ask for.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(provider)
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
    tickets: &SessionTickets,
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
    tickets: &SessionTickets,
) -> Result<rustls::ServerConfig, TlsError> {
    server_tls(chain, key, tickets, vec![b"http/1.1".to_vec()])
}

/// Whether the server's TLS takes `chain` with `key`: a key it can use, and the private half of the leaf's public
/// key (what the server checks when it starts; `config check` checks it before).
pub fn check_server_cert(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), TlsError> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(())
}

fn server_tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tickets: &SessionTickets,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    // The served leaf's SHA-256, which the tickets are bound to (a chain without one is refused just below).
    let mut certificate = [0; 32];
    if let Some(leaf) = chain.first() {
        certificate.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()).as_ref());
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = alpn;
    tls.max_early_data_size = 0;
    // Stateless tickets: no per-session memory on the server (rustls' default cache holds 256 sessions in all,
    // useless at ten thousand clients), and a reconnect skips the certificate signature.
    tls.ticketer = Arc::new(CountedTickets { tickets: tickets.clone(), certificate });
    Ok(tls)
}

/// TLS 1.3 session tickets for [`server_config`]: stateless (rustls' ring `Ticketer`: ChaCha20-Poly1305 under
/// random keys rotated every 6 hours, held in memory only), so resuming costs the server no memory per session. A
/// resumed handshake still runs a fresh ECDHE (forward secrecy holds) and never carries 0-RTT data. Make one per
/// server and keep it across certificate reloads, or tickets issued before a reload stop resuming.
/// `on_resumed` is called for every ticket a returning client presents that decrypts, within its lifetime and under
/// the certificate now served: a resumption attempt, which rustls then checks further (the ticket's binder, cipher
/// suite and server name).
///
/// A ticket resumes for its lifetime (6 hours) and no longer: each carries the second it was issued, inside its
/// encryption, on the wall clock and on a monotonic one (its age is the larger: the wall clock counts a machine's
/// sleep, and the monotonic one a wall clock stepped back, which made a ticket's stamp lie ahead of it and its age
/// 0 until the clock caught up). (rustls rolls its keys only when a ticket is made or read, and checks no ticket's
/// age, so on a server left idle for days a ticket from before the idle stretch still resumed.) And only under the
/// certificate it was issued under (the SHA-256 of the leaf, inside its encryption too): a resumed handshake checks
/// no certificate, so after a reload onto another certificate a client must run the full handshake and check the
/// new one (a pinned client then learns that its pin no longer matches, instead of resuming on for 6 hours). A
/// reload that keeps the certificate keeps resuming.
pub fn session_tickets(on_resumed: impl Fn() + Send + Sync + 'static) -> Result<SessionTickets, TlsError> {
    let inner = rustls::crypto::ring::Ticketer::new()?;
    // (The keys live in this process only, and so do its tickets: seconds since now are a monotonic stamp.)
    let made = std::time::Instant::now();
    let clock = Arc::new(move || [unix_seconds(), made.elapsed().as_secs()]);
    Ok(SessionTickets { inner, on_resumed: Arc::new(on_resumed), clock })
}

/// A server's session tickets ([`session_tickets`]): their keys and count, shared by every configuration made for the
/// server, each of which binds them to its certificate.
#[derive(Clone)]
pub struct SessionTickets {
    inner: Arc<dyn ProducesTickets>,
    on_resumed: Arc<dyn Fn() + Send + Sync>,
    /// Seconds since the Unix epoch, and since the tickets were made (monotonic).
    clock: Arc<dyn Fn() -> [u64; 2] + Send + Sync>,
}

impl std::fmt::Debug for SessionTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTickets").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// How long a session ticket resumes: 6 hours, rustls' key rotation.
pub const TICKET_LIFETIME_S: u32 = 6 * 60 * 60;

/// A configuration's tickets: the server's, stamped with the second of issue (on the wall clock and on a monotonic
/// one) and the certificate served.
struct CountedTickets {
    tickets: SessionTickets,
    /// The SHA-256 of the leaf certificate this configuration serves.
    certificate: [u8; 32],
}

impl std::fmt::Debug for CountedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedTickets").field("tickets", &self.tickets).finish_non_exhaustive()
    }
}

impl ProducesTickets for CountedTickets {
    fn enabled(&self) -> bool {
        self.tickets.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        // (rustls' ticketer reports twice its key rotation, 12 h: a ticket made just before a rotation is still
        // decrypted with the previous key for that long.)
        self.tickets.inner.lifetime().min(TICKET_LIFETIME_S)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut stamped = Vec::with_capacity(16 + 32 + plain.len());
        for seconds in (self.tickets.clock)() {
            stamped.extend_from_slice(&seconds.to_be_bytes());
        }
        stamped.extend_from_slice(&self.certificate);
        stamped.extend_from_slice(plain);
        self.tickets.inner.encrypt(&stamped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let stamped = self.tickets.inner.decrypt(cipher)?;
        let (wall, rest) = stamped.split_first_chunk::<8>()?;
        let (monotonic, rest) = rest.split_first_chunk::<8>()?;
        let (certificate, plain) = rest.split_first_chunk::<32>()?;
        let [wall_now, monotonic_now] = (self.tickets.clock)();
        let age = wall_now
            .saturating_sub(u64::from_be_bytes(*wall))
            .max(monotonic_now.saturating_sub(u64::from_be_bytes(*monotonic)));
        if age > u64::from(self.lifetime()) || *certificate != self.certificate {
            return None;
        }
        (self.tickets.on_resumed)();
        Some(plain.to_vec())
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

#[cfg(test)]
mod tests {
    use rustls::{pki_types::ServerName, CipherSuite, RootCertStore};

    use super::*;

    /// Quiver's ends agree on AES-128-GCM-SHA256; a client that prefers AES-256 (rustls' default order) still gets
    /// it, because the server follows the client's order.
    #[test]
    fn quiver_ends_negotiate_aes_128_gcm_and_the_server_follows_the_client() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let chain = vec![cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = Arc::new(server_tcp_config(chain.clone(), private, &session_tickets(|| {}).unwrap()).unwrap());
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let quiver = client_builder().unwrap().with_root_certificates(roots.clone()).with_no_client_auth();
        let rustls_default =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        assert_eq!(negotiate(quiver, &server), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(negotiate(rustls_default, &server), CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    /// A ticket resumes within its lifetime and not after it, however long the server was idle in between (rustls'
    /// own keys roll only when a ticket is made or read: the first read after a long idle stretch found the old
    /// ticket's key still there); a resumption counted only for a ticket taken.
    #[test]
    fn a_ticket_resumes_within_its_lifetime_only() {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
        let resumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (clock, counted) = (now.clone(), resumed.clone());
        let tickets = CountedTickets {
            tickets: SessionTickets {
                inner: rustls::crypto::ring::Ticketer::new().unwrap(),
                on_resumed: Arc::new(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }),
                clock: Arc::new(move || [clock.load(std::sync::atomic::Ordering::Relaxed); 2]),
            },
            certificate: [7; 32],
        };
        let lifetime = u64::from(tickets.lifetime());
        assert_eq!(lifetime, 6 * 3_600, "the documented 6 hours (rustls' ticketer says 12)");
        let ticket = tickets.encrypt(b"session").unwrap();
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        now.fetch_add(lifetime, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"session"[..]), "at the end of its lifetime");
        now.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(tickets.decrypt(&ticket), None, "past its lifetime");
        assert_eq!(resumed.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(tickets.decrypt(b"not a ticket"), None);
    }

    /// A ticket's age is the larger of its wall-clock and its monotonic age: the wall clock stepped back (a ticket
    /// stamped ahead of it) or a machine's sleep (the monotonic clock stopped) do not stretch its lifetime.
    #[test]
    fn a_ticket_ages_on_both_clocks() {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let (wall, monotonic) = (Arc::new(AtomicU64::new(1_000_000)), Arc::new(AtomicU64::new(0)));
        let (w, m) = (wall.clone(), monotonic.clone());
        let tickets = CountedTickets {
            tickets: SessionTickets {
                inner: rustls::crypto::ring::Ticketer::new().unwrap(),
                on_resumed: Arc::new(|| {}),
                clock: Arc::new(move || [w.load(Relaxed), m.load(Relaxed)]),
            },
            certificate: [7; 32],
        };
        let lifetime = u64::from(tickets.lifetime());
        let session = Some(&b"session"[..]);
        let ticket = tickets.encrypt(b"session").unwrap();
        wall.fetch_sub(10_000, Relaxed); // stepped back: its stamp lies ahead of the wall clock
        monotonic.fetch_add(lifetime, Relaxed);
        assert_eq!(tickets.decrypt(&ticket).as_deref(), session, "at the end of its lifetime on both clocks");
        monotonic.fetch_add(1, Relaxed);
        assert_eq!(tickets.decrypt(&ticket), None, "past its lifetime on the monotonic clock");
        let ticket = tickets.encrypt(b"session").unwrap();
        wall.fetch_add(lifetime, Relaxed); // a sleep: the monotonic clock stood still
        assert_eq!(tickets.decrypt(&ticket).as_deref(), session, "at the end of its lifetime on the wall clock");
        wall.fetch_add(1, Relaxed);
        assert_eq!(tickets.decrypt(&ticket), None, "past its lifetime on the wall clock");
    }

    /// A ticket resumes only under the certificate it was issued under: a configuration made for another
    /// certificate (a reload onto it) refuses it, and does not count it; one made again for the same certificate
    /// takes it.
    #[test]
    fn a_ticket_resumes_only_under_its_certificate() {
        let cert = |name: &str| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
            (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        };
        let resumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = resumed.clone();
        let tickets = session_tickets(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        let ((first, first_key), (second, second_key)) = (cert("localhost"), cert("localhost"));
        let issuing = server_tcp_config(first.clone(), first_key.clone_key(), &tickets).unwrap();
        let ticket = issuing.ticketer.encrypt(b"session").unwrap();
        let reloaded_other = server_tcp_config(second, second_key, &tickets).unwrap();
        assert_eq!(reloaded_other.ticketer.decrypt(&ticket), None, "issued under another certificate");
        assert_eq!(resumed.load(std::sync::atomic::Ordering::Relaxed), 0, "a refused ticket is not counted");
        let reloaded_same = server_tcp_config(first, first_key, &tickets).unwrap();
        assert_eq!(reloaded_same.ticketer.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(resumed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Runs a TLS handshake in memory; the suite the server chose.
    fn negotiate(client: rustls::ClientConfig, server: &Arc<rustls::ServerConfig>) -> CipherSuite {
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut flight = Vec::new();
            client.write_tls(&mut flight).unwrap();
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            flight.clear();
            server.write_tls(&mut flight).unwrap();
            client.read_tls(&mut flight.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking(), "the handshake did not complete");
        server.negotiated_cipher_suite().unwrap().suite()
    }
}
