//! The server's settings: one struct, the `quiver.toml` file's shape. Read from the file (`--config`), overridden by
//! `QUIVER_…` environment variables and then by flags (flags > env > file > defaults: [`load`]), checked as a whole
//! ([`Settings::check`]) and turned into a [`ServerConfig`]. `quiver-server config init` prints [`TEMPLATE`]: every
//! key with its default and what it means. Tests keep the template, this struct and docs/operations.md in step.

mod check;
mod load;
mod web;

pub use crate::config::{MAX_CONGESTION_FLOOR, MAX_COPIES, MAX_DATAGRAM_SEND_BUFFER, MAX_HANDSHAKE_TIMEOUT_MS};
pub use check::MAX_DRAIN_TIMEOUT_MS;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use quiver_proto::Limits;
use quiver_transport::TransportTuning;
use serde::{Deserialize, Serialize};

use crate::{
    auth::{AuthConfig, TokenKey},
    budget::Budget,
    store::Durability,
    ServerConfig, TlsSource,
};
pub use load::{keys, load, names_a_setting, Layers, Override, SettingsError, ENV_PREFIX};
pub use web::WebSettings;

/// `quiver-server config init`: the configuration file with every key at its default, commented.
pub const TEMPLATE: &str = include_str!("quiver.toml");

/// Everything a server is started with (`quiver.toml`). Empty strings mean "none" where a setting is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// UDP address of the QUIC endpoint (native clients and WebTransport); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The dev certificate, the dev token key and the room store; one server per directory.
    pub data_dir: PathBuf,
    /// On SIGTERM / SIGINT, time given to clients to take their GoAway and to posts in flight to be stored.
    pub drain_timeout_ms: u32,
    /// The certificate.
    pub tls: TlsSettings,
    /// Access tokens.
    pub auth: AuthSettings,
    /// Where rooms are kept.
    pub store: StoreSettings,
    /// Redis, joining this node to others (rooms, presence and ticks shared).
    pub broker: crate::cluster::BrokerSettings,
    /// Per-connection bounds, reported to clients in Welcome.
    pub limits: Limits,
    /// Server-wide memory bounds.
    pub budget: Budget,
    /// Latency-relevant QUIC settings.
    pub transport: TransportSettings,
    /// Browsers: WebTransport and the demo page.
    pub web: WebSettings,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: AdminSettings,
    /// Logs and qlog.
    pub log: LogSettings,
}

/// `[tls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first (empty: the dev certificate in the data directory).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// `[auth]` (its `Debug` leaves the secret out).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Admit clients without tokens, with every right (demos only).
    pub anonymous: bool,
    /// An HS256 secret, hex (at least 64 digits), verifying tokens; redacted by `config print`.
    pub hs256_secret: String,
    /// Files each holding an HS256 secret in hex.
    pub hs256_key_files: Vec<PathBuf>,
    /// PEM files each holding an Ed25519 public key (EdDSA tokens).
    pub ed25519_public_key_files: Vec<PathBuf>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("anonymous", &self.anonymous)
            .field("hs256_secret", &if self.hs256_secret.is_empty() { "" } else { "<redacted>" })
            .field("hs256_key_files", &self.hs256_key_files)
            .field("ed25519_public_key_files", &self.ed25519_public_key_files)
            .finish()
    }
}

/// `[store]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `disk` (the store in `data_dir/store`) or `memory` (lost on restart).
    pub kind: StoreKind,
    /// With `disk`: `fsync` or `os` (docs/durability.md).
    pub durability: DiskDurability,
}

/// Where rooms are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The store in the data directory.
    #[default]
    Disk,
    /// Memory only.
    Memory,
}

/// When a post stored on disk is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiskDurability {
    /// On disk (one fsync per group of posts).
    #[default]
    Fsync,
    /// Handed to the OS.
    Os,
}

/// `[transport]`: [`TransportTuning`] in plain numbers (0 turns a feature off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// Ask peers to acknowledge within this many ms (ACK-frequency extension); 0: quinn's 25 ms, not asked.
    pub max_ack_delay_ms: u32,
    /// Packets received out of order before an immediate ACK (with `max_ack_delay_ms`).
    pub reordering_threshold: u32,
    /// RTT assumed before the first sample, ms.
    pub initial_rtt_ms: u32,
    /// PING interval on quiet connections, ms; 0: none.
    pub keep_alive_ms: u32,
    /// Bytes of datagrams quinn may hold waiting for the congestion window.
    pub datagram_send_buffer: u32,
    /// Tail-loss probe this many ms after the last reliable write, if it is still unacknowledged, on a path that lost
    /// packets lately (elsewhere once its ACK is overdue); 0: none.
    pub tail_probe_ms: u32,
    /// Floor under the congestion window, bytes; 0: quinn's plain Cubic.
    pub congestion_floor: u32,
    /// Redundant delivery: datagram copies per room frame for rooms joined with `redundant`; 0: not granted.
    pub copies: u8,
    /// Between rounds of copies, ms.
    pub copy_spacing_ms: u32,
    /// Path MTU discovery up to this UDP payload size (1200 to 65527); 0: none, every path at 1,200 bytes.
    pub mtu_discovery: u16,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings::from_tuning(&TransportTuning::quiver())
    }
}

