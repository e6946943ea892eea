//! Every limit of the protocol, in one place. The server is configured with a [`Limits`], enforces it, and reports
//! it to each client in `Welcome`, so a client knows the bounds before it hits them.

use serde::{Deserialize, Serialize};

/// Longest close reason either side sends, in bytes of UTF-8 (QUIC's CONNECTION_CLOSE frame must fit one packet;
/// the WebSocket lane's close message and WebTransport's close capsule keep the same bound). A longer one is cut at
/// a character boundary by the sender, and refused by the WebSocket lane's decoder.
pub const MAX_CLOSE_REASON: usize = 512;

/// The bounds a server enforces, per connection and per source address. Defaults are documented on each field and
/// in `docs/security.md` (with what a breach costs the client and which counter counts it).
///
/// Rates are token buckets holding [`Limits::BURST_SECONDS`] seconds' worth of tokens: a peer may send twice its rate
/// at once after a quiet spell, then its rate.
///
/// `default` and `deny_unknown_fields` serve the server's configuration file (a missing key takes its default, a
/// misspelt one is an error); they change nothing on the wire, where every field is always present, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// Largest stream frame (length prefix value) either side accepts, in bytes. Default 65,536.
    pub max_frame: u32,
    /// Largest post body, in bytes. Default 16,384 (leaves room for the frame's other fields).
    pub max_body: u32,
    /// Longest room or channel name, in bytes of UTF-8. Default 128.
    pub max_name: u32,
    /// Rooms one connection may have joined at once. Default 64.
    pub max_rooms: u32,
    /// Tick channels one connection may subscribe to at once. Default 256.
    pub max_subscriptions: u32,
    /// Tick channels one connection may claim for publishing at once. Default 64.
    pub max_publish_channels: u32,
    /// Bytes a room stream may have queued toward a slow client before it is reset with `SlowConsumer`.
    /// Default 262,144.
    pub room_queue_bytes: u32,
    /// Time a new connection has to send Hello, in milliseconds. Default 10,000.
    pub handshake_timeout_ms: u32,
    /// Messages each room retains for history and resume. Default 1,000.
    pub history_max_messages: u32,
    /// Seconds a message stays in a room's history; 0: no age bound (history is then bounded by count and bytes
    /// only). Default 86,400 (one day).
    pub history_max_age_s: u32,
    /// Latest messages replayed on a Join whose `since` cannot be recovered. Default 100.
    pub gap_replay: u32,
    /// Seconds a `(identity, client_msg_id)` is remembered per room so a retried post is not delivered twice.
    /// Default 600.
    pub dedupe_window_s: u32,
    /// `(identity, client_msg_id)` entries remembered per room, of posts stored (oldest forgotten first; a server
    /// keeps the posts still waiting for its store's commit past it). Default 10,000.
    pub dedupe_max_entries: u32,
    /// Connections the server serves at once (handshakes in progress included). One more from an address not
    /// validated yet gets a QUIC Retry; a validated one closes a connection that has not sent its Hello yet to take
    /// its place if there is one, else it is accepted and closed at once with `TooManyConnections` (refused without
    /// a reason while `budget.max_over_limit_handshakes` such closes are under way: docs/security.md). Default
    /// 10,000.
    pub max_connections: u32,
    /// Connections one source address (an IPv4 address, or an IPv6 /64) may have at once; one more is treated as
    /// one over `max_connections` (a Retry first; then closed with `TooManyConnections`, or refused without a
    /// reason), but never makes room. Default 256.
    pub max_connections_per_ip: u32,
    /// New connections per second from one source address (a burst of two seconds' worth). An attempt whose
    /// address is not validated yet gets a QUIC Retry once the address has used half its burst (and until its
    /// bucket is full again); a validated one over the rate is refused. Its network (an IPv4 /24, an IPv6 /48) has a
    /// rate of its own, the server's `budget.new_connections_per_s_per_network`. Default 100.
    pub new_connections_per_s_per_ip: u32,
    /// Control requests per second per connection. One over the rate is answered `RateLimited` and the connection
    /// stays; a connection that keeps going ([`Limits::FLOOD_BURSTS`] bursts refused within a second) is closed
    /// with `RateLimited`. Default 5,000.
    pub requests_per_s: u32,
    /// Posts per second per connection (they count as requests too), enforced like `requests_per_s`. Joins and
    /// leaves (each sends an event to every member of its room, as a post does) have a rate of their own, this or
    /// `max_rooms` + 1, whichever is more. Default 2,000.
    pub posts_per_s: u32,
    /// Ticks per second a connection may publish (over all its channels); the rest are dropped. Default 10,000.
    pub ticks_per_s: u32,
}

