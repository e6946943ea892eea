//! `[broker]` in `quiver.toml`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BrokerConfig;

/// `[broker]`: Redis, shared by every node of a cluster (empty `url`: one node, rooms in the data directory).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `redis://HOST:PORT` (`redis://:PASSWORD@HOST:PORT/DB` with a password); empty: no broker.
    pub url: String,
    /// A node that has not beaten for this long is dead: its members leave their rooms.
    pub presence_expiry_ms: u32,
    /// How often this node beats (and looks for dead nodes).
    pub heartbeat_ms: u32,
    /// A Redis request not answered within this long fails (a post is refused with `Unavailable`).
    pub request_timeout_ms: u32,
    /// Ready although Redis may evict keys (a `maxmemory` with a policy other than `noeviction`), or cannot say (it
    /// answers `INFO` with an error: an ACL without `+info`, a proxy): for a managed Redis whose policy cannot be
    /// changed and whose memory is watched. Off: such a node reports itself not ready.
    pub allow_eviction: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: String::new(),
            presence_expiry_ms: 10_000,
            heartbeat_ms: 1_000,
            request_timeout_ms: 2_000,
            allow_eviction: false,
        }
    }
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &BrokerSettings::redact(&self.url))
            .field("presence_expiry_ms", &self.presence_expiry_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("allow_eviction", &self.allow_eviction)
            .finish()
    }
}

