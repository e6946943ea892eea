//! The client's errors, one enum per concern: connecting ([`ConnectError`]), a request ([`RequestError`]), and the
//! server breaking the protocol ([`ProtocolError`]). A local failure, the server's refusal and the server's bad
//! bytes are different variants.

use quiver_certs::Fingerprint;
use quiver_proto::{DecodeError, EncodeError, ErrorCode, Failure, Reply, ServerMsg};

use crate::trust::TrustError;

/// What a token provider (`ConnectOptions::token_provider`) returns when it has no token to give.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// Why connecting (`Client::connect`) failed.
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
    Socket(#[source] std::io::Error),
    /// quinn refused to start the connection.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed during the handshake or was closed by the server.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The token provider had no token.
    #[error("cannot get an access token: {0}")]
    Token(#[source] TokenError),
    /// Hello could not be written on the control stream.
    #[error("sending Hello: {0}")]
    Write(#[from] quinn::WriteError),
    /// The reply to Hello could not be read from the control stream.
    #[error("reading Welcome: {0}")]
    Read(#[from] quinn::ReadError),
    /// Hello does not fit a frame (a token or name far too long).
    #[error("Hello does not fit a frame: {0}")]
    Encode(#[from] EncodeError),
    /// The server answered Hello with a refusal.
    #[error("server refused the session: {0}")]
    Refused(Failure),
    /// The server sent something that is not the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The connection closed before the session was open, with this code and reason.
    #[error("connection closed ({0}): {1}")]
    Closed(ErrorCode, String),
    /// The WebSocket fallback could not connect (TCP, TLS or the upgrade).
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// A [`crate::ConnectOptions`] value that cannot work: nothing was tried.
    #[error("connect options: {0}")]
    Options(String),
    /// No Welcome within the connect timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
    /// `Transport::Auto`: neither QUIC nor the WebSocket connected, and neither was refused for good; each one's
    /// error (a QUIC that timed out where UDP is blocked says less than the WebSocket's 403 or unknown issuer).
    #[error("neither transport connected; QUIC: {quic}; the fallback: {websocket}")]
    Transports {
        /// QUIC's.
        quic: Box<ConnectError>,
        /// The WebSocket's.
        websocket: Box<ConnectError>,
    },
}

impl ConnectError {
    /// A control stream read that failed before Welcome.
    pub(crate) fn from_read(err: crate::wire::ReadError) -> ConnectError {
        match err {
            crate::wire::ReadError::Closed(code, reason) => ConnectError::Closed(code, reason),
            crate::wire::ReadError::Reset(code) => {
                ConnectError::Closed(code, "the server reset the control stream".into())
            }
            crate::wire::ReadError::Other(what) => ConnectError::Closed(ErrorCode::Internal, what),
        }
    }

    /// The server's reason code, when the server gave one (a refused Hello, or a connection it closed, e.g.
    /// `TooManyConnections` or `TokenExpired`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnectError::Refused(failure) => Some(failure.code),
            ConnectError::Closed(code, _) => Some(*code),
            ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
                Some(quiver_transport::close::from_quic_code(close.error_code))
            }
            ConnectError::Transports { quic, websocket } => quic.code().or_else(|| websocket.code()),
            _ => None,
        }
    }

    /// True when trying again cannot help: the server refused the session (a token, the protocol version), or
    /// its certificate is not the pinned one. A reconnecting client ends on these instead of retrying in silence,
    /// once no other address of the server takes the session (a refusing node is passed over for the others).
    /// Nor can `TrustOptions::Auto` for a server not on this machine: fatal too (with `first_connect_retry` it was
    /// retried for its whole window, until 2026-12-07). Trust options that find no dev certificate yet, or a CA file
    /// that does not load, are not: the server may still be starting, the file being rotated.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused(_)
                | ConnectError::PinMismatch { .. }
                | ConnectError::Protocol(ProtocolError::VersionMismatch { .. })
                | ConnectError::Trust(crate::trust::TrustError::NotLoopback(_))
        )
    }
}

/// The server broke the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame from the server does not decode.
    #[error("the server sent an undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// Hello was answered with something other than Welcome or a refusal.
    #[error("expected Welcome, got {0:?}")]
    NotWelcome(Box<ServerMsg>),
    /// The server finished the control stream before answering Hello.
    #[error("the server finished the control stream before answering Hello")]
    Finished,
    /// Welcome named another protocol version than the Hello asked for: the two ends would not understand each
    /// other.
    #[error("the server's Welcome speaks protocol version {welcome}, this client's Hello asked for {hello}")]
    VersionMismatch {
        /// The Hello's.
        hello: u32,
        /// The Welcome's.
        welcome: u32,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error.
    #[error("{0}")]
    Failed(Failure),
    /// The connection the request went out on is gone (closed by either side, or lost) before its reply: the
    /// request may or may not have reached the server. This alone does not say the client is done: unless it was
    /// closed (`Client::close`, a fatal refusal), it is reconnecting, and [`crate::Client::state`] says which. Joins,
    /// subscribes, claims and History are sent again on the next connection (three connections in all) before
    /// they fail so; a raw [`crate::Client::request`] is not. A post repeated with the same id is stored once (the
    /// library's own posts are retried so already).
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
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(Box<Reply>),
    /// The client is reconnecting and no connection came back within `connect_timeout` (the wait): nothing was
    /// sent (unlike `Closed`, where the request may have reached the server). The same request may succeed once it
    /// is connected again ([`crate::Client::state`] shows when).
    #[error("not connected: the client has been reconnecting for {0:?} (connect_timeout); nothing was sent")]
    NotConnected(std::time::Duration),
    /// `max` posts are queued or awaiting their reply already (`ConnectOptions::max_queued_posts`): nothing was
    /// queued; post again once some are acknowledged.
    #[error("{max} posts are queued or awaiting their reply already (max_queued_posts); this one was not queued")]
    QueueFull {
        /// The limit.
        max: usize,
    },
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

    /// A reply of the wrong kind.
    pub(crate) fn unexpected(reply: Reply) -> Self {
        RequestError::UnexpectedReply(Box::new(reply))
    }

    /// The connection (or the client) is gone, for this reason.
    pub(crate) fn closed((code, reason): (ErrorCode, String)) -> Self {
        RequestError::Closed { code, reason }
    }
}

/// Why a tick was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TickError {
    /// The payload does not fit one datagram on this path.
    #[error(
        "tick payload of {size} bytes does not fit a datagram on this path: the maximum payload is {max_payload} bytes"
    )]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest payload that fits now.
        max_payload: usize,
    },
    /// Not connected (reconnecting) or the channel is not claimed on the current connection yet.
    #[error("not connected")]
    NotConnected,
    /// The server or the path does not carry datagrams.
    #[error("the connection does not carry datagrams")]
    Unsupported,
    /// The server refused to take the claim back after a reconnect (e.g. `PermissionDenied` under a renewed token
    /// that no longer grants the channel), or the client ended (the client's end reason): this publisher is done
    /// ([`crate::Client::publisher`] claims anew, on a client that goes on).
    #[error("the claim of this channel ended: {reason} ({code})")]
    Ended {
        /// Why: the server's refusal, or the client's end (`NoError` once closed).
        code: quiver_proto::ErrorCode,
        /// The server's reason, or why the client ended.
        reason: String,
    },
}
