//! What a server is started with. Transport tuning lives in [`quiver_transport`]; protocol limits in
//! [`quiver_proto::Limits`].

use std::{net::SocketAddr, path::PathBuf};

use quiver_proto::Limits;

use quiver_transport::TransportTuning;

use crate::{auth::AuthConfig, budget::Budget, store::Durability};

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// The dev certificate in the data directory (generated or renewed as needed).
    Dev,
    /// A PEM chain (leaf first) and its key.
    Pem {
        /// Certificate chain file.
        cert: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
}

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address to bind; port 0 picks a free port. `[::]` is bound dual-stack (IPv4 and IPv6).
    pub listen: SocketAddr,
    /// Where the dev certificate, the dev token key and the room store (`store/`) are kept; one server per
    /// directory.
    pub data_dir: PathBuf,
    /// When a post counts as stored: `Fsync` (default), `Os`, or `Memory` (no store: nothing survives a restart).
    pub durability: Durability,
    /// The cluster's broker (Redis): rooms and ticks shared with other nodes, and `durability` unused. `None`: one
    /// node.
    pub broker: Option<crate::cluster::BrokerConfig>,
    /// Certificate source.
    pub tls: TlsSource,
    /// Per-connection bounds, reported to clients in Welcome.
    pub limits: Limits,
    /// Server-wide bounds on memory clients can make the server hold.
    pub budget: Budget,
    /// Latency-relevant transport settings (docs/transport.md).
    pub tuning: TransportTuning,
    /// Browsers: the WebTransport endpoint and the demo page.
    pub web: WebConfig,
    /// Who may connect and what they may do (access tokens).
    pub auth: AuthConfig,
    /// TCP address of the admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: not served.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers for, besides `localhost` and IP addresses.
    pub admin_hosts: Vec<String>,
    /// On shutdown, how long clients get to take their GoAway and posts in flight to be stored.
    pub drain_timeout: std::time::Duration,
    /// Write one qlog file per connection into this directory.
    pub qlog_dir: Option<PathBuf>,
}

/// How browsers reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The WebTransport URL path (`https://host:port/quiver`); a CONNECT to any other path gets 404.
    pub path: String,
    /// Origins (`https://app.example.com`, scheme and host and port as the browser sends them) allowed to open
    /// WebTransport sessions. Empty: any origin, the dev default. Non-empty: a request without an `Origin` header
    /// (a non-browser client over HTTP/3) is refused too.
    pub allowed_origins: Vec<String>,
    /// TCP address on which the demo page is served over plain HTTP (`None`: not served). Browsers treat
    /// `http://localhost` and `http://127.0.0.1` as secure contexts, so WebTransport works from it.
    pub http: Option<SocketAddr>,
    /// Where the WebSocket fallback listens (TCP).
    pub websocket: WebSocketListen,
    /// The WebSocket connections' TCP send buffer, bytes (the kernel doubles it): what a slow link can hold of
    /// ticks that can no longer be replaced by newer ones. Small keeps ticks fresh; large lets a fast, distant
    /// link carry more.
    pub websocket_send_buffer: usize,
    /// Reverse proxies in front of the WebSocket listener (addresses or CIDR blocks): an upgrade from one is
    /// admitted as the client its `X-Forwarded-For` names ([`crate::forwarded`]). Empty (the default): every
    /// connection is its TCP peer, whatever it says.
    pub trusted_proxies: Vec<crate::forwarded::Cidr>,
}

/// Where the WebSocket fallback listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocketListen {
    /// Nowhere: clients that cannot use QUIC cannot connect.
    Off,
    /// TCP at the QUIC endpoint's address and port (the default): `wss://host:port/quiver` where QUIC is
    /// `https://host:port/quiver`.
    SamePort,
    /// TCP at this address (port 0: any free port).
    At(SocketAddr),
}

impl WebConfig {
    /// The default WebTransport path.
    pub const DEFAULT_PATH: &'static str = "/quiver";
    /// The default of [`WebConfig::websocket_send_buffer`].
    pub const DEFAULT_WEBSOCKET_SEND_BUFFER: usize = 32 * 1024;

