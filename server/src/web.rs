//! The demo page over plain HTTP/1.1 on a TCP port: the browser client (`server/web/`, compiled into the binary)
//! and `/config.json`, which tells the page where the WebTransport endpoint is and which certificate hash to
//! pass as `serverCertificateHashes` (the dev certificate is self-signed). Deliberately small: GET and HEAD of a
//! handful of fixed paths, served by the shared small HTTP server ([`crate::http`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use quiver_certs::Fingerprint;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{parse_request, serve_http, Response};

/// The files of the page, compiled in.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../web/index.html")),
    ("/index.html", "text/html; charset=utf-8", include_str!("../web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../web/app.js")),
    ("/dev-token.js", "text/javascript; charset=utf-8", include_str!("../web/dev-token.js")),
    ("/quiver/index.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/index.js")),
    ("/quiver/client.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client.js")),
    ("/quiver/client/session.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/session.js")),
    ("/quiver/client/race.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/race.js")),
    ("/quiver/client/handles.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/handles.js")),
    ("/quiver/client/waiting.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/waiting.js")),
    ("/quiver/client/dial.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/dial.js")),
    (
        "/quiver/client/websocket.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/quiver/client/websocket.js"),
    ),
    ("/quiver/client/values.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/values.js")),
    ("/quiver/client/streams.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/streams.js")),
    ("/quiver/client/posts.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/client/posts.js")),
    ("/quiver/state.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/state.js")),
    ("/quiver/wire/errors.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/errors.js")),
    ("/quiver/wire/varint.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/varint.js")),
    ("/quiver/wire/postcard.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/postcard.js")),
    ("/quiver/wire/messages.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/messages.js")),
    ("/quiver/wire/frames.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/frames.js")),
    ("/quiver/wire/ticks.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/ticks.js")),
    ("/quiver/wire/ws.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/ws.js")),
    ("/quiver/wire/copies.js", "text/javascript; charset=utf-8", include_str!("../web/quiver/wire/copies.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
];

/// What `/config.json` tells the page.
#[derive(Debug, Clone)]
pub struct PageInfo {
    /// The QUIC endpoint's UDP port (the page's host name is reused: the browser reached this server by it).
    pub udp_port: u16,
    /// The WebSocket fallback's TCP port, if it listens.
    pub websocket_port: Option<u16>,
    /// The WebTransport path.
    pub path: String,
    /// The certificate's SHA-256 for `serverCertificateHashes`, for a self-signed dev certificate; `None` for a
    /// certificate browsers validate themselves.
    pub cert_hash: Option<LiveFingerprint>,
    /// The room and tick channel the page opens unless its URL names others.
    pub room: String,
    /// See `room`.
    pub channel: String,
    /// With the dev key (tokens signed by the server's own key, the default), `/config.json?name=N&key=K` asked
    /// from this machine (a loopback peer, under a loopback `Host`) with the page key K also carries a dev token
    /// for subject N (every right, 24 h), so the page opened from the URL the server prints works with no setup;
    /// any other peer gets 403. `None` in production: the application hands out tokens (the page takes `?token=`).
    pub dev_tokens: Option<DevTokens>,
    /// The `Host`s (`host[:port]`) of `web.origins`: a proxy of the operator's on this machine may pass its site's
    /// name to a server with the dev certificate (without dev tokens); any other name is refused (DNS rebinding).
    pub origin_hosts: Vec<String>,
}

/// The `host[:port]` of each origin (`scheme://host[:port]`), as a `Host` header carries it.
pub(crate) fn origin_hosts(origins: &[String]) -> Vec<String> {
    origins.iter().filter_map(|origin| origin.split_once("://").map(|(_, host)| host.to_ascii_lowercase())).collect()
}

/// Where the demo page's dev tokens come from, and the key a page must show to get one.
#[derive(Clone)]
pub struct DevTokens {
    /// The data directory with the dev key.
    pub data_dir: std::path::PathBuf,
    /// The page key ([`new_page_key`]): in the URL the server prints (`#key=`), never served.
    pub key: String,
}

impl std::fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevTokens").field("data_dir", &self.data_dir).field("key", &"<redacted>").finish()
    }
}

