//! `quiver-server`: with no arguments, serves on UDP `[::]:4433` with a dev certificate kept in `./.quiver` and
//! tokens required, signed with a dev key kept there too. `quiver-server token --sub NAME` mints one.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use quiver_server::{
    auth::AuthConfig,
    cluster::{Broker, BrokerSettings, ClusterTicks, RedisRooms},
    hub::RoomHub,
    settings::{self, DiskDurability, Layers, LogFormat, LogSettings, Override, Settings, StoreKind},
    signals::{self, Reread, Served, Signals},
    store::Durability,
    token::TokenArgs,
    Server,
};
use tokio_util::sync::CancellationToken;

/// Quiver real-time server: reliable room streams and unreliable tick datagrams over one QUIC endpoint.
///
/// Settings come from defaults, then --config FILE, then QUIVER_… environment variables, then these flags
/// (`quiver-server config init` prints every setting; docs/operations.md explains them).
#[derive(Debug, Parser)]
#[command(version = quiver_server::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read settings from this TOML file (`quiver-server config init` prints one with every default).
    /// QUIVER_CONFIG names it too.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on; port 0 picks a free port (the bound address is printed). Default [::]:4433.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the dev certificate, the dev token key and the room store; one server per directory.
    /// Default .quiver.
    #[arg(long, value_parser = Utf8Path)]
    data_dir: Option<PathBuf>,
    /// Where rooms keep their epochs, seqs, history and dedupe window: `disk` (the store in --data-dir/store,
    /// kept across restarts and crashes; the default) or `memory` (lost on restart).
    #[arg(long, value_enum)]
    store: Option<StoreKind>,
    /// When a post is acknowledged (and delivered) with --store disk: `fsync` (on disk: survives a power cut; one
    /// fsync per group of posts; the default) or `os` (handed to the OS: survives a crash of the server, not of
    /// the machine). docs/durability.md.
    #[arg(long, value_enum)]
    durability: Option<DiskDurability>,
    /// Join a cluster: rooms, history, presence and ticks shared through this Redis (`redis://HOST:PORT`) with
    /// every node started with the same URL (docs/cluster.md). Without it: one node, rooms in --store.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Messages each room retains for history and resume (the oldest go first). Default 1000.
    #[arg(long)]
    history_max_messages: Option<u32>,
    /// Posts each room remembers for deduplication at most (a retry after this many newer posts in the room is
    /// not recognised). Default 10000.
    #[arg(long)]
    dedupe_max_entries: Option<u32>,
    /// PEM certificate chain (leaf first) for production; needs --key. Without it a dev certificate is used.
    /// SIGHUP re-reads it.
    #[arg(long, requires = "key", value_parser = Utf8Path)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", value_parser = Utf8Path)]
    key: Option<PathBuf>,
    /// Serve the browser demo page over HTTP on this TCP address. Default with the dev certificate: loopback only
    /// (127.0.0.1, or ::1 when --listen is ::1) on the --listen port; with --cert: not served. Dev tokens are
    /// handed to the page only when it is opened from this machine with the page key of the URL printed at start
    /// (printed only for a loopback or unspecified address).
    #[arg(long, conflicts_with = "no_web")]
    web: Option<SocketAddr>,
    /// Do not serve the demo page.
    #[arg(long)]
    no_web: bool,
    /// The WebSocket fallback's TCP address ("off": none). Default: the --listen address and port, over TCP.
    #[arg(long, value_name = "ADDR|off")]
    websocket: Option<String>,
    /// The WebTransport URL path browsers connect to. Default /quiver.
    #[arg(long)]
    web_path: Option<String>,
    /// An origin allowed to open WebTransport sessions and WebSockets, e.g. https://app.example.com (repeat for
    /// more). Without any, every origin is allowed (plain ws:// only this machine's pages): fine for development,
    /// not for production.
    #[arg(long = "web-origin", value_name = "ORIGIN")]
    web_origins: Vec<String>,
    /// Admit clients without tokens, with every right (demos only; logged loudly).
    #[arg(long, conflicts_with_all = ["hs256_key", "ed25519_public_key"])]
    allow_anonymous: bool,
    /// Verify tokens with the HS256 secret in this file (hex, at least 64 digits) instead of the dev key
    /// (repeatable). SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", value_parser = Utf8Path)]
    hs256_key: Vec<PathBuf>,
    /// Verify EdDSA tokens with the Ed25519 public key in this PEM file (repeatable). SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", value_parser = Utf8Path)]
    ed25519_public_key: Vec<PathBuf>,
    /// The admin listener (/metrics, /healthz, /readyz): a TCP address, `auto` (127.0.0.1:9433, or a free
    /// loopback port when --listen's port is 0) or `off`.
    #[arg(long, value_name = "ADDR|auto|off")]
    admin: Option<String>,
    /// Log lines as `text` (colours only on a terminal) or `json`.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Write one qlog file per connection into this directory (for qvis).
    #[arg(long, value_name = "DIR", value_parser = Utf8Path)]
    qlog_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT, wait at most this long for clients to leave and posts in flight to be stored.
    /// Default 10000.
    #[arg(long, value_name = "MS")]
    drain_timeout_ms: Option<u32>,
}

