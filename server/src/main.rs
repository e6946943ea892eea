//! `quiver-server`: with no arguments, serves on UDP `[::]:4433` with a dev certificate kept in `./.quiver`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use quiver_server::{Server, ServerConfig, TlsSource};
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
    let config = ServerConfig { tls, ..ServerConfig::dev(args.listen, args.data_dir) };
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.local_addr());
    println!("certificate sha256 {}", server.fingerprint());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    server.run(shutdown).await;
    ExitCode::SUCCESS
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
