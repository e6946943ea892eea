//! The demo page as the server describes it: what `/config.json` says, its dev tokens, the URL printed at start.

use super::Server;

impl<R> Server<R> {
    /// What `/config.json` tells the demo page.
    pub(super) fn page_info(&self) -> crate::web::PageInfo {
        crate::web::PageInfo {
            udp_port: self.local_addr.port(),
            websocket_port: self.websocket_addr.map(|addr| addr.port()),
            path: self.config.web.path.clone(),
            cert_hash: (self.config.tls == crate::TlsSource::Dev).then(|| self.fingerprint.clone()),
            // What the README's `quiver chat --room lobby` and `quiver tick pub --channel prices` use.
            room: "lobby".into(),
            channel: "prices".into(),
            dev_tokens: self.dev_tokens(),
            origin_hosts: crate::web::origin_hosts(&self.config.web.allowed_origins),
        }
    }

    /// The demo page's dev tokens: with the dev key only.
    fn dev_tokens(&self) -> Option<crate::web::DevTokens> {
        matches!(self.config.auth, crate::auth::AuthConfig::DevKey)
            .then(|| crate::web::DevTokens { data_dir: self.config.data_dir.clone(), key: self.page_key.clone() })
    }

    /// The demo page's URL, if it is served: with the dev key, and where it is reached from this machine, carrying
    /// the page key (`#key=`) without which the page gets no dev token. (On another address every peer gets 403
    /// anyway: the key is not printed where it can only be shared.)
    /// The host is the loopback address the page's listener holds, not `localhost` (which a browser may take to
    /// the other loopback address, where another local user could listen at the same port and take the key), but
    /// where the listener is on `[::]`, which holds both (`http::bind`): the page's own, or the WebSocket listener
    /// serving it (the default).
    pub fn page_url(&self) -> Option<String> {
        let page = self.page_addr?;
        let local = page.ip().is_unspecified() || page.ip().is_loopback();
        let listener = match (self.page_on_websocket, self.websocket_addr) {
            (true, Some(ws)) => ws.ip(),
            _ => page.ip(),
        };
        let both = matches!(listener, std::net::IpAddr::V6(v6) if v6.is_unspecified());
        let host = match page.ip() {
            _ if both => "localhost".to_string(),
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let key = self.dev_tokens().filter(|_| local).map(|dev| format!("#key={}", dev.key)).unwrap_or_default();
        Some(format!("http://{host}:{}/{key}", page.port()))
    }
}
