//! How a client connects and reconnects: [`ConnectOptions`], and where its access tokens come from
//! ([`TokenProvider`]).

use std::{path::PathBuf, sync::Arc, time::Duration};

use quiver_proto::PROTOCOL_VERSION;
use quiver_transport::TransportTuning;

use crate::{error::TokenError, TrustOptions};

/// How a client connects and reconnects. (Its `Debug` hides the token: an application that logs its client's
/// options must not log a bearer token.) Its durations are at most a year, and `connect_timeout`, `reconnect_delay`,
/// `reconnect_max_delay`, `dead_server_after` and `tuning.initial_rtt` more than zero, `tuning.max_ack_delay` at
/// most quinn's 25 ms ([`crate::ConnectError::Options`] otherwise; `None`, where an option takes it, means never).
#[derive(Clone)]
pub struct ConnectOptions {
    /// Which certificate to accept.
    pub trust: TrustOptions,
    /// The name to be known by in rooms, where the server allows it (a server that requires tokens takes the
    /// token's subject instead). `None`: a name of the client's own, `guest-` and 16 random hex digits, chosen at
    /// connect and kept across reconnects, so that a server admitting anonymous sessions knows the client as the
    /// same identity on every connection (post deduplication keys on the identity: a post re-sent after a
    /// reconnect under a new one would be stored twice).
    pub name: Option<String>,
    /// Access token, where the server requires one. A token fixed here cannot be renewed: when it expires the
    /// server closes the connection with `TokenExpired` and the reconnect is refused. Prefer `token_provider`.
    pub token: Option<String>,
    /// Called for a token at every connect (a fresh one after the server closed the connection at the old one's
    /// `exp`). When neither `token` nor this is set and `trust` is `TrustOptions::Auto` with a data directory that
    /// holds the server's dev key, a dev token is minted from it (same machine, development).
    pub token_provider: Option<TokenProvider>,
    /// Time allowed for the QUIC handshake (server names resolved at once; once one has, the others have a quarter
    /// of it more), and again for Hello/Welcome (the first connect, failing over to the other addresses included,
    /// takes at most twice this unless `first_connect_retry` allows more; a handshake that completes then gets this
    /// for Hello too), then for the first clock Ping's answer (a connect to a server that welcomes and then hangs
    /// returns after up to three times this); and how long a request waits for a connection while the client
    /// reconnects.
    pub connect_timeout: Duration,
    /// Reconnect after losing the connection (true by default). When false, a lost connection ends the client.
    pub reconnect: bool,
    /// The first reconnect delay; it doubles on each failed attempt, with jitter, up to `reconnect_max_delay`. It
    /// starts over only after a connection that lasted [`crate::STABLE_CONNECTION`] (10 s): after one lost sooner
    /// (a server that accepts and then fails), the delays go on growing.
    pub reconnect_delay: Duration,
    /// The longest delay between reconnect attempts (a `reconnect_delay` above it starts at it).
    pub reconnect_max_delay: Duration,
    /// The protocol version announced in Hello. Leave at [`PROTOCOL_VERSION`]; other values exist to test
    /// servers' version negotiation.
    pub protocol_version: u32,
    /// Latency-relevant transport settings (the server's own apply to what it sends).
    pub tuning: TransportTuning,
    /// Write one qlog file per connection (each reconnect too) into this directory, for qvis.
    pub qlog_dir: Option<std::path::PathBuf>,
    /// Keep trying the first connect (with the reconnect backoff) for up to this long, for a client that may
    /// start before its server; `None`: one attempt. Fatal refusals (a token, the version, a pin) end it once no
    /// other address takes the session, and so does `TrustOptions::Auto` for a server not on this machine.
    pub first_connect_retry: Option<Duration>,
    /// A server that sends nothing for this long is taken for dead: the connection is dropped and the client
    /// reconnects (to another node of a cluster when given several). QUIC itself only notices at its 30 s idle
    /// timeout (a killed server sends no close); keep-alives (`tuning.keep_alive`, 8 s) make a live server answer
    /// well within it. `None`: wait for the idle timeout.
    pub dead_server_after: Option<Duration>,
    /// Posts queued or awaiting their reply at most (they wait across reconnects, and after `Unavailable`
    /// refusals, until acknowledged): at the limit `post` fails at once with [`crate::RequestError::QueueFull`]
    /// instead of holding ever more memory while the server cannot take them. 0: no limit. Default 10,000.
    pub max_queued_posts: usize,
    /// How to reach the server: QUIC, the WebSocket fallback, or QUIC and then the WebSocket (the default; the
    /// fallback needs the crate's `websocket` feature, off by default, without which `Auto` is QUIC).
    pub transport: Transport,
    /// With [`Transport::Auto`]: how long QUIC has alone before the WebSocket is tried too (at once when QUIC
    /// fails; at most half of `connect_timeout`).
    pub fallback_after: Duration,
    /// The WebSocket fallback's TCP port; `None`: the QUIC port (the server's default).
    pub websocket_port: Option<u16>,
}

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// QUIC only (UDP).
    Quic,
    /// The WebSocket fallback only (`wss://host:port/quiver`, TCP; the `websocket` feature).
    WebSocket,
    /// QUIC, and the WebSocket too once QUIC has not connected within `fallback_after` or failed; the first
    /// through wins. Once the WebSocket won, this client's reconnects use it straight away.
    #[default]
    Auto,
}

