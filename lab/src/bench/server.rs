//! The Quiver server a benchmark measures, started the same way for every benchmark so their numbers compare: an
//! external one, or one in-process with dev tokens; on loopback with an impairing profile, reached through the
//! UDP relay.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
};

use quiver_client::{Client, ConnectOptions, TokenProvider, Transport, TrustOptions};
use quiver_transport::TransportTuning;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use crate::impair::{ImpairmentProfile, Relay, RelayConfig};

/// Where the Quiver server is and how its clients get in.
#[derive(Debug, Clone)]
pub(crate) struct QuiverServer {
    pub(crate) addr: SocketAddr,
    /// An external server's name as given (`host:port`), dialled by name while nothing sits between (the TLS
    /// server name a `--ca` certificate is checked against: dialling its address checked the address).
    name: Option<String>,
    pub(crate) trust: TrustOptions,
    pub(crate) token: Option<TokenProvider>,
    /// The in-process server's counters (`None` for an external one).
    pub(crate) stats: Option<std::sync::Arc<quiver_server::stats::ServerStats>>,
    /// The in-process server's WebSocket listener (an external server's is on its QUIC port).
    pub(crate) websocket: Option<SocketAddr>,
}

impl QuiverServer {
    /// The `external` server with `token`, or one started on `ip` with `tuning` (its dev certificate and token
    /// keys in `data_dir`) until `stop`.
    pub(crate) async fn start(
        external: Option<&(String, TrustOptions)>,
        token: Option<&TokenProvider>,
        tuning: &TransportTuning,
        ip: IpAddr,
        data_dir: &Path,
        stop: &CancellationToken,
    ) -> Result<QuiverServer, BenchError> {
        if let Some((server, trust)) = external {
            let addr = resolve(server).await?;
            let (trust, token) = (trust.clone(), token.cloned());
            let name = Some(server.clone());
            return Ok(QuiverServer { addr, name, trust, token, stats: None, websocket: None });
        }
        let config = quiver_server::ServerConfig {
            tuning: tuning.clone(),
            // These benches measure the transport; the store's cost is `bench post`'s (docs/durability.md).
            durability: quiver_server::store::Durability::Memory,
            // The bench's own load comes from one address: a thousand subscribers would meet the per-address
            // connection limits and rates a server on the internet keeps (the command line says so).
            limits: super::post::raised_limits(),
            budget: super::post::raised_budget(),
            ..quiver_server::ServerConfig::dev(SocketAddr::new(ip, 0), data_dir.into())
        };
        let server = quiver_server::Server::bind(config)?;
        let (addr, pin, stats) = (server.local_addr(), server.fingerprint(), server.stats());
        let websocket = server.websocket_addr();
        tokio::spawn(server.run(stop.clone()));
        let sub = format!("bench-{:08x}", rand::random::<u32>());
        let token = TokenProvider::dev(data_dir.to_owned(), sub);
        let (trust, token, stats) = (TrustOptions::Pin(pin), Some(token), Some(stats));
        Ok(QuiverServer { addr, name: None, trust, token, stats, websocket })
    }

    /// The same server reached at `addr` (a relay's on loopback, or its own address when none is needed): a
    /// relayed server is dialled by that address.
    /// A server trusted through a CA is checked against the name dialled, so it cannot be relayed (the relay's
    /// address is no name of its certificate's): refused before the run rather than failing every connection.
    pub(crate) fn reached_at(self, addr: SocketAddr) -> Result<QuiverServer, BenchError> {
        if let (Some(name), TrustOptions::CaFile(_), true) = (&self.name, &self.trust, addr != self.addr) {
            return Err(BenchError::CaBehindRelay { server: name.clone() });
        }
        let name = self.name.filter(|_| addr == self.addr);
        Ok(QuiverServer { addr, name, ..self })
    }

    /// A client connected over QUIC with `tuning`.
    pub(crate) async fn connect(&self, tuning: &TransportTuning) -> Result<Client, BenchError> {
        self.connect_over(tuning, Transport::Quic).await
    }

    /// A client connected over `transport` (never `Auto`: a bench says what it measures) with `tuning`.
    pub(crate) async fn connect_over(
        &self,
        tuning: &TransportTuning,
        transport: Transport,
    ) -> Result<Client, BenchError> {
        let options = ConnectOptions {
            trust: self.trust.clone(),
            token_provider: self.token.clone(),
            tuning: tuning.clone(),
            transport,
            websocket_port: self.websocket.map(|ws| ws.port()),
            ..ConnectOptions::default()
        };
        let server = self.name.clone().unwrap_or_else(|| self.addr.to_string());
        Ok(Client::connect_with(&server, options).await?)
    }
}

/// `upstream` as the clients reach it: through a relay on loopback (serving up to `max_clients` client
/// addresses) when `profile` impairs, the relay returned to be kept for the run; otherwise directly.
pub(crate) fn through_relay(
    profile: Option<&ImpairmentProfile>,
    upstream: SocketAddr,
    max_clients: usize,
) -> Result<(SocketAddr, Option<Relay>), BenchError> {
    let Some(profile) = profile.filter(|p| !p.is_clean()) else {
        return Ok((upstream, None));
    };
    let relay = Relay::start(RelayConfig {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        upstream,
        profile: profile.clone(),
        max_clients,
        client_idle: crate::impair::CLIENT_IDLE,
    })
    .map_err(BenchError::io("relay"))?;
    Ok((relay.local_addr(), Some(relay)))
}

/// Fails a run whose relays did not carry every client's packets ([`Relay::trouble`]): the loss they caused would
/// be counted as the link's.
pub(crate) fn relays_sound(relays: &[Relay]) -> Result<(), BenchError> {
    match relays.iter().find_map(Relay::trouble) {
        Some(trouble) => Err(BenchError::Relay(trouble)),
        None => Ok(()),
    }
}

/// The first address `server` resolves to.
async fn resolve(server: &str) -> Result<SocketAddr, BenchError> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|source| BenchError::Resolve { server: server.to_string(), source })?
        .next()
        .ok_or_else(|| BenchError::NoAddress { server: server.to_string() })
}
