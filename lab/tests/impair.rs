//! The UDP relay emulator between a real UDP echo server and client on loopback: delay and loss applied per
//! direction, counted, and seeded.
#![allow(clippy::unwrap_used)]

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use quiver_lab::impair::{DirectionProfile, ImpairmentProfile, Relay, RelayConfig};

/// A UDP echo server on 127.0.0.1 until `stop`.
/// The tests of this file one at a time: the idle-threads test counts the wake-ups of every relay thread of the
/// process, and another test's relay busy meanwhile would count (threads of one name in every relay).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A relay on a port of its own in front of `upstream`.
fn relay(
    upstream: std::net::SocketAddr,
    profile: ImpairmentProfile,
    max_clients: usize,
    client_idle: Duration,
) -> Relay {
    let listen = "127.0.0.1:0".parse().unwrap();
    Relay::start(RelayConfig { listen, upstream, profile, max_clients, client_idle }).unwrap()
}

fn echo_server(stop: Arc<AtomicBool>) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let addr = socket.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..len], from);
            }
        }
    });
    (addr, thread)
}

#[test]
fn relay_applies_delay_each_way_and_loss_on_one() {
    let _one = one_at_a_time();
    let stop = Arc::new(AtomicBool::new(false));
    let (upstream, echo) = echo_server(stop.clone());
    let profile = ImpairmentProfile {
        seed: 3,
        up: DirectionProfile { delay_ms: 10.0, loss_pct: 10.0, ..DirectionProfile::default() },
        down: DirectionProfile { delay_ms: 10.0, ..DirectionProfile::default() },
    };
    let relay = relay(upstream, profile, 4, quiver_lab::impair::CLIENT_IDLE);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(relay.local_addr()).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let total = 400u32;
    let start = Instant::now();
    let mut sent_at = Vec::new();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 16];
    let mut drain = |rtts: &mut Vec<Duration>, sent_at: &[Instant]| {
        while let Ok(len) = client.recv(&mut buf) {
            assert_eq!(len, 4);
            let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            rtts.push(sent_at[i].elapsed());
        }
    };
    for i in 0..total {
        sent_at.push(Instant::now());
        client.send(&i.to_be_bytes()).unwrap();
        drain(&mut rtts, &sent_at);
        while start.elapsed() < Duration::from_millis(u64::from(i + 1)) {
            std::hint::spin_loop();
        }
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        drain(&mut rtts, &sent_at);
    }
    let stats = relay.stop();
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();

    assert_eq!(stats.up.passed + stats.up.dropped, u64::from(total));
    assert_eq!(stats.down.dropped, 0);
    assert_eq!(rtts.len() as u64, stats.down.passed, "every echo that passed arrived");
    // 10 % of 400: mean 40, sd 6; within 5 sd.
    assert!((10..=70).contains(&stats.up.dropped), "dropped {}", stats.up.dropped);
    // 10 ms each way: every round trip at least 20 ms, and (scheduling on a busy 2-core machine aside) close to it.
    let min = rtts.iter().min().unwrap();
    assert!(*min >= Duration::from_millis(20), "rtt {min:?} below the configured 20 ms");
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(median < Duration::from_millis(30), "median rtt {median:?}");
}

#[test]
fn the_same_seed_drops_the_same_packets() {
    let _one = one_at_a_time();
    let run = || {
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, echo) = echo_server(stop.clone());
        let profile = ImpairmentProfile {
            seed: 11,
            up: DirectionProfile { loss_pct: 30.0, ..DirectionProfile::default() },
            down: DirectionProfile::default(),
        };
        let relay = relay(upstream, profile, 1, quiver_lab::impair::CLIENT_IDLE);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(relay.local_addr()).unwrap();
        client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut echoed = Vec::new();
        for i in 0..100u8 {
            client.send(&[i]).unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
        let mut buf = [0u8; 4];
        while let Ok(1) = client.recv(&mut buf) {
            echoed.push(buf[0]);
        }
        relay.stop();
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
        echoed.sort();
        echoed
    };
    let first = run();
    assert!(first.len() > 50 && first.len() < 90, "{} of 100 passed", first.len());
    assert_eq!(first, run());
}

