//! `quiver-server`: with no arguments, serves on UDP `[::]:4433` with a dev certificate kept in `./.quiver`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use quiver_server::{Server, ServerConfig, TlsSource, WebConfig};
use tokio_util::sync::CancellationToken;

/// Quiver real-time server: reliable room streams and unreliable tick datagrams over one QUIC endpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// UDP address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = ServerConfig::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for the dev certificate and server state.
    #[arg(long, default_value = ServerConfig::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// PEM certificate chain (leaf first) for production; needs --key. Without it a dev certificate is used.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Serve the browser demo page over HTTP on this TCP address. Default with the dev certificate: the --listen
    /// address (same port number, TCP); with --cert: not served.
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,quinn=warn".into()),
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
        (None, false, TlsSource::Dev) => Some(args.listen),
        _ => None,
    };
    let web = WebConfig { path: args.web_path, allowed_origins: args.web_origins, http };
    let config = ServerConfig { tls, web, ..ServerConfig::dev(args.listen, args.data_dir) };
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
    if let Some(page) = server.page_addr() {
        let host = if page.ip().is_unspecified() || page.ip().is_loopback() {
            "localhost".to_string()
        } else {
            page.ip().to_string()
        };
        println!("demo page http://{host}:{}/", page.port());
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
