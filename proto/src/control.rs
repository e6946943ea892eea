//! Messages of the control stream: the client's first bidirectional stream. Every client [`Request`] carries a
//! `req_id` and gets exactly one [`ServerMsg::Reply`] with the same id; the server may also push [`ServerMsg`]s
//! that answer no request (GoAway, Kicked, Error).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Limits};

/// A client's request on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Request {
    /// Chosen by the client, echoed in the reply. Unique among the client's outstanding requests.
    pub req_id: u64,
    /// What is asked.
    pub body: RequestBody,
}

/// The requests a client can make. Hello must come first and only once. The variant order is part of the wire
/// format: append new variants, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RequestBody {
    /// Opens the session. Its first field, the protocol version, stays first in every version of the protocol.
    Hello(Hello),
    /// Join a room; its events then flow on a server-opened unidirectional stream.
    Join(Join),
    /// Leave a room; its stream is finished.
    Leave {
        /// Room name.
        room: String,
    },
    /// Post a message to a room. The room need not be joined: the token's rights for the room decide.
    Post(Post),
    /// Receive a tick channel's datagrams.
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// Stop receiving a tick channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Claim the right to publish ticks on a channel.
    Publish {
        /// Channel name.
        channel: String,
        /// Ticks older than this (time since the server received them) are dropped instead of sent. The
        /// channel keeps the smallest value any of its publishers asked for.
        max_age_ms: Option<u32>,
    },
    /// Round-trip probe; also feeds the client's clock-offset estimate.
    Ping {
        /// The client's clock when it sent the ping, in µs (any epoch; echoed back).
        client_time_us: u64,
    },
    /// Read a room's retained messages without joining it.
    History {
        /// Room name.
        room: String,
        /// Only messages with a seq above this one.
        since: Option<u64>,
        /// At most this many messages (the server may return fewer to fit a frame; see `HistoryPage::more`).
        limit: u32,
    },
    /// Give up a claim made with Publish: the channel no longer counts against `Limits::max_publish_channels`, and
    /// tick datagrams with its id are dropped from now on.
    Unpublish {
        /// Channel name.
        channel: String,
    },
}

/// Opens a session. (Its `Debug` hides the token.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u32,
    /// Client software and version, for logs (e.g. `quiver-client/0.1.0`).
    pub agent: String,
    /// The name the client wants to be known by in rooms, where the server lets clients choose.
    pub name: Option<String>,
    /// Access token, where the server requires one.
    pub token: Option<String>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("agent", &self.agent)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Join a room, optionally resuming after a known position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Join {
    /// Room name.
    pub room: String,
    /// The last position the client has seen; the server replays what came after it when it still can.
    pub since: Option<Position>,
    /// Redundant delivery: the room's events also travel as datagram copies ([`crate::copies`]), and so do this
    /// client's posts to the room, so that a lost packet costs a few milliseconds instead of a retransmission.
    /// The server grants it when its configuration allows ([`crate::RoomFrame::Copies`] on the stream says so).
    pub redundant: bool,
}

/// Post a message to a room, joined or not (the token's `post` right for the room decides; a room that does not
/// exist yet is created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Post {
    /// Room name.
    pub room: String,
    /// Chosen by the client; a retried post with the same id is not delivered twice.
    pub client_msg_id: u64,
    /// Application payload.
    #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
    pub body: Bytes,
}

/// A place in a room's history: the room's epoch and a message seq within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Position {
    /// Changes whenever the room's history is lost; seqs of different epochs are unrelated.
    pub epoch: u64,
    /// Seq of a message (contiguous from 1 within an epoch; 0 means "before the first").
    pub seq: u64,
}

/// What the server sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ServerMsg {
    /// The answer to the request with this `req_id`.
    Reply {
        /// The request's id.
        req_id: u64,
        /// Success, or why not.
        result: Result<Reply, Failure>,
    },
    /// The server is going away (shutdown); the connection closes soon with the same code.
    GoAway {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
    /// The server dropped this client from a room or from the server. `SlowConsumer` for a room: its stream fell
    /// more than `Limits::room_queue_bytes` behind and was reset; the client resumes by joining again from its
    /// last position.
    Kicked {
        /// The room, or `None` for the whole connection.
        room: Option<String>,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
    /// An error not tied to one request (e.g. just before the server closes the connection).
    Error(Failure),
}

/// A failed request: a code from the shared list and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[error("{code}: {message}")]
pub struct Failure {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

/// Successful answers, one variant per request kind (same order as [`RequestBody`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Reply {
    /// Answer to Hello.
    Welcome(Welcome),
    /// Answer to Join.
    Joined(Joined),
    /// Answer to Leave.
    Left {
        /// Room name.
        room: String,
    },
    /// Answer to Post: the seq the message got (the original seq for a deduplicated retry).
    Posted {
        /// Room name.
        room: String,
        /// Assigned seq.
        seq: u64,
        /// True when this post was a retry of one already accepted.
        duplicate: bool,
    },
    /// Answer to Subscribe: the id the channel's datagrams carry on this connection.
    Subscribed {
        /// Channel name.
        channel: String,
        /// Datagram channel id on this connection.
        channel_id: u64,
    },
    /// Answer to Unsubscribe.
    Unsubscribed {
        /// Channel name.
        channel: String,
    },
    /// Answer to Publish: the id to put in this connection's tick datagrams for the channel.
    Publishing {
        /// Channel name.
        channel: String,
        /// Datagram channel id on this connection.
        channel_id: u64,
    },
    /// Answer to Ping.
    Pong {
        /// Echo of the ping's `client_time_us`.
        client_time_us: u64,
        /// The server's clock when it answered, in µs since the Unix epoch.
        server_time_us: u64,
    },
    /// Answer to History.
    History(HistoryPage),
    /// Answer to Unpublish.
    Unpublished {
        /// Channel name.
        channel: String,
    },
}

/// Retained messages of a room, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HistoryPage {
    /// Room name.
    pub room: String,
    /// The room's epoch (0 when the room does not exist).
    pub epoch: u64,
    /// Message events (`EventKind::Message` only), in seq order.
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<crate::RoomEvent>(), 0..3)")
    )]
    pub messages: Vec<crate::RoomEvent>,
    /// True when more messages after the last one returned are retained (ask again with `since`).
    pub more: bool,
}

/// The session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u32,
    /// Server-chosen id of this session, for logs and support.
    pub session_id: u64,
    /// The server's clock, in µs since the Unix epoch.
    pub server_time_us: u64,
    /// The identity the server knows this client by (presence, post deduplication).
    pub identity: String,
    /// The bounds the server enforces on this connection.
    pub limits: Limits,
}

/// A room was joined: the Join's reply, and the first frame of the room's stream ([`crate::RoomFrame::Open`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Joined {
    /// Room name.
    pub room: String,
    /// The room's current epoch.
    pub epoch: u64,
    /// True when every message after the requested `since` is replayed on the room stream; false when the
    /// server could not (history lost or trimmed, or another epoch) and replays only the latest messages.
    pub recovered: bool,
    /// Seq of the first message replayed on the room stream (`last_seq + 1` when nothing is replayed).
    pub replay_from: u64,
    /// Seq of the room's newest message when the join took effect; live events follow it.
    pub last_seq: u64,
    /// Identities present in the room, this client included.
    pub members: Vec<String>,
    /// The `req_id` of the Join this answers: a room stream's Open frame names the Join it belongs to, so a client
    /// that joined, left and joined a room again tells the first Join's late stream from the second's.
    pub req_id: u64,
}
