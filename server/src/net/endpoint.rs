//! Binding: the certificate, the QUIC server configuration (quiver-transport's), and a dual-stack UDP socket with
//! large buffers.

use std::net::SocketAddr;

use quiver_certs::{CertError, Fingerprint};
use quiver_transport::tuning::SOCKET_BUFFER;

use crate::{config::TlsSource, ServerConfig};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate or key could not be loaded or generated.
    #[error("certificate: {0}")]
    Certificate(#[from] CertError),
    /// rustls refused the certificate/key pair (e.g. the key does not match, or its type is unsupported).
    #[error(transparent)]
    Tls(#[from] quiver_transport::tls::TlsError),
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP socket: {0}")]
    Bind(std::io::Error),
    /// The configured limits contradict each other.
    #[error("limits: {0}")]
    Limits(#[from] quiver_proto::LimitsError),
    /// A value of the configuration out of its range ([`crate::config::check_values`]).
    #[error("{key}: {why}")]
    Config {
        /// The configuration file's key for it.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The token keys could not be loaded or generated.
    #[error("access tokens: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The data directory is another server's, or cannot be used.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The room store cannot be opened: damaged, or the directory is unusable.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The WebSocket listener's TCP address cannot be bound.
    #[error("WebSocket listener {0}: {1} (set [web] websocket, --websocket ADDR, or --websocket off)")]
    WebSocket(SocketAddr, std::io::Error),
    /// The demo page's TCP address cannot be bound.
    #[error("demo page listener {0}: {1} (set [web] page, --web ADDR, or --no-web)")]
    Page(SocketAddr, std::io::Error),
    /// The admin listener's TCP address cannot be bound.
    #[error("admin listener {0}: {1} (set [admin] listen, --admin ADDR, or --admin off)")]
    Admin(SocketAddr, std::io::Error),
}

pub(super) fn bind(config: &ServerConfig, tickets: &Tickets) -> Result<(quinn::Endpoint, Certified), ServerError> {
    config.check()?;
    let certified = server_config(config, tickets, std::time::SystemTime::now(), |_| false)?;
    let server_config = certified.quic.clone();
    // (The address and the setting named: "Address already in use" alone, or a host without IPv6's "Address family
    // not supported" for the default [::]:4433, left the operator to guess which listener.)
    let socket = udp_socket(config.listen).map_err(|err| {
        let hint = match crate::http::no_ipv6(&err) {
            true => format!("this host has no IPv6: set listen, or --listen ADDR, to 0.0.0.0:{}", config.listen.port()),
            false => "set listen, or --listen ADDR".to_string(),
        };
        ServerError::Bind(std::io::Error::new(err.kind(), format!("{}: {err} ({hint})", config.listen)))
    })?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServerError::Bind(std::io::Error::other("no async runtime (call from within tokio)")))?;
    // Stateless resets that a restarted server can still send (docs/durability.md): the reset key and the key
    // connection ids are checked with both come from the data directory.
    let reset_key = crate::datadir::reset_key(&config.data_dir)?;
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
    let cid_key = ring::hmac::sign(&reset_key, b"quiver connection ids");
    let cid_key = u64::from_be_bytes(cid_key.as_ref()[..8].try_into().unwrap_or_default());
    let mut endpoint_config = quinn::EndpointConfig::new(std::sync::Arc::new(reset_key));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config.clone()), socket, runtime)
        .map_err(ServerError::Bind)?;
    Ok((endpoint, certified))
}

/// What the certificate is served with: the QUIC configuration, the WebSocket listener's TLS, and its fingerprint.
#[derive(Debug)]
pub(super) struct Certified {
    pub(super) quic: quinn::ServerConfig,
    pub(super) tcp: std::sync::Arc<rustls::ServerConfig>,
    pub(super) fingerprint: Fingerprint,
    /// When the certificate expires.
    pub(super) not_after: std::time::SystemTime,
}

/// What every configuration the server makes shares, at start and across reloads: its TLS session tickets
/// (`quiver_transport::tls::session_tickets`) and the key of its QUIC address-validation tokens (Retry, and the
/// NEW_TOKEN tokens a connection is given for its client's next one).
#[derive(Clone)]
pub(super) struct Tickets {
    pub(super) tls: quiver_transport::tls::SessionTickets,
    /// Derived from the data directory's secret (`datadir::reset_key`), so that a returning client's token holds
    /// across reloads and restarts: the endpoint checks every token with the configuration it was bound with, and
    /// quinn's default (a random key per configuration) made the tokens of connections accepted after a reload
    /// (each accepted with the reloaded configuration) unreadable to it, and every token unreadable after a restart;
    /// their clients then paid a Retry's round trip wherever the server asks for one (a reconnect storm after a
    /// restart is where it does most), and lost the validated standing `Admission` gives them.
    pub(super) tokens: std::sync::Arc<dyn quinn::crypto::HandshakeTokenKey>,
    /// The NEW_TOKEN tokens' lifetime and the log of those used (each is taken once), one for every configuration:
    /// a reloaded configuration's own log would forget the tokens used before.
    pub(super) validation: quinn::ValidationTokenConfig,
}