impl TransportSettings {
    fn from_tuning(tuning: &TransportTuning) -> TransportSettings {
        let ms = |d: Option<Duration>| d.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        TransportSettings {
            max_ack_delay_ms: ms(tuning.max_ack_delay),
            reordering_threshold: tuning.reordering_threshold,
            initial_rtt_ms: ms(Some(tuning.initial_rtt)),
            keep_alive_ms: ms(tuning.keep_alive),
            datagram_send_buffer: u32::try_from(tuning.datagram_send_buffer).unwrap_or(u32::MAX),
            tail_probe_ms: ms(tuning.tail_probe),
            congestion_floor: tuning.congestion_floor.map_or(0, |f| u32::try_from(f).unwrap_or(u32::MAX)),
            copies: tuning.copies,
            copy_spacing_ms: ms(Some(tuning.copy_spacing)),
            mtu_discovery: tuning.mtu_discovery.unwrap_or(0),
        }
    }

    /// The tuning these numbers describe.
    pub fn tuning(&self) -> TransportTuning {
        let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
        let tuning = TransportTuning {
            name: "configured",
            max_ack_delay: ms(self.max_ack_delay_ms),
            reordering_threshold: self.reordering_threshold,
            initial_rtt: Duration::from_millis(u64::from(self.initial_rtt_ms)),
            keep_alive: ms(self.keep_alive_ms),
            datagram_send_buffer: self.datagram_send_buffer as usize,
            tail_probe: ms(self.tail_probe_ms),
            congestion_floor: (self.congestion_floor > 0).then_some(u64::from(self.congestion_floor)),
            copies: self.copies,
            copy_spacing: Duration::from_millis(u64::from(self.copy_spacing_ms)),
            mtu_discovery: (self.mtu_discovery > 0).then_some(self.mtu_discovery),
        };
        match tuning == (TransportTuning { name: "configured", ..TransportTuning::quiver() }) {
            true => TransportTuning::quiver(),
            false => tuning,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// TCP address of `/metrics`, `/healthz` and `/readyz`: `auto` ([`AdminSettings::DEFAULT_ADDR`], or a free
    /// loopback port when the QUIC port is 0), `off`, or an address.
    pub listen: String,
    /// Host names (besides `localhost` and IP addresses, always answered) the admin listener answers requests for:
    /// a scraper that asks by name needs its name here. Any other name is refused (a page whose name was rebound
    /// to this machine or a proxy in front of it, DNS rebinding, must not read the metrics).
    pub hosts: Vec<String>,
}

impl AdminSettings {
    /// Where `auto` puts the admin listener: loopback only, a port of its own.
    pub const DEFAULT_ADDR: &'static str = "127.0.0.1:9433";
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: "auto".into(), hosts: Vec::new() }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (colours only on a terminal) or `json` (one object per line).
    pub format: LogFormat,
    /// Which lines: a tracing filter (`RUST_LOG` overrides it).
    pub filter: String,
    /// Write one qlog file per connection here (empty: off).
    pub qlog_dir: PathBuf,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            filter: "info,quinn=warn,web_transport_quinn=error,fjall=warn,lsm_tree=warn".into(),
            qlog_dir: PathBuf::new(),
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: ServerConfig::DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([0; 16], 4433))),
            data_dir: ServerConfig::DEFAULT_DATA_DIR.into(),
            drain_timeout_ms: 10_000,
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            store: StoreSettings::default(),
            broker: crate::cluster::BrokerSettings::default(),
            limits: Limits::default(),
            budget: Budget::default(),
            transport: TransportSettings::default(),
            web: WebSettings::default(),
            admin: AdminSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// A setting whose value cannot be used, by key (`limits.max_frame`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `section.key`, or `key` at the top.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    pub(super) fn new(key: &str, message: impl Into<String>) -> Invalid {
        Invalid { key: key.into(), message: message.into() }
    }
}