impl Limits {
    /// `history_max_age_s` in µs, `None` when it is 0 (no age bound).
    pub fn history_max_age_us(&self) -> Option<u64> {
        (self.history_max_age_s > 0).then(|| u64::from(self.history_max_age_s) * 1_000_000)
    }

    /// A rate's bucket holds this many seconds of it (its burst).
    pub const BURST_SECONDS: u32 = 2;
    /// A connection that has this many bursts of requests (or posts) refused within one second is closed.
    pub const FLOOD_BURSTS: u32 = 4;
    /// Longest identity (a token's `sub`, or Hello's `name` on an anonymous server), in bytes of UTF-8. Fixed, not
    /// configured like `max_name`: whoever issues tokens must know it without asking each server.
    pub const MAX_IDENTITY: u32 = 128;
    /// Largest `max_frame` a server may be configured with, and the most of a Welcome's `max_frame` a client
    /// believes: 16 MiB. A peer's frame is buffered whole before it is decoded, so a server announcing more (hostile,
    /// or misconfigured) could otherwise have a client hold gigabytes per stream.
    pub const MAX_FRAME_CEILING: u32 = 16 << 20;

    /// Smallest `max_frame` a server may be configured with: 4 KiB, room for a Hello carrying an access token (a
    /// JWT with a few room and channel patterns is some hundreds of bytes to a few KB; one over `max_frame` closes
    /// the connection with `FrameTooLarge`, and a server below this floor would take no client with a token).
    pub const MIN_FRAME: u32 = 4 << 10;

    /// Largest `max_rooms` a server may be configured with, and the most of a Welcome's `max_rooms` a client
    /// believes: 4,096. A client lets the server open one room stream per room it allows, each with its reader and
    /// buffer, so a server announcing 4 billion (hostile) could otherwise have it hold a buffer per stream for a
    /// few bytes each.
    pub const MAX_ROOMS_CEILING: u32 = 4096;

    /// Largest `max_name` a server may be configured with: 65,535 bytes. A room's name is a key of the server's
    /// embedded store, whose keys are at most that long (a longer one made the store panic at every Join, Post and
    /// History of such a room, each answered `Internal`).
    pub const MAX_NAME_CEILING: u32 = 65_535;

    /// The rooms per connection a client allows from a Welcome: the server's `max_rooms`, at most
    /// [`Limits::MAX_ROOMS_CEILING`].
    pub fn client_max_rooms(&self) -> u32 {
        self.max_rooms.min(Self::MAX_ROOMS_CEILING)
    }

    /// The frame limit a client applies from a Welcome: the server's `max_frame`, at most
    /// [`Limits::MAX_FRAME_CEILING`].
    pub fn client_max_frame(&self) -> usize {
        self.max_frame.min(Self::MAX_FRAME_CEILING) as usize
    }

    /// Bytes a room event adds around a post body at most: seq, time, client_msg_id (10 bytes each as varints),
    /// the sender's identity (length + [`Limits::MAX_IDENTITY`] bytes), enum tags and the body's length prefix.
    pub fn event_overhead(&self) -> u32 {
        3 * 10 + 5 + Self::MAX_IDENTITY + 16
    }

    /// Bytes of a History reply's frame kept for the reply's own fields (the room's name, up to `max_name`, then
    /// req_id, epoch, the page's length and flags: varints and tags, within 64 bytes); the rest is the page's
    /// budget of encoded events.
    pub fn history_reply_overhead(&self) -> u32 {
        self.max_name.saturating_add(64)
    }

