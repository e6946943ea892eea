//! The connection's state as the application sees it: [`ConnectionState`], published through a watch
//! ([`crate::Client::state`]) so that a game or trading UI can show "reconnecting" the moment the link goes.

use std::time::Duration;

use quiver_proto::ErrorCode;

/// Where the client's link to the server stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// A session is open.
    Connected {
        /// The session's id (a new one after each reconnect).
        session_id: u64,
        /// Reconnects so far (0 on the first connection).
        reconnects: u32,
    },
    /// The connection was lost; the client is trying again. Requests wait (up to the connect timeout) and posts
    /// queue until it is back.
    Reconnecting {
        /// Attempts made since the loss (0: none yet).
        attempt: u32,
        /// Why the connection was lost, or why the last attempt failed.
        last_error: String,
        /// Time until the next attempt starts.
        next_try_in: Duration,
    },
    /// The client ended for good: closed by the application, refused by the server (a token, the version), a
    /// certificate that no longer matches the pin, or a loss with reconnection off.
    Closed {
        /// The code (`NoError` when the application closed it).
        code: ErrorCode,
        /// Why.
        reason: String,
    },
}

impl ConnectionState {
    /// True while a session is open.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionState::Connected { session_id, reconnects: 0 } => {
                write!(f, "connected (session {session_id:016x})")
            }
            ConnectionState::Connected { session_id, reconnects } => {
                write!(f, "reconnected (session {session_id:016x}, reconnect {reconnects})")
            }
            ConnectionState::Reconnecting { attempt, last_error, next_try_in } => write!(
                f,
                "disconnected ({last_error}); reconnecting, attempt {} in {} ms",
                attempt + 1,
                next_try_in.as_millis()
            ),
            ConnectionState::Closed { code, reason } => write!(f, "closed: {code}: {reason}"),
        }
    }
}
