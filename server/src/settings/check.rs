//! The checks no type can make: ranges, pairs of settings that contradict each other, and addresses. The server
//! does not start on any of them, and `config check` refuses what the server would.

use super::*;

/// Longest drain the server accepts (10 minutes).
pub const MAX_DRAIN_TIMEOUT_MS: u32 = 600_000;

/// Of two settings that contradict each other, the one moved from its default is named (the second, when both or
/// neither were).
fn moved_of(first: &'static str, moved: bool, second: &'static str, second_moved: bool) -> &'static str {
    match moved && !second_moved {
        true => first,
        false => second,
    }
}

impl Settings {
    /// Of a check between two settings that failed on `key`, the key to name: the other one when only that one was
    /// moved from its default (the operator's file set it, and the location then points at its line; the message
    /// names both). Before, a file setting only `transport.mtu_discovery` was told `default:
    /// transport.datagram_send_buffer`, a key it never wrote.
    fn moved_of_a_pair(&self, key: &'static str) -> &'static str {
        let d = Settings::default();
        let (t, dt) = (&self.transport, &d.transport);
        match key {
            "limits.max_connections_per_ip" => moved_of(
                "budget.max_connections_per_network",
                self.budget.max_connections_per_network != d.budget.max_connections_per_network,
                key,
                self.limits.max_connections_per_ip != d.limits.max_connections_per_ip,
            ),
            "limits.new_connections_per_s_per_ip" => moved_of(
                "budget.new_connections_per_s_per_network",
                self.budget.new_connections_per_s_per_network != d.budget.new_connections_per_s_per_network,
                key,
                self.limits.new_connections_per_s_per_ip != d.limits.new_connections_per_s_per_ip,
            ),
            "transport.datagram_send_buffer" => moved_of(
                "transport.mtu_discovery",
                t.mtu_discovery != dt.mtu_discovery,
                key,
                t.datagram_send_buffer != dt.datagram_send_buffer,
            ),
            _ => key,
        }
    }

    /// Checks values no type can: ranges, pairs and addresses. The first problem found.
    pub fn check(&self) -> Result<(), Invalid> {
        self.limits.check().map_err(|err| {
            use quiver_proto::LimitsError as E;
            let (l, d) = (&self.limits, Limits::default());
            let key = match &err {
                // (`max_name` counts too: a room event carries the sender's and the room's names.)
                E::FrameTooSmall { .. }
                    if l.max_name != d.max_name && l.max_frame == d.max_frame && l.max_body == d.max_body =>
                {
                    "max_name"
                }
                E::FrameTooSmall { .. } => {
                    moved_of("max_body", l.max_body != d.max_body, "max_frame", l.max_frame != d.max_frame)
                }
                E::QueueTooSmall { .. } => moved_of(
                    "max_frame",
                    l.max_frame != d.max_frame,
                    "room_queue_bytes",
                    l.room_queue_bytes != d.room_queue_bytes,
                ),
                E::FrameTooLarge { .. } => "max_frame",
                E::RoomsAboveCeiling { .. } => "max_rooms",
                E::NameAboveCeiling { .. } => "max_name",
                E::Zero { name } => name,
                E::PerIpAboveTotal { .. } => moved_of(
                    "max_connections",
                    l.max_connections != d.max_connections,
                    "max_connections_per_ip",
                    l.max_connections_per_ip != d.max_connections_per_ip,
                ),
                _ => "max_frame",
            };
            Invalid::new(&format!("limits.{key}"), err.to_string())
        })?;
        if self.drain_timeout_ms == 0 {
            return Err(Invalid::new("drain_timeout_ms", "must be at least 1"));
        }
        self.broker.check().map_err(|(key, why)| Invalid::new(key, why))?;
        if self.drain_timeout_ms > MAX_DRAIN_TIMEOUT_MS {
            return Err(Invalid::new("drain_timeout_ms", format!("at most {MAX_DRAIN_TIMEOUT_MS} (10 minutes)")));
        }
        if self.data_dir.as_os_str().is_empty() {
            // (`QUIVER_DATA_DIR=` passed the check and failed the start with a path of nothing.)
            return Err(Invalid::new("data_dir", "must not be empty (the default is .quiver)"));
        }
        // The ranges a program embedding the server is held to as well (`ServerConfig::check`).
        crate::config::check_values(&self.limits, &self.budget, &self.transport.tuning())
            .map_err(|(key, why)| Invalid::new(self.moved_of_a_pair(key), why))?;
        self.web_config()?; // its ranges and addresses: `config check` must refuse what the server would
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
        if let Some(why) = not_a_plain_path(&self.web.path) {
            return Err(Invalid::new("web.path", format!("{:?} {why}", self.web.path)));
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
        self.no_shared_tcp_port()?;
        if self.log.filter.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(Invalid::new("log.filter", format!("{:?} is not a tracing filter", self.log.filter)));
        }
        Ok(())
    }
}

/// True for a host name as `Host` carries one (letters, digits, `-`, `_` and dots; no port, scheme, path or final
/// dot), or `*.` followed by one.
impl Settings {
    /// The admin listener does not take the TCP port of the page or the WebSocket fallback (those two share one
    /// by design, where they can): the second to bind would fail at start, and the error would name the listener
    /// bound later.
    fn no_shared_tcp_port(&self) -> Result<(), Invalid> {
        let websocket = match self.websocket_listen()? {
            crate::config::WebSocketListen::Off => None,
            crate::config::WebSocketListen::SamePort => Some(self.listen),
            crate::config::WebSocketListen::At(addr) => Some(addr),
        };
        // The page and the WebSocket share one listener only at the same address, or with the WebSocket's on every
        // address (`net::Server::bind`); on one port otherwise, the page's bind failed at start.
        if let (Some(page), Some(ws)) = (self.page_addr()?, websocket) {
            let shared = page.port() == ws.port() && (page.ip() == ws.ip() || ws.ip().is_unspecified());
            if page.port() != 0 && overlap(page, ws) && !shared {
                return Err(Invalid::new(
                    "web.page",
                    format!(
                        "web.page ({page}) and web.websocket ({ws}) take the same TCP port but cannot share a listener \
                         (that needs one address, or the WebSocket's on every address): give one another"
                    ),
                ));
            }
        }
        let Some(admin) = self.admin_addr()?.filter(|a| a.port() != 0) else { return Ok(()) };
        for (key, other) in [("web.page", self.page_addr()?), ("web.websocket", websocket)] {
            let Some(other) = other.filter(|other| overlap(admin, *other)) else { continue };
            // The one set by hand is named (the other's `auto` moved with it).
            let named = if self.admin.listen == "auto" { key } else { "admin.listen" };
            return Err(Invalid::new(
                named,
                format!("admin.listen ({admin}) and {key} ({other}) take the same TCP port: give one another"),
            ));
        }
        Ok(())
    }
}

/// Two TCP listeners that cannot both bind: one port, and the same address or a wildcard covering the other's
/// (`[::]` is dual-stack, so it covers IPv4 addresses too; `0.0.0.0` covers only IPv4).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| match wild {
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => true,
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            other.is_ipv4() || matches!(other, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
        }
        _ => false,
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

fn is_host_name(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

/// Why `path` cannot be `web.path`, if it cannot: the WebTransport lane compares it with the request URL's path as
/// the URL parser normalises it (dot segments resolved, `%2e` among them; a space, a quote or a non-ASCII letter
/// percent-encoded, in upper-case hex), the WebSocket lane with the request line's target as sent, so a path either
/// would rewrite never matched, with no error at start. A path both lanes see as written: `/` and segments (empty
/// ones too: a trailing `/`, `//`) of RFC 3986's unreserved characters and sub-delimiters, `:`, `@` and
/// percent-encodings in upper-case hex (`/caf%C3%A9`, which a browser sends for `/café`), none of them `.` or `..`.
fn not_a_plain_path(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some("must start with /");
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c);
    let upper_hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    for segment in rest.split('/') {
        let dots = segment.to_ascii_lowercase().replace("%2e", ".");
        if dots == "." || dots == ".." {
            return Some("has a . or .. segment (a URL parser resolves those: it would never match)");
        }
        let bytes = segment.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            match bytes[at] {
                b'%' if bytes.get(at + 1..at + 3).is_some_and(|hex| hex.iter().all(|&h| upper_hex(h))) => at += 3,
                b if b.is_ascii() && plain(char::from(b)) => at += 1,
                _ => {
                    return Some(
                        "has a character a URL would percent-encode, a % not followed by two upper-case hex digits, \
                         or a ? or # (it would never match; write /café as /caf%C3%A9)",
                    )
                }
            }
        }
    }
    None
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
    if !rest.is_ascii() {
        // (It passed and matched no browser: every page of the site was refused.)
        return Some("is not ASCII: browsers send an internationalized name in its punycode form (https://xn--...)");
    }
    None
}
