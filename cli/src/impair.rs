//! `quiver impair`: an unprivileged UDP relay applying an impairment profile, printing per-direction counters.

use std::{net::SocketAddr, time::Duration};

use clap::{builder::RangedU64ValueParser, Args};
use quiver_lab::impair::{ImpairmentProfile, LinkStats, Relay, RelayConfig, RelayStats, PRESETS};

use crate::error::CliError;

/// Impairment flags shared by `quiver impair` (and later the benches). Flags apply to both directions and
/// override the profile's values.
#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// A preset (clean, lan, wifi, lte, lossy-1, lossy-5, delay-20, lossy-1-20, lossy-5-20, burst-20, satellite:
    /// docs/impair.md) or a TOML profile file.
    #[arg(long)]
    profile: Option<String>,
    /// Random loss, percent.
    #[arg(long)]
    loss: Option<f64>,
    /// Mean loss burst length in packets (Gilbert model; 1 = independent losses).
    #[arg(long)]
    burst: Option<f64>,
    /// One-way delay, ms.
    #[arg(long)]
    delay_ms: Option<f64>,
    /// Delay variation, ± ms.
    #[arg(long)]
    jitter_ms: Option<f64>,
    /// Let jitter reorder packets.
    #[arg(long)]
    jitter_reorders: bool,
    /// Packets sent ahead of the delay, percent.
    #[arg(long)]
    reorder: Option<f64>,
    /// Packets duplicated, percent.
    #[arg(long)]
    duplicate: Option<f64>,
    /// Bottleneck rate, kbit/s.
    #[arg(long)]
    rate_kbps: Option<f64>,
    /// Seed of the random choices.
    #[arg(long)]
    seed: Option<u64>,
}