impl Args {
    /// The flags given, as overrides of their settings.
    fn overrides(&self) -> Vec<Override> {
        let path = |p: &PathBuf| p.display().to_string();
        let paths = |ps: &[PathBuf]| ps.iter().map(|p| toml::Value::String(path(p))).collect::<Vec<_>>();
        let int = |v: u32| toml::Value::Integer(i64::from(v));
        let mut out = Vec::new();
        let mut push = |flag: &str, key: &str, value: Option<toml::Value>| {
            if let Some(value) = value {
                out.push(Override::flag(flag, key, value));
            }
        };
        push("--listen", "listen", self.listen.map(|a| a.to_string().into()));
        push("--data-dir", "data_dir", self.data_dir.as_ref().map(|p| path(p).into()));
        push("--store", "store.kind", self.store.map(|k| value_name(k).into()));
        push("--durability", "store.durability", self.durability.map(|d| value_name(d).into()));
        push("--broker", "broker.url", self.broker.clone().map(Into::into));
        push("--history-max-messages", "limits.history_max_messages", self.history_max_messages.map(int));
        push("--dedupe-max-entries", "limits.dedupe_max_entries", self.dedupe_max_entries.map(int));
        push("--cert", "tls.cert", self.cert.as_ref().map(|p| path(p).into()));
        push("--key", "tls.key", self.key.as_ref().map(|p| path(p).into()));
        push("--web", "web.page", self.web.map(|a| a.to_string().into()));
        push("--no-web", "web.page", self.no_web.then(|| "off".into()));
        push("--websocket", "web.websocket", self.websocket.clone().map(Into::into));
        push("--web-path", "web.path", self.web_path.clone().map(Into::into));
        let origins = self.web_origins.iter().map(|o| toml::Value::String(o.clone())).collect::<Vec<_>>();
        push("--web-origin", "web.origins", (!origins.is_empty()).then(|| origins.into()));
        push("--allow-anonymous", "auth.anonymous", self.allow_anonymous.then_some(true.into()));
        push(
            "--hs256-key",
            "auth.hs256_key_files",
            (!self.hs256_key.is_empty()).then(|| paths(&self.hs256_key).into()),
        );
        let ed25519 = paths(&self.ed25519_public_key);
        push("--ed25519-public-key", "auth.ed25519_public_key_files", (!ed25519.is_empty()).then(|| ed25519.into()));
        push("--admin", "admin.listen", self.admin.clone().map(Into::into));
        push("--log-format", "log.format", self.log_format.map(|f| value_name(f).into()));
        push("--qlog-dir", "log.qlog_dir", self.qlog_dir.as_ref().map(|p| path(p).into()));
        push("--drain-timeout-ms", "drain_timeout_ms", self.drain_timeout_ms.map(int));
        out
    }
}

/// A path flag that becomes a setting: UTF-8 text, as the settings are (clap refuses other bytes, naming the flag).
/// Before, `--data-dir` with a byte that is not UTF-8 was turned into another path (U+FFFD in its place), where
/// the server made a fresh data directory: a new certificate, a new token key, an empty store.
#[derive(Debug, Clone, Copy)]
struct Utf8Path;

