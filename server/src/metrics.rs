//! What `/metrics` shows, and the shutdown summary. Everything is counted where it happens with relaxed atomics
//! (no lock, no allocation on any per-message path) and turned into Prometheus' text format only when scraped,
//! through the Prometheus project's own encoder (`prometheus-client`). Names follow Prometheus' conventions:
//! `quiver_` prefix, `_total` on counters, base units (seconds, bytes). docs/operations.md lists them.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::{hub::RoomUsage, stats::ServerStats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use quiver_proto::ErrorCode;

#[path = "metrics_histogram.rs"]
mod histogram;
pub use histogram::Histogram;

/// QUIC path figures of live connections (read from quinn at scrape time) and the totals of closed ones.
#[derive(Debug, Default)]
pub struct QuicPaths {
    live: Mutex<HashMap<u64, quinn::Connection>>,
    closed_sent: AtomicU64,
    closed_lost: AtomicU64,
    closed_congestion: AtomicU64,
    /// The totals last shown: a counter never goes back (a connection's figures read live and then its final
    /// ones can differ by a packet or two).
    shown: [AtomicU64; 3],
}

impl QuicPaths {
    /// Watches `conn` until [`QuicPaths::remove`] (per connection, not per message).
    pub fn add(&self, id: u64, conn: quinn::Connection) {
        crate::net::lock(&self.live).insert(id, conn);
    }

    /// Stops watching connection `id`, keeping its final figures in the totals.
    pub fn remove(&self, id: u64) {
        if let Some(conn) = crate::net::lock(&self.live).remove(&id) {
            let path = conn.stats().path;
            self.closed_sent.fetch_add(path.sent_packets, Ordering::Relaxed);
            self.closed_lost.fetch_add(path.lost_packets, Ordering::Relaxed);
            self.closed_congestion.fetch_add(path.congestion_events, Ordering::Relaxed);
        }
    }

    /// (sent, lost, congestion events) over every connection so far; RTT (min, mean, max) of live ones.
    fn figures(&self) -> ([u64; 3], Option<[f64; 3]>) {
        // The closed totals are read under the lock `remove` moves a connection's figures under: each connection
        // is counted once, live or closed.
        let (live, mut totals) = {
            let live = crate::net::lock(&self.live);
            let closed = [
                self.closed_sent.load(Ordering::Relaxed),
                self.closed_lost.load(Ordering::Relaxed),
                self.closed_congestion.load(Ordering::Relaxed),
            ];
            (live.values().cloned().collect::<Vec<quinn::Connection>>(), closed)
        };
        let (mut min, mut max, mut sum) = (f64::INFINITY, 0f64, 0f64);
        for conn in &live {
            let path = conn.stats().path;
            totals[0] += path.sent_packets;
            totals[1] += path.lost_packets;
            totals[2] += path.congestion_events;
            let rtt = path.rtt.as_secs_f64();
            (min, max, sum) = (min.min(rtt), max.max(rtt), sum + rtt);
        }
        let rtt = (!live.is_empty()).then(|| [min, sum / live.len() as f64, max]);
        for (total, shown) in totals.iter_mut().zip(&self.shown) {
            *total = shown.fetch_max(*total, Ordering::Relaxed).max(*total);
        }
        (totals, rtt)
    }
}

#[path = "metrics_health.rs"]
mod health;
pub use health::{Health, HubMetrics};

/// The server's metrics, encoded on each scrape.
pub struct ServerMetrics {
    /// The counters and gauges connections update.
    pub stats: Arc<ServerStats>,
    hubs: std::sync::OnceLock<HubMetrics>,
    /// Readiness.
    pub health: Health,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// Metrics of `stats`, before the hubs are there.
    pub fn new(stats: Arc<ServerStats>) -> ServerMetrics {
        ServerMetrics { stats, hubs: std::sync::OnceLock::new(), health: Health::default() }
    }

