//! The TUN backend: each namespace gets a TUN device whose file descriptor this process keeps, and every IP
//! packet read from one is passed through its direction's [`Link`] model and written to the other when its time
//! comes. It needs nothing of the kernel beyond TUN, and its counters are ours.

use std::{
    io::{Read, Write},
    sync::{mpsc, Mutex},
    time::Instant,
};

use super::{ip, spawn, NetnsError, NetnsLink, NetnsStats, Side, CLIENT_ADDR, SERVER_ADDR};
use crate::impair::{
    schedule::{admit, deliver, Scheduled},
    ImpairmentProfile, Link,
};
use crate::sync::lock;

/// Largest IP packet read from a TUN device.
const MAX_PACKET: usize = 65_536;

impl NetnsLink {
    /// Creates both namespaces with their TUN devices and starts forwarding through `profile`.
    pub(super) fn join_with_tun(&mut self, profile: &ImpairmentProfile) -> Result<(), NetnsError> {
        let server = self.create_tun(Side::Server)?;
        let client = self.create_tun(Side::Client)?;
        let (server_read, server_write) = server.split();
        let (client_read, client_write) = client.split();
        let (schedule, scheduled) = mpsc::channel();
        let epoch = Instant::now();
        let (up, down) = (
            Link::new(profile.up.clone(), profile.seed ^ 0x5555),
            Link::new(profile.down.clone(), profile.seed ^ 0xaaaa),
        );
        let (stats, tx) = (self.stats.clone(), schedule.clone());
        self.threads.push(spawn("netns-up", move || read_loop(client_read, up, epoch, true, &tx, &stats))?);
        let stats = self.stats.clone();
        self.threads.push(spawn("netns-down", move || read_loop(server_read, down, epoch, false, &schedule, &stats))?);
        let stop = self.stop.clone();
        self.threads.push(spawn("netns-deliver", move || {
            let (mut server, mut client) = (server_write, client_write);
            deliver(&scheduled, &stop, |to_server: &bool, packet| {
                let device: &mut dyn Write = if *to_server { &mut server } else { &mut client };
                if let Err(err) = device.write(packet) {
                    tracing::debug!(%err, "netns link: write failed");
                }
            });
        })?);
        Ok(())
    }

    fn create_tun(&mut self, side: Side) -> Result<::tun::Device, NetnsError> {
        let (ns, dev) = (self.namespace(side), self.device(side));
        let (addr, peer) = match side {
            Side::Server => (SERVER_ADDR, CLIENT_ADDR),
            Side::Client => (CLIENT_ADDR, SERVER_ADDR),
        };
        self.add_namespace(side)?;
        let mut config = ::tun::Configuration::default();
        config.tun_name(&dev).mtu(1500);
        let device = ::tun::create(&config).map_err(|source| NetnsError::Tun { device: dev.clone(), source })?;
        // The device stays ours (the fd) while its interface moves into the namespace.
        ip(&["link", "set", &dev, "netns", &ns])?;
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &addr.to_string(), "peer", &peer.to_string(), "dev", &dev])?;
        // (No IPv6 addresses, so no IPv6 traffic of the kernel's own: best effort, a kernel without IPv6 refuses it.)
        let _ = ip(&["netns", "exec", &ns, "ip", "link", "set", "dev", &dev, "addrgenmode", "none"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &dev, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(device)
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
        // Only IPv4 (the link's addresses'): the kernel's own IPv6 traffic on the devices (router solicitations,
        // MLD reports, at times of its choosing) drew from the link's seeded generator among the run's packets, so
        // a seeded run did not repeat, and was counted as the run's (a review's find). Nobody here speaks IPv6.
        if buf.first().is_none_or(|byte| byte >> 4 != 4) {
            continue;
        }
        let delivered = admit(&mut link, epoch, (&buf[..len], 0), || to_server, schedule, &mut order);
        let mut totals = lock(stats);
        *(if to_server { &mut totals.up } else { &mut totals.down }) = link.stats();
        if !delivered {
            return;
        }
    }
}
