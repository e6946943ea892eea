//! The WebSocket fallback's TCP listener (by default on the QUIC port's number): `wss://` with the server's
//! certificate, or (from this machine only, for development) plain `ws://`; the upgrade at the WebTransport path
//! with the `quiver` subprotocol; then the connection is a [`Wire::Ws`] served by the same code as QUIC clients
//! (same auth, limits, rooms and ticks). Plain HTTP requests from this machine get the demo page when it is served
//! here (the dev default puts both on one port).

mod upgrade;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quiver_proto::ErrorCode;
use quiver_transport::ws::{Role, WsConfig, WsSession};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_tungstenite::{tungstenite::protocol::Role as WsRole, WebSocketStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    admit::{admit_tcp, Admitted},
    connection::{serve_wire, Shared},
    wire::Wire,
    Current,
};
use crate::{
    admission::SourceKey,
    config::WebSocketListen,
    http::Response,
    hub::{ticks::TickHub, RoomHub},
    net::ServerError,
    stats::{bump, ServerStats},
    web::{is_loopback, PageInfo},
    ServerConfig,
};

// Largest request head read before the upgrade (the demo page's own listener's, one limit for both); a longer one
// is refused with 431.
use crate::http::MAX_REQUEST_HEAD;
/// How long a new connection has to send its first byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a closed connection's close message gets to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the listener's connections share.
pub(super) struct Listener<R> {
    pub(super) config: Arc<ServerConfig>,
    pub(super) rooms: Arc<R>,
    pub(super) ticks: Arc<dyn TickHub>,
    pub(super) stats: Arc<ServerStats>,
    pub(super) admission: Arc<std::sync::Mutex<crate::admission::Admission>>,
    pub(super) current: Arc<std::sync::RwLock<Current>>,
    /// The demo page, when it is served on this listener, and the address `web.page` names: loopback (the dev
    /// default), to this machine only; another, to peers that reached the listener at that address only (the
    /// listener may be bound to every address); unspecified, to anyone.
    pub(super) page: Option<(Arc<PageInfo>, std::net::IpAddr)>,
}

/// The WebSocket connection settings of a server: pings at the interval its QUIC lane uses
/// (`server_keep_alive`: 10 s for the clients' 8 s). Browsers send no WebSocket pings (the JS client sends a
/// Ping request after 10 s without receiving anything), so the server's keep the connection and its NAT bindings
/// alive.
fn ws_config(config: &ServerConfig) -> WsConfig {
    let keep_alive = quiver_transport::tuning::server_keep_alive(config.tuning.keep_alive);
    // The control stream's window as over QUIC: a client's requests not read yet hold at most this much.
    let control_window = quiver_transport::tuning::server_receive_windows(&config.limits).0 as usize;
    WsConfig { control_window, ..WsConfig::with_keep_alive(keep_alive) }
}

/// Binds the WebSocket fallback's TCP listener where `config.web.websocket` says (`quic`: the bound QUIC address).
/// With an ephemeral QUIC port (tests) whose number TCP has taken already, any free TCP port is used instead.
pub(super) fn bind(config: &ServerConfig, quic: SocketAddr) -> Result<Option<std::net::TcpListener>, ServerError> {
    let addr = match config.web.websocket {
        WebSocketListen::Off => return Ok(None),
        WebSocketListen::SamePort => SocketAddr::new(config.listen.ip(), quic.port()),
        WebSocketListen::At(addr) => addr,
    };
    for proxy in config.web.trusted_proxies.iter().filter(|proxy| proxy.is_wide()) {
        tracing::warn!(
            %proxy,
            "web.trusted_proxies: a block wider than /24 (IPv4) or /64 (IPv6): every host in it that reaches the \
             WebSocket listener is believed about the client it names (X-Forwarded-For), past the per-address \
             bounds; list the proxies' own addresses"
        );
    }
    match crate::http::bind(addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if config.listen.port() == 0 && err.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::debug!(%addr, "WebSocket listener: the QUIC port's number is taken over TCP; any free port");
            crate::http::bind(SocketAddr::new(addr.ip(), 0)).map(Some).map_err(ServerError::Bind)
        }
        Err(err) => Err(ServerError::WebSocket(addr, err)),
    }
}

