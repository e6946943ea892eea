//! The relay out of file descriptors: a new client it cannot make a socket for is dropped and counted, and the
//! clients it serves go on. A test binary of its own: it lowers the whole process's open-files limit.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

use std::{net::UdpSocket, time::Duration};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use quiver_lab::impair::{ImpairmentProfile, Relay, RelayConfig};

/// Before, the relay stopped for every client at the first socket it could not make, and a bench behind it counted
/// the messages as the link's loss.
#[test]
fn a_client_the_relay_cannot_make_a_socket_for_is_dropped_and_the_others_are_served() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..len], from);
        }
    });
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        profile: ImpairmentProfile::default(),
        max_clients: 64,
        client_idle: quiver_lab::impair::CLIENT_IDLE,
    };
    let relay = Relay::start(config).unwrap();
    let client = |timeout| {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(relay.local_addr()).unwrap();
        socket.set_read_timeout(Some(timeout)).unwrap();
        socket
    };
    let echoed = |socket: &UdpSocket| {
        socket.send(b"ping").unwrap();
        let mut buf = [0u8; 8];
        socket.recv(&mut buf).is_ok_and(|len| &buf[..len] == b"ping")
    };
    let served = client(Duration::from_secs(5));
    assert!(echoed(&served));
    let newcomers: Vec<UdpSocket> = (0..8).map(|_| client(Duration::from_millis(300))).collect();
    // No descriptor left for the relay: the limit just above the highest open, and every free one below it taken.
    let highest =
        std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|fd| fd.ok()?.file_name().to_str()?.parse().ok());
    let highest: u64 = highest.max().unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
    let fillers: Vec<UdpSocket> = std::iter::from_fn(|| UdpSocket::bind("127.0.0.1:0").ok()).take(4096).collect();
    let answered = newcomers.iter().filter(|socket| echoed(socket)).count();
    drop(fillers);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert_eq!(answered, 0, "the relay made sockets past the limit");
    assert!(echoed(&served), "the client served before is served still");
    assert_eq!(relay.failed(), None, "the relay stopped");
    assert!(relay.stats().setup_failed >= 8, "{:?}", relay.stats());
    assert!(relay.trouble().is_some_and(|trouble| trouble.contains("socket or thread")), "{:?}", relay.trouble());
}
