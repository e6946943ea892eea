//! What the round-trip series measure, started for one run: the Quiver server and the baselines' echoes, bound
//! where the run puts its servers, behind the UDP relay when the run is impaired on loopback.

use std::net::{IpAddr, SocketAddr};

use quiver_certs::Fingerprint;
use quiver_client::Client;
use quiver_transport::TransportTuning;
use tokio_util::sync::CancellationToken;

use super::RttConfig;
use crate::{
    bench::{
        echo,
        server::{relays_sound, through_relay, QuiverServer},
        BenchError,
    },
    impair::{Relay, CLIENT_IDLE},
};

/// The servers of a run, and what keeps them running until [`Targets::stop`].
pub(super) struct Targets {
    /// Cancelled when the targets are dropped, however the run ends (an error, Ctrl-C), not only at [`Targets::stop`];
    /// first, so that the servers stop before their data directory goes.
    stop: tokio_util::sync::DropGuard,
    quiver: QuiverServer,
    udp: SocketAddr,
    quinn: SocketAddr,
    quinn_pin: Fingerprint,
    websocket: SocketAddr,
    relays: Vec<Relay>,
    _data_dir: tempfile::TempDir,
}

/// What the series need to know about the targets.
#[derive(Debug)]
pub(super) struct TargetsView {
    pub(super) websocket: SocketAddr,
    pub(super) quiver: QuiverServer,
    pub(super) udp: SocketAddr,
    pub(super) quinn: SocketAddr,
    pub(super) quinn_pin: Fingerprint,
    pub(super) tuning: TransportTuning,
    /// Where the clients' sockets bind.
    pub(super) client_ip: IpAddr,
}

impl Targets {
    /// Starts the servers, bound to `ip`, and the relays in front of them when the profile asks for them.
    pub(super) async fn start(config: &RttConfig, ip: IpAddr) -> Result<Targets, BenchError> {
        let stop = CancellationToken::new();
        let data_dir = crate::bench::private_tempdir(None).map_err(BenchError::io("temporary directory"))?;
        // A server or echo started before a later one failed stops with it (dropped before the data directory).
        let guard = stop.clone().drop_guard();
        let (cert, _) = quiver_certs::dev::load_or_generate(data_dir.path(), std::time::SystemTime::now())?;
        let quinn_pin = cert.fingerprint();
        let (server, token) = (config.server.as_ref(), config.token.as_ref());
        let quiver = QuiverServer::start(server, token, &config.tuning, ip, data_dir.path(), &stop).await?;
        let udp = echo::udp_echo(ip, stop.clone()).await.map_err(BenchError::io("UDP echo"))?;
        let quinn = echo::quinn_echo(ip, cert, stop.clone())?;
        let websocket = echo::websocket_echo(ip, stop.clone()).await.map_err(BenchError::io("WebSocket echo"))?;
        // A relay keeps each client address it has seen until it has been idle a minute (`CLIENT_IDLE`), with a socket
        // and a thread each: the Quiver relay serves three series (datagram, stream, stream redundant) in every
        // round, each with new clients on sockets of their own, so it needs 3× the clients per round (more than that
        // leaves room for a socket a client opens again); the others need fewer. Rounds are counted as many as can
        // fall within the minute (a round runs at least three series, each its warm-up and measured time), not all
        // of them: a full relay lets an idle client go, and a cap of every round's clients held sockets for nothing.
        let per_round = config.clients as usize * 6 + 8;
        let round = (config.warmup + config.round_duration()) * 3;
        let within_idle = (CLIENT_IDLE.as_secs_f64() / round.as_secs_f64().max(0.001)).ceil() as usize + 1;
        let rounds = (config.rounds.max(1) as usize).min(within_idle);
        let (profile, max_clients) = (config.profile.as_ref(), per_round * rounds);
        let (quiver_addr, quiver_relay) = through_relay(profile, quiver.addr, max_clients)?;
        let (udp, udp_relay) = through_relay(profile, udp, max_clients)?;
        let (quinn, quinn_relay) = through_relay(profile, quinn, max_clients)?;
        Ok(Targets {
            stop: guard,
            quiver: quiver.reached_at(quiver_addr)?,
            udp,
            quinn,
            quinn_pin,
            websocket,
            relays: [quiver_relay, udp_relay, quinn_relay].into_iter().flatten().collect(),
            _data_dir: data_dir,
        })
    }

    /// The targets as the clients, binding to `client_ip`, see them.
    pub(super) fn view(&self, config: &RttConfig, client_ip: IpAddr) -> TargetsView {
        TargetsView {
            quiver: self.quiver.clone(),
            udp: self.udp,
            quinn: self.quinn,
            quinn_pin: self.quinn_pin,
            websocket: self.websocket,
            tuning: config.tuning.clone(),
            client_ip,
        }
    }

    /// Stops the servers and removes the relays and the servers' data directory; an error if a relay did not carry
    /// every client's packets ([`relays_sound`]).
    pub(super) fn stop(self) -> Result<(), BenchError> {
        let sound = relays_sound(&self.relays);
        drop(self.stop);
        sound
    }
}

impl TargetsView {
    /// A client of the Quiver server, with the run's transport settings.
    pub(super) async fn quiver_client(&self) -> Result<Client, BenchError> {
        self.quiver.connect(&self.tuning).await
    }

    /// A Quiver client over the WebSocket fallback (TCP).
    pub(super) async fn quiver_ws_client(&self) -> Result<Client, BenchError> {
        self.quiver.connect_over(&self.tuning, quiver_client::Transport::WebSocket).await
    }
}
