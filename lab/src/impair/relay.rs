//! An unprivileged UDP relay that applies an [`ImpairmentProfile`]: clients talk to the relay's address, the relay
//! talks to the upstream server from one socket per client address, and each direction of each client gets its
//! own [`Link`]. Deliveries go through the shared scheduler (`schedule.rs`): one time-ordered heap, one thread.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    schedule::{admit, deliver, udp_headers, Scheduled, POLL},
    ImpairmentProfile, Link, LinkStats,
};
use crate::sync::lock;

/// Largest UDP payload relayed.
const MAX_PACKET: usize = 65_536;

/// The socket buffers the listening socket asks for, each way.
const LISTEN_BUFFER: usize = 4 << 20;

/// Counters of a relay, per direction, over all clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client → upstream.
    pub up: LinkStats,
    /// Upstream → client.
    pub down: LinkStats,
    /// Client addresses seen.
    pub clients: usize,
    /// Packets from new clients refused because `max_clients` were served, none of them idle (`client_idle`).
    pub refused: u64,
    /// Clients forgotten after `client_idle` without a packet, to make room for a new one.
    pub expired: u64,
    /// Packets from new clients dropped because the relay could not make their upstream socket or thread (out of
    /// file descriptors or threads): the client is not served, the others are.
    pub setup_failed: u64,
    /// ICMP errors an upstream socket reported (port or host unreachable, administratively prohibited: the
    /// upstream's firewall rejecting for a moment, its server restarting): passed over, the client still served.
    pub upstream_unreachable: u64,
    /// Clients no longer served upstream → client because their upstream socket failed otherwise: their replies
    /// are dropped from then on (a measurement behind would count them as the link's loss).
    pub upstream_failed: u64,
}

/// The default of [`RelayConfig::client_idle`]: a client that sent nothing for this long is forgotten when a new one
/// needs its place at `max_clients` (its socket closed, its thread ended; it is a new client if it comes back). Longer
/// than QUIC's idle timeouts (Quiver's 30 s), so no live connection loses its path. Before, a long-running relay
/// served its first `max_clients` addresses for ever and dropped everyone after, after 256 runs of `quiver ping` (a
/// review's find).
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Where a scheduled packet goes.
#[derive(Debug)]
enum Out {
    Upstream(Arc<UdpSocket>),
    Client(SocketAddr),
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<RelayStats>>,
    /// Why the relay stopped relaying by itself, if it did.
    failure: Arc<Mutex<Option<String>>>,
    /// Each client's upstream socket, whose thread waits on it without a timeout where a shutdown wakes it (Linux):
    /// an idle client's thread polled every 50 ms, and an impaired fan-out's thousands of them woke 20 times a
    /// second each for the whole run, beside the series being measured (a review's find).
    upstreams: Upstreams,
    threads: Vec<JoinHandle<()>>,
}

type Upstreams = Arc<Mutex<Vec<Arc<UdpSocket>>>>;

/// What the listening thread shares with the relay: the scheduler, the stop flag, the counters, the sockets.
type Shared<'a> = (&'a mpsc::Sender<Scheduled<Out>>, &'a Arc<AtomicBool>, &'a Arc<Mutex<RelayStats>>, &'a Upstreams);

/// What a relay needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address clients send to (port 0 picks one).
    pub listen: SocketAddr,
    /// The real server.
    pub upstream: SocketAddr,
    /// The impairment.
    pub profile: ImpairmentProfile,
    /// Client addresses served at most (each costs a socket and a thread).
    pub max_clients: usize,
    /// A client silent this long gives its place to a new one at `max_clients` ([`CLIENT_IDLE`]).
    pub client_idle: Duration,
}

/// A seed for one direction of the `index`-th client: reproducible for the same order of clients.
fn seed(base: u64, index: usize, down: bool) -> u64 {
    base.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((index as u64) << 1 | u64::from(down))
}

