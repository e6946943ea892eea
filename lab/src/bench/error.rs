//! [`BenchError`]: why a benchmark run did not produce a report. A bad configuration, a server that would not start
//! or a connection that failed on our side of the run are kept apart from the emulator's own errors.

use std::{io, path::PathBuf};

#[cfg(target_os = "linux")]
use crate::impair::{netns::NetnsError, Backend};

/// Why a benchmark run (or writing its report) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A setting out of range.
    #[error("{field} must be {expected}, got {value}")]
    BadConfig {
        /// The setting, as in the run's configuration (`clients`, `rate`, `duration`, `chat_rate`…).
        field: &'static str,
        /// Its value (seconds for durations).
        value: f64,
        /// What it may be.
        expected: &'static str,
    },
    /// An impaired WebSocket comparison without the netns emulator.
    #[error(
        "the WebSocket baseline runs over TCP, which the UDP relay cannot impair: add --netns (root, Linux) to run \
         both through the netns emulator, or compare without a profile"
    )]
    WebSocketNeedsNetns,
    /// An external server trusted through a CA, behind the relay an impairment profile puts in front of it.
    #[error(
        "{server}: a profile puts the UDP relay (on 127.0.0.1) between the bench and the server, and a certificate \
         from --ca is checked against the name dialled, the relay's address: pin the server's certificate with \
         --cert-hash instead, or run without a profile"
    )]
    CaBehindRelay {
        /// The server's name, as given.
        server: String,
    },
    /// The netns emulator with an external server.
    #[error("--netns runs the servers itself, inside its namespace; it cannot measure an external server")]
    NetnsWithExternalServer,
    /// The external server's address does not resolve.
    #[error("{server}: {source}")]
    Resolve {
        /// The address given.
        server: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The external server's address resolves to nothing.
    #[error("{server}: no address")]
    NoAddress {
        /// The address given.
        server: String,
    },
    /// A relay in front of a series did not carry every client's packets (stopped, or dropped new clients').
    #[error("the link emulator: {0}; the run's loss figures would include it")]
    Relay(String),
    /// The in-process Quiver server did not start.
    #[error("the in-process Quiver server: {0}")]
    Server(#[from] quiver_server::ServerError),
    /// The baselines' certificate could not be loaded or generated.
    #[error("the baselines' certificate: {0}")]
    Cert(#[from] quiver_certs::CertError),
    /// A Quiver client could not connect.
    #[error("quiver: {0}")]
    Connect(#[from] quiver_client::ConnectError),
    /// A Quiver request (join, subscribe, publish) was refused or its connection lost.
    #[error("quiver {request}: {source}")]
    Request {
        /// What was asked.
        request: &'static str,
        /// Why it failed.
        source: quiver_client::RequestError,
    },
    /// A Quiver request got no answer within 30 s (the server stopped answering).
    #[error("quiver {request}: no answer within {} s (the server does not answer)", after.as_secs())]
    Unanswered {
        /// What was asked.
        request: &'static str,
        /// How long the bench waited.
        after: std::time::Duration,
    },
    /// A bare quinn baseline's client could not be configured.
    #[error("bare quinn: {0}")]
    Trust(#[from] quiver_client::TrustError),
    /// A bare quinn baseline's server TLS could not be configured.
    #[error("bare quinn TLS: {0}")]
    EchoTls(#[from] rustls::Error),
    /// A bare quinn baseline's TLS configuration does not suit QUIC.
    #[error("bare quinn: {0}")]
    EchoQuic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// quinn refused to start a connection to a bare quinn baseline.
    #[error("bare quinn: {0}")]
    QuinnConnect(#[from] quinn::ConnectError),
    /// A connection to a bare quinn baseline failed.
    #[error("bare quinn: {0}")]
    QuinnConnection(#[from] quinn::ConnectionError),
    /// Writing to a stream of a bare quinn baseline failed.
    #[error("bare quinn: {0}")]
    QuinnWrite(#[from] quinn::WriteError),
    /// A WebSocket handshake or connection failed.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// A local socket, listener, relay or directory failed.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The IO error.
        source: io::Error,
    },
    /// The netns emulator could not be set up or entered.
    #[cfg(target_os = "linux")]
    #[error("netns emulator ({}): {source}", backend.name())]
    Emulator {
        /// Which backend.
        backend: Backend,
        /// Why.
        source: NetnsError,
    },
    /// The netns emulator exists on Linux only.
    #[error("the netns emulator needs Linux")]
    NeedsLinux,
    /// A task of the run panicked or was cancelled.
    #[error("a benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The report could not be serialized.
    #[error("cannot serialize the report: {0}")]
    Json(#[from] serde_json::Error),
    /// The report could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

impl From<tokio_tungstenite::tungstenite::Error> for BenchError {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        // Boxed: tungstenite's error is several times the size of the others.
        BenchError::WebSocket(Box::new(err))
    }
}

/// How long a bench waits for the answer to one request (a join, a subscribe, a claim, a post).
pub(crate) const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl BenchError {
    /// A [`BenchError::Io`] for what was being done.
    pub(crate) fn io(doing: &'static str) -> impl FnOnce(io::Error) -> BenchError {
        move |source| BenchError::Io { doing, source }
    }

    /// `request`'s answer within [`ANSWER_WAIT`]: a server that stops answering (an external one, wedged) fails
    /// the run instead of holding it, and every other client waiting at the start with it.
    pub(crate) async fn answered<T>(
        request: &'static str,
        answer: impl std::future::Future<Output = Result<T, quiver_client::RequestError>>,
    ) -> Result<T, BenchError> {
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(result) => result.map_err(Self::request(request)),
            Err(_) => Err(BenchError::Unanswered { request, after: ANSWER_WAIT }),
        }
    }

    /// A [`BenchError::Request`] for `request`.
    pub(crate) fn request(request: &'static str) -> impl FnOnce(quiver_client::RequestError) -> BenchError {
        move |source| BenchError::Request { request, source }
    }
}