impl clap::builder::TypedValueParser for Utf8Path {
    type Value = PathBuf;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<PathBuf, clap::Error> {
        let Some(text) = value.to_str() else {
            let flag = arg.map_or_else(|| "a path".to_string(), ToString::to_string);
            let why = format!("{flag}: {:?} is not UTF-8 text (settings are)\n", value.to_string_lossy());
            return Err(clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, why).with_cmd(cmd));
        };
        Ok(PathBuf::from(text))
    }
}

/// The process's environment as the settings read it. A variable naming a setting that is not UTF-8 is an error
/// naming it: before, it was left out in silence (a `QUIVER_DATA_DIR` so dropped started the server on `.quiver`,
/// while the `quiver` CLI, reading it as a path, looked in the directory meant). Others (`QUIVER_CONFIG`, a path
/// read on its own; other programs' `QUIVER_…`) are left to their readers.
fn environment() -> Result<Vec<(String, String)>, settings::SettingsError> {
    let mut out = Vec::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(key), Ok(value)) => out.push((key, value)),
            (Ok(key), Err(_)) if settings::names_a_setting(&key) => {
                return Err(settings::SettingsError::Override { origin: key, message: "not UTF-8 text".into() });
            }
            _ => {} // not a setting
        }
    }
    Ok(out)
}

/// A clap value's name (`disk`, `fsync`, `json`): the same word the file uses.
fn value_name(value: impl clap::ValueEnum) -> String {
    value.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an access token (printed on stdout) signed with the dev key in --data-dir, an HS256 secret file or an
    /// Ed25519 private key.
    Token(TokenArgs),
    /// Write, check or show the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a configuration file with every setting at its default, commented (`config init > quiver.toml`).
    Init,
    /// Check FILE, with the QUIVER_* environment and the flags given, as a start would read them: unknown keys,
    /// wrong types and out-of-range values are errors naming the line or the variable; exit 1 on one.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the effective settings (--config FILE, environment, flags) as TOML, secrets redacted.
    Print,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::Token(token)) => return mint(token, &args),
        Some(Command::Config(ConfigCommand::Init)) => {
            say(settings::TEMPLATE.trim_end());
            return ExitCode::SUCCESS;
        }
        Some(Command::Config(ConfigCommand::Check { file })) => {
            // The file as the server would read it: with the environment's QUIVER_* variables and the flags given
            // (a bad variable in a service's environment was found only at its next start).
            let env = match environment() {
                Ok(env) => env,
                Err(err) => return fail(&err),
            };
            let checked = match settings::load(Some(file), env, args.overrides()) {
                Ok((settings, layers)) => {
                    // Read from here, as the server will from its own working directory (a service's may differ).
                    let here = std::env::current_dir().unwrap_or_default();
                    for (key, path) in settings.relative_paths() {
                        eprintln!(
                            "note: {key} = {} is relative: read here as {}, and by the server from its working \
                             directory (the systemd unit's is /var/lib/quiver); an absolute path reads the same file \
                             everywhere",
                            path.display(),
                            here.join(path).display()
                        );
                    }
                    settings.check_files().map_err(|err| layers.error(err).to_string())
                }
                Err(err) => Err(err.to_string()),
            };
            return match checked {
                Ok(()) => {
                    say(&format!("{}: ok", file.display()));
                    ExitCode::SUCCESS
                }
                Err(err) => fail(&err),
            };
        }
        _ => {}
    }
    if let Err(err) = signals::hold_reloads() {
        return fail(&format!("cannot hold SIGHUP until the server's handlers are registered: {err}"));
    }
    let file = config_file(args.config.as_ref());
    let env = match environment() {
        Ok(env) => env,
        Err(err) => return fail(&err),
    };
    let (settings, layers) = match settings::load(file.as_deref(), env.clone(), args.overrides()) {
        Ok(loaded) => loaded,
        // (A file nobody named on the command line: where its name came from.)
        Err(err @ settings::SettingsError::Read { .. }) if args.config.is_none() => {
            return fail(&format!("{err} (named by QUIVER_CONFIG)"));
        }
        Err(err) => return fail(&err),
    };
    if let Some(Command::Config(ConfigCommand::Print)) = args.command {
        say("# The effective settings: defaults, then --config, then QUIVER_… variables, then flags.");
        say(settings.to_redacted_toml().trim_end());
        return ExitCode::SUCCESS;
    }
    init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    // A reload (SIGHUP) reads the settings again as they were read now.
    let overrides = args.overrides();
    // (The process's environment does not change after start: the variables read then.)
    let again =
        Box::new(move || settings::load(file.as_deref(), env.clone(), overrides.clone()).map(|(settings, _)| settings));
    signals::run_to_end(runtime, serve(Reread::new(settings, again), layers))
}