/// A new page key: 128 random bits as hex, made when the server starts and held in its memory only, so that
/// whatever a browser kept of it (its history, a tab's session storage, readable by any page later served on the
/// same origin: another user's server on the port while this one is stopped) is worth nothing after a restart.
/// A loopback peer is not enough to get a dev token: a reverse proxy or tunnel on this machine makes every visitor
/// one (nginx's `proxy_pass http://127.0.0.1:4433` even sends a loopback `Host`), and so is every other user of a
/// shared machine, for whom the dev key file (mode 0600) is out of reach.
pub fn new_page_key() -> String {
    rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// `given == expected`, in time that does not depend on where they first differ.
fn same_key(given: &str, expected: &str) -> bool {
    // (ring's constant-time comparison is deprecated; the key's length is no secret: it is always 32.)
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// The certificate's fingerprint as it is now (a SIGHUP reload replaces it).
#[derive(Debug, Clone)]
pub struct LiveFingerprint(Arc<std::sync::RwLock<Fingerprint>>);

impl LiveFingerprint {
    /// Starts at `fingerprint`.
    pub fn new(fingerprint: Fingerprint) -> LiveFingerprint {
        LiveFingerprint(Arc::new(std::sync::RwLock::new(fingerprint)))
    }

    /// The fingerprint now.
    pub fn get(&self) -> Fingerprint {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces it.
    pub fn set(&self, fingerprint: Fingerprint) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fingerprint;
    }
}

/// Validity of the demo page's dev tokens.
const PAGE_TOKEN_TTL_S: u64 = 24 * 3600;

/// Serves the page on `listener` until `shutdown` (its token; its bounds on connections).
pub(crate) async fn serve(
    listener: TcpListener,
    info: PageInfo,
    shutdown: (CancellationToken, crate::http::HttpBounds),
) {
    let info = Arc::new(info);
    serve_http(listener, shutdown, move |head, peer| {
        let response = respond(head, peer, &info);
        if response.status == 403 {
            // (Debug: a peer can repeat it at will.)
            tracing::debug!(%peer, "page: refused a dev token (a peer elsewhere, another host name, or a wrong key)");
        }
        response
    })
    .await
}

/// Where the demo page is served unless told otherwise: loopback only, on the QUIC endpoint's port (`::1` when the
/// endpoint is bound to `::1`, else `127.0.0.1`, which `http://localhost` reaches).
pub fn default_page_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(v6),
        _ => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, listen.port())
}

/// True for this machine's own addresses as a peer: 127.0.0.0/8, ::1, and their IPv4-mapped forms (how a
/// dual-stack socket reports IPv4 peers).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Why a peer that is not on this machine gets no dev token.
const NOT_LOCAL: &str = "dev tokens are handed out only to pages opened on the server's own machine \
    (from the URL it printed at start); from elsewhere, open the page with ?token= (mint one on the server: quiver-server token \
    --sub NAME), or run the server with production keys (--hs256-key / --ed25519-public-key)";

/// Why a page reached under another name than this machine's gets no dev token.
const NOT_LOCAL_NAME: &str = "the dev server's page config (its dev tokens, or the certificate of a server that \
    takes anyone) is handed out only to pages opened as http://localhost, http://127.0.0.1 or http://[::1] (the \
    Host header names another machine: a page under another name that resolves to this one, as in DNS rebinding, \
    gets none)";

/// Why a page with a wrong page key gets no dev token.
const WRONG_KEY: &str = "this page key is not the server's: open the demo page with the URL quiver-server printed at \
    start (it ends in #key=...): each start of the server makes a new page key";

/// True when a `Host` header names this machine: `localhost` or a loopback address, with or without a port. A
/// request without one (not a browser's) counts as local; the peer address was checked already.
pub(crate) fn is_loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, _port)) => v6,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// The `Host` header among a request's header `lines`, if any.
pub(crate) fn host_header<'a>(lines: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim())
}