impl std::str::FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(Transport::Quic),
            "websocket" | "ws" => Ok(Transport::WebSocket),
            "auto" => Ok(Transport::Auto),
            other => Err(UnknownTransport(other.to_string())),
        }
    }
}

/// A transport name other than `quic`, `websocket` or `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?} (quic, websocket or auto)")]
pub struct UnknownTransport(pub String);

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: TrustOptions::default(),
            name: None,
            token: None,
            token_provider: None,
            connect_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(5),
            protocol_version: PROTOCOL_VERSION,
            tuning: TransportTuning::quiver(),
            qlog_dir: None,
            first_connect_retry: None,
            dead_server_after: Some(Duration::from_secs(12)),
            max_queued_posts: 10_000,
            transport: Transport::Auto,
            fallback_after: Duration::from_secs(2),
            websocket_port: None,
        }
    }
}

impl ConnectOptions {
    /// The token for the next connect: the fixed one, or the provider's.
    pub(crate) async fn token(&self) -> Result<Option<String>, TokenError> {
        match (&self.token, &self.token_provider) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(provider)) => provider.token().await.map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Without a name, one of the client's own for its whole life (see [`ConnectOptions::name`]); after
    /// [`ConnectOptions::with_dev_tokens`], whose subject stays `dev-…` then.
    pub(crate) fn with_stable_name(mut self) -> Self {
        if self.name.is_none() {
            self.name = Some(format!("guest-{:016x}", rand::random::<u64>()));
        }
        self
    }

    /// With auto trust, no token, and the server's dev key in the data directory: a dev-token provider, under the
    /// same identity for the client's whole life (post deduplication keys on it).
    pub(crate) fn with_dev_tokens(mut self) -> Self {
        if let (None, None, TrustOptions::Auto { data_dir }) = (&self.token, &self.token_provider, &self.trust) {
            if quiver_auth::dev_key_exists(data_dir) {
                let sub = self.name.clone().unwrap_or_else(|| format!("dev-{:08x}", rand::random::<u32>()));
                self.token_provider = Some(TokenProvider::dev(data_dir.clone(), sub));
            }
        }
        self
    }
}

/// A source of access tokens (see [`ConnectOptions::token_provider`]).
#[derive(Clone)]
pub struct TokenProvider(Provider);

/// A future resolving to a token.
pub type TokenFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, TokenError>> + Send>>;

#[derive(Clone)]
enum Provider {
    Sync(Arc<dyn Fn() -> Result<String, TokenError> + Send + Sync>),
    Async(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl TokenProvider {
    /// Tokens from `f`, called at every connect.
    pub fn new(f: impl Fn() -> Result<String, TokenError> + Send + Sync + 'static) -> Self {
        TokenProvider(Provider::Sync(Arc::new(f)))
    }

    /// Tokens from an async `f` (an HTTP call to your auth service, say), awaited at every connect within the
    /// connect timeout.
    pub fn new_async<F>(f: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: std::future::Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        TokenProvider(Provider::Async(Arc::new(move || Box::pin(f()) as TokenFuture)))
    }

    /// Dev tokens minted with the server's dev key in `data_dir`: subject `sub`, every right, valid one hour from
    /// each connect.
    pub fn dev(data_dir: PathBuf, sub: String) -> Self {
        TokenProvider::new(move || {
            let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            let claims = quiver_auth::Claims::everything(sub.clone(), now_s, 3600);
            Ok(quiver_auth::mint_dev(&data_dir, &claims)?)
        })
    }

    /// A token now.
    pub async fn token(&self) -> Result<String, TokenError> {
        match &self.0 {
            Provider::Sync(f) => f(),
            Provider::Async(f) => f().await,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("trust", &self.trust)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_provider", &self.token_provider)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("protocol_version", &self.protocol_version)
            .field("tuning", &self.tuning)
            .field("qlog_dir", &self.qlog_dir)
            .field("first_connect_retry", &self.first_connect_retry)
            .field("dead_server_after", &self.dead_server_after)
            .field("max_queued_posts", &self.max_queued_posts)
            .field("transport", &self.transport)
            .field("fallback_after", &self.fallback_after)
            .field("websocket_port", &self.websocket_port)
            .finish()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// How to join a room ([`crate::Client::join_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Resume after this position (a [`crate::Room::position`] an earlier session stored): see
    /// [`crate::Client::join_from`].
    pub since: Option<quiver_proto::Position>,
    /// Redundant delivery: the room's events also come as datagram copies, and this client's posts to the room go
    /// up as copies too, so that a lost packet costs a few milliseconds instead of a retransmission (about twice
    /// the bytes; docs/transport.md, "Redundant delivery"). Granted where the server's `transport.copies` is above
    /// 0; the events are the same, each once and in order, either way.
    pub redundant: bool,
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// An application that logs its options (or its `Client`) logs no bearer token.
    #[test]
    fn debug_hides_the_token() {
        let options = ConnectOptions { token: Some("eyJ.secret.sig".into()), ..ConnectOptions::default() };
        let shown = format!("{options:?}");
        assert!(!shown.contains("secret") && shown.contains("<redacted>") && shown.contains("connect_timeout"));
        let hello = quiver_proto::Hello { version: 1, agent: "a".into(), name: None, token: options.token.clone() };
        assert!(!format!("{hello:?}").contains("secret"));
    }
}