impl Settings {
    /// The demo page's address: `web.page` resolved.
    pub fn page_addr(&self) -> Result<Option<SocketAddr>, Invalid> {
        match self.web.page.as_str() {
            "off" => Ok(None),
            "auto" if self.tls.cert.as_os_str().is_empty() => Ok(Some(crate::web::default_page_addr(self.listen))),
            "auto" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                Invalid::new("web.page", format!("{addr:?} is not auto, off or an address like 127.0.0.1:8080"))
            }),
        }
    }

    /// The admin listener's address: `admin.listen` resolved.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, Invalid> {
        match self.admin.listen.as_str() {
            "off" => Ok(None),
            "auto" => {
                let mut addr: SocketAddr =
                    AdminSettings::DEFAULT_ADDR.parse().map_err(|_| Invalid::new("admin.listen", "bad default"))?;
                if self.listen.port() == 0 {
                    addr.set_port(0);
                }
                Ok(Some(addr))
            }
            addr => addr.parse().map(Some).map_err(|_| {
                Invalid::new("admin.listen", format!("{addr:?} is not auto, off or an address like 127.0.0.1:9433"))
            }),
        }
    }

    /// The durability rooms are stored with.
    pub fn durability(&self) -> Durability {
        match (self.store.kind, self.store.durability) {
            (StoreKind::Memory, _) => Durability::Memory,
            (StoreKind::Disk, DiskDurability::Fsync) => Durability::Fsync,
            (StoreKind::Disk, DiskDurability::Os) => Durability::Os,
        }
    }

    /// How clients are admitted; reads the key files (each one must be there).
    pub fn auth_config(&self) -> Result<AuthConfig, Invalid> {
        crate::auth::warn_exposed("auth.hs256_key_files", &self.auth.hs256_key_files); // (at a start, once)
        self.read_auth(&|_| false).map(|(auth, _)| auth)
    }

    /// How clients are admitted from now on, for a reload (SIGHUP): a key file that is gone is a key removed (an
    /// operator revokes a key by deleting its file: keeping it trusted would fail open), returned to be named. A
    /// reload that would leave no key at all is refused (write the new key before deleting the old one).
    pub fn auth_config_for_reload(&self) -> Result<(AuthConfig, Vec<PathBuf>), Invalid> {
        self.reload_auth(&|_| true)
    }

    /// [`Settings::auth_config_for_reload`] after `before` (the settings applied until now): only a key file
    /// `before` listed too can be gone (a key removed); one listed anew must be there (a path mistyped while adding
    /// a key was taken for a key removed, and the reload applied without the new key).
    pub fn auth_config_for_reload_after(&self, before: &Settings) -> Result<(AuthConfig, Vec<PathBuf>), Invalid> {
        let listed = |path: &Path| {
            let auth = &before.auth;
            auth.hs256_key_files.iter().chain(&auth.ed25519_public_key_files).any(|was| was == path)
        };
        crate::auth::warn_exposed("auth.hs256_key_files", &self.auth.hs256_key_files); // (the settings applied)
        self.reload_auth(&listed)
    }

    fn reload_auth(&self, removable: &dyn Fn(&Path) -> bool) -> Result<(AuthConfig, Vec<PathBuf>), Invalid> {
        let (auth, gone) = self.read_auth(removable)?;
        if !gone.is_empty() && matches!(auth, AuthConfig::DevKey) {
            let gone = gone.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(Invalid::new(
                "auth",
                format!("every token key file is gone ({gone}): a reload must leave at least one key"),
            ));
        }
        Ok((auth, gone))
    }

    /// The auth settings with their key files read; a file missing that `removable` names is a key removed
    /// (returned), any other is an error.
    fn read_auth(&self, removable: &dyn Fn(&Path) -> bool) -> Result<(AuthConfig, Vec<PathBuf>), Invalid> {
        if self.auth.anonymous {
            return Ok((AuthConfig::Anonymous, Vec::new()));
        }
        let mut gone = Vec::new();
        let mut is_gone = |path: &PathBuf, err: &std::io::Error| {
            let removed = removable(path) && err.kind() == std::io::ErrorKind::NotFound;
            if removed {
                gone.push(path.clone());
            }
            removed
        };
        let mut keys = Vec::new();
        if let Some(secret) = crate::auth::parse_hs256_secret(&self.auth.hs256_secret) {
            keys.push(TokenKey::Hs256(secret));
        }
        for path in &self.auth.hs256_key_files {
            match crate::auth::read_hs256_key(path) {
                Ok(secret) => keys.push(TokenKey::Hs256(secret)),
                Err(crate::auth::AuthError::Io { source, .. }) if is_gone(path, &source) => {}
                Err(err) => return Err(Invalid::new("auth.hs256_key_files", err.to_string())),
            }
        }
        for path in &self.auth.ed25519_public_key_files {
            let named =
                |why: String| Invalid::new("auth.ed25519_public_key_files", format!("{}: {why}", path.display()));
            let pem = match std::fs::read(path) {
                Ok(pem) => pem,
                Err(err) if is_gone(path, &err) => continue,
                Err(err) => return Err(named(err.to_string())),
            };
            // Parsed here, one file at a time, so that a bad one is named (the verifier only knows it was "an
            // Ed25519 public key").
            let one = AuthConfig::Keys(vec![TokenKey::Ed25519Pem(pem.clone())]);
            crate::auth::Auth::from_config(&one, std::path::Path::new("")).map_err(|err| match err {
                crate::auth::AuthError::BadKey { reason, .. } => {
                    named(format!("not an Ed25519 public key (PEM): {reason}"))
                }
                other => named(other.to_string()),
            })?;
            keys.push(TokenKey::Ed25519Pem(pem));
        }
        let auth = match keys.is_empty() {
            true => AuthConfig::DevKey,
            false => AuthConfig::Keys(keys),
        };
        Ok((auth, gone))
    }

    /// The server configuration these settings describe (checked first; key files are read).
    pub fn server_config(&self) -> Result<ServerConfig, Invalid> {
        self.check()?;
        let tls = match self.tls.cert.as_os_str().is_empty() {
            true => TlsSource::Dev,
            false => TlsSource::Pem { cert: self.tls.cert.clone(), key: self.tls.key.clone() },
        };
        let web = self.web_config()?;
        Ok(ServerConfig {
            tls,
            web,
            auth: self.auth_config()?,
            durability: self.durability(),
            broker: self.broker.config(),
            limits: self.limits.clone(),
            budget: self.budget.clone(),
            tuning: self.transport.tuning(),
            admin: self.admin_addr()?,
            admin_hosts: self.admin.hosts.clone(),
            drain_timeout: Duration::from_millis(u64::from(self.drain_timeout_ms)),
            qlog_dir: (!self.log.qlog_dir.as_os_str().is_empty()).then(|| self.log.qlog_dir.clone()),
            ..ServerConfig::dev(self.listen, self.data_dir.clone())
        })
    }

    /// What `config check` checks beyond [`Settings::check`]: the files the server would read at start, read and
    /// parsed (the token keys, the certificate and its key), so that a file the server would refuse is refused
    /// here too, named.
    pub fn check_files(&self) -> Result<(), Invalid> {
        self.server_config()?; // checks, then reads the token key files
        if !self.tls.cert.as_os_str().is_empty() {
            let loaded = quiver_certs::pem::load(&self.tls.cert, &self.tls.key)
                .map_err(|err| Invalid::new("tls.cert", err.to_string()))?;
            // The pair as the server's TLS takes it: a key of another certificate (a renewal half done), or of a
            // kind it cannot use, passed here and failed the start.
            quiver_transport::tls::check_server_cert(loaded.chain, loaded.key).map_err(|err| {
                Invalid::new("tls.key", format!("{err} ({} with {})", self.tls.cert.display(), self.tls.key.display()))
            })?;
        }
        Ok(())
    }

    /// The paths these settings name that are relative, by key: read from the server's working directory (a
    /// service's, `/var/lib/quiver` in the systemd unit), not from the configuration file's, so `config check` run
    /// elsewhere reads other files than the server will (`config check` says so).
    pub fn relative_paths(&self) -> Vec<(&'static str, &Path)> {
        // (The default data directory, `.quiver`, is the working directory's by design: a service sets its own.)
        let data_dir = (self.data_dir != Path::new(ServerConfig::DEFAULT_DATA_DIR)).then_some(&self.data_dir);
        let mut named: Vec<(&'static str, &Path)> = vec![("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)];
        named.extend(data_dir.map(|path| ("data_dir", path.as_path())));
        named.extend(self.auth.hs256_key_files.iter().map(|path| ("auth.hs256_key_files", path.as_path())));
        named.extend(
            self.auth.ed25519_public_key_files.iter().map(|path| ("auth.ed25519_public_key_files", path.as_path())),
        );
        named.push(("log.qlog_dir", &self.log.qlog_dir));
        named.retain(|(_, path)| !path.as_os_str().is_empty() && path.is_relative());
        named
    }

    /// The settings as TOML, with secrets replaced by `<redacted>` (`config print`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.hs256_secret.is_empty() {
            shown.auth.hs256_secret = "<redacted>".into();
        }
        shown.broker.url = crate::cluster::BrokerSettings::redact(&shown.broker.url);
        toml::to_string(&shown).unwrap_or_else(|err| format!("# cannot show the settings: {err}\n"))
    }
}

#[cfg(test)]
mod tests;