/// The response to a request head from `peer` (sans-IO, so it is tested without sockets).
pub(crate) fn respond(head: &[u8], peer: IpAddr, info: &PageInfo) -> Response {
    let (head_only, target, lines) = match parse_request(head) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let host = host_header(lines);
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let name = query_param(target, "name");
    let dev_tokens = info.dev_tokens.as_ref();
    // The dev token goes only with the page key; without one the page learns where to connect, not a token.
    let key = query_param(target, "key");
    let mint = dev_tokens.filter(|dev| key.as_deref().is_some_and(|key| same_key(key, &dev.key)));
    let mut response = if path == "/config.json" && dev_tokens.is_some() && !is_loopback(peer) {
        Response::error(403, NOT_LOCAL)
    } else if path == "/config.json"
        && !is_loopback_host(host)
        && (dev_tokens.is_some()
            || (info.cert_hash.is_some()
                && is_loopback(peer)
                && !host.is_some_and(|host| info.origin_hosts.iter().any(|o| o.eq_ignore_ascii_case(host)))))
    {
        // A loopback peer asking for another name: a page whose name was rebound to 127.0.0.1 (DNS rebinding). Also
        // without dev tokens, where the dev certificate's hash is all another site's page needs to open a
        // WebTransport session to this machine's server (one that takes anyone, or is reloaded to: the rule does
        // not follow the auth mode), which has no origin rule of its own here (the plain WebSocket refuses other
        // sites' origins); but for the names of `web.origins` (a proxy of the operator's on this machine).
        Response::error(403, NOT_LOCAL_NAME)
    } else if path == "/config.json" && dev_tokens.is_some() && key.is_some() && mint.is_none() {
        Response::error(403, WRONG_KEY)
    } else if path == "/config.json" {
        Response {
            status: 200,
            content_type: "application/json",
            body: config_json(info, host, name.as_deref(), mint).into_bytes(),
            head_only: false,
        }
    } else if let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) {
        Response { status: 200, content_type, body: body.as_bytes().to_vec(), head_only: false }
    } else {
        Response::error(404, "not found")
    };
    response.head_only = head_only;
    response
}

/// The host name of a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), if it is a plain host name or
/// address literal; anything else falls back to `localhost`.
fn host_name(host: Option<&str>) -> String {
    let Some(host) = host else { return "localhost".into() };
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => return "localhost".into(),
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if name.is_empty() || name.len() > 253 || !name.chars().all(plain) {
        return "localhost".into();
    }
    name.to_string()
}

fn config_json(info: &PageInfo, host: Option<&str>, name: Option<&str>, mint: Option<&DevTokens>) -> String {
    let url = format!("https://{}:{}{}", host_name(host), info.udp_port, info.path);
    // A self-signed dev certificate is pinned by hash for WebTransport; a WebSocket cannot pin, so the dev page
    // (opened from this machine) uses plain ws://, which the server takes from this machine only.
    let scheme = if info.cert_hash.is_some() { "ws" } else { "wss" };
    let websocket_url = info.websocket_port.map(|port| format!("{scheme}://{}:{port}{}", host_name(host), info.path));
    let token = mint.map(|dev| dev.data_dir.as_path()).and_then(|dir| {
        let sub = match name {
            Some(name) if crate::auth::check_subject(name).is_ok() => name.to_string(),
            _ => format!("web-{:08x}", rand::random::<u32>()),
        };
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = crate::auth::Claims::everything(sub, now_s, PAGE_TOKEN_TTL_S);
        crate::auth::mint_dev(dir, &claims).map_err(|err| tracing::warn!(%err, "page: cannot mint a dev token")).ok()
    });
    let config = serde_json::json!({
        "url": url,
        "websocketUrl": websocket_url,
        "certHash": info.cert_hash.as_ref().map(|f| f.get().to_string()),
        "room": info.room,
        "channel": info.channel,
        "token": token,
        // This server hands dev tokens to pages with its key (the page tells a user without one where to get it).
        "devTokens": info.dev_tokens.is_some(),
    });
    config.to_string()
}

