//! `quiver-server`: with no arguments, serves on UDP `[::]:4433` with a dev certificate kept in `./.quiver` and
//! tokens required, signed with a dev key kept there too. `quiver-server token --sub NAME` mints one.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use quiver_server::{
    auth::{AuthConfig, TokenKey},
    store::Durability,
    token::{Signer, TokenRequest},
    Server, ServerConfig, TlsSource, WebConfig,
};
use tokio_util::sync::CancellationToken;

/// Quiver real-time server: reliable room streams and unreliable tick datagrams over one QUIC endpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// UDP address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = ServerConfig::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for the dev certificate, the dev token key and the room store; one server per directory.
    #[arg(long, default_value = ServerConfig::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Where rooms keep their epochs, seqs, history and dedupe window: `disk` (the store in --data-dir/store,
    /// kept across restarts and crashes) or `memory` (lost on restart).
    #[arg(long, value_enum, default_value_t = StoreKind::Disk)]
    store: StoreKind,
    /// When a post is acknowledged (and delivered) with --store disk: `fsync` (on disk: survives a power cut; one
    /// fsync per group of posts) or `os` (handed to the OS: survives a crash of the server, not of the machine).
    /// docs/durability.md.
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "os"])]
    durability: String,
    /// Messages each room retains for history and resume (the oldest go first).
    #[arg(long, default_value_t = quiver_proto::Limits::default().history_max_messages)]
    history_max_messages: u32,
    /// Posts each room remembers for deduplication at most (a retry after this many newer posts in the room is
    /// not recognised).
    #[arg(long, default_value_t = quiver_proto::Limits::default().dedupe_max_entries)]
    dedupe_max_entries: u32,
    /// PEM certificate chain (leaf first) for production; needs --key. Without it a dev certificate is used.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Serve the browser demo page over HTTP on this TCP address. Default with the dev certificate: loopback only
    /// (127.0.0.1, or ::1 when --listen is ::1) on the --listen port; with --cert: not served. Dev tokens are
    /// handed to the page only when it is opened from this machine, whatever the address.
    #[arg(long, conflicts_with = "no_web")]
    web: Option<SocketAddr>,
    /// Do not serve the demo page.
    #[arg(long)]
    no_web: bool,
    /// The WebTransport URL path browsers connect to.
    #[arg(long, default_value = quiver_server::WebConfig::DEFAULT_PATH)]
    web_path: String,
    /// An origin allowed to open WebTransport sessions, e.g. https://app.example.com (repeat for more). Without
    /// any, every origin is allowed: fine for development, not for production.
    #[arg(long = "web-origin", value_name = "ORIGIN")]
    web_origins: Vec<String>,
    /// Admit clients without tokens, with every right (demos only; logged loudly).
    #[arg(long, conflicts_with_all = ["hs256_key", "ed25519_public_key"])]
    allow_anonymous: bool,
    /// Verify tokens with the HS256 secret in this file (hex, at least 64 digits) instead of the dev key.
    #[arg(long, value_name = "FILE")]
    hs256_key: Vec<PathBuf>,
    /// Verify EdDSA tokens with the Ed25519 public key in this PEM file (repeatable).
    #[arg(long, value_name = "FILE")]
    ed25519_public_key: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Disk,
    Memory,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an access token (printed on stdout) signed with the dev key in --data-dir, an HS256 secret file or an
    /// Ed25519 private key.
    Token(TokenArgs),
}

/// `quiver-server token`: without --room or --channel the token grants every right on every room and channel.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The subject: the identity the client gets.
    #[arg(long)]
    sub: String,
    /// A room pattern the token may join (dot-separated; `*` one segment, final `**` the rest). Repeatable.
    #[arg(long = "room", value_name = "PATTERN")]
    rooms: Vec<String>,
    /// Also allow posting to the --room patterns.
    #[arg(long)]
    post: bool,
    /// A channel pattern the token may subscribe to. Repeatable.
    #[arg(long = "channel", value_name = "PATTERN")]
    channels: Vec<String>,
    /// Also allow publishing on the --channel patterns.
    #[arg(long)]
    publish: bool,
    /// Validity, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The server's data directory (its dev key signs the token).
    #[arg(long, default_value = ServerConfig::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Create the dev key in --data-dir if there is none (said on stderr): servers started on that directory from
    /// then on accept the token. Without it, a missing dev key is an error.
    #[arg(long, conflicts_with_all = ["hs256_key", "ed25519_private_key"])]
    init_key: bool,
    /// Sign with the HS256 secret in this file (hex, at least 64 digits: a server's --hs256-key) instead of the dev
    /// key.
    #[arg(long, value_name = "FILE", conflicts_with = "ed25519_private_key")]
    hs256_key: Option<PathBuf>,
    /// Sign with this Ed25519 private key (PKCS#8 PEM) instead of the dev key.
    #[arg(long, value_name = "FILE")]
    ed25519_private_key: Option<PathBuf>,
}