    /// The hubs, once they are open (the first call wins).
    pub fn set_hubs(&self, hubs: HubMetrics) {
        let _ = self.hubs.set(hubs);
    }

    /// Alive: answering, unless the store failed (only a restart recovers it: `/healthz` then says so, and a
    /// liveness probe restarts the server; a process that answered 200 refused every post until someone noticed).
    pub fn alive(&self) -> Result<(), &'static str> {
        let failed = self
            .hubs
            .get()
            .and_then(|hubs| hubs.store.as_ref())
            .is_some_and(|store| store.writer_stats().failed.load(Ordering::Relaxed));
        match failed {
            true => Err("the room store failed to write: posts are refused until the server is restarted"),
            false => Ok(()),
        }
    }

    /// Ready: serving, and the store (if any) has not failed.
    pub fn ready(&self) -> Result<(), &'static str> {
        let Some(hubs) = self.hubs.get() else { return Err("starting: opening the room store") };
        if !self.health.serving.load(Ordering::Relaxed) {
            return Err("not serving: starting, or draining for shutdown");
        }
        if hubs.store.as_ref().is_some_and(|store| store.writer_stats().failed.load(Ordering::Relaxed)) {
            return Err("the room store failed to write");
        }
        (hubs.health)()
    }

    /// The metrics in Prometheus' text format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("quiver");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        out
    }
}