impl ProfileArgs {
    pub(crate) fn profile(&self) -> Result<ImpairmentProfile, CliError> {
        let mut profile = match &self.profile {
            Some(spec) => ImpairmentProfile::named_or_file(spec)?,
            None => ImpairmentProfile::default(),
        };
        for d in [&mut profile.up, &mut profile.down] {
            if let Some(v) = self.loss {
                d.loss_pct = v;
            }
            if let Some(v) = self.burst {
                d.burst_len = v;
            }
            if let Some(v) = self.delay_ms {
                d.delay_ms = v;
            }
            if let Some(v) = self.jitter_ms {
                d.jitter_ms = v;
            }
            d.jitter_reorders |= self.jitter_reorders;
            if let Some(v) = self.reorder {
                d.reorder_pct = v;
            }
            if let Some(v) = self.duplicate {
                d.duplicate_pct = v;
            }
            if let Some(v) = self.rate_kbps {
                d.rate_kbps = v;
            }
        }
        if let Some(seed) = self.seed {
            profile.seed = seed;
        }
        profile.check()?;
        Ok(profile)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ImpairArgs {
    /// Address clients send to (UDP relay).
    #[arg(long, required_unless_present_any = ["netns", "list_presets"])]
    listen: Option<SocketAddr>,
    /// The server the relay forwards to (UDP relay).
    #[arg(long, required_unless_present_any = ["netns", "list_presets"])]
    upstream: Option<SocketAddr>,
    /// Instead of the UDP relay: impair every IP packet (UDP and TCP) between two network namespaces of our own,
    /// `quiver-srv` (10.213.0.1) and `quiver-cli` (10.213.0.2), joined by TUN devices (Linux, root).
    #[arg(long, conflicts_with_all = ["listen", "upstream"])]
    netns: bool,
    /// With --netns: `tun` (TUN devices and our emulator, any kernel) or `netem` (a veth pair and `tc netem`, where
    /// the kernel has sch_netem), to cross-check the two.
    #[arg(long, default_value = "tun", requires = "netns")]
    backend: String,
    /// With --netns: a shell command to run in the server namespace (in the background, stopped at the end).
    #[arg(long, requires = "netns")]
    server_cmd: Option<String>,
    /// With --netns: a shell command to run in the client namespace; the emulator stops when it exits.
    #[arg(long, requires = "netns")]
    client_cmd: Option<String>,
    #[command(flatten)]
    profile: ProfileArgs,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Client addresses served at most (1 to 65,536; 0 relayed nothing, and the run still ended with status 0).
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_clients: usize,
    /// List the presets and exit.
    #[arg(long)]
    list_presets: bool,
}

fn row(name: &str, s: &LinkStats) -> String {
    format!(
        "{name:<5} passed {:>9}  dropped {:>7}  queue-dropped {:>6}  duplicated {:>6}  reordered {:>6}  delayed {:>9}",
        s.passed, s.dropped, s.queue_dropped, s.duplicated, s.reordered, s.delayed
    )
}

fn print(stats: &RelayStats) {
    print_directions(&stats.up, &stats.down);
}

fn print_directions(up: &LinkStats, down: &LinkStats) {
    crate::out!("{}", row("up", up));
    crate::out!("{}", row("down", down));
}

pub(crate) async fn run(args: ImpairArgs) -> Result<(), CliError> {
    if args.list_presets {
        for (name, what) in PRESETS {
            crate::out!("{name:<10} {what}");
        }
        return Ok(());
    }
    // A negative or NaN duration is an error, as for every other command (it meant 0 s here); `inf`: no end.
    if let Some(secs) = args.duration.filter(|secs| !(secs.is_infinite() && *secs > 0.0)) {
        crate::seconds("duration", secs)?;
    }
    let profile = args.profile.profile()?;
    if args.netns {
        return netns(args, profile).await;
    }
    let (Some(listen), Some(upstream)) = (args.listen, args.upstream) else {
        return Err(CliError::RelayAddresses);
    };
    let config = RelayConfig {
        listen,
        upstream,
        profile,
        max_clients: args.max_clients,
        client_idle: quiver_lab::impair::CLIENT_IDLE,
    };
    // Before the relay runs: a signal from here on ends the run below (and prints its totals).
    let mut stop = crate::output::Stop::new();
    let relay = Relay::start(config.clone()).map_err(|source| CliError::Relay { listen, source })?;
    crate::err!("relaying {} -> {upstream}, {}", relay.local_addr(), config.profile);
    let end = run_ends(args.duration);
    tokio::pin!(end);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    let failed = loop {
        tokio::select! {
            _ = second.tick() => {
                print(&relay.stats());
                if let Some(why) = relay.failed() {
                    break Some(why);
                }
            }
            () = &mut end => break None,
            () = stop.requested() => break None,
        }
    };
    // A failure after the last look (the run's last second, a run under a second, a signal in its first): the run
    // failed all the same (it ended 0).
    let failed = failed.or_else(|| relay.failed());
    let stats = tokio::task::spawn_blocking(move || relay.stop()).await?;
    let refused = match stats.refused {
        0 => String::new(),
        n => format!(", {n} packets of new clients refused at --max-clients"),
    };
    let expired = match stats.expired {
        0 => String::new(),
        n => format!(", {n} forgotten after a minute idle"),
    };
    let unserved = match stats.setup_failed {
        0 => String::new(),
        n => format!(", {n} packets of new clients dropped: no socket or thread could be made for them"),
    };
    let unreachable = match stats.upstream_unreachable {
        0 => String::new(),
        n => format!(", {n} ICMP errors from upstream"),
    };
    let lost = match stats.upstream_failed {
        0 => String::new(),
        n => format!(", {n} clients' replies dropped: their upstream socket failed"),
    };
    crate::out!("total ({} clients{refused}{expired}{unserved}{unreachable}{lost}):", stats.clients);
    print(&stats);
    match failed {
        Some(why) => Err(CliError::RelayStopped(why)),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
async fn netns(args: ImpairArgs, profile: ImpairmentProfile) -> Result<(), CliError> {
    use quiver_lab::impair::netns::{self, NetnsLink, Side};
    netns::available()?;
    let backend = netns::Backend::parse(&args.backend)?;
    // netem keeps its counters in the kernel: rows of zeros would say nothing passed.
    let counted = backend == netns::Backend::Tun;
    if !counted {
        crate::err!("(the netem backend counts in the kernel: `ip netns exec quiver-srv tc -s qdisc` shows them)");
    }
    // Before the namespaces exist: Ctrl-C from here on (during their setup too) ends the run below, which removes
    // them (the signal's default action would kill the process with them left behind).
    let mut stop = crate::output::Stop::new();
    let link = NetnsLink::start_with("quiver", &profile, backend)
        .map_err(|source| CliError::NetnsSetup { backend, source })?;
    let (srv, cli) = (link.namespace(Side::Server), link.namespace(Side::Client));
    crate::err!(
        "{srv} ({}) <-> {cli} ({}), {} backend, {profile}",
        netns::SERVER_ADDR,
        netns::CLIENT_ADDR,
        backend.name()
    );
    // Each command in a process group of its own: what it starts (`cd dir && quiver-server …`, a pipeline) is
    // stopped with it, not left running in a namespace that is then removed.
    // A group of its own is not the terminal's foreground: one that read a terminal stdin was stopped (SIGTTIN),
    // and the run hung until `--duration` without a word (a review's find). From a terminal, the commands' stdin is
    // nothing; piped into `impair`, they share the pipe as before.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let shell = |side: Side, cmd: &str| {
        let mut command = tokio::process::Command::from(link.command(side, "sh"));
        command.args(["-c", cmd]).kill_on_drop(true).process_group(0);
        if terminal {
            command.stdin(std::process::Stdio::null());
        }
        command
    };
    let end = run_ends(args.duration);
    tokio::pin!(end);
    let mut server = match &args.server_cmd {
        Some(cmd) => Some(Group::spawn(&mut shell(Side::Server, cmd)).map_err(CliError::ServerCommand)?),
        None => {
            crate::err!("run programs inside with: ip netns exec {srv} <server>   and   ip netns exec {cli} <client>");
            None
        }
    };
    let outcome = match &args.client_cmd {
        Some(cmd) => {
            // Give the server a moment to bind.
            tokio::time::sleep(Duration::from_millis(500)).await;
            // (A command that cannot start is an outcome like the others: the cleanup below still runs.)
            match Group::spawn(&mut shell(Side::Client, cmd)) {
                Err(err) => Err(CliError::ClientCommand(err)),
                Ok(mut client) => {
                    let outcome = tokio::select! {
                        status = client.child.wait() => match status.map_err(CliError::ClientCommand) {
                            Ok(status) if status.success() => Ok(()),
                            Ok(status) => Err(CliError::ClientFailed(status)),
                            Err(err) => Err(err),
                        },
                        // --duration bounds the client command too: one cut off did not finish, and says so
                        // (it exited 0, as if it had, where Ctrl-C at the same moment failed).
                        () = &mut end => Err(CliError::ClientCutOff(args.duration.unwrap_or_default())),
                        () = stop.requested() => Err(CliError::Interrupted),
                    };
                    client.stop().await;
                    outcome
                }
            }
        }
        None => {
            let mut second = tokio::time::interval(Duration::from_secs(1));
            second.tick().await;
            loop {
                tokio::select! {
                    _ = second.tick(), if counted => {
                        let stats = link.stats();
                        print_directions(&stats.up, &stats.down);
                    }
                    () = &mut end => break,
                    () = stop.requested() => break,
                }
            }
            Ok(())
        }
    };
    // A server command that exited on its own before the end, failing (it could not bind, say), fails the run too:
    // what was measured had no server (its status was not looked at; a review's find).
    let server_failed =
        server.as_mut().and_then(|server| server.child.try_wait().ok().flatten()).filter(|s| !s.success());
    if let Some(server) = server.as_mut() {
        server.stop().await;
    }
    let outcome = match (outcome, server_failed) {
        (Ok(()), Some(status)) => Err(CliError::ServerFailed(status)),
        (outcome, Some(status)) => {
            // (Said too: the client command may have failed for it.)
            crate::err!("the server command exited with {status} before the run ended");
            outcome
        }
        (outcome, None) => outcome,
    };
    let stats = tokio::task::spawn_blocking(move || link.stop()).await?.map_err(CliError::NetnsCleanup)?;
    if counted {
        crate::out!("total:");
        print_directions(&stats.up, &stats.down);
    }
    outcome
}

/// Ready once `--duration` has passed; never without one, or with `inf` (checked at the start: anything else is a
/// valid duration).
async fn run_ends(duration: Option<f64>) {
    match duration.map(|secs| Duration::try_from_secs_f64(secs.max(0.0))) {
        Some(Ok(duration)) => tokio::time::sleep(duration).await,
        _ => std::future::pending().await,
    }
}

/// A command run in a process group of its own ([`Group::spawn`]), with the group's id kept: once the command's
/// shell has exited and been waited for, its id is gone from the `Child`, and what it started in the background
/// (`tcpdump … &`) still runs in its group.
#[cfg(target_os = "linux")]
struct Group {
    child: tokio::process::Child,
    id: Option<nix::unistd::Pid>,
}

#[cfg(target_os = "linux")]
impl Group {
    fn spawn(command: &mut tokio::process::Command) -> std::io::Result<Group> {
        let child = command.spawn()?;
        let id = child.id().and_then(|pid| i32::try_from(pid).ok()).map(nix::unistd::Pid::from_raw);
        Ok(Group { child, id })
    }

    /// True while any process of the group is left.
    fn alive(&self) -> bool {
        self.id.is_some_and(|group| nix::sys::signal::killpg(group, None).is_ok())
    }

    /// Stops the whole group, whether or not the command itself has exited: SIGTERM, then SIGKILL to what is left
    /// after 2 s; waits for the command. (It signalled the group only while the command's shell ran: a finished
    /// command left what it put in the background running, in a namespace then removed; a review's find.)
    async fn stop(&mut self) {
        let Some(group) = self.id else {
            let _ = self.child.wait().await;
            return;
        };
        if self.alive() {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.alive() && tokio::time::Instant::now() < deadline {
                let _ = self.child.try_wait(); // (reaps the shell, so that it does not count as alive)
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.alive() {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.child.wait().await;
    }
}

#[cfg(not(target_os = "linux"))]
async fn netns(_: ImpairArgs, _: ImpairmentProfile) -> Result<(), CliError> {
    Err(CliError::NetnsNeedsLinux)
}

#[cfg(test)]
mod tests {
    use clap::Args as _;

    #[test]
    fn the_profile_help_names_every_preset() {
        let command = super::ProfileArgs::augment_args(clap::Command::new("quiver"));
        let profile = command.get_arguments().find(|a| a.get_id() == "profile").expect("--profile");
        let help = profile.get_help().expect("help").to_string();
        for (name, _) in quiver_lab::impair::PRESETS {
            assert!(help.contains(name), "--profile's help does not name {name}: {help}");
        }
    }
}