impl From<TokenArgs> for TokenRequest {
    fn from(args: TokenArgs) -> TokenRequest {
        let signer = match (args.hs256_key, args.ed25519_private_key) {
            (Some(path), _) => Signer::Hs256Key(path),
            (None, Some(path)) => Signer::Ed25519PrivateKey(path),
            (None, None) => Signer::DevKey { data_dir: args.data_dir, create: args.init_key },
        };
        TokenRequest {
            sub: args.sub,
            rooms: args.rooms,
            post: args.post,
            channels: args.channels,
            publish: args.publish,
            ttl: args.ttl,
            signer,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,fjall=warn,lsm_tree=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Token(token)) = args.command {
        return match quiver_server::token::mint(&token.into(), std::time::SystemTime::now()) {
            Ok(minted) => {
                if let Some(path) = minted.created_key {
                    eprintln!(
                        "created the dev key {} (servers started on that data directory from now on accept this token)",
                        path.display()
                    );
                }
                println!("{}", minted.token);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let tls = match (args.cert, args.key) {
        (Some(cert), Some(key)) => TlsSource::Pem { cert, key },
        _ => TlsSource::Dev,
    };
    if !args.web_path.starts_with('/') {
        eprintln!("error: --web-path must start with /");
        return ExitCode::FAILURE;
    }
    let http = match (args.web, args.no_web, &tls) {
        (Some(addr), _, _) => Some(addr),
        (None, false, TlsSource::Dev) => Some(quiver_server::web::default_page_addr(args.listen)),
        _ => None,
    };
    let web = WebConfig { path: args.web_path, allowed_origins: args.web_origins, http };
    let auth = if args.allow_anonymous {
        AuthConfig::Anonymous
    } else if args.hs256_key.is_empty() && args.ed25519_public_key.is_empty() {
        AuthConfig::DevKey
    } else {
        let mut keys = Vec::new();
        for path in &args.hs256_key {
            match quiver_server::auth::read_hs256_key(path) {
                Ok(secret) => keys.push(TokenKey::Hs256(secret)),
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        for path in &args.ed25519_public_key {
            match std::fs::read(path) {
                Ok(pem) => keys.push(TokenKey::Ed25519Pem(pem)),
                Err(err) => {
                    eprintln!("error: {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        AuthConfig::Keys(keys)
    };
    let durability = match (args.store, args.durability.parse()) {
        (StoreKind::Memory, _) => Durability::Memory,
        (StoreKind::Disk, Ok(durability)) => durability,
        (StoreKind::Disk, Err(err)) => {
            eprintln!("error: --durability: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (auth_mode, data_dir) = (auth.clone(), args.data_dir.clone());
    let mut config = ServerConfig { tls, web, auth, durability, ..ServerConfig::dev(args.listen, args.data_dir) };
    config.limits.history_max_messages = args.history_max_messages;
    config.limits.dedupe_max_entries = args.dedupe_max_entries;
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers are in place before the address is printed: whoever reads it may signal at once.
    let shutdown = CancellationToken::new();
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("error: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    println!("listening on {}", server.local_addr());
    println!("certificate sha256 {}", server.fingerprint());
    match &auth_mode {
        AuthConfig::DevKey => println!(
            "tokens required, signed with the dev key in {} (mint one: quiver-server token --sub NAME)",
            data_dir.display()
        ),
        AuthConfig::Keys(keys) => println!("tokens required, {} verification key(s)", keys.len()),
        AuthConfig::Anonymous => println!("ANONYMOUS ACCESS: no tokens required (--allow-anonymous)"),
    }
    match durability {
        Durability::Memory => println!("rooms in memory only (--store memory): a restart forgets their history"),
        durability => println!(
            "rooms stored in {} (durability {})",
            data_dir.join(quiver_server::store::STORE_DIR).display(),
            durability.name()
        ),
    }
    if let Some(page) = server.page_addr() {
        let host = if page.ip().is_unspecified() || page.ip().is_loopback() {
            "localhost".to_string()
        } else {
            page.ip().to_string()
        };
        let tokens = match &auth_mode {
            AuthConfig::DevKey => "; dev tokens only for pages opened on this machine",
            _ => "",
        };
        println!("demo page http://{host}:{}/ (TCP {page}{tokens})", page.port());
    }
    server.run(shutdown).await;
    ExitCode::SUCCESS
}

/// Ctrl-C and (on Unix) SIGTERM, registered up front.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// Cancels `shutdown` when the first signal arrives.
    #[cfg(unix)]
    async fn cancel_on_first(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    }

    #[cfg(not(unix))]
    async fn cancel_on_first(self, shutdown: CancellationToken) {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    }
}