impl BrokerSettings {
    /// `url` with its credentials replaced by `<redacted>`: the user information before `@`, and the `pass` and
    /// `password` query parameters (how a `redis+unix://` URL carries them).
    pub fn redact(url: &str) -> String {
        // The user information first, up to the last `@` of the whole URL (a password may hold a `?` or `/` the
        // parser would trip on; an `@` in the query only makes more hidden).
        let (mut out, rest) = match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => (format!("{}<redacted>", &url[..scheme + 3]), &url[at..]),
            _ => (String::new(), url),
        };
        let (base, query) = match rest.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (rest, None),
        };
        out.push_str(base);
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if ["pass", "password"].contains(&key.to_ascii_lowercase().as_str()) => {
                        format!("{key}=<redacted>")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out = format!("{out}?{}", pairs.join("&"));
        }
        out
    }

    /// What is wrong with these settings: (key, why).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.url.is_empty() {
            return Ok(());
        }
        if !self.url.starts_with("redis://") && !self.url.starts_with("redis+unix://") {
            return Err(("broker.url", format!("{} is not a redis:// URL", BrokerSettings::redact(&self.url))));
        }
        if redis::Client::open(self.url.as_str()).is_err() {
            return Err(("broker.url", format!("{} is not a valid Redis URL", BrokerSettings::redact(&self.url))));
        }
        if self.heartbeat_ms == 0 {
            return Err(("broker.heartbeat_ms", "must be at least 1".into()));
        }
        if u64::from(self.presence_expiry_ms) < 2 * u64::from(self.heartbeat_ms) {
            return Err((
                "broker.presence_expiry_ms",
                format!(
                    "{} is less than two heartbeats (broker.heartbeat_ms = {}): live nodes would be declared dead",
                    self.presence_expiry_ms, self.heartbeat_ms
                ),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(("broker.request_timeout_ms", "must be at least 1".into()));
        }
        // A beat waits for Redis up to the request timeout, and the next one is sent a heartbeat after it was, or at
        // once when its reply took longer; that one's stamp can come a request timeout later again. So a live node's
        // stamps on a slow Redis can be a request timeout and the larger of a heartbeat and a request timeout apart:
        // an expiry within that buries live nodes. (The check was against a heartbeat and a request timeout until
        // 2026-12-07: with the request timeout the longer, a node on a slow Redis could be buried, live.)
        let (heartbeat, timeout) = (u64::from(self.heartbeat_ms), u64::from(self.request_timeout_ms));
        let longest_gap = heartbeat.max(timeout) + timeout;
        if u64::from(self.presence_expiry_ms) <= longest_gap {
            return Err((
                "broker.presence_expiry_ms",
                format!(
                    "{} is not more than broker.request_timeout_ms + the larger of broker.heartbeat_ms and \
                     broker.request_timeout_ms ({timeout} + {}): a live node waiting on a slow Redis would be \
                     declared dead",
                    self.presence_expiry_ms,
                    heartbeat.max(timeout)
                ),
            ));
        }
        Ok(())
    }

    /// The broker these settings name, if any.
    pub fn config(&self) -> Option<BrokerConfig> {
        (!self.url.is_empty()).then(|| BrokerConfig {
            url: self.url.clone(),
            presence_expiry: Duration::from_millis(u64::from(self.presence_expiry_ms)),
            heartbeat: Duration::from_millis(u64::from(self.heartbeat_ms)),
            request_timeout: Duration::from_millis(u64::from(self.request_timeout_ms)),
            allow_eviction: self.allow_eviction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_bad_urls_refused() {
        assert_eq!(BrokerSettings::redact("redis://:s3cret@10.0.0.1:6379/0"), "redis://<redacted>@10.0.0.1:6379/0");
        assert_eq!(
            BrokerSettings::redact("redis+unix:///run/redis.sock?db=1&pass=S3CRET&PASSWORD=x"),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>&PASSWORD=<redacted>"
        );
        assert_eq!(BrokerSettings::redact("redis://h:6379/0?protocol=resp3"), "redis://h:6379/0?protocol=resp3");
        assert_eq!(BrokerSettings::redact("redis://:p?w@host:6379"), "redis://<redacted>@host:6379");
        assert_eq!(BrokerSettings::redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let with = |url: &str| BrokerSettings { url: url.into(), ..BrokerSettings::default() };
        assert!(with("").check().is_ok());
        assert!(with("redis://127.0.0.1:6379").check().is_ok());
        assert_eq!(with("http://127.0.0.1").check().unwrap_err().0, "broker.url");
        let fast = BrokerSettings { presence_expiry_ms: 1_000, ..with("redis://127.0.0.1:1") };
        assert_eq!(fast.check().unwrap_err().0, "broker.presence_expiry_ms");
        // Two heartbeats past u32::MAX: compared without wrapping (a wrapped product let any expiry through).
        let slow = BrokerSettings { heartbeat_ms: 1 << 31, presence_expiry_ms: 10_000, ..with("redis://127.0.0.1:1") };
        assert_eq!(slow.check().unwrap_err().0, "broker.presence_expiry_ms");
        // Two heartbeats, but not a heartbeat and a request timeout: a beat waiting on a slow Redis outlives it.
        let waits = BrokerSettings { presence_expiry_ms: 3_000, heartbeat_ms: 1_000, ..with("redis://127.0.0.1:1") };
        let (key, why) = waits.check().unwrap_err();
        assert_eq!(key, "broker.presence_expiry_ms");
        assert!(why.contains("request_timeout_ms"), "{why}");
        // A beat whose reply took the whole request timeout is followed at once by one that can take it again: with
        // the request timeout longer than the heartbeat, two request timeouts (accepted before 2026-12-07).
        assert!(BrokerSettings { presence_expiry_ms: 3_100, request_timeout_ms: 2_000, ..waits.clone() }
            .check()
            .is_err());
        assert!(BrokerSettings { request_timeout_ms: 1_499, ..waits.clone() }.check().is_ok());
        assert!(BrokerSettings { request_timeout_ms: 1_500, ..waits.clone() }.check().is_err());
        assert!(BrokerSettings { heartbeat_ms: 1_900, request_timeout_ms: 1_000, ..waits.clone() }.check().is_err());
        assert!(BrokerSettings { heartbeat_ms: 1_500, request_timeout_ms: 1_000, ..waits.clone() }.check().is_ok());
        assert!(format!("{:?}", with("redis://u:pw@h:1")).contains("<redacted>"));
    }
}
