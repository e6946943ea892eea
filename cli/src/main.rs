//! `quiver`: the command-line client: `ping` (control-stream round trips), `chat`, `post`, `history`.

mod bench;
mod chat;
mod chat_out;
mod churn;
mod error;
mod history;
mod impair;
mod output;
mod ping;
mod tick;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use quiver_certs::Fingerprint;
use quiver_client::{Client, ConnectOptions, TrustOptions};

use crate::error::CliError;

/// `quiver --version`: the crate's version and the git commit it was built from.
pub(crate) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("QUIVER_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "quiver",
    version = VERSION,
    about = "Quiver client: ping, chat, ticks and benchmarks against a Quiver server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trips on the control stream (Ping → Pong), sent at a fixed rate; prints latency percentiles.
    Ping(ping::PingArgs),
    /// Chat in a room: stdin lines are posted, the room's events are printed.
    Chat(chat::ChatArgs),
    /// Post one message to a room and print its seq.
    Post(chat::PostArgs),
    /// Print a room's retained messages.
    History(history::HistoryArgs),
    /// Ticks over datagrams: publish or subscribe.
    #[command(subcommand)]
    Tick(tick::TickCommand),
    /// A UDP relay that applies loss, delay, jitter, reordering, duplication and rate limits (no root needed).
    Impair(impair::ImpairArgs),
    /// Latency benchmarks with same-run baselines.
    #[command(subcommand)]
    Bench(Box<bench::BenchCommand>),
    /// Ever-new rooms, channels and connections for a bounded time (the load of scripts/soak.sh).
    Churn(churn::ChurnArgs),
}

/// How to trust the server's certificate.
#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// Pin the server certificate's SHA-256 (64 hex digits, as quiver-server prints it).
    #[arg(long, conflicts_with = "ca")]
    cert_hash: Option<Fingerprint>,
    /// Trust certificates issued by the CA(s) in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The server's data directory: for a server on this machine, its dev certificate is trusted and, without
    /// a token (--token-file, QUIVER_TOKEN or --token) (and without --ca, or --cert-hash other than the dev
    /// certificate's), a dev token is minted with its dev key. Default: `QUIVER_DATA_DIR` (what the server's image
    /// and unit set), else `.quiver`.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = ".quiver")]
    data_dir: PathBuf,
    /// Access token (JWT), e.g. from `quiver-server token --sub NAME`. Prefer `QUIVER_TOKEN` or --token-file: a
    /// command line is readable by every user of the machine (`ps`) for as long as the command runs.
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true, value_parser = token_value)]
    token: Option<String>,
    /// A file holding the access token (surrounding whitespace ignored), read again at every connect, so that a
    /// token renewed in place is used at the next reconnect. Taken over --token and `QUIVER_TOKEN`. One its group or
    /// everyone may read is used with a warning (`chmod 600` it).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

impl TrustArgs {
    pub(crate) fn trust(&self) -> TrustOptions {
        match (&self.cert_hash, &self.ca) {
            (Some(pin), _) => TrustOptions::Pin(*pin),
            (None, Some(ca)) => TrustOptions::CaFile(ca.clone()),
            (None, None) => TrustOptions::Auto { data_dir: self.data_dir.clone() },
        }
    }

    /// The token, or a dev-token provider when the data directory holds the server's dev key, every address in
    /// `servers` (`host:port`, comma-separated) is this machine's, and the trust is that data directory's dev
    /// certificate (no --ca; no --cert-hash, or the dev certificate's): a token signed with the local dev key has
    /// every right on the local dev server, so it is never sent to another machine, which could use it there,
    /// nor to a loopback port that leads elsewhere (`ssh -L`, `kubectl port-forward`: a server with another
    /// certificate). Elsewhere, give a token (--token-file, QUIVER_TOKEN or --token).
    pub(crate) fn token_provider(&self, name: Option<&str>, servers: &str) -> Option<quiver_client::TokenProvider> {
        if let Some(path) = &self.token_file {
            let path = path.clone();
            return Some(quiver_client::TokenProvider::new(move || read_token_file(&path)));
        }
        match &self.token {
            Some(token) => {
                let token = token.clone();
                Some(quiver_client::TokenProvider::new(move || Ok(token.clone())))
            }
            None if quiver_auth::dev_key_exists(&self.data_dir)
                && on_this_machine(servers)
                && self.trusts_the_dev_certificate() =>
            {
                let sub = name.map_or_else(|| format!("dev-{:08x}", rand::random::<u32>()), str::to_string);
                Some(quiver_client::TokenProvider::dev(self.data_dir.clone(), sub))
            }
            None => None,
        }
    }
}