    /// True if a CONNECT with this `Origin` header may open a session.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        origin.is_some_and(|origin| self.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)))
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            path: WebConfig::DEFAULT_PATH.into(),
            allowed_origins: Vec::new(),
            http: None,
            websocket: WebSocketListen::SamePort,
            websocket_send_buffer: WebConfig::DEFAULT_WEBSOCKET_SEND_BUFFER,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Longest `limits.handshake_timeout_ms` accepted (a minute).
pub const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
/// Most `transport.copies` accepted (the default is 3).
pub const MAX_COPIES: u8 = 8;
/// Largest `transport.congestion_floor` accepted: 100 packets of 1,200 bytes (the default is 10).
pub const MAX_CONGESTION_FLOOR: u64 = 100 * 1200;
/// Largest `transport.datagram_send_buffer` accepted: quinn's default, 1 MiB (Quiver's is 16 KiB).
pub const MAX_DATAGRAM_SEND_BUFFER: u64 = 1024 * 1024;
/// Longest `budget.frame_timeout_ms` accepted (a minute): a frame begun and never finished holds its connection
/// this long.
pub const MAX_FRAME_TIMEOUT_MS: u64 = 60_000;
/// Longest `budget.sweep_interval_ms` accepted (a minute): expired history stays up to this long.
pub const MAX_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Bytes quinn counts per queued datagram beyond its payload (`size_of::<Bytes>()`): a datagram send buffer must
/// hold the largest datagram and these, or every datagram that large is refused as too large.
pub const DATAGRAM_BUFFER_OVERHEAD: usize = 32;
/// `budget.websocket_max_upgrading` at most: a file descriptor and a TLS handshake each.
pub const MAX_WEBSOCKET_UPGRADING: u64 = 1_000_000;
/// `budget.http_max_connections` at most: a file descriptor and a task each.
pub const MAX_HTTP_CONNECTIONS: u64 = 100_000;

/// The longest keep-alive, tail probe, copy spacing or ACK delay [`check_values`] takes: a day.
pub const MAX_TUNING_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The ranges of `budget`, `tuning` and the handshake timeout that no type can make, however the server is
/// configured (a file, or [`ServerConfig`] built by a program that embeds it): the first problem, as the
/// configuration file's key and why. Zero where it would stop the server working, and bounds that keep it safe for
/// the open internet.
pub fn check_values(limits: &Limits, budget: &Budget, tuning: &TransportTuning) -> Result<(), (&'static str, String)> {
    for (key, value) in [
        ("budget.max_rooms", u64::from(budget.max_rooms)),
        ("budget.max_channels", u64::from(budget.max_channels)),
        ("budget.room_history_bytes", budget.room_history_bytes),
        ("budget.retained_bytes", budget.retained_bytes),
        ("budget.frame_timeout_ms", u64::from(budget.frame_timeout_ms)),
        ("budget.sweep_interval_ms", u64::from(budget.sweep_interval_ms)),
        ("budget.max_awaiting_hello", u64::from(budget.max_awaiting_hello)),
        ("budget.max_connections_per_network", u64::from(budget.max_connections_per_network)),
        ("budget.new_connections_per_s_per_network", u64::from(budget.new_connections_per_s_per_network)),
        ("budget.max_rooms_per_network", u64::from(budget.max_rooms_per_network)),
        ("budget.max_channels_per_network", u64::from(budget.max_channels_per_network)),
        ("budget.websocket_max_upgrading", u64::from(budget.websocket_max_upgrading)),
        ("budget.websocket_max_upgrading_per_ip", u64::from(budget.websocket_max_upgrading_per_ip)),
        ("budget.http_max_connections", u64::from(budget.http_max_connections)),
        ("budget.http_max_connections_per_ip", u64::from(budget.http_max_connections_per_ip)),
        ("transport.reordering_threshold", u64::from(tuning.reordering_threshold)),
        ("transport.initial_rtt_ms", tuning.initial_rtt.as_millis().try_into().unwrap_or(u64::MAX)),
        ("transport.datagram_send_buffer", tuning.datagram_send_buffer as u64),
        // (0 was taken as 1 ms without a word.)
        ("transport.copy_spacing_ms", tuning.copy_spacing.as_millis().try_into().unwrap_or(u64::MAX)),
    ] {
        if value == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    // Durations past a day mean "never" to whoever wrote them (a program embedding the server; the file's are u32
    // milliseconds, 49.7 days at most): added to a clock reading or doubled, `Duration::MAX` panicked in quinn's
    // driver or in `server_keep_alive`.
    let durations = [
        ("transport.keep_alive_ms", tuning.keep_alive),
        ("transport.tail_probe_ms", tuning.tail_probe),
        ("transport.copy_spacing_ms", Some(tuning.copy_spacing)),
        ("transport.max_ack_delay_ms", tuning.max_ack_delay),
    ];
    if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_some_and(|d| d > MAX_TUNING_DURATION)) {
        return Err((key, format!("at most {} (a day)", MAX_TUNING_DURATION.as_millis())));
    }
    // One address is in one network: a per-address bound above the network's could never be reached (the address
    // would be refused at the network's bound, counted as a per-address refusal).
    if limits.max_connections_per_ip > budget.max_connections_per_network {
        return Err((
            "limits.max_connections_per_ip",
            format!(
                "limits.max_connections_per_ip ({}) must be at most budget.max_connections_per_network ({}): an \
                 address is refused at its network's bound first",
                limits.max_connections_per_ip, budget.max_connections_per_network
            ),
        ));
    }
    if limits.new_connections_per_s_per_ip > budget.new_connections_per_s_per_network {
        return Err((
            "limits.new_connections_per_s_per_ip",
            format!(
                "limits.new_connections_per_s_per_ip ({}) must be at most budget.new_connections_per_s_per_network \
                 ({}): an address is refused at its network's rate first",
                limits.new_connections_per_s_per_ip, budget.new_connections_per_s_per_network
            ),
        ));
    }
    if budget.sweep_interval_ms < 10 {
        return Err(("budget.sweep_interval_ms", "at least 10 (each sweep walks every room)".into()));
    }
    if tuning.initial_rtt > std::time::Duration::from_secs(10) {
        return Err(("transport.initial_rtt_ms", "at most 10000".into()));
    }
    // quinn asks a peer for at most its RTT (25 ms at least) whatever is configured, while the tail probe waits the
    // configured delay: 1,000 asked for 20 ms on a 20 ms path and put the probe a second late (and u32::MAX turned
    // it off), without a word (a review's find).
    if tuning.max_ack_delay.is_some_and(|delay| delay > quiver_transport::tuning::QUINN_MAX_ACK_DELAY) {
        let most = quiver_transport::tuning::QUINN_MAX_ACK_DELAY.as_millis();
        let why = format!("at most {most} (quinn asks peers for no more than the path's RTT, {most} ms at least)");
        return Err(("transport.max_ack_delay_ms", why));
    }
    for (key, value, max, why) in [
        (
            "limits.handshake_timeout_ms",
            u64::from(limits.handshake_timeout_ms),
            MAX_HANDSHAKE_TIMEOUT_MS,
            "a connection that sends no Hello holds a connection slot this long",
        ),
        (
            "transport.copies",
            u64::from(tuning.copies),
            u64::from(MAX_COPIES),
            "datagram copies per room frame: a peer that withholds its ACKs gets the most",
        ),
        (
            "transport.congestion_floor",
            tuning.congestion_floor.unwrap_or(0),
            MAX_CONGESTION_FLOOR,
            "a floor under the congestion window this large turns congestion control off",
        ),
        (
            "budget.frame_timeout_ms",
            u64::from(budget.frame_timeout_ms),
            MAX_FRAME_TIMEOUT_MS,
            "a peer that begins a frame and never finishes it holds its connection this long",
        ),
        (
            "budget.sweep_interval_ms",
            u64::from(budget.sweep_interval_ms),
            MAX_SWEEP_INTERVAL_MS,
            "expired history is kept until the next sweep",
        ),
        (
            "budget.websocket_max_upgrading",
            u64::from(budget.websocket_max_upgrading),
            MAX_WEBSOCKET_UPGRADING,
            "TCP connections not upgraded yet hold a file descriptor and a TLS handshake each",
        ),
        (
            "budget.http_max_connections",
            u64::from(budget.http_max_connections),
            MAX_HTTP_CONNECTIONS,
            "connections of the page's and the admin's HTTP listeners hold a file descriptor and a task each",
        ),
        (
            "transport.datagram_send_buffer",
            tuning.datagram_send_buffer as u64,
            MAX_DATAGRAM_SEND_BUFFER,
            "bytes per connection, outside [budget]: quinn's own default; more only queues staler ticks",
        ),
    ] {
        if value > max {
            return Err((key, format!("at most {max} ({why})")));
        }
    }
    // A room's history (and the server's) holds at least one message of the largest size (its body, its event's
    // encoding around it, its sender's name and the history's bookkeeping: `StoredMessage::cost`): below that, a
    // post is acknowledged and delivered, then forgotten at once (a member resuming is told it missed it).
    let largest_message = u64::from(limits.max_body)
        + u64::from(limits.event_overhead())
        + u64::from(Limits::MAX_IDENTITY)
        + crate::hub::STORED_OVERHEAD;
    for (key, value) in
        [("budget.room_history_bytes", budget.room_history_bytes), ("budget.retained_bytes", budget.retained_bytes)]
    {
        if value < largest_message {
            return Err((
                key,
                format!(
                    "at least {largest_message} (one message of limits.max_body, its event's encoding, its sender's \
                     name and the history's bookkeeping): a larger post would be acknowledged, then forgotten at once"
                ),
            ));
        }
    }
    if tuning.mtu_discovery.is_some_and(|mtu| !(1200..=65527).contains(&mtu)) {
        return Err(("transport.mtu_discovery", "0 (off) or a UDP payload size from 1200 to 65527".into()));
    }
    // The largest datagram the path may carry (a UDP payload of 1,200 bytes, or up to the MTU discovery's
    // ceiling), with quinn's overhead per datagram: a smaller buffer refuses every datagram that large.
    let largest = usize::from(tuning.mtu_discovery.unwrap_or(1200)) + DATAGRAM_BUFFER_OVERHEAD;
    if tuning.datagram_send_buffer < largest {
        let mtu = tuning.mtu_discovery.map_or_else(|| "off: 1200".into(), |mtu| mtu.to_string());
        return Err((
            "transport.datagram_send_buffer",
            format!(
                "transport.datagram_send_buffer ({}) must be at least {largest}: the largest datagram this path may \
                 carry (transport.mtu_discovery: {mtu}), and {DATAGRAM_BUFFER_OVERHEAD} bytes quinn counts with each",
                tuning.datagram_send_buffer
            ),
        ));
    }
    Ok(())
}

impl ServerConfig {
    /// Checks what no type can: the limits fit together ([`Limits::check`]) and the ranges of [`check_values`].
    /// [`crate::Server::bind`] refuses a configuration that fails it, as the configuration file's checks do.
    pub fn check(&self) -> Result<(), crate::ServerError> {
        self.limits.check()?;
        check_values(&self.limits, &self.budget, &self.tuning)
            .map_err(|(key, why)| crate::ServerError::Config { key, why })
    }

