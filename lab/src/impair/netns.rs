//! The link emulator for any IP traffic (Linux, root): two network namespaces of our own, `<name>-srv` and
//! `<name>-cli`, joined by two TUN devices that this process holds. Every IP packet one side sends (UDP and TCP
//! alike) is read from its TUN device, passed through the direction's [`Link`] (loss, burst loss, delay, jitter,
//! reordering, duplication, rate) and written to the other side's TUN device when its time comes. No `sch_netem`
//! needed. Programs run inside with `ip netns exec` ([`NetnsLink::command`]) or, for a thread of this process,
//! [`NetnsLink::enter`], or as tasks of a [`NamespaceRuntime`]. Everything created is removed on
//! [`NetnsLink::stop`] or drop, and on a failed setup.
//!
//! Where the kernel has `sch_netem`, [`Backend::Netem`] joins the same two namespaces with a veth pair and applies
//! the profile with `tc netem` on each end instead, so the two emulators can be cross-checked.

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

pub use super::Backend;
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

/// Why the netns emulator could not be set up, entered or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// Namespaces and TUN devices need root.
    #[error("the netns link emulator needs root (CAP_NET_ADMIN)")]
    NotRoot,
    /// The kernel offers no TUN devices here.
    #[error("/dev/net/tun is missing")]
    NoTun,
    /// `ip` cannot be run.
    #[error("`ip` (iproute2) is not installed")]
    IpMissing,
    /// `tc` cannot be run (the netem backend needs it).
    #[error("the netem backend needs `tc` (iproute2)")]
    TcMissing,
    /// A link name that would not make valid namespace and device names.
    #[error("netns link name {0:?}: 1 to 8 of [a-z0-9]")]
    BadName(String),
    /// A program could not be started at all.
    #[error("{program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{command}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// `tc` does not know the netem qdisc: the kernel has no `sch_netem`.
    #[error("{command}: {stderr} (this kernel has no sch_netem: use the tun backend)")]
    NoNetem {
        /// The command line.
        command: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// A TUN device could not be created.
    #[error("TUN device {device}: {source}")]
    Tun {
        /// The device's name.
        device: String,
        /// Why.
        source: tun::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A thread could not move into a namespace (opening it or `setns`).
    #[error("cannot enter namespace {namespace}: {source}")]
    Setns {
        /// The namespace.
        namespace: String,
        /// Why.
        source: io::Error,
    },
    /// The tokio runtime inside a namespace could not be built.
    #[error("namespace runtime: {0}")]
    Runtime(io::Error),
    /// The namespace runtime's thread ended before saying whether its runtime started.
    #[error("namespace runtime thread died")]
    RuntimeThreadDied,
}

/// A running emulated link between two namespaces.
#[derive(Debug)]
pub struct NetnsLink {
    name: String,
    backend: Backend,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<NetnsStats>>,
    removed: bool,
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip").args(args).output().map_err(|source| NetnsError::Spawn { program: "ip", source })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NetnsError::Failed { command: format!("ip {}", args.join(" ")), stderr })
    }
}

