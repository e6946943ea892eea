//! Raw UDP fan-out, the floor under every other series: one server socket that sends each tick to every
//! subscriber, with one `send_to` per delivery or (`batched`) `sendmmsg` batches of up to [`BATCH`] deliveries
//! (Linux). No encryption, no congestion control, no acknowledgements: what the kernel charges for the datagrams
//! alone. Subscribers are sockets of their own; a datagram that is not [`HELLO`] is a tick to fan out.

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{
    cpu::CpuMeter,
    report::FanoutSide,
    workload::{drive, Kind, Recorder, SharedRecorder},
    FanoutConfig,
};
use crate::bench::{namespaces::Progress, series::until_stopped, BenchError};

/// What a subscriber sends to be added, and what the server answers once it is.
const HELLO: &[u8] = b"quiver-bench-fanout-hello";

/// Deliveries per `sendmmsg` call (the kernel takes at most 1024).
pub(super) const BATCH: usize = 256;

/// The fan-out server on `ip` (spawned on the current runtime), until `stop`.
pub(super) async fn server(
    ip: std::net::IpAddr,
    batched: bool,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind((ip, 0)).await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut subscribers = Subscribers::default();
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, from) = tokio::select! {
                received = socket.recv_from(&mut buf) => match received {
                    Ok(received) => received,
                    // An ICMP error from a subscriber gone away, reported on the next call: not fatal.
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            let datagram = &buf[..len];
            if datagram == HELLO {
                subscribers.add(from);
                let _ = socket.send_to(HELLO, from).await;
            } else if batched {
                send_batched(&socket, &subscribers, datagram).await;
            } else {
                for to in &subscribers.addrs {
                    match socket.try_send_to(datagram, *to) {
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            let _ = socket.send_to(datagram, *to).await;
                        }
                        _ => {}
                    }
                }
            }
        }
    });
    Ok(addr)
}

#[derive(Default)]
struct Subscribers {
    known: HashSet<SocketAddr>,
    addrs: Vec<SocketAddr>,
    #[cfg(target_os = "linux")]
    sockaddrs: Vec<Option<nix::sys::socket::SockaddrStorage>>,
}

impl Subscribers {
    fn add(&mut self, addr: SocketAddr) {
        if self.known.insert(addr) {
            self.addrs.push(addr);
            #[cfg(target_os = "linux")]
            self.sockaddrs.push(Some(addr.into()));
        }
    }
}

/// Sends `datagram` to every subscriber in `sendmmsg` batches, waiting for the socket when its buffer is full.
#[cfg(target_os = "linux")]
async fn send_batched(socket: &UdpSocket, subscribers: &Subscribers, datagram: &[u8]) {
    use std::{io::IoSlice, os::fd::AsRawFd};

    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let iov = [IoSlice::new(datagram)];
    let mut next = 0;
    while next < subscribers.sockaddrs.len() {
        let batch = &subscribers.sockaddrs[next..(next + BATCH).min(subscribers.sockaddrs.len())];
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            // Made per call (one allocation per batch): the headers hold raw pointers, which an await may not.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
            let slices = std::iter::repeat_n(&iov, batch.len());
            let no_control: [nix::sys::socket::ControlMessage<'_>; 0] = [];
            sendmmsg(socket.as_raw_fd(), &mut headers, slices, batch, no_control, MsgFlags::empty())
                .map(|results| results.count())
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) => next += n.max(1),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            // A refused destination (a subscriber gone): skip it.
            Err(_) => next += 1,
        }
    }
}

/// Not Linux: no `sendmmsg`, one `send_to` per delivery.
#[cfg(not(target_os = "linux"))]
async fn send_batched(socket: &UdpSocket, subscribers: &Subscribers, datagram: &[u8]) {
    for to in &subscribers.addrs {
        let _ = socket.send_to(datagram, *to).await;
    }
}

/// A socket that the server at `server` has added (it answered [`HELLO`]).
async fn subscribe(server: SocketAddr) -> Result<UdpSocket, BenchError> {
    let unspecified: std::net::IpAddr =
        if server.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((unspecified, 0)).await.map_err(BenchError::io("UDP subscriber socket"))?;
    socket.connect(server).await.map_err(BenchError::io("UDP subscriber socket"))?;
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        socket.send(HELLO).await.map_err(BenchError::io("UDP subscriber hello"))?;
        let answer = tokio::time::timeout(std::time::Duration::from_millis(250), socket.recv(&mut buf)).await;
        if let Ok(Ok(len)) = answer {
            if &buf[..len] == HELLO {
                return Ok(socket);
            }
        }
    }
    Err(BenchError::io("UDP subscriber hello")(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the raw UDP fan-out server at {server} did not answer"),
    )))
}

/// The raw UDP series: `config.subscribers` sockets subscribed, then ticks from one more socket (no chat: raw UDP
/// has no reliable path).
pub(super) async fn measure(
    name: &str,
    config: &FanoutConfig,
    server: SocketAddr,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    for who in 0..config.subscribers {
        super::connecting(progress, name, who, config.subscribers);
        let socket = subscribe(server).await?;
        let recorder = recorder.clone();
        until_stopped(&stop, async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(len) = socket.recv(&mut buf).await {
                Recorder::received(&recorder, who, Kind::Tick, &buf[..len]);
            }
        });
    }
    let publisher = Arc::new(subscribe_publisher(server).await?);
    progress(&format!("{name}: measuring"));
    let ticks_only = FanoutConfig { chat_rate: 0.0, ..config.clone() };
    let cpu = CpuMeter::start(true);
    drive(&ticks_only, &recorder, false, |tick| drop(publisher.try_send(&tick)), |_, _| {}).await;
    let cpu = cpu.stop();
    stop.cancel();
    Ok(Recorder::side(&recorder, name, config.subscribers, cpu))
}

/// The publisher's socket: connected to the server, not subscribed.
async fn subscribe_publisher(server: SocketAddr) -> Result<UdpSocket, BenchError> {
    let unspecified: std::net::IpAddr =
        if server.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((unspecified, 0)).await.map_err(BenchError::io("UDP publisher socket"))?;
    socket.connect(server).await.map_err(BenchError::io("UDP publisher socket"))?;
    Ok(socket)
}