/// Accepts TCP connections until `shutdown`; each is served on `tasks` (the server's: the drain waits for them).
pub(super) async fn serve<R: RoomHub>(
    listener: TcpListener,
    shared: Arc<Listener<R>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    // TCP connections between accept and the upgrade (or the page's answer) at once, in all and from one address
    // (an IPv6 /64 counts as one: [`SourceKey`]). Over an address's bound, one more is closed at once; over the
    // bound in all, one upgrading is closed to make room, by the rule of the connections awaiting Hello
    // (`crate::awaiting`): a slow upgrade from a few networks closes their own, else the longest upgrading goes.
    let budget = &shared.config.budget;
    // (A per-address bound above the total is the total.)
    let max = budget.websocket_max_upgrading;
    let max_per_ip = (budget.websocket_max_upgrading_per_ip as usize).min(max as usize);
    let table = Arc::new(std::sync::Mutex::new(UpgradeTable {
        upgrading: crate::awaiting::AwaitingHello::new(max),
        per_ip: std::collections::HashMap::new(),
    }));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "WebSocket listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Every check that can refuse the newcomer comes before anything that closes another connection to make
        // room for it (a newcomer refused closes nobody): first its address's upgrades
        // (`websocket_max_upgrading_per_ip`), then admission (the per-address rate and counts; at
        // `max_connections` it may close a connection not welcomed yet), before any TLS work. Then it is among the
        // connections awaiting Hello (a newer one may close it in turn) and among those upgrading (at
        // `websocket_max_upgrading` it closes one of them). From a trusted reverse proxy, admission comes once its
        // request head names the client (`crate::forwarded`), and its upgrades are bounded in all only: the
        // per-address bounds would be every client's behind it together.
        let proxied = crate::forwarded::trusted(&shared.config.web.trusted_proxies, remote.ip());
        let per_ip = (!proxied).then_some(max_per_ip);
        let Some(mut upgrading) = Upgrading::reserve(&table, (remote.ip(), per_ip), &shared.stats) else {
            bump(&shared.stats.websocket_upgrades_over_per_ip);
            tracing::debug!(%remote, "WebSocket listener: {max_per_ip} connections upgrading from this address already (budget.websocket_max_upgrading_per_ip); closed");
            continue;
        };
        let mut admitted = match proxied {
            true => None,
            false => match admit_tcp(remote.ip(), &shared.admission, &shared.stats) {
                Some(admitted) => Some(admitted),
                None => continue,
            },
        };
        let stop = shutdown.child_token();
        if let Some(Admitted::Serve(slot)) = &mut admitted {
            slot.await_hello(&stop); // (closed through `stop` to make room for a newer one)
        }
        upgrading.enter(&stop);
        tasks.spawn(connection(tcp, remote, shared.clone(), (upgrading, admitted), stop));
    }
}

/// The connections upgrading: in all (each with the token that closes it), and per address.
struct UpgradeTable {
    upgrading: crate::awaiting::AwaitingHello<CancellationToken>,
    per_ip: std::collections::HashMap<SourceKey, usize>,
}

/// A connection's place among those upgrading (the listener's and its address's), until dropped.
struct Upgrading {
    table: Arc<std::sync::Mutex<UpgradeTable>>,
    /// Where it is counted per address (`None`: a trusted proxy's, not counted so).
    ip: Option<SourceKey>,
    /// Its address, for its network's share of those upgrading.
    group: std::net::IpAddr,
    /// Its place among those upgrading in all, once it entered ([`Upgrading::enter`]).
    ticket: Option<crate::awaiting::Ticket>,
    /// Counted in `websocket_upgrading` meanwhile.
    stats: Arc<ServerStats>,
}

impl Upgrading {
    /// A place for a connection from `ip` among its address's (`None` when its address is at `max_per_ip`; no such
    /// bound, and not counted per address, for a trusted proxy's: its clients are many), not yet among those
    /// upgrading in all ([`Upgrading::enter`]): a refusal here closes nobody.
    fn reserve(
        table: &Arc<std::sync::Mutex<UpgradeTable>>,
        (ip, max_per_ip): (std::net::IpAddr, Option<usize>),
        stats: &Arc<ServerStats>,
    ) -> Option<Upgrading> {
        let mut locked = table.lock().unwrap_or_else(|p| p.into_inner());
        // (A proxy's are not counted with its /64's other addresses either: they would crowd those out.)
        let key = max_per_ip.map(|_| SourceKey::of(ip));
        if let (Some(key), Some(max_per_ip)) = (key, max_per_ip) {
            let count = locked.per_ip.entry(key).or_default();
            if *count >= max_per_ip {
                return None;
            }
            *count += 1;
        }
        drop(locked);
        ServerStats::add(&stats.websocket_upgrading, 1);
        Some(Upgrading { table: table.clone(), ip: key, group: ip, ticket: None, stats: stats.clone() })
    }

