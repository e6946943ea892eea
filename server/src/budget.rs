//! The server's budget: every bound on what clients can make the server keep, in one place, with its
//! default. [`quiver_proto::Limits`] holds the per-connection bounds clients are told about in Welcome; this holds
//! the server-wide ones, which clients learn about only when they hit them (`ServerFull`, `FrameTimeout`).
//!
//! What a breach does (docs/security.md has the whole threat table):
//! - **`max_rooms`**: a new room name when the server holds this many rooms first evicts the rooms idle longest
//!   (no members; their history goes, and a later resume there answers `recovered: false`); only when every room
//!   has members is the Join or Post refused with `ServerFull` (and new names for 100 ms after, unless a member
//!   leaves: each look scans every room).
//! - **`max_channels`**: a Subscribe or Publish naming a new channel is refused with `ServerFull`. A channel with
//!   neither subscribers nor publishers is removed at once, so this counts channels in use.
//! - **`max_rooms_per_network`**, **`max_channels_per_network`**: a Join (Subscribe, Publish) naming a room
//!   (channel) the connections of its network (IPv4 /24, IPv6 /48) are not in yet, when they are in this many
//!   already, is refused with `TooManyRooms` (`TooManySubscriptions`, `TooManyChannels`): one network cannot hold
//!   all of `max_rooms` (`max_channels`) and have new names refused for everyone (`crate::shares`).
//! - **`room_history_bytes`**: a room forgets its oldest messages beyond it (like `history_max_messages`).
//! - **`retained_bytes`**: when history and dedupe memory of all rooms together exceed it, the rooms idle longest
//!   shed their oldest messages (then their oldest dedupe entries) until the total is back under 90 % of it.
//! - **`disk_min_free_bytes`**: while the filesystem holding the room store has less free space than this, new
//!   posts and new rooms are refused with `ServerFull` (everything else goes on, retention included) until it has
//!   a sixteenth more again (docs/durability.md, "A disk that fills"). The one bound on disk, not memory.
//! - **`store_backlog_bytes`**: while this many bytes of posts wait for the room store's commit (a disk that
//!   stalls), new posts are refused with `Unavailable` (nothing was done: the client retries the same post later)
//!   until the store catches up.
//! - **`frame_timeout_ms`**: a connection that starts a control frame and does not finish it in time is closed
//!   with `FrameTimeout` (before Hello, `handshake_timeout_ms` applies instead); one that does not read the
//!   server's replies on its control stream within it is closed with `SlowConsumer`.

use std::time::Duration;