/// How long a NEW_TOKEN token validates its client's address (quinn's default: two weeks). Tokens now outlive
/// restarts (their key is the data directory's) while the log of used ones is in memory: a token used before a
/// restart is taken once more after it, from the address it was given to; a day bounds that.
pub(super) const VALIDATION_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Tickets {
    pub(super) fn new(
        tls: quiver_transport::tls::SessionTickets,
        data_dir: &std::path::Path,
    ) -> Result<Tickets, ServerError> {
        let secret = crate::datadir::reset_key(data_dir)?;
        // HKDF with a label of its own: the stateless-reset key (the same secret, HMAC'd) stays independent of it.
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quiver address validation tokens");
        let mut validation = quinn::ValidationTokenConfig::default();
        validation.lifetime(VALIDATION_TOKEN_LIFETIME);
        Ok(Tickets { tls, tokens: std::sync::Arc::new(salt.extract(&secret)), validation })
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").field("tls", &self.tls).finish_non_exhaustive()
    }
}

/// The QUIC server configuration (and the WebSocket listener's TLS): the certificate (loaded, or the dev one
/// generated or renewed if due at `now`), the session tickets and the transport. Called at start and on every
/// reload. A certificate not valid at `now` (expired, or not yet valid) is refused when `refuse_invalid` says so
/// for its fingerprint (a reload replacing the certificate in use); otherwise served with a warning: clients that
/// pin a certificate by its hash do not check its dates.
pub(super) fn server_config(
    config: &ServerConfig,
    tickets: &Tickets,
    now: std::time::SystemTime,
    refuse_invalid: impl Fn(&Fingerprint) -> bool,
) -> Result<Certified, ServerError> {
    let (cert, path) = match &config.tls {
        TlsSource::Dev => {
            let (cert, status) = quiver_certs::dev::load_or_generate(&config.data_dir, now)?;
            tracing::debug!(?status, "dev certificate");
            (cert, config.data_dir.join(quiver_certs::dev::CERT_FILE))
        }
        TlsSource::Pem { cert: path, key } => (quiver_certs::pem::load(path, key)?, path.clone()),
    };
    let fingerprint = cert.fingerprint();
    let not_after = match quiver_certs::pem::check_valid(&cert.chain, &path, now) {
        Ok(not_after) => not_after,
        Err(err) if refuse_invalid(&fingerprint) => return Err(err.into()),
        Err(err) => {
            tracing::warn!(%err, "serving a certificate that is not valid now: clients that check its dates refuse it");
            quiver_certs::dev::validity(&cert.chain[0], &path)?.1
        }
    };
    // The operator's files named (as `config check` does): rustls' words alone ("the private key does not match")
    // said nothing of which files, at a start or in a reload's log.
    let named = |err: quiver_transport::tls::TlsError| match &config.tls {
        TlsSource::Pem { cert, key } => {
            ServerError::Config { key: "tls.key", why: format!("{err} ({} with {})", cert.display(), key.display()) }
        }
        TlsSource::Dev => ServerError::Tls(err),
    };
    let tcp = quiver_transport::tls::server_tcp_config(cert.chain.clone(), cert.key.clone_key(), &tickets.tls)
        .map_err(named)?;
    let mut quic =
        quiver_transport::tls::server_config(cert.chain, cert.key, &config.limits, &config.tuning, &tickets.tls)?;
    quic.token_key(tickets.tokens.clone()).validation_token_config(tickets.validation.clone());
    Ok(Certified { quic, tcp: std::sync::Arc::new(tcp), fingerprint, not_after })
}

/// `base` with a transport that writes this connection's qlog into `dir` (`<time>-<id>.sqlog`, JSON-SEQ as qvis
/// reads it).
pub(super) fn with_qlog(
    base: &quinn::ServerConfig,
    config: &ServerConfig,
    dir: &std::path::Path,
    id: u64,
) -> quinn::ServerConfig {
    let mut transport = quiver_transport::tuning::server_transport(&config.limits, &config.tuning);
    let title = format!("quiver-server connection {id:016x}");
    quiver_transport::qlog::attach(&mut transport, dir, &format!("{id:016x}"), title);
    let mut server = base.clone();
    server.transport_config(transport);
    server
}
/// A UDP socket on `addr`; an IPv6 wildcard is dual-stack so IPv4 clients reach it too.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let (socket, addr) = crate::http::socket_for(addr, socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    for (what, result) in
        [("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)), ("send", socket.set_send_buffer_size(SOCKET_BUFFER))]
    {
        if let Err(err) = result {
            tracing::warn!(%err, "cannot set UDP {what} buffer size");
        }
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers (the kernel caps them at net.core.rmem_max / wmem_max)"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
