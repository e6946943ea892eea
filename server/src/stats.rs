//! Server-wide counters: what was dropped and why, so that hostile or broken peers show up in numbers, not in a
//! crash or a log flood.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use quiver_proto::{ErrorCode, ServerMsg};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Counters, updated with relaxed atomics from every connection task.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// The counters now.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Datagrams whose tick header does not decode.
    datagrams_malformed,
    /// Datagrams naming a channel id this connection never got.
    datagrams_unknown_channel,
    /// Datagrams on a channel this connection subscribed to but did not claim with Publish.
    datagrams_unclaimed,
    /// Datagrams a WebTransport connection sent before its session was answered (read and dropped).
    datagrams_before_session,
    /// Ticks accepted from publishers.
    ticks_published,
    /// Ticks handed to QUIC for a subscriber.
    ticks_sent,
    /// Ticks replaced by a newer one before they could be sent (latest wins).
    ticks_conflated,
    /// Ticks not sent to a subscriber because a newer tick of the channel reached it first (two publishers, or a
    /// local publish and another node's relay, whose fan-outs interleave): not conflation, nothing was slow.
    ticks_reordered_out,
    /// Ticks dropped for being older than their channel's max age when their turn came.
    ticks_expired,
    /// Ticks that did not fit a subscriber's path (its max datagram size is smaller than the publisher's).
    ticks_too_large,
    /// Ticks a publisher sent whose payload, with the longest header (`TickHeader::MAX_LEN`), exceeds the server's
    /// own path to it (at least `MAX_PORTABLE_DATAGRAM`): dropped on arrival, before a seq is taken for them
    /// (fanned out, each subscriber's path refused them one by one).
    ticks_too_large_in,
    /// Ticks dropped because their publisher sent more than `ticks_per_s`.
    ticks_rate_limited,
    /// Ticks dropped because their publisher's seq was below the last one taken from it on the channel, by at most
    /// 1,024 (reordered on the way up): the newer value was already published. An equal seq is taken.
    ticks_reordered_in,
    /// Connections closed with `TooManyConnections` because the server was at `max_connections`.
    connections_over_total,
    /// Connections closed with `TooManyConnections` because their source address was at `max_connections_per_ip`.
    connections_over_per_ip,
    /// Connections not welcomed yet closed with `TooManyConnections` to make room for a newer one
    /// (`budget.max_awaiting_hello`).
    connections_closed_awaiting_hello,
    /// TLS handshakes from addresses not validated by a Retry that did not complete within `handshake_timeout_ms`, or
    /// were closed to make room for a validated newcomer (a forged Initial's look like this): not counted as a limit
    /// breach.
    tls_handshakes_abandoned,
    /// TCP connections the WebSocket listener closed before their upgrade to make room for a newer one:
    /// `budget.websocket_max_upgrading` were upgrading.
    websocket_upgrades_over_total,
    /// TCP connections closed at once by the WebSocket listener because their address had
    /// `budget.websocket_max_upgrading_per_ip` upgrading already.
    websocket_upgrades_over_per_ip,
    /// QUIC Retries sent to unvalidated attempts from an address over `new_connections_per_s_per_ip`.
    retries_over_rate,
    /// QUIC Retries sent to unvalidated attempts while the server or the address was at its connection limit.
    retries_over_limit,
    /// QUIC Retries sent to unvalidated attempts while `max_unvalidated_handshakes` handshakes were in progress.
    retries_over_handshakes,
    /// Validated attempts refused (QUIC `CONNECTION_REFUSED`) from an address over `new_connections_per_s_per_ip`.
    connections_refused_over_rate,
    /// Connections that did not finish the TLS handshake or send Hello within `handshake_timeout_ms`.
    handshake_timeouts,
    /// Requests answered `RateLimited` for going over `requests_per_s`.
    requests_rate_limited,
    /// Posts answered `RateLimited` for going over `posts_per_s`, and joins and leaves for going over theirs
    /// (`posts_per_s` or `max_rooms` + 1, whichever is more).
    posts_rate_limited,
    /// Connections closed with `RateLimited` for flooding on after being refused.
    floods_closed,
    /// Connections closed with `FrameTooLarge` (a length prefix above `max_frame`).
    frames_too_large,
    /// Connections closed with `ProtocolViolation` (undecodable bytes, a stream besides the control stream).
    protocol_violations,
    /// Requests answered `BadRequest` (e.g. a name empty or longer than `max_name`).
    bad_requests,
    /// Posts answered `BodyTooLarge` (above `max_body`).
    bodies_too_large,
    /// Joins answered `TooManyRooms` (at `max_rooms`, or the network's share).
    too_many_rooms,
    /// Subscribes answered `TooManySubscriptions` (at `max_subscriptions`, or the network's share).
    too_many_subscriptions,
    /// Publish claims answered `TooManyChannels` (at `max_publish_channels`, or the network's share).
    too_many_channels,
    /// Of `too_many_rooms`, those refused for the network's share (`budget.max_rooms_per_network`).
    rooms_over_network_share,
    /// Of `too_many_subscriptions`, those refused for the network's share (`budget.max_channels_per_network`).
    subscriptions_over_network_share,
    /// Of `too_many_channels`, those refused for the network's share (`budget.max_channels_per_network`).
    claims_over_network_share,
    /// Room streams reset with `SlowConsumer` (more than `room_queue_bytes` waiting for the client).
    slow_consumer_resets,
    /// Room streams reset because messages cannot be delivered on them: their join's replay could not deliver its
    /// range (retention deleted part of it, or the store could not read it back), or a cluster event is over this
    /// node's `max_frame`. The client rejoins and is told it missed messages. Not a slow reader.
    replays_cut_short,
    /// Hellos refused for their token (`TokenRequired`, `TokenMalformed`, `TokenInvalid`, `TokenExpired`,
    /// `TokenNotYetValid`).
    tokens_refused,
    /// Requests answered `PermissionDenied` (outside the token's grants).
    permission_denied,
    /// Connections closed with `TokenExpired` because their token's `exp` passed during the session.
    sessions_expired,
    /// Joins, posts, subscribes and publish claims refused with `ServerFull` (the server at `max_rooms` with every
    /// room in use, at `max_channels`, or its store's disk at `disk_min_free_bytes`).
    server_full,
    /// Connections closed for `frame_timeout_ms`: with `FrameTimeout` (a control frame begun and not finished within
    /// it), or with `SlowConsumer` (control-stream replies not read within it).
    frame_timeouts,
    /// Connections closed with `ControlStreamClosed` (the client reset or stopped its control stream, or finished
    /// it inside a frame).
    control_streams_closed,
    /// Posts acknowledged with a new seq.
    posts,
    /// Retried posts answered with their original seq.
    posts_duplicate,
    /// Room events queued to members' room streams.
    room_deliveries,
    /// Datagram copies of room frames sent (redundant delivery; one datagram may carry several frames).
    room_copies_sent,
    /// Posts sequenced from their datagram copy, ahead of their control-stream request.
    post_copies_used,
    /// Sessions admitted (Hello answered with Welcome).
    handshakes,
    /// TLS session tickets presented by returning clients that this server issued, under the certificate it serves,
    /// and could open: resumption attempts (rustls then checks the ticket's binder, cipher suite and server name).
    tls_tickets_accepted,
    /// Native QUIC connections served (past the handshake and the connection limits).
    accepted_native,
    /// WebTransport sessions served.
    accepted_webtransport,
    /// WebSocket connections served (past the upgrade and the connection limits).
    accepted_websocket,
    /// HTTP connections (the demo page's listener, the admin's) answered 503 and closed at once: every slot of
    /// `budget.http_max_connections` in service.
    http_refused_busy,
    /// HTTP connections answered 429 and closed at once: their address (`budget.http_max_connections_per_ip`) or
    /// network (an eighth of `budget.http_max_connections`) had its most in service.
    http_refused_per_address,
}