    /// Among the connections upgrading in all (closed by `stop`). At the bound, another connection upgrading is
    /// closed to make room (its `stop` cancelled; counted in `websocket_upgrades_over_total`): before, the newcomer
    /// was, and 64 sources trickling their heads held every slot, the demo page's visitors and every real
    /// WebSocket client closed at once.
    fn enter(&mut self, stop: &CancellationToken) {
        let (ticket, made_room) =
            self.table.lock().unwrap_or_else(|p| p.into_inner()).upgrading.enter(self.group, stop.clone());
        self.ticket = Some(ticket);
        if let Some(made_room) = made_room {
            bump(&self.stats.websocket_upgrades_over_total);
            tracing::debug!(group = %made_room.group, "WebSocket listener: closing a connection still upgrading to make room (budget.websocket_max_upgrading)");
            made_room.handle.cancel();
        }
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        ServerStats::add(&self.stats.websocket_upgrading, -1);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ticket) = self.ticket {
            table.upgrading.leave(ticket); // (gone already if it made room)
        }
        if let Some(ip) = self.ip {
            if let Some(count) = table.per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    table.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A connection that ended before its upgrade (its deadline, the server's shutdown, or closed to make room for a
/// newer one: `budget.max_awaiting_hello`, `max_connections`): counted with the connections not welcomed yet closed
/// to make room when that is why. (Nothing is told: before the upgrade there is no protocol to say it in.)
/// A connection whose TLS handshake or request head did not complete: past its `handshake_timeout_ms` (the server
/// neither stops nor closed it to make room) it is counted as the QUIC lanes count theirs, a `HandshakeTimeout`
/// refusal (it was counted nowhere: a slow-head flood showed only in the upgrading gauge).
fn stalled_before_upgrade(admitted: &Option<Admitted>, stats: &ServerStats, shutdown: &CancellationToken) {
    match shutdown.is_cancelled() {
        true => ended_before_upgrade(admitted, stats),
        false => stats.refused(ErrorCode::HandshakeTimeout),
    }
}

fn ended_before_upgrade(admitted: &Option<Admitted>, stats: &ServerStats) {
    if let Some(Admitted::Serve(slot)) = admitted {
        if slot.made_room() {
            bump(&stats.connections_closed_awaiting_hello);
        }
    }
}

/// One TCP connection: TLS or not (its first byte), the request head, then the upgrade or the page.
async fn connection<R: RoomHub>(
    tcp: TcpStream,
    remote: SocketAddr,
    shared: Arc<Listener<R>>,
    permit: (Upgrading, Option<Admitted>),
    shutdown: CancellationToken,
) {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + Duration::from_millis(u64::from(shared.config.limits.handshake_timeout_ms));
    let here = tcp.local_addr().map(|addr| addr.ip().to_canonical()).ok();
    let _ = tcp.set_nodelay(true);
    // The kernel's queue is where a slow link's ticks would go stale: keep it small (docs/web.md).
    let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(shared.config.web.websocket_send_buffer);
    let mut first = [0u8; 1];
    let first_deadline = deadline.min(Instant::now() + FIRST_BYTE_TIMEOUT);
    match before(first_deadline, &shutdown, tcp.peek(&mut first)).await {
        Some(Ok(1..)) => {}
        None => return ended_before_upgrade(&permit.1, &shared.stats),
        _ => return,
    }
    // A TLS record of type handshake (22) starts every TLS connection; an HTTP request starts with its method.
    if first[0] == 0x16 {
        let tls = shared.current.read().unwrap_or_else(|p| p.into_inner()).tcp.clone();
        match before(deadline, &shutdown, tokio_rustls::TlsAcceptor::from(tls).accept(tcp)).await {
            Some(Ok(stream)) => {
                request(stream, (remote, here), true, shared, permit, (deadline, started), shutdown).await
            }
            Some(Err(err)) => tracing::debug!(%remote, %err, "WebSocket listener: TLS handshake failed"),
            None => {
                stalled_before_upgrade(&permit.1, &shared.stats, &shutdown);
                tracing::debug!(%remote, "WebSocket listener: TLS handshake timed out, closed to make room, or the server stops");
            }
        }
    } else {
        request(tcp, (remote, here), false, shared, permit, (deadline, started), shutdown).await;
    }
}

/// Reads the request head and answers it: the upgrade (then serves the connection), the page, or an error.
async fn request<R: RoomHub, S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    (peer, here): (SocketAddr, Option<std::net::IpAddr>),
    secure: bool,
    shared: Arc<Listener<R>>,
    (upgrading, admitted): (Upgrading, Option<Admitted>),
    (deadline, started): (Instant, std::time::Instant),
    shutdown: CancellationToken,
) {
    let head = match before(deadline, &shutdown, read_head(&mut stream)).await {
        Some(Ok(head)) => head,
        Some(Err(response)) => {
            answer(stream, response, &shutdown).await;
            return drop((upgrading, admitted)); // (held until answered, as below)
        }
        None => return stalled_before_upgrade(&admitted, &shared.stats, &shutdown),
    };
    // From a trusted proxy: admitted now, as the client its head names. A head that does not parse names no
    // client: answered without admitting anyone (until 2026-12-08 it was admitted as the proxy, whose own upgrades
    // were refused 429 once enough of them came in a second).
    let (remote, admitted) = match admitted {
        Some(admitted) => (peer, admitted),
        None => {
            if let Err(refused) = crate::http::parse_request(&head) {
                answer(stream, refused, &shutdown).await;
                return drop(upgrading);
            }
            let trusted = &shared.config.web.trusted_proxies;
            let client = crate::forwarded::client_address(trusted, peer.ip(), upgrade::forwarded_for(&head));
            let Some(mut admitted) = admit_tcp(client, &shared.admission, &shared.stats) else {
                let mut refused = Response::error(
                    429,
                    "not admitted now: over the server's limits on new connections (from your address, or in all); \
                     try again later",
                );
                refused.head_only = head_only(&head);
                answer(stream, refused, &shutdown).await;
                return drop(upgrading);
            };
            if let Admitted::Serve(slot) = &mut admitted {
                slot.await_hello(&shutdown);
            }
            // (The client's port is the proxy's to know.)
            let port = if client == peer.ip() { peer.port() } else { 0 };
            (SocketAddr::new(client, port), admitted)
        }
    };
    // Plain ws:// is for this machine's peers, and for trusted proxies (which end TLS themselves, on this machine
    // or a load balancer in front of it).
    let local = is_loopback(peer.ip());
    let plain_allowed = local || crate::forwarded::trusted(&shared.config.web.trusted_proxies, peer.ip());
    let response = match upgrade::classify(&head, &shared.config.web, !secure) {
        Ok(upgrade::Request::Upgrade { key }) if secure || plain_allowed => {
            let switched = async {
                stream.write_all(&upgrade::switching_protocols(&key)).await?;
                stream.flush().await
            };
            if !matches!(before(deadline, &shutdown, switched).await, Some(Ok(()))) {
                return;
            }
            drop(upgrading);
            let config = ws_config(&shared.config);
            let ws = WebSocketStream::from_raw_socket(stream, WsRole::Server, Some(config.websocket())).await;
            let session = WsSession::start(ws, Role::Server, config, remote);
            let id = rand::random::<u64>();
            let span = tracing::info_span!(
                "conn",
                session = %format_args!("{id:016x}"),
                %remote,
                identity = tracing::field::Empty
            );
            let auth = shared.current.read().unwrap_or_else(|p| p.into_inner()).auth();
            let served = Shared {
                config: shared.config.clone(),
                rooms: shared.rooms.clone(),
                ticks: shared.ticks.clone(),
                stats: shared.stats.clone(),
                auth,
            };
            let wire = Wire::Ws(session.clone());
            async move {
                let held = serve_wire(id, wire, None, admitted, served, (deadline, started), shutdown).await;
                session.close(quiver_proto::ErrorCode::NoError, "session ended");
                let _ = tokio::time::timeout(CLOSE_GRACE, session.closed()).await;
                drop(held); // (its places given back once the connection is gone)
            }
            .instrument(span)
            .await;
            return;
        }
        Ok(upgrade::Request::Upgrade { .. }) => Response::error(
            403,
            "ws:// (without TLS) is for clients on this machine (or web.trusted_proxies) only; use wss://",
        ),
        Ok(upgrade::Request::Http) => match &shared.page {
            Some((page, at)) if !secure && page_here(*at, here, local) => crate::web::respond(&head, peer.ip(), page),
            _ => Response::error(
                404,
                &format!("Quiver's WebSocket endpoint: GET {} with Upgrade: websocket", shared.config.web.path),
            ),
        },
        Err(response) => response,
    };
    // A HEAD is answered without a body, refusals included (RFC 9110 §9.3.2; a load balancer's check of this port).
    let mut response = response;
    response.head_only |= head_only(&head);
    // The places are held until the answer is written (at most 5 s): a peer that does not read its answers (the
    // page's, a refusal's) holds the listener's bounds, not more than they allow.
    answer(stream, response, &shutdown).await;
    drop((upgrading, admitted));
}

/// Whether `head` is a HEAD request (answered without a body, whatever the answer: RFC 9110 §9.3.2).
fn head_only(head: &[u8]) -> bool {
    crate::http::parse_request(head).is_ok_and(|(head_only, ..)| head_only)
}

/// `step` of a connection not served yet, until `deadline`; `None` when it timed out, or when the server began
/// shutting down (the drain does not wait for a connection that is still upgrading).
async fn before<F: std::future::Future>(deadline: Instant, shutdown: &CancellationToken, step: F) -> Option<F::Output> {
    tokio::select! {
        out = tokio::time::timeout_at(deadline, step) => out.ok(),
        () = shutdown.cancelled() => None,
    }
}

/// Reads up to the end of the request head (nothing may follow it before the answer).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, Response> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(Response::error(431, "request head too large"));
        }
        let searched = head.len();
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(Response::error(400, "incomplete request head")),
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = crate::http::head_end(&head, searched) {
            if end + 4 > MAX_REQUEST_HEAD {
                return Err(Response::error(431, "request head too large"));
            }
            if end + 4 != head.len() {
                return Err(Response::error(400, "bytes after the request head, before the answer"));
            }
            return Ok(head);
        }
    }
}