/// Prints a line on stdout; a closed stdout is not worth a panic (the server keeps serving).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Prints `error: …` on stderr (if it is still there) and returns failure.
fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {err}");
    ExitCode::FAILURE
}

/// Logs go to stderr: text for people (colours only on a terminal) or one JSON object per line.
fn init_logging(log: &LogSettings) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // RUST_LOG when it is set and a filter; an unreadable one is said so once logging is up (it was ignored in
    // silence: an operator asking for debug lines got none and no reason).
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (filter, unreadable) = match env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(err)) => (EnvFilter::new(&log.filter), Some(err)),
        None => (EnvFilter::new(&log.filter), None),
    };
    // A log line that cannot be written (stderr closed, or a pipe whose reader is gone) is dropped:
    // tracing-subscriber's default reports it with `eprintln!`, which panics on that same stderr and took the
    // server down.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
    if let Some(err) = unreadable {
        tracing::warn!(%err, filter = %log.filter, "RUST_LOG is not a tracing filter; logging with log.filter instead");
    }
}

/// The configuration file: `--config`, else `QUIVER_CONFIG` (empty: none, as a compose file's way to unset it; it
/// was read as the path "", and the server refused to start with ": No such file or directory").
fn config_file(flag: Option<&PathBuf>) -> Option<PathBuf> {
    flag.cloned().or_else(|| std::env::var_os("QUIVER_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// `quiver-server token`, with the server's configuration (file, environment, flags) read as `serve` reads it: the
/// token is signed with what that server verifies tokens with.
fn mint(token: &TokenArgs, args: &Args) -> ExitCode {
    init_logging(&LogSettings::default());
    let settings = || {
        let file = config_file(args.config.as_ref());
        let env = environment().map_err(Box::new)?;
        settings::load(file.as_deref(), env, args.overrides())
            .map(|(settings, _)| settings)
            .map_err(|e| Box::new(e).into())
    };
    let request = match token.clone().request(settings) {
        Ok(request) => request,
        Err(why) => return fail(&why),
    };
    match quiver_server::token::mint(&request, std::time::SystemTime::now()) {
        Ok(minted) => {
            if let Some(path) = minted.created_key {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "created the dev key {} (servers started on that data directory from now on accept this token)",
                    path.display()
                );
            }
            say(&minted.token);
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}

async fn serve(reread: Reread, layers: Layers) -> ExitCode {
    let settings = reread.started.clone();
    let config = match settings.server_config() {
        Ok(config) => config,
        Err(invalid) => return fail(&layers.error(invalid)),
    };
    let (auth_mode, data_dir, durability) = (config.auth.clone(), config.data_dir.clone(), config.durability);
    quiver_server::open_files::raise_for(&config);
    // Before the store opens (which can take a while after a crash): a SIGTERM meanwhile makes the server drain
    // as soon as it runs, a second one exits at once (the store is safe to stop anywhere, as a crash is), and a
    // SIGHUP is held until there is a server to reload.
    let shutdown = CancellationToken::new();
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(err) => return fail(&format!("cannot install signal handlers: {err}")),
    };
    if let Err(err) = signals::release_reloads() {
        return fail(&format!("cannot unblock SIGHUP for its handler: {err}"));
    }
    let (reloader, reloader_set) = tokio::sync::oneshot::channel();
    tokio::spawn(signals.handle(shutdown.clone(), reloader_set, reread));
    let Some(broker) = config.broker.clone() else {
        // On the blocking pool: the store's recovery must not hold up the runtime's threads (the signals').
        let server = match tokio::task::spawn_blocking(move || Server::bind(config)).await {
            Ok(Ok(server)) => server,
            Ok(Err(err)) => return fail(&err),
            Err(err) => return fail(&format!("the server's start failed: {err}")),
        };
        let store = server.store().map(|store| (Arc::downgrade(&store), store.closed_flag()));
        let _ = reloader.send(Served { reloader: server.reloader(), store });
        let store = match durability {
            Durability::Memory => "rooms in memory only (--store memory): a restart forgets their history".to_string(),
            durability => format!(
                "rooms stored in {} (durability {})",
                data_dir.join(quiver_server::store::STORE_DIR).display(),
                durability.name()
            ),
        };
        return run(server, shutdown, &settings, &auth_mode, &data_dir, &store).await;
    };
    let broker = match Broker::new(broker) {
        Ok(broker) => broker,
        Err(err) => return fail(&err),
    };
    let rooms = Arc::new(RedisRooms::new(broker.clone(), config.limits.clone()));
    let ticks = Arc::new(ClusterTicks::new(broker.clone(), config.budget.max_channels));
    broker.connect();
    let server = match Server::bind_with(config, rooms, ticks) {
        Ok(server) => server,
        Err(err) => return fail(&err),
    };
    let _ = reloader.send(Served { reloader: server.reloader(), store: None });
    let rooms = format!(
        "rooms, presence and ticks shared through {} (node {})",
        BrokerSettings::redact(&broker.config().url),
        broker.node()
    );
    let code = run(server, shutdown, &settings, &auth_mode, &data_dir, &rooms).await;
    // Its members leave their rooms now rather than after the presence expiry.
    broker.retire().await;
    code
}

/// Prints where the server listens and runs it until a signal.
async fn run<R: RoomHub>(
    server: Server<R>,
    shutdown: CancellationToken,
    settings: &Settings,
    auth_mode: &AuthConfig,
    data_dir: &std::path::Path,
    rooms: &str,
) -> ExitCode {
    say(&format!("listening on {}", server.local_addr()));
    say(&format!("certificate sha256 {}", server.fingerprint()));
    match auth_mode {
        AuthConfig::DevKey => say(&format!(
            "tokens required, signed with the dev key in {} (mint one: quiver-server token --sub NAME)",
            data_dir.display()
        )),
        AuthConfig::Keys(keys) => say(&format!("tokens required, {} verification key(s)", keys.len())),
        AuthConfig::Anonymous => say("ANONYMOUS ACCESS: no tokens required (--allow-anonymous)"),
    }
    say(rooms);
    if let (Some(page), Some(url)) = (server.page_addr(), server.page_url()) {
        let tokens = match auth_mode {
            AuthConfig::DevKey => "; dev tokens only for pages opened on this machine from this URL (its #key=)",
            _ => "",
        };
        say(&format!("demo page {url} (TCP {page}{tokens})"));
    }
    if let Some(ws) = server.websocket_addr() {
        let path = &settings.web.path;
        say(&format!("websocket fallback wss://{ws}{path} (TCP; plain ws:// from this machine only)"));
    }
    if let Some(admin) = server.admin_addr() {
        say(&format!("admin http://{admin}/metrics /healthz /readyz"));
    }
    #[cfg(unix)]
    if let Some(notifier) = quiver_server::notify::Notifier::from_env().map(Arc::new) {
        // (Serving from the run's first step; a SIGTERM meanwhile drains it at once, and then it is never ready.)
        if !shutdown.is_cancelled() {
            notifier.send("READY=1");
        }
        // Weakly: the metrics hold the hubs and the store, which must close with the server, not when the runtime
        // ends (a task holding them kept the store open past "server stopped" under the shipped unit's watchdog, and
        // its last commit and seal ran in the runtime's teardown, a second SIGTERM no longer heard; a review's find).
        let (metrics, pinger) = (Arc::downgrade(&server.metrics()), notifier.clone());
        tokio::spawn(async move { pinger.keep_alive(|| metrics.upgrade().map(|metrics| metrics.alive())).await });
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            notifier.send("STOPPING=1");
        });
    }
    let summary = server.run(shutdown).await;
    say(&summary.to_string());
    if summary.endpoint_lost {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