#[test]
fn relay_refuses_clients_beyond_its_limit() {
    let _one = one_at_a_time();
    let stop = Arc::new(AtomicBool::new(false));
    let (upstream, echo) = echo_server(stop.clone());
    let relay = relay(upstream, ImpairmentProfile::default(), 1, quiver_lab::impair::CLIENT_IDLE);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"a", relay.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    b.send_to(b"b", relay.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stats = relay.stop();
    assert_eq!((stats.clients, stats.refused), (1, 1));
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}

/// At `max_clients`, a client silent for `client_idle` gives its place to a new one (its thread ended, its socket
/// closed): a long-running relay served its first `max_clients` addresses for ever, and dropped everyone after.
#[test]
fn an_idle_client_gives_its_place_to_a_new_one() {
    let _one = one_at_a_time();
    let stop = Arc::new(AtomicBool::new(false));
    let (upstream, echo) = echo_server(stop.clone());
    let relay = relay(upstream, ImpairmentProfile::default(), 1, Duration::from_secs(1));
    let echoed = |socket: &UdpSocket, what: &[u8]| {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(what, relay.local_addr()).unwrap();
        let mut buf = [0u8; 8];
        socket.recv(&mut buf).map(|n| buf[..n].to_vec()).ok()
    };
    let (a, b) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
    assert_eq!(echoed(&a, b"a").as_deref(), Some(&b"a"[..]));
    b.send_to(b"early", relay.local_addr()).unwrap(); // a is not idle yet: refused
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.stats().refused == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(relay.stats().refused, 1, "refused while the first client was not idle");
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(echoed(&b, b"b").as_deref(), Some(&b"b"[..]), "a new client once the old one was idle");
    let stats = relay.stop();
    assert_eq!((stats.clients, stats.refused, stats.expired), (2, 1, 1));
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}

/// The voluntary context switches so far of each of this process's threads named `prefix…`, by thread id (other
/// tests' relays start and stop threads of the same names meanwhile: only threads seen at both readings compare).
#[cfg(target_os = "linux")]
fn switches_of(prefix: &str) -> std::collections::HashMap<String, u64> {
    let mut each = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"));
        let switches = switches.and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        each.insert(task.file_name().to_string_lossy().into_owned(), switches);
    }
    each
}

/// An idle client's thread in the relay sleeps until a packet or the relay's stop: 50 of them idle for half a second
/// wake about never (they polled every 50 ms: about 500 wake-ups here, and an impaired fan-out's thousands of
/// clients 20 a second each, beside the series measured), and the relay still stops at once.
#[cfg(target_os = "linux")]
#[test]
fn idle_clients_threads_do_not_poll_and_the_relay_still_stops() {
    let _one = one_at_a_time();
    let stop = Arc::new(AtomicBool::new(false));
    let (upstream, echo) = echo_server(stop.clone());
    let relay = relay(upstream, ImpairmentProfile::default(), 100, quiver_lab::impair::CLIENT_IDLE);
    let clients: Vec<UdpSocket> = (0..50).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for client in &clients {
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.send_to(b"hello", relay.local_addr()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), 5, "echoed through the relay");
    }
    assert_eq!(relay.stats().clients, 50);
    let before = switches_of("impair-down-");
    // (Found by name, or nothing below is counted.)
    assert_eq!(before.len(), 50, "the clients' threads, by name: {before:?}");
    std::thread::sleep(Duration::from_millis(500));
    let after = switches_of("impair-down-");
    let woke: u64 = after.iter().filter_map(|(tid, n)| Some(n.saturating_sub(*before.get(tid)?))).sum();
    assert!(woke < 50, "50 idle clients' threads woke {woke} times in 500 ms");
    let stopping = Instant::now();
    relay.stop();
    assert!(stopping.elapsed() < Duration::from_secs(5), "the relay stopped, its clients' threads woken");
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}
