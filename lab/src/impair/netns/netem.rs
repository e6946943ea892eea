//! The netem backend: the two namespaces joined by a veth pair, each end's egress shaped by the kernel's
//! `tc netem`, so that the TUN backend's model can be checked against the kernel's emulator on the same traffic.

use std::process::Command;

use super::{ip, NetnsError, NetnsLink, Side, CLIENT_ADDR, SERVER_ADDR};
use crate::impair::{DirectionProfile, ImpairmentProfile};

impl NetnsLink {
    /// Creates both namespaces joined by a veth pair, each end shaped by `tc netem` (its egress: the server end
    /// carries the down direction, the client end the up direction).
    pub(super) fn join_with_netem(&mut self, profile: &ImpairmentProfile) -> Result<(), NetnsError> {
        let (srv, cli) = (self.namespace(Side::Server), self.namespace(Side::Client));
        let (srv_dev, cli_dev) = (self.device(Side::Server), self.device(Side::Client));
        match Command::new("tc").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            _ => return Err(NetnsError::TcMissing),
        }
        self.add_namespace(Side::Server)?;
        self.add_namespace(Side::Client)?;
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
}

/// netem's queue limit (packets) without a rate: it counts every packet netem holds, including those only
/// waiting out their delay, so it must cover the delay × the packet rate (its default of 1,000 drops at 50,000
/// packets/s through 20 ms). Our model has no such limit.
pub const NETEM_LIMIT: u64 = 100_000;

/// `tc netem` arguments for one direction (one end's egress): delay and uniform jitter, independent or
/// Gilbert-Elliott burst loss with the same long-run rate and mean burst length as [`Link`](crate::impair::Link),
/// reordering (that share skips the delay, as in the model), duplication, rate. Jitter without `jitter_reorders`
/// adds a 10 Gbit/s rate: with a rate, netem sends in FIFO order. With a rate, `limit` is the queue in full-size
/// packets plus what the rate carries during the delay (netem counts packets, our model bytes). netem cannot take
/// our seed.
pub fn netem_args(d: &DirectionProfile) -> Vec<String> {
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