/// What a limit breach is named by in `quiver_limit_breaches_total{limit}`, with its counter.
fn breaches(s: &ServerStats) -> [(&'static str, u64); 21] {
    let c = s.snapshot();
    [
        ("max_frame", c.frames_too_large),
        ("max_body", c.bodies_too_large),
        // (Every refusal with the code, a network's share included; those alone under the share's own name. Not
        // subtracted: the two are counted at different moments, and a counter must never go back.)
        ("max_rooms", c.too_many_rooms),
        ("max_subscriptions", c.too_many_subscriptions),
        ("max_publish_channels", c.too_many_channels),
        ("max_rooms_per_network", c.rooms_over_network_share),
        ("max_channels_per_network", c.subscriptions_over_network_share + c.claims_over_network_share),
        ("room_queue_bytes", c.slow_consumer_resets),
        ("handshake_timeout_ms", c.handshake_timeouts),
        ("frame_timeout_ms", c.frame_timeouts),
        ("max_connections", c.connections_over_total),
        ("max_connections_per_ip", c.connections_over_per_ip),
        ("max_awaiting_hello", c.connections_closed_awaiting_hello),
        ("websocket_max_upgrading", c.websocket_upgrades_over_total),
        ("websocket_max_upgrading_per_ip", c.websocket_upgrades_over_per_ip),
        // (Validated attempts refused only: a Retry answers an address that may be forged, so counting those
        // would let anyone raise this breach count; they are in `retries_sent_total{reason="rate"}`.)
        ("new_connections_per_s_per_ip", c.connections_refused_over_rate),
        ("requests_per_s", c.requests_rate_limited),
        ("posts_per_s", c.posts_rate_limited),
        ("ticks_per_s", c.ticks_rate_limited),
        ("budget", c.server_full),
        ("max_datagram", c.ticks_too_large + c.ticks_too_large_in),
    ]
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn labelled_counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        ConstCounter::new(*count).encode(metric.encode_family(&[(label, value.as_str())])?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, h: &Histogram) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = h.per_bucket();
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for ServerMetrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let c = s.snapshot();
        let load = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed).max(0);
        gauge(
            &mut e,
            "up",
            "1 while the server is ready (serving, store healthy), 0 otherwise",
            i64::from(self.ready().is_ok()),
        )?;
        {
            let mut m =
                e.encode_descriptor("connections", "Connections open now, by transport", None, MetricType::Gauge)?;
            ConstGauge::new(load(&s.connections_native)).encode(m.encode_family(&[("transport", "native")])?)?;
            ConstGauge::new(load(&s.connections_webtransport))
                .encode(m.encode_family(&[("transport", "webtransport")])?)?;
            ConstGauge::new(load(&s.connections_websocket)).encode(m.encode_family(&[("transport", "websocket")])?)?;
        }
        let (rooms, (channels, relays_expired), store) = match self.hubs.get() {
            Some(hubs) => ((hubs.rooms)(), (hubs.channels)(), hubs.store.as_ref()),
            None => (RoomUsage::default(), (0, 0), None),
        };
        let upgrading = load(&s.websocket_upgrading);
        gauge(&mut e, "websocket_upgrading", "TCP connections on the WebSocket listener not upgraded yet", upgrading)?;
        gauge(&mut e, "rooms", "Rooms held in memory", rooms.rooms as i64)?;
        gauge(&mut e, "room_members", "Room memberships (joins) of connected clients", load(&s.room_members))?;
        gauge(&mut e, "channels", "Tick channels in use", channels as i64)?;
        gauge(&mut e, "subscriptions", "Tick subscriptions of connected clients", load(&s.subscriptions))?;
        // Not served before the server has a certificate (its store opened first, which can take a while): a 0
        // there (1970) fired every `expiry - time() < 7d` alert on every slow start (until 2026-12-07).
        let expiry = ("tls_certificate_expiry_timestamp_seconds", "When the served certificate expires (Unix time)");
        match load(&s.certificate_expiry_s) {
            0 => {}
            at => gauge(&mut e, expiry.0, expiry.1, at)?,
        }
        let retained = ("retained_history_bytes", "Bytes of history and dedupe memory rooms retain");
        gauge(&mut e, retained.0, retained.1, rooms.retained_bytes as i64)?;
        // The room budget's work (docs/security.md names them; they were kept and never served: a review's find).
        let evicted = ("rooms_evicted", "Idle rooms evicted with their history to make place at budget.max_rooms");
        counter(&mut e, evicted.0, evicted.1, rooms.rooms_evicted)?;
        let refused = ("rooms_refused", "New rooms refused ServerFull at budget.max_rooms, every room with members");
        counter(&mut e, refused.0, refused.1, rooms.rooms_refused)?;
        let removed = ("rooms_removed", "Rooms removed with no members and nothing retained");
        counter(&mut e, removed.0, removed.1, rooms.rooms_removed)?;
        let shed =
            ("history_shed_bytes", "Bytes of history and dedupe memory shed to stay within budget.retained_bytes");
        counter(&mut e, shed.0, shed.1, rooms.bytes_shed)?;
        let queued = ("outbox_queued_bytes", "Bytes of room events queued toward clients' room streams");
        gauge(&mut e, queued.0, queued.1, load(&s.outbox_bytes))?;
        {
            let mut m = e.encode_descriptor(
                "connections_accepted",
                "Connections that completed the QUIC handshake (or the WebSocket upgrade) and were served, by transport",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(c.accepted_native).encode(m.encode_family(&[("transport", "native")])?)?;
            ConstCounter::new(c.accepted_webtransport).encode(m.encode_family(&[("transport", "webtransport")])?)?;
            ConstCounter::new(c.accepted_websocket).encode(m.encode_family(&[("transport", "websocket")])?)?;
        }
        counter(&mut e, "handshakes", "Sessions admitted (Hello answered with Welcome)", c.handshakes)?;
        counter(
            &mut e,
            "tls_tickets_accepted",
            "TLS session tickets this server issued under the certificate it serves that returning clients presented \
             and it could open within their 6 hours (resumption attempts)",
            c.tls_tickets_accepted,
        )?;
        labelled_counters(
            &mut e,
            "retries_sent",
            "QUIC Retry packets sent, by reason (rate: over new_connections_per_s_per_ip or its network's \
             new_connections_per_s_per_network; limit: at a connection limit; \
             handshakes: at max_unvalidated_handshakes or its bounds per address, network and second, or \
             max_awaiting_hello full)",
            "reason",
            &[
                ("rate".into(), c.retries_over_rate),
                ("limit".into(), c.retries_over_limit),
                ("handshakes".into(), c.retries_over_handshakes),
            ],
        )?;
        labelled_counters(
            &mut e,
            "http_refused",
            "HTTP connections (demo page on a port of its own, admin) answered at once and closed, by reason (busy: \
             503, every slot of http_max_connections in service; per_address: 429, the address's or its network's \
             most in service)",
            "reason",
            &[("busy".into(), c.http_refused_busy), ("per_address".into(), c.http_refused_per_address)],
        )?;
        counter(&mut e, "posts", "Posts acknowledged with a new seq", c.posts)?;
        counter(&mut e, "posts_duplicate", "Retried posts answered with their original seq", c.posts_duplicate)?;
        counter(&mut e, "room_deliveries", "Room events queued to members' room streams", c.room_deliveries)?;
        counter(
            &mut e,
            "room_copies_sent",
            "Datagram copies of room frames sent (redundant rooms)",
            c.room_copies_sent,
        )?;
        counter(&mut e, "post_copies_used", "Posts sequenced from their datagram copy first", c.post_copies_used)?;
        counter(
            &mut e,
            "tls_handshakes_abandoned",
            "TLS handshakes from addresses not validated by a Retry that did not complete in time, or were closed to \
             make room for a validated newcomer (forgeable: not a limit breach)",
            c.tls_handshakes_abandoned,
        )?;
        counter(&mut e, "ticks_received", "Ticks accepted from publishers", c.ticks_published)?;
        counter(&mut e, "ticks_sent", "Ticks handed to QUIC for subscribers", c.ticks_sent)?;
        counter(&mut e, "ticks_conflated", "Ticks replaced by a newer one before they were sent", c.ticks_conflated)?;
        counter(
            &mut e,
            "ticks_expired",
            "Ticks dropped as older than their channel's max age (waiting here, or relayed late from another node)",
            c.ticks_expired + relays_expired,
        )?;
        labelled_counters(
            &mut e,
            "ticks_dropped",
            "Ticks and datagrams dropped, by reason",
            "reason",
            &[
                ("too_large".into(), c.ticks_too_large),
                ("too_large_in".into(), c.ticks_too_large_in),
                ("rate_limited".into(), c.ticks_rate_limited),
                ("reordered".into(), c.ticks_reordered_in),
                ("reordered_out".into(), c.ticks_reordered_out),
                ("malformed".into(), c.datagrams_malformed),
                ("unknown_channel".into(), c.datagrams_unknown_channel),
                ("unclaimed".into(), c.datagrams_unclaimed),
                ("before_session".into(), c.datagrams_before_session),
            ],
        )?;
        let refusals: Vec<(String, u64)> = ErrorCode::ALL
            .iter()
            .map(|code| (format!("{code:?}"), s.refusals(*code)))
            .filter(|(_, n)| *n > 0)
            .collect();
        labelled_counters(
            &mut e,
            "refusals",
            "Failure replies and closes sent to clients, by error code",
            "code",
            &refusals,
        )?;
        let mut breaches: Vec<(String, u64)> = breaches(s).iter().map(|(l, n)| (l.to_string(), *n)).collect();
        // (Counted by the store: its refusals' code, `Unavailable`, is also a cluster broker's.)
        breaches.extend(store.map(|store| ("store_backlog_bytes".to_string(), store.backlog().refused())));
        labelled_counters(
            &mut e,
            "limit_breaches",
            "Times a client hit a configured limit, by limit",
            "limit",
            &breaches,
        )?;
        counter(
            &mut e,
            "slow_consumer_resets",
            "Room streams reset for falling behind room_queue_bytes",
            c.slow_consumer_resets,
        )?;
        counter(
            &mut e,
            "replays_cut_short",
            "Room streams reset because their join's replay could not deliver its range (deleted by retention, or \
             unreadable): the client rejoins, told it missed messages",
            c.replays_cut_short,
        )?;
        // What `quiver_refusals_total{code}` cannot tell apart (a flooder closed from a RateLimited reply, a token
        // expiring mid-session from one refused at Hello), and the names docs/security.md counts breaches under.
        for (name, help, value) in [
            (
                "floods_closed",
                "Connections closed with RateLimited for flooding on after being refused",
                c.floods_closed,
            ),
            (
                "sessions_expired",
                "Sessions closed with TokenExpired because their token's exp passed during the session",
                c.sessions_expired,
            ),
            (
                "tokens_refused",
                "Hellos refused for their token (codes 20 to 24), and sessions closed by a reload that removed its key",
                c.tokens_refused,
            ),
            (
                "permission_denied",
                "Requests answered PermissionDenied (outside the token's grants)",
                c.permission_denied,
            ),
            ("bad_requests", "Requests answered BadRequest", c.bad_requests),
            ("protocol_violations", "Connections closed with ProtocolViolation", c.protocol_violations),
            ("control_streams_closed", "Connections closed with ControlStreamClosed", c.control_streams_closed),
        ] {
            counter(&mut e, name, help, value)?;
        }
        histogram(
            &mut e,
            "post_delivery_seconds",
            "Time from a post's arrival to its delivery to members (and its ack) inside the server",
            &s.post_delivery,
        )?;
        histogram(&mut e, "handshake_seconds", "Time from a connection's first packet to Welcome", &s.handshake)?;
        let (quic, rtt) = s.quic.figures();
        counter(&mut e, "quic_sent_packets", "QUIC packets sent, all connections", quic[0])?;
        counter(&mut e, "quic_lost_packets", "QUIC packets declared lost, all connections", quic[1])?;
        counter(&mut e, "quic_congestion_events", "QUIC congestion events, all connections", quic[2])?;
        if let Some([min, mean, max]) = rtt {
            let mut m =
                e.encode_descriptor("quic_rtt_seconds", "Smoothed RTT over live connections", None, MetricType::Gauge)?;
            for (stat, value) in [("min", min), ("mean", mean), ("max", max)] {
                ConstGauge::new(value).encode(m.encode_family(&[("stat", stat)])?)?;
            }
        }
        if let Some(store) = store {
            let w = store.writer_stats();
            counter(&mut e, "store_commits", "Batches committed to the room store", w.commits.load(Ordering::Relaxed))?;
            histogram(
                &mut e,
                "store_commit_seconds",
                "Time to commit one batch (with its fsync in fsync mode)",
                &w.commit_us,
            )?;
            let r = store.retention_stats();
            let deletions_help = "Retention deletions written to the room store (one batch each)";
            counter(&mut e, "store_deletions", deletions_help, r.commits.load(Ordering::Relaxed))?;
            histogram(&mut e, "store_deletion_seconds", "Time to write one retention deletion", &r.commit_us)?;
            let disk = store.disk();
            let free = disk.free_bytes().map_or(-1, |free| i64::try_from(free).unwrap_or(i64::MAX));
            let free_help = "Free bytes on the store's disk at the last check (-1: unknown, or the check is off)";
            gauge(&mut e, "store_disk_free_bytes", free_help, free)?;
            let full_help = "1 while new posts and rooms are refused for budget.disk_min_free_bytes";
            gauge(&mut e, "store_disk_full", full_help, disk.full().into())?;
            let refused_help = "Posts and new rooms refused for budget.disk_min_free_bytes";
            counter(&mut e, "store_disk_refused", refused_help, disk.refused())?;
            let backlog = store.backlog();
            let backlog_help = "Bytes of posts waiting for the room store's commit (each post's frame and 256 bytes)";
            gauge(&mut e, "store_backlog_bytes", backlog_help, i64::try_from(backlog.bytes()).unwrap_or(i64::MAX))?;
            let refused_help = "Posts refused (Unavailable) for budget.store_backlog_bytes";
            counter(&mut e, "store_backlog_refused", refused_help, backlog.refused())?;
        }
        Ok(())
    }
}