    /// Checks that the limits fit together: any post within `max_body` must fit a room frame and a History reply
    /// (which carries at least one event), a room stream's queue must hold at least one frame, counts, rates and
    /// timeouts must be at least 1.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.max_frame > Self::MAX_FRAME_CEILING {
            return Err(LimitsError::FrameTooLarge { max_frame: self.max_frame, ceiling: Self::MAX_FRAME_CEILING });
        }
        if self.max_rooms > Self::MAX_ROOMS_CEILING {
            return Err(LimitsError::RoomsAboveCeiling { max_rooms: self.max_rooms, ceiling: Self::MAX_ROOMS_CEILING });
        }
        if self.max_name > Self::MAX_NAME_CEILING {
            return Err(LimitsError::NameAboveCeiling { max_name: self.max_name, ceiling: Self::MAX_NAME_CEILING });
        }
        if self.max_frame < Self::MIN_FRAME {
            return Err(LimitsError::FrameBelowFloor { max_frame: self.max_frame, floor: Self::MIN_FRAME });
        }
        let needed = self.max_body.saturating_add(self.event_overhead()).saturating_add(self.history_reply_overhead());
        if self.max_frame < needed {
            return Err(LimitsError::FrameTooSmall { max_frame: self.max_frame, max_body: self.max_body, needed });
        }
        if self.room_queue_bytes < self.max_frame {
            return Err(LimitsError::QueueTooSmall {
                room_queue_bytes: self.room_queue_bytes,
                max_frame: self.max_frame,
            });
        }
        let at_least_one = [
            ("max_name", self.max_name),
            ("max_rooms", self.max_rooms),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("new_connections_per_s_per_ip", self.new_connections_per_s_per_ip),
            ("requests_per_s", self.requests_per_s),
            ("posts_per_s", self.posts_per_s),
            ("ticks_per_s", self.ticks_per_s),
            // 0 would time out every handshake at its first poll: no client could connect.
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            // 0 would forget every post at once (a retried post delivered twice, silently), or keep no history.
            ("dedupe_window_s", self.dedupe_window_s),
            ("dedupe_max_entries", self.dedupe_max_entries),
            ("history_max_messages", self.history_max_messages),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(LimitsError::Zero { name });
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err(LimitsError::PerIpAboveTotal {
                per_ip: self.max_connections_per_ip,
                total: self.max_connections,
            });
        }
        Ok(())
    }
}