/// Slots of [`ServerStats::refusals`], by error code value (codes above the last slot share it).
const CODE_SLOTS: usize = 32;

/// Everything the server counts: the [`Counters`] (dereferenced to), gauges kept up to date where things change,
/// latency histograms, and the QUIC path figures. All updates are relaxed atomics; `/metrics` reads them.
#[derive(Debug, Default)]
pub struct ServerStats {
    counters: Counters,
    /// Failure replies and closes by error code value.
    refusals: [AtomicU64; CODE_SLOTS],
    /// Native connections open now.
    pub connections_native: AtomicI64,
    /// WebTransport sessions open now.
    pub connections_webtransport: AtomicI64,
    /// WebSocket connections open now.
    pub connections_websocket: AtomicI64,
    /// TCP connections on the WebSocket listener not upgraded yet (TLS, the request head, the 101).
    pub websocket_upgrading: AtomicI64,
    /// Room memberships of connected clients.
    pub room_members: AtomicI64,
    /// Tick subscriptions of connected clients.
    pub subscriptions: AtomicI64,
    /// Bytes queued toward room streams.
    pub outbox_bytes: AtomicI64,
    /// When the certificate served now expires (seconds since the Unix epoch; 0 before the server has one).
    pub certificate_expiry_s: AtomicI64,
    /// A post's arrival to its delivery and acknowledgement, inside the server.
    pub post_delivery: crate::metrics::Histogram,
    /// A connection's first packet to Welcome.
    pub handshake: crate::metrics::Histogram,
    /// QUIC path figures.
    pub quic: crate::metrics::QuicPaths,
}

