//! The one list of error codes, shared by server and client. The same number is used in an `Error` reply on the
//! control stream, in a stream reset and as a QUIC application close code, so a peer sees one reason however the
//! failure reaches it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, )*) => {
        /// Why a request, a stream or a connection failed. Serialized as its number; a number this build does not
        /// know decodes as [`ErrorCode::Unknown`] so that a newer peer's codes are reported, not rejected. Two codes
        /// are equal (and hash alike) when their numbers are: `Unknown(2)`, made by hand, is `ProtocolViolation`,
        /// as it is once it has been sent (patterns still tell them apart: [`ErrorCode::from_u32`] makes the
        /// named one).
        #[derive(Debug, Clone, Copy)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code this build does not know (sent by a newer peer).
            Unknown(#[cfg_attr(test, proptest(strategy = "1000u32.."))] u32),
        }

        impl ErrorCode {
            /// The wire number of this code.
            pub fn to_u32(self) -> u32 {
                match self {
                    $( ErrorCode::$name => $value, )*
                    ErrorCode::Unknown(n) => n,
                }
            }

            /// The code with wire number `n`.
            pub fn from_u32(n: u32) -> Self {
                match n {
                    $( $value => ErrorCode::$name, )*
                    other => ErrorCode::Unknown(other),
                }
            }

            /// Every known code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];
        }
    };
}

error_codes! {
    /// Normal close: nothing went wrong.
    NoError = 0,
    /// The server is shutting down; reconnect later (possibly elsewhere).
    GoingAway = 1,
    /// The peer sent bytes that do not decode, or a message that is not allowed at this point.
    ProtocolViolation = 2,
    /// A frame's length prefix is above `Limits::max_frame`.
    FrameTooLarge = 3,
    /// Hello named a protocol version the server does not speak.
    UnsupportedVersion = 4,
    /// A request other than Hello came before Hello, or Hello came twice.
    HelloRequired = 5,
    /// The connection did not send Hello within the handshake timeout.
    HandshakeTimeout = 6,
    /// The request is well-formed but its arguments are not acceptable (e.g. an empty room name).
    BadRequest = 7,
    /// The server knows this request but does not serve it (yet, or in this configuration).
    Unsupported = 8,
    /// The client is not allowed to do this.
    PermissionDenied = 9,
    /// The connection already has `Limits::max_rooms` rooms joined, or the connections of its network are in as many
    /// distinct rooms as the server allows one network (its `budget.max_rooms_per_network`).
    TooManyRooms = 10,
    /// The post body is larger than `Limits::max_body`.
    BodyTooLarge = 11,
    /// The connection already has `Limits::max_subscriptions` tick subscriptions, or its network uses as many
    /// distinct tick channels as the server allows one network (`budget.max_channels_per_network`).
    TooManySubscriptions = 12,
    /// The connection already claims `Limits::max_publish_channels` channels, or its network uses as many distinct
    /// tick channels as the server allows one network (`budget.max_channels_per_network`).
    TooManyChannels = 13,
    /// The room (or channel) is not joined (subscribed, claimed) on this connection.
    NotJoined = 14,
    /// The room is already joined on this connection.
    AlreadyJoined = 15,
    /// A room stream fell more than `Limits::room_queue_bytes` behind; rejoin from the last seq.
    SlowConsumer = 16,
    /// A tick payload does not fit the path's datagram size.
    DatagramTooLarge = 17,
    /// Too many requests in too short a time.
    RateLimited = 18,
    /// Something failed inside the server; not the client's fault.
    Internal = 19,
    /// The server requires an access token and Hello carried none.
    TokenRequired = 20,
    /// The token is not a well-formed signed token (not three base64url parts, bad JSON, missing claims).
    TokenMalformed = 21,
    /// The token's signature does not verify with any key the server trusts (or names an algorithm it refuses).
    TokenInvalid = 22,
    /// The token's `exp` has passed (at Hello, or during the session: the connection is closed at `exp`).
    TokenExpired = 23,
    /// The token's `nbf` is still in the future.
    TokenNotYetValid = 24,
    /// The server, or this source address, has as many connections as it allows.
    TooManyConnections = 25,
    /// The server holds as many rooms, or tick channels, as its memory budget allows (`Budget::max_rooms`,
    /// `Budget::max_channels`): a new one cannot be created now. Existing ones still work; retry later.
    ServerFull = 26,
    /// A frame begun on the control stream was not completed within `Budget::frame_timeout_ms`.
    FrameTimeout = 27,
    /// The client reset, stopped or finished its control stream in a way that ends the session (a reset, a
    /// STOP_SENDING, or a FIN inside a frame); the reason says which.
    ControlStreamClosed = 28,
    /// A service the server depends on (the cluster's broker, Redis) is unreachable: nothing was done. Retry the
    /// same request later (a post with the same `client_msg_id`: it is sequenced once).
    Unavailable = 29,
}

impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.to_u32() == other.to_u32()
    }
}

impl Eq for ErrorCode {}

impl std::hash::Hash for ErrorCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.to_u32().hash(state);
    }
}

impl ErrorCode {
    /// A short human-readable name, stable across releases.
    pub fn name(self) -> String {
        match ErrorCode::from_u32(self.to_u32()) {
            ErrorCode::Unknown(n) => format!("unknown error code {n}"),
            known => {
                let debug = format!("{known:?}");
                // "SlowConsumer" -> "slow consumer"
                let mut out = String::with_capacity(debug.len() + 4);
                for (i, c) in debug.chars().enumerate() {
                    if c.is_ascii_uppercase() && i > 0 {
                        out.push(' ');
                    }
                    out.push(c.to_ascii_lowercase());
                }
                out
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u32())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.to_u32())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(ErrorCode::from_u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.to_u32()), "{code:?} reuses a number");
            assert_eq!(ErrorCode::from_u32(code.to_u32()), code);
        }
        assert_eq!(ErrorCode::from_u32(4242), ErrorCode::Unknown(4242));
    }

    /// `Unknown(n)` made with a known number was unequal to itself once sent (it decodes as the named code) and
    /// was named "unknown error code n".
    #[test]
    fn a_known_number_made_unknown_by_hand_is_the_named_code() {
        let by_hand = ErrorCode::Unknown(ErrorCode::SlowConsumer.to_u32());
        assert_eq!(by_hand, ErrorCode::SlowConsumer);
        assert_eq!(ErrorCode::from_u32(by_hand.to_u32()), by_hand, "a round trip");
        assert_eq!(by_hand.to_string(), "slow consumer (16)");
        let set: std::collections::HashSet<ErrorCode> = [by_hand, ErrorCode::SlowConsumer].into();
        assert_eq!(set.len(), 1);
        assert_ne!(ErrorCode::Unknown(4242), ErrorCode::Unknown(4243));
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(ErrorCode::SlowConsumer.to_string(), "slow consumer (16)");
    }
}
