//! The WebSocket upgrade request (RFC 6455 §4.2), sans IO: what makes a request an upgrade to Quiver's
//! WebSocket, and the 101 answer. A request that is no upgrade is the demo page's (or 404); a bad upgrade gets its
//! HTTP error.

use quiver_proto::ws::SUBPROTOCOL;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{config::WebConfig, http::Response};

/// What the request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// A WebSocket upgrade at the Quiver path: answer with [`switching_protocols`] for this key.
    Upgrade { key: String },
    /// Plain HTTP (the demo page's business).
    Http,
}

/// Every value of the header `name`, in order.
fn values<'a, 'b>(lines: &'b [&'a str], name: &'b str) -> impl Iterator<Item = &'a str> + 'b {
    lines
        .iter()
        .filter_map(|line| line.split_once(':'))
        .filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

/// The header `name`'s one value: `None` when it is missing or repeated (RFC 6455 §4.1 has the key and the
/// version appear once).
fn header<'a>(lines: &[&'a str], name: &str) -> Option<&'a str> {
    let mut all = values(lines, name);
    all.next().filter(|_| all.next().is_none())
}

/// Whether the list header `name` has `token` in any of its lines: a list may be split over several lines of the
/// same name (RFC 9110 §5.3), as a proxy may pass on `Sec-WebSocket-Protocol` (until 2026-12-08 only the first
/// line was read).
fn has_token(lines: &[&str], name: &str, token: &str) -> bool {
    values(lines, name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request line's version is HTTP/1.1 or later (`parse_request` took `HTTP/1.x`): RFC 6455 §4.1
/// asks for 1.1 at least, and an HTTP/1.0 intermediary does not know `Upgrade` (until 2026-12-08 taken).
fn http_1_1_or_later(head: &[u8]) -> bool {
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    !request_line.ends_with(b" HTTP/1.0")
}

/// Reads a request head (up to and including its blank line).
/// `plain`: the connection is plain `ws://` (no TLS: a loopback peer, the dev setup).
pub(super) fn classify(head: &[u8], web: &WebConfig, plain: bool) -> Result<Request, Response> {
    let (head_only, target, lines) = crate::http::parse_request(head)?;
    let lines: Vec<&str> = lines.take_while(|line| !line.is_empty()).collect();
    if !has_token(&lines, "upgrade", "websocket") {
        return Ok(Request::Http);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != web.path {
        return Err(Response::error(404, &format!("no WebSocket endpoint here; Quiver's is at {}", web.path)));
    }
    if head_only || !has_token(&lines, "connection", "upgrade") {
        return Err(Response::error(400, "a WebSocket upgrade is a GET with Connection: Upgrade"));
    }
    if !http_1_1_or_later(head) {
        return Err(Response::error(400, "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 §4.1)"));
    }
    // RFC 6455 §4.2.2: 426 with the versions this server speaks (`Sec-WebSocket-Version: 13`, added by
    // `Response::to_bytes`), so that a client can ask again (until 2026-12-08 a bare 400).
    if header(&lines, "sec-websocket-version") != Some("13") {
        return Err(Response::error(426, "WebSocket version 13 only"));
    }
    let Some(key) = header(&lines, "sec-websocket-key").filter(|k| !k.is_empty() && k.len() <= 64) else {
        return Err(Response::error(400, "missing (or repeated) Sec-WebSocket-Key"));
    };
    if !has_token(&lines, "sec-websocket-protocol", SUBPROTOCOL) {
        return Err(Response::error(400, &format!("ask for the WebSocket subprotocol {SUBPROTOCOL:?}")));
    }
    // Browsers always send Origin on a WebSocket; native clients (no page, no ambient credentials) send none and
    // are not what an origin list is about.
    // (One Origin: a second would otherwise read as none, a native client's, past the origin list.)
    let mut origins = values(&lines, "origin");
    let origin = origins.next();
    if origins.next().is_some() {
        return Err(Response::error(400, "more than one Origin"));
    }
    if origin.is_some() && !web.origin_allowed(origin) {
        return Err(Response::error(403, "origin not allowed (web.origins)"));
    }
    // Without an origin list, plain ws:// (this machine's dev server) takes pages of this machine only: a WebSocket
    // has no same-origin rule, and any site open in the developer's browser could otherwise reach it.
    if let Some(origin) = origin.filter(|_| plain && web.allowed_origins.is_empty()) {
        let host = origin.split_once("://").map_or(origin, |(_, host)| host);
        if !crate::web::is_loopback_host(Some(host)) {
            return Err(Response::error(
                403,
                "a page from another site may not open plain ws:// to this machine's server: list its origin in \
                 web.origins (behind a reverse proxy on this machine, the site's own origin)",
            ));
        }
    }
    Ok(Request::Upgrade { key: key.to_string() })
}

/// Every `X-Forwarded-For` value of a request head, in order (none for a head that does not parse).
pub(super) fn forwarded_for(head: &[u8]) -> Vec<&str> {
    let Ok((_, _, lines)) = crate::http::parse_request(head) else { return Vec::new() };
    lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.trim())
        .collect()
}

/// The 101 answer to an upgrade with `key`.
pub(super) fn switching_protocols(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /quiver HTTP/1.1\r\nHost: localhost:4433\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: quiver\r\nOrigin: http://localhost:4433\r\n\r\n";

    fn classify_str(head: &str, web: &WebConfig) -> Result<Request, u16> {
        classify(head.as_bytes(), web, false).map_err(|r| r.status)
    }

    #[test]
    fn an_upgrade_to_quiver_is_answered_with_rfc6455s_accept_key() {
        let web = WebConfig::default();
        let Ok(Request::Upgrade { key }) = classify_str(UPGRADE, &web) else { panic!() };
        let answer = String::from_utf8(switching_protocols(&key)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 "));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "RFC 6455's example");
        assert!(answer.contains("Sec-WebSocket-Protocol: quiver\r\n"));
        assert_eq!(classify_str("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &web), Ok(Request::Http));
    }

    #[test]
    fn bad_upgrades_get_their_http_error() {
        let web = WebConfig::default();
        assert_eq!(classify_str(&UPGRADE.replace("GET /quiver", "GET /other"), &web), Err(404));
        let old_version = classify(UPGRADE.replace("Version: 13", "Version: 8").as_bytes(), &web, false).unwrap_err();
        let answer = String::from_utf8(old_version.to_bytes()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{answer}");
        assert!(answer.contains("\r\nSec-WebSocket-Version: 13\r\n"), "the version it speaks: {answer}");
        assert!(answer.contains("\r\nUpgrade: websocket\r\n"), "what to upgrade to: {answer}");
        assert!(answer.contains("\r\nConnection: upgrade, close\r\n"), "{answer}");
        assert_eq!(classify_str(&UPGRADE.replace("Protocol: quiver", "Protocol: chat"), &web), Err(400));
        assert_eq!(classify_str(&UPGRADE.replace("Sec-WebSocket-Key", "X-Key"), &web), Err(400));
        assert_eq!(classify_str(&UPGRADE.replace("keep-alive, Upgrade", "keep-alive"), &web), Err(400));
        assert_eq!(classify_str(&UPGRADE.replace("GET", "POST"), &web), Err(405));
        // Whitespace before a header's colon, or a folded line (RFC 9112 §5.1, §5.2), and no forwarded address
        // read from such a head.
        let forged = UPGRADE.replace("Origin:", "X-Forwarded-For : 6.6.6.6\r\nOrigin:");
        assert_eq!((classify_str(&forged, &web), forwarded_for(forged.as_bytes())), (Err(400), vec![]));
        assert_eq!(classify_str(&UPGRADE.replace("\r\nOrigin:", "\r\n Origin:"), &web), Err(400));
        let strict = WebConfig { allowed_origins: vec!["https://app.example".into()], ..WebConfig::default() };
        assert_eq!(classify_str(UPGRADE, &strict), Err(403));
        let app = UPGRADE.replace("http://localhost:4433", "https://app.example");
        assert!(matches!(classify_str(&app, &strict), Ok(Request::Upgrade { .. })));
        let native = UPGRADE.replace("Origin: http://localhost:4433\r\n", "");
        assert!(matches!(classify_str(&native, &strict), Ok(Request::Upgrade { .. })), "no Origin: not a browser");
        let twice = UPGRADE.replace("Origin:", "Origin: https://app.example\r\nOrigin:");
        assert_eq!(classify_str(&twice, &strict), Err(400), "two origins are not none");
    }

    /// RFC 6455 §4.1: an upgrade is HTTP/1.1 or later, and its key appears once; a list header may come in several
    /// lines (RFC 9110 §5.3), the subprotocol's among them.
    #[test]
    fn an_upgrade_is_http_1_1_with_one_key_and_its_lists_in_any_line() {
        let web = WebConfig::default();
        assert_eq!(classify_str(&UPGRADE.replace("HTTP/1.1", "HTTP/1.0"), &web), Err(400));
        let second_key = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version:";
        let two_keys = UPGRADE.replace("Sec-WebSocket-Version:", second_key);
        assert_eq!(classify_str(&two_keys, &web), Err(400));
        let split = UPGRADE.replace("Protocol: quiver", "Protocol: chat\r\nSec-WebSocket-Protocol: quiver, other");
        assert!(matches!(classify_str(&split, &web), Ok(Request::Upgrade { .. })), "the list's second line");
        let split = UPGRADE.replace("Connection: keep-alive, Upgrade", "Connection: keep-alive\r\nConnection: Upgrade");
        assert!(matches!(classify_str(&split, &web), Ok(Request::Upgrade { .. })), "Connection in two lines");
    }

    /// Plain ws:// without an origin list takes this machine's pages only (and native clients, which send no
    /// Origin): a site open in the developer's browser could otherwise open a session to the dev server.
    #[test]
    fn plain_ws_without_an_origin_list_takes_this_machines_pages_only() {
        let web = WebConfig::default();
        let plain = |head: &str| classify(head.as_bytes(), &web, true).map_err(|r| r.status);
        assert!(matches!(plain(UPGRADE), Ok(Request::Upgrade { .. })), "http://localhost:4433");
        for local in ["http://127.0.0.1:8080", "http://[::1]:4433", "http://localhost"] {
            let head = UPGRADE.replace("http://localhost:4433", local);
            assert!(matches!(plain(&head), Ok(Request::Upgrade { .. })), "{local}");
        }
        for elsewhere in ["https://evil.example", "http://localhost.evil.example", "null"] {
            assert_eq!(plain(&UPGRADE.replace("http://localhost:4433", elsewhere)), Err(403), "{elsewhere}");
        }
        assert!(matches!(
            plain(&UPGRADE.replace("Origin: http://localhost:4433\r\n", "")),
            Ok(Request::Upgrade { .. })
        ));
        // Over TLS (wss://) the origin list decides alone, as before.
        assert!(classify_str(&UPGRADE.replace("http://localhost:4433", "https://app.example"), &web).is_ok());
    }
}