/// A token given by --token or `QUIVER_TOKEN`, without surrounding whitespace; an empty one is refused (a variable
/// set to nothing, `QUIVER_TOKEN=${UNSET}`, was sent as the token and refused by the server as malformed).
fn token_value(value: &str) -> Result<String, EmptyToken> {
    match value.trim() {
        "" => Err(EmptyToken),
        token => Ok(token.to_string()),
    }
}

/// An empty --token or `QUIVER_TOKEN` ([`token_value`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the token is empty: give one, or unset QUIVER_TOKEN (and leave out --token) for the local dev server's dev token"
)]
struct EmptyToken;

/// The token in the file at `path`, without surrounding whitespace; an error names the file (never its content).
/// A file other users of the machine may read is used, with a warning once per process (a Kubernetes secret's
/// volume is 0644 by default, so refusing would break those; ssh refuses such key files).
fn read_token_file(path: &std::path::Path) -> Result<String, quiver_client::TokenError> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(warning) = token_file_exposure(path) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::err!("warning: {warning}");
        }
    }
    let text = std::fs::read_to_string(path).map_err(|err| format!("--token-file {}: {err}", path.display()))?;
    match text.trim() {
        "" => Err(format!("--token-file {}: the file is empty", path.display()).into()),
        token => Ok(token.to_string()),
    }
}