/// Limits that contradict each other, or a count or rate of 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A post of `max_body` bytes would not fit a room frame.
    #[error(
        "max_frame {max_frame} is too small for max_body {max_body} (a room event in a History reply needs up to \
         {needed} bytes)"
    )]
    FrameTooSmall {
        /// `max_frame`.
        max_frame: u32,
        /// `max_body`.
        max_body: u32,
        /// The frame size such a post needs.
        needed: u32,
    },
    /// `max_frame` below [`Limits::MIN_FRAME`]: a Hello with an access token would not fit.
    #[error("max_frame {max_frame} is below {floor} bytes: a Hello carrying an access token would not fit, and no client with a token could connect")]
    FrameBelowFloor {
        /// `max_frame`.
        max_frame: u32,
        /// [`Limits::MIN_FRAME`].
        floor: u32,
    },
    /// `max_frame` above what clients accept ([`Limits::MAX_FRAME_CEILING`]).
    #[error("max_frame {max_frame} is above the protocol's ceiling of {ceiling} bytes")]
    FrameTooLarge {
        /// `max_frame`.
        max_frame: u32,
        /// [`Limits::MAX_FRAME_CEILING`].
        ceiling: u32,
    },
    /// `max_rooms` above what clients accept ([`Limits::MAX_ROOMS_CEILING`]).
    #[error("max_rooms {max_rooms} is above the protocol's ceiling of {ceiling} rooms per connection")]
    RoomsAboveCeiling {
        /// `max_rooms`.
        max_rooms: u32,
        /// [`Limits::MAX_ROOMS_CEILING`].
        ceiling: u32,
    },
    /// `max_name` above what the server's store keeps ([`Limits::MAX_NAME_CEILING`]).
    #[error("max_name {max_name} is above the ceiling of {ceiling} bytes (a room's name is a key of the store)")]
    NameAboveCeiling {
        /// `max_name`.
        max_name: u32,
        /// [`Limits::MAX_NAME_CEILING`].
        ceiling: u32,
    },
    /// A room stream's queue could not hold one frame.
    #[error("room_queue_bytes {room_queue_bytes} is smaller than max_frame {max_frame}")]
    QueueTooSmall {
        /// `room_queue_bytes`.
        room_queue_bytes: u32,
        /// `max_frame`.
        max_frame: u32,
    },
    /// A count or rate that must be at least 1 is 0.
    #[error("{name} must be at least 1")]
    Zero {
        /// The field.
        name: &'static str,
    },
    /// One address could have more connections than the whole server.
    #[error("max_connections_per_ip {per_ip} is above max_connections {total}")]
    PerIpAboveTotal {
        /// `max_connections_per_ip`.
        per_ip: u32,
        /// `max_connections`.
        total: u32,
    },
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 * 1024,
            max_body: 16 * 1024,
            max_name: 128,
            max_rooms: 64,
            max_subscriptions: 256,
            max_publish_channels: 64,
            room_queue_bytes: 256 * 1024,
            handshake_timeout_ms: 10_000,
            history_max_messages: 1_000,
            history_max_age_s: 86_400,
            gap_replay: 100,
            dedupe_window_s: 600,
            dedupe_max_entries: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            new_connections_per_s_per_ip: 100,
            requests_per_s: 5_000,
            posts_per_s: 2_000,
            ticks_per_s: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_together_and_bad_combinations_are_named() {
        Limits::default().check().unwrap();
        let err = Limits { max_frame: 1000, ..Limits::default() }.check().unwrap_err().to_string();
        assert!(err.contains("max_frame 1000"), "{err}");
        // Below the floor a Hello with a token would not fit, however small the bodies (once accepted: 244 bytes
        // with `max_body` 0 and one-byte names, and no client with a token could connect).
        let tiny = Limits { max_frame: 244, max_body: 0, max_name: 1, room_queue_bytes: 4096, ..Limits::default() };
        let err = tiny.check().unwrap_err().to_string();
        assert!(err.contains("max_frame 244 is below 4096 bytes") && err.contains("access token"), "{err}");
        let floor = Limits { max_frame: Limits::MIN_FRAME, max_body: 0, ..tiny };
        floor.check().unwrap();
        let huge = Limits { max_frame: 64 << 20, room_queue_bytes: 64 << 20, ..Limits::default() };
        let err = huge.check().unwrap_err().to_string();
        assert!(err.contains("max_frame 67108864 is above the protocol's ceiling"), "{err}");
        assert_eq!(huge.client_max_frame(), Limits::MAX_FRAME_CEILING as usize, "a client believes 16 MiB at most");
        assert_eq!(Limits::default().client_max_frame(), 64 * 1024);
        // Rooms per connection: a client takes a stream per room the server allows, so a Welcome's count is
        // believed up to the ceiling, and a server configured above it refuses to start.
        let many = Limits { max_rooms: u32::MAX, ..Limits::default() };
        assert_eq!(many.client_max_rooms(), Limits::MAX_ROOMS_CEILING);
        assert!(many.check().unwrap_err().to_string().contains("max_rooms 4294967295 is above"));
        Limits { max_rooms: Limits::MAX_ROOMS_CEILING, ..Limits::default() }.check().unwrap();
        assert_eq!(Limits::default().client_max_rooms(), 64);
        let err = Limits { room_queue_bytes: 10, ..Limits::default() }.check().unwrap_err().to_string();
        assert!(err.contains("room_queue_bytes 10"), "{err}");
        let err = Limits { posts_per_s: 0, ..Limits::default() }.check().unwrap_err().to_string();
        assert!(err.contains("posts_per_s"), "{err}");
        let err = Limits { max_connections: 10, ..Limits::default() }.check().unwrap_err().to_string();
        assert!(err.contains("max_connections_per_ip 256"), "{err}");
        let err = Limits { handshake_timeout_ms: 0, ..Limits::default() }.check().unwrap_err().to_string();
        assert!(err.contains("handshake_timeout_ms"), "{err}");
        // A body that fits a frame but not a History reply: no page could carry it.
        let d = Limits::default();
        let fits = d.max_frame - d.event_overhead() - d.history_reply_overhead();
        Limits { max_body: fits, ..Limits::default() }.check().unwrap();
        let tight = Limits { max_body: fits + 1, ..Limits::default() };
        assert!(tight.max_body + tight.event_overhead() <= tight.max_frame);
        let err = tight.check().unwrap_err().to_string();
        assert!(err.contains(&format!("too small for max_body {}", fits + 1)), "{err}");
        // Names are store keys: at most 65,535 bytes, however large the frames.
        let big = Limits { max_frame: 1 << 20, room_queue_bytes: 1 << 20, ..Limits::default() };
        Limits { max_name: Limits::MAX_NAME_CEILING, ..big.clone() }.check().unwrap();
        let err = Limits { max_name: 100_000, ..big }.check().unwrap_err().to_string();
        assert!(err.contains("max_name 100000 is above the ceiling of 65535 bytes"), "{err}");
        // Long names leave less of the frame to the page.
        let named = Limits { max_name: 4096, max_body: fits, ..Limits::default() };
        assert!(named.check().unwrap_err().to_string().contains("too small"));
    }
}