impl Relay {
    /// Binds the listening socket and starts relaying.
    pub fn start(config: RelayConfig) -> io::Result<Relay> {
        config.profile.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listen = Arc::new(UdpSocket::bind(config.listen)?);
        listen.set_read_timeout(Some(POLL))?;
        // Every client's packets arrive on this one socket: with the kernel's default buffer (208 KiB) a burst (a
        // fan-out's ACKs, a fast sender) overflowed it, dropped before the link's counters saw them. As the server's
        // (what the kernel grants, up to its `rmem_max`).
        let _ = socket2::SockRef::from(&*listen).set_recv_buffer_size(LISTEN_BUFFER);
        let _ = socket2::SockRef::from(&*listen).set_send_buffer_size(LISTEN_BUFFER);
        let local_addr = listen.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let epoch = Instant::now();
        let (schedule, scheduled) = mpsc::channel::<Scheduled<Out>>();
        let mut threads = Vec::new();
        {
            let (listen, stop) = (listen.clone(), stop.clone());
            threads.push(std::thread::Builder::new().name("impair-scheduler".into()).spawn(move || {
                deliver(&scheduled, &stop, |out, packet| {
                    let sent = match out {
                        Out::Upstream(socket) => socket.send(packet),
                        Out::Client(addr) => listen.send_to(packet, addr),
                    };
                    if let Err(err) = sent {
                        tracing::debug!(%err, "relay send failed");
                    }
                });
            })?);
        }
        let failure = Arc::new(Mutex::new(None));
        let upstreams = Upstreams::default();
        {
            let (stop, stats, failure) = (stop.clone(), stats.clone(), failure.clone());
            let upstreams = upstreams.clone();
            threads.push(std::thread::Builder::new().name("impair-listen".into()).spawn(move || {
                let run = (&schedule, &stop, &stats, &upstreams);
                if let Err(err) = listen_loop(&config, &listen, epoch, run) {
                    tracing::error!(%err, "relay stopped");
                    *lock(&failure) = Some(err.to_string());
                }
            })?);
        }
        Ok(Relay { local_addr, stop, stats, failure, upstreams, threads })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Why the relay stopped relaying by itself (a socket error), if it did: nothing passes any more.
    pub fn failed(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        *lock(&self.stats)
    }

    /// What kept the relay from carrying every client's packets, if anything did: it stopped (a socket error), or
    /// it dropped new clients' packets (`max_clients` full, or their socket or thread not made). A measurement
    /// behind it would count those packets as the link's loss.
    pub fn trouble(&self) -> Option<String> {
        if let Some(failed) = self.failed() {
            return Some(format!("the relay stopped: {failed}"));
        }
        let stats = self.stats();
        let mut said = Vec::new();
        if stats.refused > 0 {
            said.push(format!("{} packets of new clients dropped at max_clients", stats.refused));
        }
        if stats.setup_failed > 0 {
            said.push(format!(
                "{} packets of new clients it could not make a socket or thread for",
                stats.setup_failed
            ));
        }
        if stats.upstream_failed > 0 {
            said.push(format!("the replies to {} clients whose upstream socket failed", stats.upstream_failed));
        }
        (!said.is_empty()).then(|| format!("the relay dropped {}", said.join(" and ")))
    }

    /// Stops every thread and returns the final counters.
    pub fn stop(mut self) -> RelayStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the clients' threads waiting on their sockets (they see `stop` then).
        #[cfg(target_os = "linux")]
        for socket in lock(&self.upstreams).iter() {
            use std::os::fd::AsRawFd;
            let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A receive that returned without a packet and is simply tried again: the poll timeout ran out, or a signal
/// (SIGSTOP/SIGCONT, Ctrl-Z and `fg`) interrupted it.
fn nothing_yet(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// An ICMP error a connected UDP socket reports on a read (Linux: port unreachable `ECONNREFUSED`, host or network
/// unreachable or prohibited `EHOSTUNREACH`/`ENETUNREACH`, IPv6's administratively prohibited `EACCES`): the socket
/// is still good.
fn unreachable(err: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionRefused, ConnectionReset, HostUnreachable, NetworkUnreachable, PermissionDenied};
    matches!(err.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | PermissionDenied | ConnectionReset)
}

fn listen_loop(
    config: &RelayConfig,
    listen: &Arc<UdpSocket>,
    epoch: Instant,
    (schedule, stop, stats, upstreams): Shared<'_>,
) -> io::Result<()> {
    struct Client {
        upstream: Arc<UdpSocket>,
        link: Link,
        last_seen: Instant,
        /// Set when it is forgotten: its thread's wait ends then.
        retired: Arc<AtomicBool>,
        down: Option<JoinHandle<()>>,
    }
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut buf = vec![0u8; MAX_PACKET];
    let mut order = 0u64;
    // Clients ever served: each one's seeds (a client back after being forgotten is a new one).
    let mut next_index = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match listen.recv_from(&mut buf) {
            Ok(received) => received,
            Err(err) if nothing_yet(&err) => continue,
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(err) => return Err(err),
        };
        if !clients.contains_key(&from) {
            // (Looked for only when full: a scan of every client per new one made connecting them quadratic.)
            let full = clients.len() >= config.max_clients;
            let idlest = full
                .then(|| clients.iter().min_by_key(|(_, client)| client.last_seen).map(|(a, c)| (*a, c.last_seen)))
                .flatten();
            match idlest {
                _ if !full => {}
                Some((addr, last_seen)) if last_seen.elapsed() >= config.client_idle => {
                    if let Some(mut gone) = clients.remove(&addr) {
                        gone.retired.store(true, Ordering::Relaxed);
                        #[cfg(target_os = "linux")]
                        {
                            use std::os::fd::AsRawFd;
                            let read = nix::sys::socket::Shutdown::Read;
                            let _ = nix::sys::socket::shutdown(gone.upstream.as_raw_fd(), read);
                        }
                        if let Some(thread) = gone.down.take() {
                            let _ = thread.join();
                        }
                        lock(upstreams.as_ref()).retain(|socket| !Arc::ptr_eq(socket, &gone.upstream));
                        lock(stats.as_ref()).expired += 1;
                        tracing::debug!(%addr, "relay: an idle client forgotten to make room");
                    }
                }
                _ => {
                    let mut stats = lock(stats.as_ref());
                    if stats.refused == 0 {
                        // (Said, not only counted: a client the relay drops cannot connect, and a run fails on it.)
                        tracing::warn!(%from, max = config.max_clients, "relay: a new client over max_clients dropped");
                    }
                    stats.refused += 1;
                    continue;
                }
            }
            let index = next_index;
            // One client's socket or thread that cannot be made (out of descriptors or threads) drops that client's
            // packet, counted, and the relay goes on serving the others: it stopped for every client (a review's
            // find), and a bench's series behind it counted its messages as the link's loss.
            let upstream = match upstream_for(config.upstream) {
                Ok(upstream) => Arc::new(upstream),
                Err(err) => {
                    setup_failed(stats, from, &err);
                    continue;
                }
            };
            // Listed before the look at `stop`: the relay's shutdown of the listed sockets, if it has passed, is
            // seen here, and one after this finds it listed (its down thread's wait must be woken).
            lock(upstreams.as_ref()).push(upstream.clone());
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let down = Link::new(config.profile.down.clone(), seed(config.profile.seed, index, true));
            let (socket, schedule, totals) = (upstream.clone(), schedule.clone(), stats.clone());
            let retired = Arc::new(AtomicBool::new(false));
            let ends = (stop.clone(), retired.clone());
            let spawned = std::thread::Builder::new().name(format!("impair-down-{index}")).spawn(move || {
                down_loop(&socket, from, down, epoch, &schedule, (&ends.0, &ends.1), &totals);
            });
            let thread = match spawned {
                Ok(thread) => thread,
                Err(err) => {
                    lock(upstreams.as_ref()).retain(|socket| !Arc::ptr_eq(socket, &upstream));
                    setup_failed(stats, from, &err);
                    continue;
                }
            };
            next_index += 1;
            let link = Link::new(config.profile.up.clone(), seed(config.profile.seed, index, false));
            let last_seen = Instant::now();
            clients.insert(from, Client { upstream, link, last_seen, retired, down: Some(thread) });
            lock(stats.as_ref()).clients = next_index;
        }
        let Some(client) = clients.get_mut(&from) else { continue };
        client.last_seen = Instant::now();
        let before = client.link.stats();
        let upstream = client.upstream.clone();
        let packet = (&buf[..len], udp_headers(from));
        admit(&mut client.link, epoch, packet, || Out::Upstream(upstream.clone()), schedule, &mut order);
        add_delta(&mut lock(stats.as_ref()).up, &before, &client.link.stats());
    }
    for thread in clients.into_values().filter_map(|mut client| client.down.take()) {
        let _ = thread.join();
    }
    Ok(())
}

/// A socket for a new client, connected to `upstream`.
fn upstream_for(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if upstream.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| io::Error::other("wildcard address"))?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(upstream)?;
    // (Elsewhere than Linux a shutdown may not wake a waiting receive: polled then.)
    #[cfg(not(target_os = "linux"))]
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// A new client's packet dropped: its socket or thread could not be made (said once, counted each time).
fn setup_failed(stats: &Mutex<RelayStats>, from: SocketAddr, err: &io::Error) {
    let mut stats = lock(stats);
    if stats.setup_failed == 0 {
        tracing::warn!(%from, %err, "relay: a new client cannot be served (its socket or thread)");
    }
    stats.setup_failed += 1;
}

fn add_delta(total: &mut LinkStats, before: &LinkStats, after: &LinkStats) {
    total.passed += after.passed - before.passed;
    total.dropped += after.dropped - before.dropped;
    total.queue_dropped += after.queue_dropped - before.queue_dropped;
    total.duplicated += after.duplicated - before.duplicated;
    total.reordered += after.reordered - before.reordered;
    total.delayed += after.delayed - before.delayed;
}

fn down_loop(
    upstream: &UdpSocket,
    client: SocketAddr,
    mut link: Link,
    epoch: Instant,
    schedule: &mpsc::Sender<Scheduled<Out>>,
    (stop, retired): (&AtomicBool, &AtomicBool),
    stats: &Mutex<RelayStats>,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    // Orders only break ties between equal delivery times; this direction counts from 2^63 so the two never collide.
    let mut order = 1u64 << 63;
    let ended = || stop.load(Ordering::Relaxed) || retired.load(Ordering::Relaxed);
    while !ended() {
        let len = match upstream.recv(&mut buf) {
            // The relay's stop (or this client's expiry) shut the socket down, which ends the wait with nothing read.
            Ok(0) if ended() => break,
            Ok(len) => len,
            Err(err) if nothing_yet(&err) => continue,
            // An ICMP error the connected socket reports once (a port closed while the server restarts, a firewall
            // rejecting for a moment): the next read goes on. Until 2026-12-08 only a closed port was, and a host
            // or network unreachable or prohibited ended this thread: the client's uplink still worked, its entry
            // never expired, and its replies were dropped for good without a word.
            Err(err) if unreachable(&err) => {
                lock(stats).upstream_unreachable += 1;
                continue;
            }
            Err(err) => {
                tracing::warn!(%err, %client, "upstream socket failed: this client's replies are dropped from now on");
                lock(stats).upstream_failed += 1;
                return;
            }
        };
        let before = link.stats();
        admit(&mut link, epoch, (&buf[..len], udp_headers(client)), || Out::Client(client), schedule, &mut order);
        add_delta(&mut lock(stats).down, &before, &link.stats());
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The errors Linux reports on a connected UDP socket's read for an ICMP error leave the client served: port
    /// unreachable (`ECONNREFUSED` 111), host or network unreachable or prohibited (`EHOSTUNREACH` 113,
    /// `ENETUNREACH` 101: firewalld's default `icmp-host-prohibited`), IPv6's administratively prohibited (`EACCES`
    /// 13). Until 2026-12-08 all but the first ended the client's thread. A socket's own failure does not.
    #[test]
    fn icmp_errors_on_an_upstream_read_are_passed_over() {
        for errno in [111, 113, 101, 13, 104] {
            assert!(unreachable(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        for errno in [9, 22, 14] {
            assert!(!unreachable(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }
}