/// Writes `response` and shuts the stream down, within 5 s, or until `stop` (the server stops, or the connection
/// was closed to make room among those upgrading: its place is free already, so it must go now).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, response: Response, stop: &CancellationToken) {
    let write = async {
        let _ = stream.write_all(&response.to_bytes()).await;
        let _ = stream.shutdown().await;
        // (Not closed with the peer's bytes unread, which resets the socket: the peer may lose the answer to it.)
        crate::http::linger(&mut stream).await;
    };
    let _ = before(Instant::now() + Duration::from_secs(5), stop, write).await;
}

/// Whether a plain HTTP request gets the demo page configured at `page` (its IP), from a peer that reached this
/// listener at `here` (`local`: the peer is on this machine). A page named at one address of a listener bound to
/// every address is that address's only: before, it was served on every interface.
fn page_here(page: std::net::IpAddr, here: Option<std::net::IpAddr>, local: bool) -> bool {
    let page = page.to_canonical();
    match () {
        () if page.is_loopback() => local,
        () if page.is_unspecified() => true,
        () => here == Some(page),
    }
}

#[cfg(test)]
mod page_tests {
    use super::page_here;

    /// `web.page = "10.0.0.5:4433"` beside the WebSocket listener on `[::]:4433`: one listener serves both, and the
    /// page went to peers that reached any of the machine's addresses.
    #[test]
    fn a_page_named_at_one_address_is_served_there_only() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let at = ip("10.0.0.5");
        assert!(page_here(at, Some(ip("10.0.0.5")), false));
        assert!(page_here(at, Some(ip("::ffff:10.0.0.5").to_canonical()), false), "the listener is dual-stack");
        assert!(!page_here(at, Some(ip("192.0.2.1")), false), "reached at another address");
        assert!(!page_here(at, None, true));
        // The dev default: loopback, to this machine only, whichever loopback address the browser used.
        assert!(page_here(ip("127.0.0.1"), Some(ip("::1")), true));
        assert!(!page_here(ip("127.0.0.1"), Some(ip("127.0.0.1")), false));
        // Unspecified: anyone.
        assert!(page_here(ip("0.0.0.0"), Some(ip("192.0.2.1")), false));
    }
}
