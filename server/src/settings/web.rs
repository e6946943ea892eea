//! `[web]`: browsers (WebTransport, the demo page) and the WebSocket fallback.

use serde::{Deserialize, Serialize};

use super::{Invalid, Settings};
use crate::{config::WebSocketListen, WebConfig};

/// `[web]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// The demo page's TCP address: `auto` (loopback on the QUIC port with the dev certificate, else off), `off`,
    /// or an address.
    pub page: String,
    /// The WebTransport URL path (and the WebSocket fallback's).
    pub path: String,
    /// Origins allowed to open WebTransport sessions and WebSockets (empty: any, for development).
    pub origins: Vec<String>,
    /// The WebSocket fallback's TCP address: `auto` (the QUIC address and port, over TCP), `off`, or an address.
    pub websocket: String,
    /// The WebSocket connections' TCP send buffer, bytes: small keeps ticks fresh on slow links.
    pub websocket_send_buffer: usize,
    /// Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client a WebSocket upgrade is
    /// admitted as (empty: none).
    pub trusted_proxies: Vec<String>,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            page: "auto".into(),
            path: WebConfig::DEFAULT_PATH.into(),
            origins: Vec::new(),
            websocket: "auto".into(),
            websocket_send_buffer: WebConfig::DEFAULT_WEBSOCKET_SEND_BUFFER,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Settings {
    /// Where the WebSocket fallback listens: `web.websocket` resolved.
    pub fn websocket_listen(&self) -> Result<WebSocketListen, Invalid> {
        match self.web.websocket.as_str() {
            "off" => Ok(WebSocketListen::Off),
            "auto" => Ok(WebSocketListen::SamePort),
            addr => addr.parse().map(WebSocketListen::At).map_err(|_| {
                Invalid::new("web.websocket", format!("{addr:?} is not auto, off or an address like [::]:443"))
            }),
        }
    }

    pub(super) fn web_config(&self) -> Result<WebConfig, Invalid> {
        if !(4096..=64 << 20).contains(&self.web.websocket_send_buffer) {
            return Err(Invalid::new("web.websocket_send_buffer", "must be 4096 to 67108864 bytes"));
        }
        let trusted_proxies = self
            .web
            .trusted_proxies
            .iter()
            .map(|text| {
                text.parse()
                    .map_err(|why: crate::forwarded::CidrError| Invalid::new("web.trusted_proxies", why.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(WebConfig {
            trusted_proxies,
            path: self.web.path.clone(),
            allowed_origins: self.web.origins.clone(),
            http: self.page_addr()?,
            websocket: self.websocket_listen()?,
            websocket_send_buffer: self.web.websocket_send_buffer,
        })
    }
}
