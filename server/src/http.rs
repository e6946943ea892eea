//! The small HTTP/1.1 server the demo page and the admin listener share: GET and HEAD only, one request per
//! connection, bounded head size, time and connections, each answer decided by a sans-IO `respond` function.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Largest request head read; anything longer is refused with 431.
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head: a probe or a browser sends it at once; a peer trickling bytes
/// holds its connection this long at most.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a client has to send its request and take the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request in service has left once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// What is read (and dropped) of what a peer still sends after its answer, and for how long at most, before the
/// socket is closed: closed with bytes unread, a socket resets, and the peer may lose the answer to the reset (a
/// 431 for a head too large, which the peer was still sending).
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Connections kept for loopback peers (a local health check, scraper or the developer's browser) on top of
/// [`HttpBounds::max_connections`], so that peers elsewhere cannot take every one.
pub(crate) const LOOPBACK_RESERVE: usize = 16;

/// How many connections an HTTP listener serves at once (`budget.http_max_connections` and
/// `budget.http_max_connections_per_ip`).
#[derive(Debug, Clone)]
pub(crate) struct HttpBounds {
    /// Connections served at once from peers other than loopback (each holds a task and at most
    /// [`MAX_REQUEST_HEAD`] bytes); one more is answered 503 and closed at once.
    pub(crate) max_connections: usize,
    /// Connections served at once from one address (an IPv4 address or an IPv6 /64) other than loopback; more are
    /// answered 429 and closed at once. One peer trickling bytes would otherwise hold every one of `max_connections`
    /// for [`REQUEST_TIMEOUT`] after another, and the page (or the admin's `/metrics` and `/readyz`) with them.
    /// Loopback peers are not limited: a local reverse proxy or scraper speaks for many.
    pub(crate) max_per_peer: usize,
    /// Where the connections answered 503 or 429 are counted (`quiver_http_refused_total`), if anywhere.
    pub(crate) counted: Option<std::sync::Arc<crate::stats::ServerStats>>,
}

impl HttpBounds {
    /// The bounds `budget` sets.
    pub(crate) fn of(budget: &crate::Budget) -> HttpBounds {
        HttpBounds {
            max_connections: budget.http_max_connections as usize,
            max_per_peer: budget.http_max_connections_per_ip as usize,
            counted: None,
        }
    }

    /// These bounds, their refusals counted in `stats`.
    pub(crate) fn counted(self, stats: &std::sync::Arc<crate::stats::ServerStats>) -> HttpBounds {
        HttpBounds { counted: Some(stats.clone()), ..self }
    }

    /// Connections served at once from one network (an IPv4 /24 or an IPv6 /48, what one party commonly holds:
    /// `crate::awaiting::Group`) other than loopback, an eighth of `max_connections` (and never fewer than one
    /// address's): 32 addresses' worth of `max_per_peer` from one /48 held every connection (and a kubelet's probes
    /// of `/healthz` were refused, so it restarted the server).
    fn max_per_group(&self) -> usize {
        (self.max_connections / 8).max(self.max_per_peer)
    }
}

impl Default for HttpBounds {
    fn default() -> Self {
        HttpBounds::of(&crate::Budget::default())
    }
}

/// Refusals (503, 429) answered at once, each on a short task of its own that reads what the peer sent and closes
/// gracefully (a socket closed with unread bytes resets, and the peer sees "connection reset", not the status);
/// beyond them, a refused connection gets the status written without waiting and is dropped.
pub(crate) const MAX_REFUSALS: usize = 64;
/// Time a refusal's task takes at most.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Connections in service per peer address and per network, within their [`HttpBounds`].
#[derive(Debug, Default)]
struct PeerSlots(Mutex<Held>, HttpBounds);

#[derive(Debug, Default)]
struct Held {
    peers: HashMap<crate::admission::SourceKey, usize>,
    groups: HashMap<crate::awaiting::Group, usize>,
}

type Place = (crate::admission::SourceKey, crate::awaiting::Group);

/// A connection's place in [`PeerSlots`], given back when dropped.
#[derive(Debug)]
struct PeerSlot(Arc<PeerSlots>, Option<Place>);

impl PeerSlots {
    /// A place for a connection from `peer`; `None` when its address has `max_per_peer` already, or its network
    /// its share (`HttpBounds::max_per_group`).
    fn take(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        if peer.to_canonical().is_loopback() {
            return Some(PeerSlot(self.clone(), None));
        }
        let (key, group) = (crate::admission::SourceKey::of(peer), crate::awaiting::Group::of(peer));
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = held.peers.get(&key).is_some_and(|n| *n >= self.1.max_per_peer)
            || held.groups.get(&group).is_some_and(|n| *n >= self.1.max_per_group());
        if full {
            return None;
        }
        *held.peers.entry(key).or_default() += 1;
        *held.groups.entry(group).or_default() += 1;
        Some(PeerSlot(self.clone(), Some((key, group))))
    }

    #[cfg(test)]
    fn peers(&self) -> (usize, usize) {
        let held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (held.peers.len(), held.groups.len())
    }
}

/// Takes one from `key`'s count, forgetting it at 0.
fn give_back<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some((key, group)) = self.1 else { return };
        let mut held = self.0 .0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        give_back(&mut held.peers, &key);
        give_back(&mut held.groups, &group);
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown`: one request per connection, at most `bounds.max_connections` at
/// once (`bounds.max_per_peer` from one address, [`LOOPBACK_RESERVE`] more from loopback), each head at most
/// [`MAX_REQUEST_HEAD`] bytes within [`HEAD_TIMEOUT`], the whole exchange within [`REQUEST_TIMEOUT`], answered by
/// `respond` (the demo page's, or the admin listener's). A connection over a bound is answered 503 (429 for one
/// address's) and closed at once, rather than left waiting in the kernel's queue where a health check times out.
pub(crate) async fn serve_http(
    listener: TcpListener,
    (shutdown, bounds): (CancellationToken, HttpBounds),
    respond: impl Fn(&[u8], IpAddr) -> Response + Send + Sync + 'static,
) {
    let respond = Arc::new(respond);
    let tasks = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    let reserve = Arc::new(tokio::sync::Semaphore::new(LOOPBACK_RESERVE));
    let counted = bounds.counted.clone();
    let count = |refused: fn(&crate::stats::ServerStats) -> &std::sync::atomic::AtomicU64| {
        if let Some(stats) = &counted {
            crate::stats::bump(refused(stats));
        }
    };
    let peers = Arc::new(PeerSlots(Mutex::default(), bounds));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    let refuse = |stream: TcpStream, response: Response| match refusals.clone().try_acquire_owned() {
        Ok(permit) => {
            tasks.spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_TIME, refuse_gracefully(stream, response)).await;
                drop(permit);
            });
        }
        Err(_) => {
            let _ = stream.try_write(&response.to_bytes());
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let loopback = peer.ip().to_canonical().is_loopback();
        let permit = match loopback {
            true => reserve.clone().try_acquire_owned().or_else(|_| slots.clone().try_acquire_owned()),
            false => slots.clone().try_acquire_owned(),
        };
        let Ok(permit) = permit else {
            tracing::debug!(%peer, "HTTP connection refused: every connection slot is in service");
            count(|stats| &stats.http_refused_busy);
            refuse(stream, Response::error(503, "too many connections in service; try again"));
            continue;
        };
        let Some(peer_slot) = peers.take(peer.ip()) else {
            tracing::debug!(%peer, "HTTP connection refused: too many from this address or network in service already");
            count(|stats| &stats.http_refused_per_address);
            refuse(stream, Response::error(429, "too many connections from this address or network in service"));
            continue; // the stream and the permit are dropped: closed, and the slot free again
        };
        let (respond, stopping) = (respond.clone(), shutdown.clone());
        tasks.spawn(async move {
            // Once the server stops, a request has `SHUTDOWN_GRACE` left: a peer that says nothing (a browser's
            // preconnect) or reads nothing held the server's drain for the head or request timeout, up to 10 s.
            let given_up = async {
                stopping.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                done = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, peer.ip(), &*respond)) => {
                    if let Err(err) = done {
                        tracing::debug!(%peer, %err, "HTTP request timed out");
                    }
                }
                () = given_up => tracing::debug!(%peer, "HTTP request given up: the server stops"),
            }
            drop((permit, peer_slot));
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Reads the request head the peer sent (what is unread when a socket closes makes it reset) for at most half of
/// [`REFUSAL_TIME`], answers `response`, closes its side and reads what the peer still sends ([`linger`]) for the
/// rest. Until 2026-12-08 a peer whose head took longer got nothing (the refusal's time ran out before the write),
/// and one still sending past 8 KiB a reset, which could lose the status.
async fn refuse_gracefully(mut stream: TcpStream, response: Response) {
    let read_head = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while head.len() <= MAX_REQUEST_HEAD {
            let searched = head.len();
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head_end(&head, searched).is_some() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIME / 2, read_head).await;
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
    linger(&mut stream).await; // (cut short by the caller's `REFUSAL_TIME`)
}

/// Where the blank line that ends a request head begins in `head`, looking only where bytes after the first
/// `searched` (read before, and searched then) can complete it: a head trickled in byte by byte is searched once in
/// all, not once per read (up to `MAX_REQUEST_HEAD` squared comparisons per connection).
pub(crate) fn head_end(head: &[u8], searched: usize) -> Option<usize> {
    let from = searched.saturating_sub(3);
    head.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at)
}

/// Answers `response` without waiting (it fits a fresh socket's send buffer; if not, the peer gets less), for a
/// connection closed right after.
fn refuse_now(stream: &TcpStream, response: Response) {
    let _ = stream.try_write(&response.to_bytes());
}

async fn handle(mut stream: TcpStream, peer: IpAddr, respond: &(impl Fn(&[u8], IpAddr) -> Response + ?Sized)) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            if head.len() > MAX_REQUEST_HEAD {
                break Some(false);
            }
            let searched = head.len();
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = head_end(&head, searched) {
                // (A head read whole in its last read may end past the bound too.)
                break Some(end + 4 <= MAX_REQUEST_HEAD);
            }
        }
    };
    let complete = match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(Some(complete)) => complete,
        Ok(None) => return,
        Err(_) => {
            refuse_now(&stream, Response::error(408, "no complete request head in time"));
            let _ = stream.shutdown().await;
            return linger(&mut stream).await;
        }
    };
    let response = match complete {
        true => respond(&head, peer),
        false => Response::error(431, "request head too large"),
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// Reads what the peer still sends after its answer (and the write side's shutdown), until it closes, at most
/// [`LINGER_BYTES`] within [`LINGER_TIME`], so that the socket is not closed with bytes unread, which resets it.
pub(crate) async fn linger<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// One HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) head_only: bool,
}

impl Response {
    pub(crate) fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {message}\n").into_bytes(),
            head_only: false,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            503 => "Service Unavailable",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            429 => "Too Many Requests",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nContent-Security-Policy: \
             frame-ancestors 'none'\r\nReferrer-Policy: no-referrer\r\nConnection: {}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            // (A 426's `Upgrade` header is named among the connection's options too: RFC 9110 §7.8.)
            if self.status == 426 { "upgrade, close" } else { "close" }
        )
        .into_bytes();
        if self.status == 405 {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if self.status == 426 {
            // (Only the WebSocket upgrade answers 426: a version other than 13. The versions it speaks, RFC 6455
            // §4.2.2, and what to upgrade to, RFC 9110 §15.5.22.)
            out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// A GET or HEAD request head: (HEAD?, the target, the header lines); anything else is the error to answer.
pub(crate) fn parse_request(head: &[u8]) -> Result<(bool, &str, std::str::Split<'_, &str>), Response> {
    let Ok(text) = std::str::from_utf8(head) else { return Err(Response::error(400, "request is not UTF-8")) };
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (request_line.next(), request_line.next(), request_line.next(), request_line.next())
    else {
        return Err(Response::error(400, "malformed request line"));
    };
    // (A HEAD's refusal too is answered without a body: RFC 9110 §9.3.2.)
    let head_only = method == "HEAD";
    if !version.starts_with("HTTP/1.") {
        return Err(Response { head_only, ..Response::error(400, "HTTP/1.x only") });
    }
    if !matches!(method, "GET" | "HEAD") {
        return Err(Response::error(405, "GET or HEAD only"));
    }
    // Header lines are `name: value`, the name without whitespace: RFC 9112 §5.1 has a server reject whitespace
    // before the colon (and §5.2 a line folded onto the one before) with 400. Taken, `X-Forwarded-For : forged`
    // passed on by a lenient proxy as a header of its own was read as the proxy's (a review's find).
    for line in lines.clone().take_while(|line| !line.is_empty()) {
        let name = line.split_once(':').map(|(name, _)| name);
        if name.is_none_or(|name| name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20)) {
            return Err(Response { head_only, ..Response::error(400, "malformed header line (RFC 9112 §5.1)") });
        }
    }
    Ok((head_only, target, lines))
}

/// For a listener on every IPv6 address (`[::]`, the default's) on a host without IPv6 (booted with
/// `ipv6.disable=1`: no IPv6 socket can be made), every IPv4 address at the same port, with a warning: the README's
/// first command failed there ("Address family not supported"). Any other address, or error: `None`.
fn ipv4_instead(addr: SocketAddr, err: &std::io::Error) -> Option<SocketAddr> {
    let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
    (no_ipv6(err) && addr.ip() == std::net::Ipv6Addr::UNSPECIFIED).then(|| {
        tracing::warn!(%addr, instead = %v4, "this host has no IPv6: listening on every IPv4 address instead");
        v4
    })
}

/// A socket of type `ty` for `addr`, and the address to bind it to: `addr`, or every IPv4 address where `addr` is
/// `[::]` on a host without IPv6 ([`ipv4_instead`]). An IPv6 socket takes IPv4 too (`IPV6_V6ONLY` off). For the
/// QUIC endpoint's UDP socket and the TCP listeners alike.
pub(crate) fn socket_for(
    addr: SocketAddr,
    ty: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let new = |addr| socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(protocol));
    let (socket, addr) = match new(addr) {
        Ok(socket) => (socket, addr),
        Err(err) => match ipv4_instead(addr, &err) {
            Some(v4) => (new(v4)?, v4),
            None => return Err(err),
        },
    };
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    Ok((socket, addr))
}

/// Whether `err` says this host has no IPv6 (no IPv6 socket can be made: `EAFNOSUPPORT`).
pub(crate) fn no_ipv6(err: &std::io::Error) -> bool {
    #[cfg(unix)]
    return err.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32);
    #[cfg(not(unix))]
    return false;
}

/// A TCP listener on `addr` (the page's, the admin's, the WebSocket listener's), non-blocking. An IPv6 address
/// takes IPv4 too (`IPV6_V6ONLY` off, whatever `net.ipv6.bindv6only` says): `[::]` then holds both loopback
/// addresses, so no other local user can take `127.0.0.1` at the same port and receive what a browser sends to
/// `localhost` there (the page's key, a dev token).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let (socket, addr) = socket_for(addr, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    // (As std's `TcpListener::bind`: a restarted server binds again while its old connections wait in TIME_WAIT.)
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