/// Server-wide bounds on memory that clients can make the server hold (the `[budget]` section of the configuration
/// file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Rooms held at once (with members, or with retained history or dedupe memory). Default 10,000.
    pub max_rooms: u32,
    /// Tick channels in use at once (with a subscriber or a publisher). Default 10,000.
    pub max_channels: u32,
    /// Bytes of history one room retains at most (oldest forgotten first). Default 4,194,304 (4 MiB: about the
    /// `history_max_messages` 1,000 messages of 4 KiB, each costing its frame and ~200 bytes; bigger messages are
    /// kept fewer).
    pub room_history_bytes: u64,
    /// Bytes of history and dedupe memory all rooms retain together at most. Over it, the rooms idle longest forget
    /// their oldest messages, then (in memory only) their oldest dedupe entries; durable rooms keep their dedupe
    /// window, and those without members leave memory instead (read back when next used). Default 268,435,456
    /// (256 MiB).
    pub retained_bytes: u64,
    /// Free bytes the filesystem holding the room store keeps: below it new posts and rooms are refused with
    /// `ServerFull`, so
    /// that the disk never fills (a full disk fails the store's commits, and the server then refuses posts until
    /// it is restarted). 0 turns the check off. Default 1,073,741,824 (1 GiB).
    pub disk_min_free_bytes: u64,
    /// Bytes of posts waiting for the room store's commit, in all (each post's frame and 256 bytes, 256 bytes for a
    /// retry waiting for its original): at it, new posts and such retries are refused with `Unavailable` until the
    /// store catches up, so that a disk that stalls does not keep
    /// every post taken meanwhile in memory. A healthy disk keeps a commit's worth waiting. 0 turns the bound off.
    /// Default 67,108,864 (64 MiB).
    pub store_backlog_bytes: u64,
    /// Time a control frame begun after Hello has to complete, in milliseconds. Default 5,000.
    pub frame_timeout_ms: u32,
    /// How often expired history is dropped and empty rooms removed, in milliseconds. Default 1,000.
    pub sweep_interval_ms: u32,
    /// QUIC handshakes in progress at once, in all, from addresses not validated yet (an attempt without a Retry
    /// token). Above it every unvalidated attempt gets a QUIC Retry (one round trip more for a real client), so a
    /// flood of Initials from forged addresses holds at most this many handshakes, and slots in `max_connections`.
    /// 0: every new address is made to validate first. Default 256.
    pub max_unvalidated_handshakes: u32,
    /// QUIC handshakes in progress at once from one unvalidated source address (an IPv4 address or an IPv6 /64).
    /// Above it, that address's unvalidated attempts get a Retry: Initials forged with a real client's address take
    /// at most this many of its `max_connections_per_ip` slots and `new_connections_per_s_per_ip` tokens (until
    /// `handshake_timeout_ms`), instead of locking it out. Clients behind one NAT that connect at the same moment
    /// take one round trip more beyond it. 0: every new connection validates first. Default 4.
    pub max_unvalidated_handshakes_per_ip: u32,
    /// QUIC handshakes begun a second, in all, from addresses not validated yet (a burst of one second's). Above it
    /// every unvalidated attempt gets a Retry. `max_unvalidated_handshakes` bounds the handshakes that last; this
    /// bounds those that end at once (an Initial from a forged address that closes itself after its ClientHello
    /// has the server sign a TLS flight, then gives its place back), each of which costs the server about half a
    /// millisecond of CPU. Clients connecting faster than this from new addresses (a mass reconnect after a
    /// restart) take one round trip more beyond it. 0: every new connection validates first. Default 500.
    pub max_unvalidated_handshakes_per_s: u32,
    /// QUIC handshakes in progress at once, in all, of connections over `max_connections` or
    /// `max_connections_per_ip` (completed only to be closed with `TooManyConnections`, so that the client sees
    /// why). Above it such attempts are refused at the QUIC level at once (CONNECTION_REFUSED, without the
    /// reason): a client at its count that stalls its handshakes holds at most this many. Default 64.
    pub max_over_limit_handshakes: u32,
    /// Connections admitted and not welcomed yet (in their TLS handshake, a browser's CONNECT, or before Hello), in
    /// all. When one more arrives, one is closed with `TooManyConnections` to make room: the longest waiting of the
    /// newcomer's source group (IPv4 /24, IPv6 /48) if that group holds more than a sixteenth of this, else the
    /// longest waiting handshake from an address not validated, if any, else the longest waiting of all. Silent
    /// connections cannot fill `max_connections` for `handshake_timeout_ms` at a time (`crate::awaiting`). Default
    /// 1,024.
    pub max_awaiting_hello: u32,
    /// Connections from one network (an IPv4 /24, an IPv6 /48) at once, welcomed or not; one more is closed with
    /// `TooManyConnections` like one over `max_connections_per_ip`. Without it a party holding an IPv6 /48 (free
    /// from many hosting providers: 65,536 /64s, each under `max_connections_per_ip`) could take every one of
    /// `max_connections`. Raise it for clients behind one carrier's address pool (CGNAT). Default 2,560 (a quarter
    /// of the default `max_connections`).
    pub max_connections_per_network: u32,
    /// New connections a second from one network (an IPv4 /24, an IPv6 /48), with a burst of two seconds' worth:
    /// beyond it an attempt from an address not validated yet gets a QUIC Retry (once half the burst is used), a
    /// validated one is refused, as over `new_connections_per_s_per_ip` (and counted so). Without it a party
    /// holding an IPv6 /48 (65,536 /64s, each with a rate of its own) could have the server run handshakes as fast
    /// as it made them. At least `limits.new_connections_per_s_per_ip`. Default 1,000 (a network's whole
    /// `max_connections_per_network` reconnects within two seconds).
    pub new_connections_per_s_per_network: u32,
    /// Distinct rooms the connections from one network (an IPv4 /24, an IPv6 /48) are members of at once; a Join
    /// of one more is refused with `TooManyRooms`, naming the network and this setting. Rooms with members are never
    /// evicted, so without it one address under every per-connection limit (157 connections × 64 rooms) could hold
    /// all of `max_rooms`, and every new room name would be refused `ServerFull` for everyone. Rooms, not
    /// memberships: clients behind one NAT in one room hold one. Default 2,500 (a quarter of the default
    /// `max_rooms`).
    pub max_rooms_per_network: u32,
    /// Distinct tick channels the connections from one network subscribe to or publish on at once; one more is
    /// refused with `TooManySubscriptions` (a Publish: `TooManyChannels`), as `max_rooms_per_network` is for rooms,
    /// against `max_channels`.
    /// Default 2,500.
    pub max_channels_per_network: u32,
    /// TCP connections on the WebSocket listener between their accept and their upgrade (TLS, the request head,
    /// the 101), in all; one more closes one of them to make room (the longest upgrading of its network when that
    /// network holds more than a sixteenth, else the longest upgrading of all). Default 1,024.
    pub websocket_max_upgrading: u32,
    /// Of those, from one source address (an IPv4 address or an IPv6 /64): one host cannot hold the listener's
    /// slots. Default 16.
    pub websocket_max_upgrading_per_ip: u32,
    /// Connections the small HTTP listeners (the demo page's, the admin's `/metrics`, `/healthz`, `/readyz`) serve
    /// at once from peers other than loopback, each holding a task and at most 8 KiB of request head; one more is
    /// answered 503. 16 more are kept for loopback peers (a local health check or scraper). One network (an IPv4
    /// /24, an IPv6 /48) holds at most an eighth of them. Default 256.
    pub http_max_connections: u32,
    /// Of those, from one address other than loopback (an IPv4 address or an IPv6 /64); one more is answered 429.
    /// Default 8.
    pub http_max_connections_per_ip: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_rooms: 10_000,
            max_channels: 10_000,
            room_history_bytes: 4 << 20,
            retained_bytes: 256 << 20,
            disk_min_free_bytes: 1 << 30,
            store_backlog_bytes: 64 << 20,
            frame_timeout_ms: 5_000,
            sweep_interval_ms: 1_000,
            max_unvalidated_handshakes: 256,
            max_unvalidated_handshakes_per_ip: 4,
            max_unvalidated_handshakes_per_s: 500,
            max_over_limit_handshakes: 64,
            max_awaiting_hello: 1_024,
            max_connections_per_network: 2_560,
            new_connections_per_s_per_network: 1_000,
            max_rooms_per_network: 2_500,
            max_channels_per_network: 2_500,
            websocket_max_upgrading: 1_024,
            websocket_max_upgrading_per_ip: 16,
            http_max_connections: 256,
            http_max_connections_per_ip: 8,
        }
    }
}

impl Budget {
    /// After going over `retained_bytes`, rooms shed history until the total is at most this (90 % of it), so
    /// that shedding runs once per tenth of the budget posted, not on every post.
    pub fn retained_low_water(&self) -> u64 {
        self.retained_bytes / 10 * 9
    }

    /// `frame_timeout_ms` as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.frame_timeout_ms))
    }

    /// `sweep_interval_ms` as a duration (at least 10 ms).
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.sweep_interval_ms.max(10)))
    }
}