/// Moves the calling thread into `namespace`.
fn setns(namespace: &str) -> Result<(), NetnsError> {
    std::fs::File::open(format!("/var/run/netns/{namespace}"))
        .and_then(|file| nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from))
        .map_err(|source| NetnsError::Setns { namespace: namespace.to_string(), source })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, NetnsError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| NetnsError::Thread { name: name.to_string(), source })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NetnsLink {
    /// Creates the namespaces `<name>-srv` and `<name>-cli` (name: at most 8 of `[a-z0-9]`) and starts forwarding
    /// through `profile`. Needs root (CAP_NET_ADMIN) and `ip` (iproute2).
    pub fn start(name: &str, profile: &ImpairmentProfile) -> Result<NetnsLink, NetnsError> {
        Self::start_with(name, profile, Backend::Tun)
    }

    /// [`NetnsLink::start`] with a choice of backend. [`Backend::Netem`] fails with [`NetnsError::NoNetem`] where
    /// the kernel lacks `sch_netem` (having removed what it created).
    pub fn start_with(name: &str, profile: &ImpairmentProfile, backend: Backend) -> Result<NetnsLink, NetnsError> {
        if name.is_empty() || name.len() > 8 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(NetnsError::BadName(name.to_string()));
        }
        let mut link = NetnsLink {
            name: name.to_string(),
            backend,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Arc::default(),
            removed: false,
        };
        if backend == Backend::Netem {
            link.create_veth(profile)?;
            return Ok(link);
        }
        // On any error below, dropping `link` removes what was created.
        let server = link.create_tun(Side::Server)?;
        let client = link.create_tun(Side::Client)?;
        let (server_read, server_write) = server.split();
        let (client_read, client_write) = client.split();
        let (schedule, scheduled) = mpsc::channel();
        let epoch = Instant::now();
        let (up, down) = (
            Link::new(profile.up.clone(), profile.seed ^ 0x5555),
            Link::new(profile.down.clone(), profile.seed ^ 0xaaaa),
        );
        let (stats, tx) = (link.stats.clone(), schedule.clone());
        link.threads.push(spawn("netns-up", move || read_loop(client_read, up, epoch, true, &tx, &stats))?);
        let stats = link.stats.clone();
        link.threads.push(spawn("netns-down", move || read_loop(server_read, down, epoch, false, &schedule, &stats))?);
        let stop = link.stop.clone();
        link.threads.push(spawn("netns-deliver", move || {
            let (mut server, mut client) = (server_write, client_write);
            deliver(&scheduled, &stop, |to_server: &bool, packet| {
                let device: &mut dyn Write = if *to_server { &mut server } else { &mut client };
                if let Err(err) = device.write(packet) {
                    tracing::debug!(%err, "netns link: write failed");
                }
            });
        })?);
        Ok(link)
    }

    fn create_tun(&mut self, side: Side) -> Result<tun::Device, NetnsError> {
        let (ns, dev) = (self.namespace(side), self.device(side));
        let (addr, peer) = match side {
            Side::Server => (SERVER_ADDR, CLIENT_ADDR),
            Side::Client => (CLIENT_ADDR, SERVER_ADDR),
        };
        ip(&["netns", "add", &ns])?;
        let mut config = tun::Configuration::default();
        config.tun_name(&dev).mtu(1500);
        let device = tun::create(&config).map_err(|source| NetnsError::Tun { device: dev.clone(), source })?;
        // The device stays ours (the fd) while its interface moves into the namespace.
        ip(&["link", "set", &dev, "netns", &ns])?;
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &addr.to_string(), "peer", &peer.to_string(), "dev", &dev])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", &dev, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(device)
    }

    /// Namespaces joined by a veth pair, each end shaped by `tc netem` (its egress: the server end carries the
    /// down direction, the client end the up direction).
    fn create_veth(&mut self, profile: &ImpairmentProfile) -> Result<(), NetnsError> {
        let (srv, cli) = (self.namespace(Side::Server), self.namespace(Side::Client));
        let (srv_dev, cli_dev) = (self.device(Side::Server), self.device(Side::Client));
        match Command::new("tc").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            _ => return Err(NetnsError::TcMissing),
        }
        ip(&["netns", "add", &srv])?;
        ip(&["netns", "add", &cli])?;
        ip(&["link", "add", &srv_dev, "netns", &srv, "type", "veth", "peer", "name", &cli_dev, "netns", &cli])?;
        for (ns, dev, addr, peer, direction) in [
            (&srv, &srv_dev, SERVER_ADDR, CLIENT_ADDR, &profile.down),
            (&cli, &cli_dev, CLIENT_ADDR, SERVER_ADDR, &profile.up),
        ] {
            let addr = format!("{addr}/32");
            ip(&["netns", "exec", ns, "ip", "addr", "add", &addr, "peer", &format!("{peer}/32"), "dev", dev])?;
            ip(&["netns", "exec", ns, "ip", "link", "set", dev, "up"])?;
            ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
            let mut args = vec!["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root"];
            let netem = netem_args(direction);
            args.extend(netem.iter().map(String::as_str));
            let out = Command::new("ip")
                .args(&args)
                .output()
                .map_err(|source| NetnsError::Spawn { program: "ip", source })?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                let command = format!("tc qdisc add dev {dev} root {}", netem.join(" "));
                return Err(if stderr.contains("qdisc kind is unknown") || stderr.contains("Unknown qdisc") {
                    NetnsError::NoNetem { command, stderr }
                } else {
                    NetnsError::Failed { command, stderr }
                });
            }
        }
        Ok(())
    }

    /// The backend carrying packets.
    pub fn backend(&self) -> Backend {
        self.backend
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
    pub fn enter(&self, side: Side) -> Result<(), NetnsError> {
        setns(&self.namespace(side))
    }

    /// Counters so far (all zero with [`Backend::Netem`], whose counters stay in the kernel).
    pub fn stats(&self) -> NetnsStats {
        *lock(&self.stats)
    }

    /// Stops forwarding, removes the devices and namespaces, and returns the counters.
    pub fn stop(mut self) -> Result<NetnsStats, NetnsError> {
        self.remove()?;
        Ok(self.stats())
    }

    fn remove(&mut self) -> Result<(), NetnsError> {
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

/// netem's queue limit (packets) without a rate: it counts every packet netem holds, including those only
/// waiting out their delay, so it must cover the delay × the packet rate (its default of 1,000 drops at 50,000
/// packets/s through 20 ms). Our model has no such limit.
pub const NETEM_LIMIT: u64 = 100_000;

/// `tc netem` arguments for one direction (one end's egress): delay and uniform jitter, independent or
/// Gilbert-Elliott burst loss with the same long-run rate and mean burst length as [`Link`], reordering (that share
/// skips the delay, as in [`Link`]), duplication, rate. Jitter without `jitter_reorders` adds a 10 Gbit/s rate: with
/// a rate, netem sends in FIFO order. With a rate, `limit` is the queue in full-size packets plus what the rate
/// carries during the delay (netem counts packets, our model bytes). netem cannot take our seed.
pub fn netem_args(d: &super::DirectionProfile) -> Vec<String> {
    let mut args = vec!["netem".to_string()];
    let ms = |v: f64| format!("{v}ms");
    let pct = |v: f64| format!("{v}%");
    if d.delay_ms > 0.0 || d.jitter_ms > 0.0 {
        args.extend(["delay".into(), ms(d.delay_ms)]);
        if d.jitter_ms > 0.0 {
            args.push(ms(d.jitter_ms));
        }
    }
    if d.loss_pct > 0.0 {
        if d.burst_len > 1.0 {
            // Bad state loses everything, good state nothing; r leaves the bad state, p enters it, so that the
            // bad state's share p / (p + r) is the loss rate.
            let loss = d.loss_pct / 100.0;
            let r = 1.0 / d.burst_len;
            let p = (loss * r / (1.0 - loss)).min(1.0);
            args.extend(["loss".into(), "gemodel".into(), pct(p * 100.0), pct(r * 100.0), pct(100.0), pct(0.0)]);
        } else {
            args.extend(["loss".into(), "random".into(), pct(d.loss_pct)]);
        }
    }
    if d.reorder_pct > 0.0 {
        args.extend(["reorder".into(), pct(d.reorder_pct)]);
    }
    if d.duplicate_pct > 0.0 {
        args.extend(["duplicate".into(), pct(d.duplicate_pct)]);
    }
    if d.rate_kbps > 0.0 {
        let packets_per_s = d.rate_kbps * 1000.0 / 8.0 / 1500.0;
        let in_delay = (packets_per_s * (d.delay_ms + d.jitter_ms) / 1000.0).ceil() as u64;
        args.extend(["rate".into(), format!("{}kbit", d.rate_kbps)]);
        args.extend(["limit".into(), ((d.queue_bytes / 1500).max(1) + in_delay).to_string()]);
    } else {
        if d.jitter_ms > 0.0 && !d.jitter_reorders {
            args.extend(["rate".into(), "10gbit".into()]);
        }
        args.extend(["limit".into(), NETEM_LIMIT.to_string()]);
    }
    args
}

/// A tokio runtime whose threads all live in one side's namespace, so every socket its tasks create is there
/// (sockets keep the namespace they were created in; threads inherit it from the thread that spawns them). Used
/// to run servers and clients of one process on the two ends of a [`NetnsLink`].
#[derive(Debug)]
pub struct NamespaceRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NamespaceRuntime {
    /// Starts a runtime with `workers` threads inside `side`'s namespace of `link`.
    pub fn start(link: &NetnsLink, side: Side, workers: usize) -> Result<NamespaceRuntime, NetnsError> {
        let namespace = link.namespace(side);
        let (ready, handle) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn(&format!("netns-{namespace}"), move || {
            let runtime = setns(&namespace).and_then(|()| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .enable_all()
                    .build()
                    .map_err(NetnsError::Runtime)
            });
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let _ = ready.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = stopped.await;
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        })?;
        let handle = handle.recv().map_err(|_| NetnsError::RuntimeThreadDied)??;
        Ok(NamespaceRuntime { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn tasks that belong in the namespace.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NamespaceRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ok when this process may create namespaces and TUN devices (effective uid 0) and `ip` is installed; otherwise
/// [`NetnsError::NotRoot`], [`NetnsError::NoTun`] or [`NetnsError::IpMissing`].
pub fn available() -> Result<(), NetnsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NetnsError::NotRoot);
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(NetnsError::NoTun);
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(NetnsError::IpMissing),
    }
}