    /// The qlog directory, when one is asked for, made and written to once (a file made and removed): one the server
    /// cannot write was found at each connection, each warning in the log (a line any peer could have repeated at
    /// will) and no qlog written, while the server started as if all was well (a review's find).
    pub(crate) fn prepare_qlog_dir(&self) -> Result<(), crate::ServerError> {
        let Some(dir) = &self.qlog_dir else { return Ok(()) };
        let probe = dir.join(format!(".quiver-qlog-check-{}", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&probe, b""))
            .and_then(|()| std::fs::remove_file(&probe));
        written.map_err(|err| crate::ServerError::Config {
            key: "log.qlog_dir",
            why: format!("cannot write qlog files in {}: {err}", dir.display()),
        })
    }

    /// The default address: all interfaces, IPv4 and IPv6, UDP port 4433.
    pub const DEFAULT_LISTEN: &'static str = "[::]:4433";
    /// The default data directory, relative to the working directory.
    pub const DEFAULT_DATA_DIR: &'static str = ".quiver";

    /// A server with the dev certificate, default limits, and tokens required, signed with the dev key in
    /// `data_dir` (generated when missing; same-machine clients mint their tokens with it).
    pub fn dev(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ServerConfig {
            listen,
            data_dir,
            durability: Durability::default(),
            broker: None,
            tls: TlsSource::Dev,
            limits: Limits::default(),
            budget: Budget::default(),
            tuning: TransportTuning::quiver(),
            web: WebConfig::default(),
            auth: AuthConfig::DevKey,
            admin: None,
            admin_hosts: Vec::new(),
            drain_timeout: std::time::Duration::from_secs(10),
            qlog_dir: None,
        }
    }
}