/// A warning when the token file at `path` (followed through links) may be read by users other than its owner:
/// its group or everyone. `None` when it may not, or cannot be read at all (reading it says why).
fn token_file_exposure(path: &std::path::Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then(|| {
            format!(
                "--token-file {}: other users of this machine may read the token (mode {mode:04o}); \
                 `chmod 600` it",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl TrustArgs {
    /// True when the server is trusted as the data directory's dev server: by its dev certificate (no --ca, and
    /// no --cert-hash or that certificate's hash).
    fn trusts_the_dev_certificate(&self) -> bool {
        match (&self.cert_hash, &self.ca) {
            (None, None) => true,
            (Some(pin), None) => {
                quiver_certs::dev::read(&self.data_dir).is_ok_and(|cert| quiver_certs::sha256(&cert) == *pin)
            }
            (_, Some(_)) => false,
        }
    }
}

/// True when every `host:port` in `servers` (comma-separated) is `localhost` or a loopback address; names are not
/// resolved (one that resolves elsewhere tomorrow must not get a dev token today).
fn on_this_machine(servers: &str) -> bool {
    servers.split(',').map(str::trim).filter(|server| !server.is_empty()).all(|server| {
        let host = match server.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
            // An IPv6 address without brackets or port (`::1`).
            None if server.parse::<std::net::IpAddr>().is_ok() => server,
            None => server.rsplit_once(':').map_or(server, |(host, _)| host),
        };
        host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
    })
}

/// Where the server is and how to trust it.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub(crate) server: String,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    /// Write one qlog file per connection into this directory (qvis reads them).
    #[arg(long, value_name = "DIR")]
    pub(crate) qlog_dir: Option<PathBuf>,
    /// quic, websocket (TCP: where UDP is blocked), or auto (QUIC, then the WebSocket when QUIC does not get
    /// through within --fallback-after; the choice is printed and kept for reconnects).
    #[arg(long, default_value = "auto", value_name = "quic|websocket|auto")]
    pub(crate) transport: quiver_client::Transport,
    /// With --transport auto: seconds QUIC gets before the WebSocket is tried.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub(crate) fallback_after: f64,
    /// The WebSocket's TCP port, when it is not the QUIC port (the server's --websocket).
    #[arg(long, value_name = "PORT")]
    pub(crate) websocket_port: Option<u16>,
}

impl ServerArgs {
    /// True when a fixed token (so a fixed identity) was given.
    pub(crate) fn has_token(&self) -> bool {
        self.trust.token.is_some() || self.trust.token_file.is_some()
    }

    pub(crate) async fn connect(&self) -> Result<Client, CliError> {
        self.connect_as(None).await
    }

    /// [`ServerArgs::connect_as`] within `limit` (0: the client's own connect timeout alone): a command's
    /// `--timeout` bounds its connect too.
    pub(crate) async fn connect_within(&self, name: Option<String>, limit: Duration) -> Result<Client, CliError> {
        if limit.is_zero() {
            return self.connect_as(name).await;
        }
        tokio::time::timeout(limit, self.connect_as(name)).await.map_err(|_| CliError::Connect {
            server: self.server.clone(),
            source: quiver_client::ConnectError::Timeout(limit),
        })?
    }

    /// The connect options these flags say, for a client named `name`.
    pub(crate) fn options(&self, name: Option<String>) -> Result<ConnectOptions, CliError> {
        if name.is_some() && self.has_token() {
            eprintln!(
                "note: with a token a server knows this client by the token's subject; --name counts only on a server \
                 that reads no tokens (anonymous)"
            );
        }
        let token_provider = self.trust.token_provider(name.as_deref(), &self.server);
        Ok(ConnectOptions {
            trust: self.trust.trust(),
            name,
            token_provider,
            qlog_dir: self.qlog_dir.clone(),
            transport: self.transport,
            fallback_after: seconds("fallback-after", self.fallback_after)?,
            websocket_port: self.websocket_port,
            ..ConnectOptions::default()
        })
    }

    pub(crate) async fn connect_as(&self, name: Option<String>) -> Result<Client, CliError> {
        let options = self.options(name)?;
        let client = Client::connect_with(&self.server, options)
            .await
            .map_err(|source| CliError::Connect { server: self.server.clone(), source })?;
        if client.transport() == Some(quiver_client::TransportKind::WebSocket) {
            tracing::info!("connected over the WebSocket fallback (TCP)");
            if self.transport == quiver_client::Transport::Auto {
                eprintln!("note: QUIC (UDP) did not get through; connected over the WebSocket fallback (TCP)");
            }
        }
        Ok(client)
    }
}

/// `--flag`'s value in seconds as a duration.
pub(crate) fn seconds(flag: &'static str, value: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(value).map_err(|source| CliError::Seconds { flag, source })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // A closed stderr drops log lines instead of panicking in tracing-subscriber's own error report.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            crate::err!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The work runs in a spawned task: quinn driven from block_on's thread costs ~4x the round trip (measured).
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Ping(args) => tokio::spawn(ping::run(args)).await,
            Command::Chat(args) => tokio::spawn(chat::chat(args)).await,
            Command::Post(args) => tokio::spawn(chat::post(args)).await,
            Command::History(args) => tokio::spawn(history::history(args)).await,
            Command::Tick(command) => tokio::spawn(tick::run(command)).await,
            Command::Impair(args) => tokio::spawn(impair::run(args)).await,
            Command::Bench(command) => tokio::spawn(bench::run(*command)).await,
            Command::Churn(args) => tokio::spawn(churn::run(args)).await,
        }
    });
    let status = match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            // (The server's words may be in it: a refusal's reason, a close's.)
            // Escaped whole when it carries the server's words; else line by line (its own breaks kept, what a
            // terminal would act on escaped all the same).
            match err.carries_server_words() {
                true => crate::err!("error: {}", chat::terminal_line(&err.to_string())),
                false => crate::err!("error: {}", chat::terminal_lines(&err.to_string())),
            }
            ExitCode::FAILURE
        }
        Err(join) => {
            crate::err!("error: {join}");
            ExitCode::FAILURE
        }
    };
    // Output that could not be written (a full disk) fails the command, whatever it did.
    match output::write_failure() {
        Some(err) => {
            crate::err!("error: writing the output: {err}");
            ExitCode::FAILURE
        }
        None => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token signed with the local dev key has every right on the local dev server: it goes only to this
    /// machine's addresses (a pinned or CA-checked remote server gets none).
    #[test]
    fn a_dev_token_is_minted_only_for_this_machines_addresses() {
        let dir = tempfile::tempdir().unwrap();
        quiver_auth::load_or_generate_dev_key(dir.path()).unwrap();
        assert!(quiver_auth::dev_key_exists(dir.path()));
        let trust =
            TrustArgs { cert_hash: None, ca: None, data_dir: dir.path().to_owned(), token: None, token_file: None };
        for local in [
            "127.0.0.1:4433",
            "localhost:4433",
            "[::1]:4433",
            "::1",
            "127.0.0.1:1,localhost:2",
            "127.0.0.1:4433,",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(trust.token_provider(None, local).is_some(), "{local}");
        }
        for remote in ["192.0.2.1:4433", "example.com:4433", "127.0.0.1:1,192.0.2.1:2", "[2001:db8::1]:4433"] {
            assert!(trust.token_provider(None, remote).is_none(), "{remote}");
        }
        let given = TrustArgs { token: Some("t".into()), ..trust };
        assert!(given.token_provider(None, "192.0.2.1:4433").is_some(), "a token given is sent where it is told");
    }

    /// --token-file is read at every connect (a token renewed in place is used at the next), and a missing or empty
    /// file is an error naming it; it is taken over --token (or `QUIVER_TOKEN`).
    #[tokio::test]
    async fn a_token_file_is_read_at_every_connect() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  first.token\n").unwrap();
        let trust = TrustArgs {
            cert_hash: None,
            ca: None,
            data_dir: dir.path().to_owned(),
            token: None,
            token_file: Some(file.clone()),
        };
        let provider = trust.token_provider(None, "192.0.2.1:4433").expect("a token file is sent where it is told");
        assert_eq!(provider.token().await.unwrap(), "first.token");
        std::fs::write(&file, "second.token").unwrap();
        assert_eq!(provider.token().await.unwrap(), "second.token", "read again");
        std::fs::write(&file, "\n").unwrap();
        let empty = provider.token().await.unwrap_err().to_string();
        assert!(empty.contains("token") && empty.contains("empty"), "{empty}");
        std::fs::remove_file(&file).unwrap();
        let missing = provider.token().await.unwrap_err().to_string();
        assert!(missing.contains(&file.display().to_string()), "{missing}");
        // With a token given too (QUIVER_TOKEN exported, say), the file is the one taken.
        std::fs::write(&file, "from.file").unwrap();
        let both = TrustArgs { token: Some("given".into()), ..trust };
        let provider = both.token_provider(None, "192.0.2.1:4433").unwrap();
        assert_eq!(provider.token().await.unwrap(), "from.file");
    }

    /// A token file its group or everyone may read is named in a warning (with its mode); one only its owner may
    /// read is not.
    #[cfg(unix)]
    #[test]
    fn a_token_file_others_may_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true), (0o644, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = token_file_exposure(&file);
            assert_eq!(warning.is_some(), exposed, "{mode:o}: {warning:?}");
            if let Some(warning) = warning {
                assert!(warning.contains(&file.display().to_string()) && warning.contains(&format!("{mode:04o}")));
            }
        }
        assert_eq!(token_file_exposure(&dir.path().join("missing")), None, "reading it says why");
    }

    /// A loopback port that leads elsewhere (`ssh -L 4433:prod:4433`, trusted with prod's pin or a CA) gets no dev
    /// token: only a server trusted as the data directory's dev server does.
    #[test]
    fn a_dev_token_goes_only_to_the_dev_certificates_server() {
        let dir = tempfile::tempdir().unwrap();
        quiver_auth::load_or_generate_dev_key(dir.path()).unwrap();
        let (cert, _) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
        let trust =
            |cert_hash, ca| TrustArgs { cert_hash, ca, data_dir: dir.path().to_owned(), token: None, token_file: None };
        let local = "127.0.0.1:4433";
        assert!(trust(Some(cert.fingerprint()), None).token_provider(None, local).is_some(), "the dev cert's pin");
        let other = quiver_certs::sha256(b"prod");
        assert!(trust(Some(other), None).token_provider(None, local).is_none(), "another server's pin");
        assert!(trust(None, Some("ca.pem".into())).token_provider(None, local).is_none(), "a CA");
    }
}
