//! The checks no type can make: ranges, pairs of settings that contradict each other, and addresses. The server
//! does not start on any of them, and `config check` refuses what the server would.

use super::*;

/// Longest drain the server accepts (10 minutes).
pub const MAX_DRAIN_TIMEOUT_MS: u32 = 600_000;
/// Longest `limits.handshake_timeout_ms` accepted (a minute).
pub const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
/// Most `transport.copies` accepted (the default is 3).
pub const MAX_COPIES: u8 = 8;
/// Largest `transport.congestion_floor` accepted: 100 packets of 1,200 bytes (the default is 10).
pub const MAX_CONGESTION_FLOOR: u64 = 100 * 1200;
/// Largest `transport.datagram_send_buffer` accepted: quinn's default, 1 MiB (Quiver's is 16 KiB).
pub const MAX_DATAGRAM_SEND_BUFFER: u64 = 1024 * 1024;
/// `budget.websocket_max_upgrading` at most: a file descriptor and a TLS handshake each.
pub(super) const MAX_WEBSOCKET_UPGRADING: u64 = 1_000_000;

impl Settings {
    /// Checks values no type can: ranges, pairs and addresses. The first problem found.
    pub fn check(&self) -> Result<(), Invalid> {
        self.limits.check().map_err(|err| {
            use quiver_proto::LimitsError as E;
            let (l, d) = (&self.limits, Limits::default());
            // Of two settings that contradict each other, the one moved from its default is named (the second, when
            // both or neither were).
            let pick = |first: &'static str, moved: bool, second: &'static str, second_moved: bool| match moved
                && !second_moved
            {
                true => first,
                false => second,
            };
            let key = match &err {
                // (`max_name` counts too: a room event carries the sender's and the room's names.)
                E::FrameTooSmall { .. }
                    if l.max_name != d.max_name && l.max_frame == d.max_frame && l.max_body == d.max_body =>
                {
                    "max_name"
                }
                E::FrameTooSmall { .. } => {
                    pick("max_body", l.max_body != d.max_body, "max_frame", l.max_frame != d.max_frame)
                }
                E::QueueTooSmall { .. } => pick(
                    "max_frame",
                    l.max_frame != d.max_frame,
                    "room_queue_bytes",
                    l.room_queue_bytes != d.room_queue_bytes,
                ),
                E::FrameTooLarge { .. } => "max_frame",
                E::Zero { name } => name,
                E::PerIpAboveTotal { .. } => pick(
                    "max_connections",
                    l.max_connections != d.max_connections,
                    "max_connections_per_ip",
                    l.max_connections_per_ip != d.max_connections_per_ip,
                ),
                _ => "max_frame",
            };
            Invalid::new(&format!("limits.{key}"), err.to_string())
        })?;
        for (key, value) in [
            ("budget.max_rooms", u64::from(self.budget.max_rooms)),
            ("budget.max_channels", u64::from(self.budget.max_channels)),
            ("budget.room_history_bytes", self.budget.room_history_bytes),
            ("budget.retained_bytes", self.budget.retained_bytes),
            ("budget.frame_timeout_ms", u64::from(self.budget.frame_timeout_ms)),
            ("budget.sweep_interval_ms", u64::from(self.budget.sweep_interval_ms)),
            ("budget.max_awaiting_hello", u64::from(self.budget.max_awaiting_hello)),
            ("budget.websocket_max_upgrading", u64::from(self.budget.websocket_max_upgrading)),
            ("budget.websocket_max_upgrading_per_ip", u64::from(self.budget.websocket_max_upgrading_per_ip)),
            ("transport.reordering_threshold", u64::from(self.transport.reordering_threshold)),
            ("transport.initial_rtt_ms", u64::from(self.transport.initial_rtt_ms)),
            ("transport.datagram_send_buffer", u64::from(self.transport.datagram_send_buffer)),
            ("drain_timeout_ms", u64::from(self.drain_timeout_ms)),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        self.broker.check().map_err(|(key, why)| Invalid::new(key, why))?;
        if self.drain_timeout_ms > MAX_DRAIN_TIMEOUT_MS {
            return Err(Invalid::new("drain_timeout_ms", format!("at most {MAX_DRAIN_TIMEOUT_MS} (10 minutes)")));
        }
        if self.transport.initial_rtt_ms > 10_000 {
            return Err(Invalid::new("transport.initial_rtt_ms", "at most 10000"));
        }
        // Bounds that keep the server safe for the open internet, whatever a configuration says.
        for (key, value, max, why) in [
            (
                "limits.handshake_timeout_ms",
                u64::from(self.limits.handshake_timeout_ms),
                MAX_HANDSHAKE_TIMEOUT_MS,
                "a connection that sends no Hello holds a connection slot this long",
            ),
            (
                "transport.copies",
                u64::from(self.transport.copies),
                u64::from(MAX_COPIES),
                "datagram copies per room frame: a peer that withholds its ACKs gets the most",
            ),
            (
                "transport.congestion_floor",
                u64::from(self.transport.congestion_floor),
                MAX_CONGESTION_FLOOR,
                "a floor under the congestion window this large turns congestion control off",
            ),
            (
                "budget.websocket_max_upgrading",
                u64::from(self.budget.websocket_max_upgrading),
                MAX_WEBSOCKET_UPGRADING,
                "TCP connections not upgraded yet hold a file descriptor and a TLS handshake each",
            ),
            (
                "transport.datagram_send_buffer",
                u64::from(self.transport.datagram_send_buffer),
                MAX_DATAGRAM_SEND_BUFFER,
                "bytes per connection, outside [budget]: quinn's own default; more only queues staler ticks",
            ),
        ] {
            if value > max {
                return Err(Invalid::new(key, format!("at most {max} ({why})")));
            }
        }
        self.web_config()?; // its ranges and addresses: `config check` must refuse what the server would
        if !matches!(self.transport.mtu_discovery, 0 | 1200..=65527) {
            return Err(Invalid::new("transport.mtu_discovery", "0 (off) or a UDP payload size from 1200 to 65527"));
        }
        match (self.tls.cert.as_os_str().is_empty(), self.tls.key.as_os_str().is_empty()) {
            (false, true) => return Err(Invalid::new("tls.key", "tls.cert is set, so tls.key must be too")),
            (true, false) => return Err(Invalid::new("tls.cert", "tls.key is set, so tls.cert must be too")),
            _ => {}
        }
        let keys = !self.auth.hs256_secret.is_empty()
            || !self.auth.hs256_key_files.is_empty()
            || !self.auth.ed25519_public_key_files.is_empty();
        if self.auth.anonymous && keys {
            return Err(Invalid::new("auth.anonymous", "cannot be combined with token keys"));
        }
        if !self.auth.hs256_secret.is_empty() && crate::auth::parse_hs256_secret(&self.auth.hs256_secret).is_none() {
            return Err(Invalid::new(
                "auth.hs256_secret",
                format!("expected at least {} hex digits", 2 * crate::auth::MIN_HS256_SECRET),
            ));
        }
        self.page_addr()?;
        if !self.web.path.starts_with('/') {
            return Err(Invalid::new("web.path", "must start with /"));
        }
        for origin in &self.web.origins {
            if let Some(why) = not_an_origin(origin) {
                return Err(Invalid::new("web.origins", format!("{origin:?} {why}")));
            }
        }
        self.admin_addr()?;
        if let Some(host) = self.admin.hosts.iter().find(|host| !is_host_name(host)) {
            let why = "is not a host name (as in Host, without a port or scheme; *.domain for any name under domain)";
            return Err(Invalid::new("admin.hosts", format!("{host:?} {why}")));
        }
        self.websocket_listen()?;
        if self.log.filter.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(Invalid::new("log.filter", format!("{:?} is not a tracing filter", self.log.filter)));
        }
        Ok(())
    }
}

/// True for a host name as `Host` carries one (letters, digits, `-`, `_` and dots; no port, scheme, path or final
/// dot), or `*.` followed by one.
fn is_host_name(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

/// Why `origin` can never equal a browser's `Origin` header (`scheme://host[:port]`, the scheme's default port left
/// out), which the allow-list is compared with as a string; `None` when it can.
fn not_an_origin(origin: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("is not an origin (https://host[:port])");
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return Some("is not an origin (https://host[:port])"),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
        return Some("is not an origin (https://host[:port], no path, not even a trailing /): browsers send none");
    }
    if rest.ends_with(default_port) {
        return Some("names its scheme's default port, which browsers leave out of Origin: remove it");
    }
    None
}