/// The percent-decoded value of `key` in `target`'s query string.
fn query_param(target: &str, key: &str) -> Option<String> {
    let query = target.split_once('?')?.1.split('#').next()?;
    let value = query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key)?.1;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PageInfo {
        PageInfo {
            udp_port: 4433,
            websocket_port: Some(4433),
            path: "/quiver".into(),
            cert_hash: Some(LiveFingerprint::new(quiver_certs::sha256(b"cert"))),
            room: "lobby".into(),
            channel: "demo.ticks".into(),
            dev_tokens: None,
            origin_hosts: Vec::new(),
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn get(head: &str) -> Response {
        respond(head.as_bytes(), LOCAL, &info())
    }

    #[test]
    fn serves_the_page_and_its_config() {
        let page = get("GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
        assert_eq!(page.status, 200);
        assert!(page.content_type.starts_with("text/html"));
        assert_eq!(get("GET /quiver/index.js?v=1 HTTP/1.1\r\n\r\n").content_type, "text/javascript; charset=utf-8");
        let config = get("GET /config.json HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n");
        let json: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
        assert_eq!(json["url"], "https://127.0.0.1:4433/quiver");
        assert_eq!(json["websocketUrl"], "ws://127.0.0.1:4433/quiver", "plain, from this machine, with a dev cert");
        assert_eq!(json["certHash"], quiver_certs::sha256(b"cert").to_string());
        assert_eq!(json["room"], "lobby");
    }

    #[test]
    fn the_dev_server_hands_the_page_a_token_in_its_name() {
        let dir = tempfile::tempdir().unwrap();
        crate::auth::load_or_generate_dev_key(dir.path()).unwrap();
        let key = new_page_key();
        assert_eq!(key.len(), 32, "128 bits in hex");
        assert_ne!(new_page_key(), key, "one per run");
        let info = PageInfo { dev_tokens: Some(DevTokens { data_dir: dir.path().into(), key: key.clone() }), ..info() };
        let head = format!("GET /config.json?name=ann%20b&key={key} HTTP/1.1\r\n\r\n");
        let config = respond(head.as_bytes(), LOCAL, &info);
        let json: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
        let token = json["token"].as_str().unwrap();
        let auth = crate::auth::Auth::from_config(&crate::auth::AuthConfig::DevKey, dir.path()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(auth.verify(Some(token), now).unwrap().unwrap().sub, "ann b");
        assert_eq!(json["devTokens"], true);
        assert!(get("GET /config.json HTTP/1.1\r\n\r\n").body.windows(12).any(|w| w == b"\"token\":null"));
        // A loopback peer without the key (a reverse proxy's visitors, another user of the machine): no token.
        let keyless = respond(b"GET /config.json?name=alice HTTP/1.1\r\nHost: 127.0.0.1:4433\r\n\r\n", LOCAL, &info);
        let json: serde_json::Value = serde_json::from_slice(&keyless.body).unwrap();
        assert_eq!((keyless.status, &json["token"], &json["devTokens"]), (200, &serde_json::Value::Null, &true.into()));
        let wrong = format!("GET /config.json?name=alice&key={} HTTP/1.1\r\n\r\n", "0".repeat(32));
        let wrong = respond(wrong.as_bytes(), LOCAL, &info);
        assert_eq!(wrong.status, 403);
        assert!(String::from_utf8_lossy(&wrong.body).contains("URL quiver-server printed"));
        for peer in ["192.0.2.7", "::ffff:10.0.0.1", "2001:db8::1"] {
            let refused = respond(b"GET /config.json?name=alice HTTP/1.1\r\n\r\n", peer.parse().unwrap(), &info);
            assert_eq!(refused.status, 403, "{peer}");
            assert!(String::from_utf8_lossy(&refused.body).contains("only to pages opened on the server's own machine"));
        }
        for peer in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(respond(b"GET /config.json HTTP/1.1\r\n\r\n", peer.parse().unwrap(), &info).status, 200);
        }
        for host in ["evil.example", "evil.example:4433", "127.0.0.1.evil.example", "[2001:db8::1]:80", "[::1"] {
            let head = format!("GET /config.json HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let refused = respond(head.as_bytes(), LOCAL, &info);
            assert_eq!(refused.status, 403, "Host {host} from a loopback peer (DNS rebinding)");
        }
        for host in ["localhost", "LOCALHOST:4433", "localhost.", "127.0.0.1:8080", "127.9.9.9", "[::1]:4433", "[::1]"]
        {
            let head = format!("GET /config.json HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(respond(head.as_bytes(), LOCAL, &info).status, 200, "Host {host}");
        }
        // Without dev tokens (an anonymous dev server) a rebound name gets no certificate hash either.
        let anonymous = PageInfo { dev_tokens: None, ..info.clone() };
        let rebound = b"GET /config.json HTTP/1.1\r\nHost: evil.example:4433\r\n\r\n";
        assert_eq!(respond(rebound, LOCAL, &anonymous).status, 403, "DNS rebinding, dev certificate, no dev tokens");
        // A proxy of the operator's on this machine passing its site's name, listed in web.origins: answered.
        let origins = origin_hosts(&["https://EVIL.example:4433".to_string()]);
        let proxied = PageInfo { dev_tokens: None, origin_hosts: origins, ..info.clone() };
        assert_eq!(respond(rebound, LOCAL, &proxied).status, 200, "a name of web.origins");
        let production_info = PageInfo { dev_tokens: None, ..info.clone() };
        let production = respond(b"GET /config.json HTTP/1.1\r\n\r\n", "192.0.2.7".parse().unwrap(), &production_info);
        assert_eq!(production.status, 200, "without dev tokens the page config is public");
        assert_eq!(query_param("/x?a=1&name=%zz", "name"), None);
        assert_eq!(query_param("/x?name=a+b&c", "name").as_deref(), Some("a b"));
    }

    /// Every module of the browser client on disk is served, as JavaScript, as it is on disk: a module missing
    /// from `ASSETS` would break the page's imports only in a browser.
    #[test]
    fn serves_every_module_of_the_client() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut dirs = vec![root.join("quiver")];
        let mut modules = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let parts: Vec<_> = path.strip_prefix(&root).unwrap().iter().map(|p| p.to_str().unwrap()).collect();
                let url = format!("/{}", parts.join("/"));
                let response = get(&format!("GET {url} HTTP/1.1\r\n\r\n"));
                assert_eq!(response.status, 200, "{url}");
                assert_eq!(response.content_type, "text/javascript; charset=utf-8", "{url}");
                assert_eq!(response.body, std::fs::read(&path).unwrap(), "{url}");
                modules += 1;
            }
        }
        assert_eq!(modules, ASSETS.iter().filter(|(path, _, _)| path.starts_with("/quiver/")).count());
        assert_eq!(get("GET /quiver.js HTTP/1.1\r\n\r\n").status, 404, "the single-file client is gone");
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(host_name(Some("[::1]:8080")), "[::1]");
        assert_eq!(host_name(Some("example.com")), "example.com");
        assert_eq!(host_name(Some("evil\",\"x")), "localhost");
        assert_eq!(host_name(None), "localhost");
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(get("GET /etc/passwd HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get("GET /../Cargo.toml HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get("POST / HTTP/1.1\r\n\r\n").status, 405);
        assert_eq!(get("GET / SPDY/3\r\n\r\n").status, 400);
        assert_eq!(get("GARBAGE\r\n\r\n").status, 400);
        assert_eq!(respond(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'], LOCAL, &info()).status, 400);
        let head = get("HEAD / HTTP/1.1\r\n\r\n");
        assert!(head.head_only && head.status == 200);
        let bytes = head.to_bytes();
        assert!(bytes.ends_with(b"\r\n\r\n"), "HEAD has no body");
    }
}