impl std::ops::Deref for ServerStats {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl ServerStats {
    /// Notes `not_after` as the served certificate's expiry.
    pub(crate) fn certificate_expires(&self, not_after: std::time::SystemTime) {
        let secs = not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.certificate_expiry_s.store(i64::try_from(secs).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The open-connections gauge and the accepted counter of a kind of client connection.
    pub(crate) fn by_kind(&self, kind: crate::net::WireKind) -> (&AtomicI64, &AtomicU64) {
        use crate::net::WireKind;
        match kind {
            WireKind::Native => (&self.connections_native, &self.accepted_native),
            WireKind::WebTransport => (&self.connections_webtransport, &self.accepted_webtransport),
            WireKind::WebSocket => (&self.connections_websocket, &self.accepted_websocket),
        }
    }

    /// Counts a refusal (a failure reply, or a close) with `code`, for the codes that mean a limit or the protocol
    /// was broken. Codes counted where they are decided (`RateLimited`, `TooManyConnections`) and codes that are
    /// not the peer's doing are not counted here.
    pub fn refused(&self, code: ErrorCode) {
        bump(&self.refusals[(code.to_u32() as usize).min(CODE_SLOTS - 1)]);
        tracing::debug!(?code, "refused");
        let counter = match code {
            ErrorCode::HandshakeTimeout => &self.handshake_timeouts,
            ErrorCode::FrameTooLarge => &self.frames_too_large,
            ErrorCode::ProtocolViolation => &self.protocol_violations,
            ErrorCode::BadRequest => &self.bad_requests,
            ErrorCode::BodyTooLarge => &self.bodies_too_large,
            ErrorCode::TooManyRooms => &self.too_many_rooms,
            ErrorCode::TooManySubscriptions => &self.too_many_subscriptions,
            ErrorCode::TooManyChannels => &self.too_many_channels,
            ErrorCode::TokenRequired
            | ErrorCode::TokenMalformed
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TokenNotYetValid => &self.tokens_refused,
            ErrorCode::PermissionDenied => &self.permission_denied,
            ErrorCode::ServerFull => &self.server_full,
            ErrorCode::FrameTimeout => &self.frame_timeouts,
            ErrorCode::ControlStreamClosed => &self.control_streams_closed,
            _ => return,
        };
        bump(counter);
    }

    /// Counts a close with `code` among the refusals by code only: a session ended at its token's expiry is counted
    /// as `sessions_expired`, not among the tokens refused (a Hello's, or a reload's that removed the key).
    pub fn closed_with(&self, code: ErrorCode) {
        bump(&self.refusals[(code.to_u32() as usize).min(CODE_SLOTS - 1)]);
    }

    /// Failure replies and closes sent with `code` so far (every code passed to [`ServerStats::refused`]).
    pub fn refusals(&self, code: ErrorCode) -> u64 {
        self.refusals[(code.to_u32() as usize).min(CODE_SLOTS - 1)].load(Ordering::Relaxed)
    }

    /// Adds `delta` to a gauge.
    pub fn add(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// [`ServerStats::refused`] for a message about to be sent, if it is a failure reply.
    pub fn reply(&self, msg: &ServerMsg) {
        if let ServerMsg::Reply { result: Err(failure), .. } = msg {
            self.refused(failure.code);
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use quiver_proto::Failure;

    use super::*;

    #[test]
    fn refusals_are_counted_by_code() {
        let stats = ServerStats::default();
        let refusal = |code| ServerMsg::Reply { req_id: 1, result: Err(Failure::new(code, "no")) };
        stats.reply(&refusal(ErrorCode::TooManyRooms));
        stats.reply(&refusal(ErrorCode::TokenExpired));
        stats.reply(&refusal(ErrorCode::TokenInvalid));
        // Counted where they are decided, or not the peer's doing: not here.
        stats.reply(&refusal(ErrorCode::RateLimited));
        stats.reply(&refusal(ErrorCode::Internal));
        stats.refused(ErrorCode::FrameTooLarge);
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.too_many_rooms, snapshot.tokens_refused, snapshot.frames_too_large), (1, 2, 1));
        assert_eq!(snapshot.requests_rate_limited + snapshot.posts_rate_limited, 0);
        // Every failure is counted by its code, whatever counts it by name.
        assert_eq!((stats.refusals(ErrorCode::TokenInvalid), stats.refusals(ErrorCode::RateLimited)), (1, 1));
        assert_eq!((stats.refusals(ErrorCode::Internal), stats.refusals(ErrorCode::NotJoined)), (1, 0));
    }
}
