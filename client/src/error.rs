use quiver_certs::Fingerprint;
use quiver_proto::{EncodeError, ErrorCode, Failure};

use crate::trust::TrustError;

/// Why [`crate::Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server address could not be resolved.
    #[error("cannot resolve {server}: {source}")]
    Resolve {
        /// What was given.
        server: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The trust options could not be turned into a TLS configuration.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The server presented another certificate than the pinned one.
    #[error("certificate pin mismatch: the server presented sha256 {presented}, expected {expected}")]
    PinMismatch {
        /// The pin.
        expected: Fingerprint,
        /// What the server presented.
        presented: Fingerprint,
    },
    /// The local UDP socket could not be set up.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// quinn refused to start the connection.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed during the handshake or was closed by the server.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The server answered Hello with a refusal.
    #[error("server refused the session: {0}")]
    Refused(Failure),
    /// The server sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No Welcome within the connect timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
}

impl ConnectError {
    /// The server's reason code, when the server gave one (a refused Hello, or a connection it closed, e.g.
    /// `TooManyConnections` or `TokenExpired`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnectError::Refused(failure) => Some(failure.code),
            ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
                Some(quiver_transport::close::from_quic_code(close.error_code))
            }
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error.
    #[error("{0}")]
    Failed(Failure),
    /// The connection is gone (closed by either side, or lost).
    #[error("connection closed: {code}: {reason}")]
    Closed {
        /// Why, as the server (or the local side) said.
        code: ErrorCode,
        /// Detail.
        reason: String,
    },
    /// The request does not fit a frame.
    #[error("request too large: {0}")]
    Encode(EncodeError),
    /// The server answered with a reply of the wrong kind.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

impl RequestError {
    /// The error code behind this error, where there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RequestError::Failed(failure) => Some(failure.code),
            RequestError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}
