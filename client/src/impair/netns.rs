//! The link emulator for any IP traffic (Linux, root): two network namespaces of our own, `<name>-srv` and
//! `<name>-cli`, joined by two TUN devices that this process holds. Every IP packet one side sends (UDP and TCP
//! alike) is read from its TUN device, passed through the direction's [`Link`] (loss, burst loss, delay, jitter,
//! reordering, duplication, rate) and written to the other side's TUN device when its time comes. No `sch_netem`
//! needed. Programs run inside with `ip netns exec` ([`NetnsLink::command`]) or, for a thread of this process,
//! [`NetnsLink::enter`]. Everything created is removed on [`NetnsLink::stop`] or drop, and on a failed setup.

use std::{
    io::{self, Read, Write},
    net::Ipv4Addr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Instant,
};

use super::{
    schedule::{admit, deliver, Scheduled},
    ImpairmentProfile, Link, LinkStats,
};

/// The server side's address (in `<name>-srv`).
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The client side's address (in `<name>-cli`).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// Largest IP packet read from a TUN device.
const MAX_PACKET: usize = 65_536;

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the server runs (`SERVER_ADDR`).
    Server,
    /// Where the clients run (`CLIENT_ADDR`).
    Client,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsStats {
    /// Client → server.
    pub up: LinkStats,
    /// Server → client.
    pub down: LinkStats,
}

/// A running emulated link between two namespaces.
#[derive(Debug)]
pub struct NetnsLink {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<NetnsStats>>,
    removed: bool,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| io::Error::new(e.kind(), format!("ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NetnsLink {
    /// Creates the namespaces `<name>-srv` and `<name>-cli` (name: at most 8 of `[a-z0-9]`) and starts forwarding
    /// through `profile`. Needs root (CAP_NET_ADMIN) and `ip` (iproute2).
    pub fn start(name: &str, profile: &ImpairmentProfile) -> io::Result<NetnsLink> {
        if name.is_empty() || name.len() > 8 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "netns link name: 1 to 8 of [a-z0-9]"));
        }
        let mut link = NetnsLink {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Arc::default(),
            removed: false,
        };
        // On any error below, dropping `link` removes what was created.
        let server = link.create_tun(Side::Server)?;
        let client = link.create_tun(Side::Client)?;
        let (server_read, server_write) = server.split();
        let (client_read, client_write) = client.split();
        let (schedule, scheduled) = mpsc::channel();
        let epoch = Instant::now();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name).spawn(f);
        let (up, down) = (
            Link::new(profile.up.clone(), profile.seed ^ 0x5555),
            Link::new(profile.down.clone(), profile.seed ^ 0xaaaa),
        );
        let (stats, tx) = (link.stats.clone(), schedule.clone());
        link.threads
            .push(spawn("netns-up".into(), Box::new(move || read_loop(client_read, up, epoch, true, &tx, &stats)))?);
        let stats = link.stats.clone();
        link.threads.push(spawn(
            "netns-down".into(),
            Box::new(move || read_loop(server_read, down, epoch, false, &schedule, &stats)),
        )?);
        let stop = link.stop.clone();
        link.threads.push(spawn(
            "netns-deliver".into(),
            Box::new(move || {
                let (mut server, mut client) = (server_write, client_write);
                deliver(&scheduled, &stop, |to_server: &bool, packet| {
                    let device: &mut dyn Write = if *to_server { &mut server } else { &mut client };
                    if let Err(err) = device.write(packet) {
                        tracing::debug!(%err, "netns link: write failed");
                    }
                });
            }),
        )?);
        Ok(link)
    }

    fn create_tun(&mut self, side: Side) -> io::Result<tun::Device> {
        let (ns, dev) = (self.namespace(side), self.device(side));
        let (addr, peer) = match side {
            Side::Server => (SERVER_ADDR, CLIENT_ADDR),
            Side::Client => (CLIENT_ADDR, SERVER_ADDR),
        };
        ip(&["netns", "add", &ns])?;
        let mut config = tun::Configuration::default();
        config.tun_name(&dev).mtu(1500);
        let device = tun::create(&config).map_err(|e| io::Error::other(format!("TUN device {dev}: {e}")))?;
        // The device stays ours (the fd) while its interface moves into the namespace.
        ip(&["link", "set", &dev, "netns", &ns])?;
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &addr.to_string(), "peer", &peer.to_string(), "dev", &dev])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", &dev, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(device)
    }

    /// The namespace of `side`.
    pub fn namespace(&self, side: Side) -> String {
        match side {
            Side::Server => format!("{}-srv", self.name),
            Side::Client => format!("{}-cli", self.name),
        }
    }

    fn device(&self, side: Side) -> String {
        match side {
            Side::Server => format!("{}s", self.name),
            Side::Client => format!("{}c", self.name),
        }
    }

    /// The address of `side`.
    pub fn addr(side: Side) -> Ipv4Addr {
        match side {
            Side::Server => SERVER_ADDR,
            Side::Client => CLIENT_ADDR,
        }
    }

    /// `program` to be run inside `side`'s namespace (`ip netns exec`).
    pub fn command(&self, side: Side, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(side), program]);
        command
    }

    /// Moves the calling thread into `side`'s namespace: sockets it creates from now on live there. Use a thread
    /// of its own; it cannot come back.
    pub fn enter(&self, side: Side) -> io::Result<()> {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.namespace(side)))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }

    /// Counters so far.
    pub fn stats(&self) -> NetnsStats {
        *lock(&self.stats)
    }

    /// Stops forwarding, removes the devices and namespaces, and returns the counters.
    pub fn stop(mut self) -> io::Result<NetnsStats> {
        self.remove()?;
        Ok(self.stats())
    }

    fn remove(&mut self) -> io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        self.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for side in [Side::Server, Side::Client] {
            let (ns, dev) = (self.namespace(side), self.device(side));
            // Deleting the interface wakes our blocked reader with an error; then the namespace goes.
            let _ = ip(&["netns", "exec", &ns, "ip", "link", "del", &dev]);
            if std::path::Path::new("/var/run/netns").join(&ns).exists() {
                if let Err(err) = ip(&["netns", "del", &ns]) {
                    first_error.get_or_insert(err);
                }
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!(%err, name = %self.name, "netns link: cleanup failed");
        }
    }
}

fn read_loop(
    mut device: impl Read,
    mut link: Link,
    epoch: Instant,
    to_server: bool,
    schedule: &mpsc::Sender<Scheduled<bool>>,
    stats: &Mutex<NetnsStats>,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    // Orders only break ties between equal delivery times; the directions count in disjoint ranges.
    let mut order = if to_server { 0 } else { 1u64 << 63 };
    // Ends when the interface is deleted (the read fails) or the scheduler is gone.
    while let Ok(len) = device.read(&mut buf) {
        let delivered = admit(&mut link, epoch, &buf[..len], || to_server, schedule, &mut order);
        let mut totals = lock(stats);
        *(if to_server { &mut totals.up } else { &mut totals.down }) = link.stats();
        if !delivered {
            return;
        }
    }
}

/// True when this process may create namespaces and TUN devices (effective uid 0) and `ip` is installed.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the netns link emulator needs root (CAP_NET_ADMIN)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("`ip` (iproute2) is not installed".into()),
    }
}
