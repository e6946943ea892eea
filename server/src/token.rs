//! `quiver-server token`: mints an access token signed with the dev key of a data directory, an HS256 secret file
//! (the format of the server's `--hs256-key`) or an Ed25519 private key.
//!
//! It refuses what a server would refuse rather than print a token that fails at Hello: a subject that is not an
//! identity (over [`quiver_proto::Limits::MAX_IDENTITY`] bytes, empty, control characters), and a dev key that does
//! not exist. Creating the dev key here is opt-in (`--init-key`): a key made by this command is one no running
//! server has, so only servers started on that data directory afterwards accept its tokens.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    auth::{
        check_subject, dev_key_exists, load_or_generate_dev_key, mint_dev, mint_ed25519, mint_hs256, read_hs256_key,
        AuthError, ChannelRight, Claims, MintError, RoomRight, SubjectError, DEV_KEY_FILE,
    },
    settings::Settings,
};

/// What a token is signed with.
#[derive(Clone, PartialEq, Eq)]
pub enum Signer {
    /// The dev key in a server's data directory.
    DevKey {
        /// The data directory.
        data_dir: PathBuf,
        /// Create the key when there is none (`--init-key`).
        create: bool,
    },
    /// An HS256 secret file: hex, at least 64 digits (`--hs256-key`).
    Hs256Key(PathBuf),
    /// An Ed25519 private key, PKCS#8 PEM (`--ed25519-private-key`).
    Ed25519PrivateKey(PathBuf),
    /// The HS256 secret the server's configuration holds (`auth.hs256_secret`).
    Hs256Secret(Vec<u8>),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::DevKey { data_dir, create } => {
                f.debug_struct("DevKey").field("data_dir", data_dir).field("create", create).finish()
            }
            Signer::Hs256Key(path) => f.debug_tuple("Hs256Key").field(path).finish(),
            Signer::Ed25519PrivateKey(path) => f.debug_tuple("Ed25519PrivateKey").field(path).finish(),
            Signer::Hs256Secret(_) => f.write_str("Hs256Secret(<redacted>)"),
        }
    }
}

/// A token to mint: without rooms or channels it grants every right on every room and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The subject: the identity the client gets.
    pub sub: String,
    /// Room patterns the token may join.
    pub rooms: Vec<String>,
    /// Also allow posting to `rooms`.
    pub post: bool,
    /// Channel patterns the token may subscribe to.
    pub channels: Vec<String>,
    /// Also allow publishing on `channels`.
    pub publish: bool,
    /// Validity: "90s", "30m", "1h", "7d" or plain seconds.
    pub ttl: String,
    /// The key.
    pub signer: Signer,
}

impl TokenRequest {
    /// A token for `sub` with every right on every room and channel, valid for an hour.
    pub fn every_right(sub: impl Into<String>, signer: Signer) -> Self {
        TokenRequest {
            sub: sub.into(),
            rooms: vec![],
            post: false,
            channels: vec![],
            publish: false,
            ttl: "1h".into(),
            signer,
        }
    }
}

/// A minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The token (a JWT).
    pub token: String,
    /// The dev key file, when minting created it.
    pub created_key: Option<PathBuf>,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenCommandError {
    /// `--ttl` is not a duration.
    #[error("--ttl {0:?}: expected e.g. 90s, 30m, 1h or 7d")]
    BadTtl(String),
    /// `--ttl` has a unit other than s, m, h, d.
    #[error("--ttl {text:?}: unknown unit {unit:?} (s, m, h, d)")]
    TtlUnit {
        /// What was given.
        text: String,
        /// The unit.
        unit: String,
    },
    /// `--ttl` is 0 or too large.
    #[error("--ttl {0:?}: out of range (1 s to 366 d: a token cannot be revoked alone, so it must end)")]
    TtlRange(String),
    /// `--sub` is not an identity servers accept.
    #[error("--sub: {0}")]
    Subject(#[from] SubjectError),
    /// The data directory has no dev key and `--init-key` was not given.
    #[error(
        "no dev key at {} (data directory {}): start the server on that data directory first, pass --init-key to \
         create the key, or sign with --hs256-key FILE or --ed25519-private-key FILE",
        path.display(),
        data_dir.display()
    )]
    NoDevKey {
        /// The key file looked for.
        path: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The Ed25519 private key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// An HS256 key file could not be read or the dev key created.
    #[error(transparent)]
    Key(#[from] AuthError),
    /// Signing failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The server's configuration could not be read (to learn what it verifies tokens with).
    #[error(transparent)]
    Settings(#[from] Box<crate::settings::SettingsError>),
    /// The server's configuration admits anyone: no token to mint.
    #[error("the server's configuration admits anyone without a token (auth.anonymous); tokens are neither needed nor checked")]
    Anonymous,
    /// `--init-key` for a server whose configuration names its own keys.
    #[error(
        "--init-key: the server's configuration names its token keys (auth.*), so it would not accept the dev key"
    )]
    InitKeyWithKeys,
    /// The server verifies EdDSA public keys only: the private half is needed.
    #[error(
        "the server's configuration verifies EdDSA tokens against public keys (auth.ed25519_public_key_files): sign \
         with --ed25519-private-key FILE, the private half of one"
    )]
    PublicKeysOnly,
    /// `--post` without a `--room`, or `--publish` without a `--channel`: it narrows nothing (a token without
    /// patterns has every right), which is not what it reads like.
    #[error(
        "{flag} applies to the {patterns} patterns and none is given, so it would grant nothing (and without any \
         --room or --channel the token has every right on every room and channel); name the {patterns} patterns \
         it may {verb}"
    )]
    RightWithoutPattern {
        /// `--post` or `--publish`.
        flag: &'static str,
        /// `--room` or `--channel`.
        patterns: &'static str,
        /// What the right allows.
        verb: &'static str,
    },
    /// The data directory of the dev key is not this user's alone.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
}

/// What the server configured by `auth` (with its `data_dir`) verifies tokens with, to sign a token it accepts: its
/// HS256 secret, else its first HS256 key file, else the dev key of `data_dir` (created with `init_key`).
pub fn configured_signer(
    auth: &crate::settings::AuthSettings,
    data_dir: &Path,
    init_key: bool,
) -> Result<Signer, TokenCommandError> {
    if auth.anonymous {
        return Err(TokenCommandError::Anonymous);
    }
    let configured =
        !auth.hs256_secret.is_empty() || !auth.hs256_key_files.is_empty() || !auth.ed25519_public_key_files.is_empty();
    if configured && init_key {
        return Err(TokenCommandError::InitKeyWithKeys);
    }
    if let Some(secret) = crate::auth::parse_hs256_secret(&auth.hs256_secret) {
        return Ok(Signer::Hs256Secret(secret));
    }
    if let Some(path) = auth.hs256_key_files.first() {
        return Ok(Signer::Hs256Key(path.clone()));
    }
    if !auth.ed25519_public_key_files.is_empty() {
        return Err(TokenCommandError::PublicKeysOnly);
    }
    Ok(Signer::DevKey { data_dir: data_dir.to_owned(), create: init_key })
}

/// Mints the token `request` describes, valid from `now`.
pub fn mint(request: &TokenRequest, now: SystemTime) -> Result<Minted, TokenCommandError> {
    let ttl_s = parse_ttl(&request.ttl)?;
    let now_s = now.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| TokenCommandError::Clock)?.as_secs();
    check_subject(&request.sub)?;
    if request.post && request.rooms.is_empty() {
        return Err(TokenCommandError::RightWithoutPattern { flag: "--post", patterns: "--room", verb: "post to" });
    }
    if request.publish && request.channels.is_empty() {
        let (flag, patterns, verb) = ("--publish", "--channel", "publish on");
        return Err(TokenCommandError::RightWithoutPattern { flag, patterns, verb });
    }
    let claims = claims(request, now_s, ttl_s);
    match &request.signer {
        Signer::DevKey { data_dir, create } => {
            let created_key = dev_key(data_dir, *create)?;
            Ok(Minted { token: mint_dev(data_dir, &claims)?, created_key })
        }
        Signer::Hs256Key(path) => Ok(Minted { token: mint_hs256(&claims, &read_hs256_key(path)?)?, created_key: None }),
        Signer::Hs256Secret(secret) => Ok(Minted { token: mint_hs256(&claims, secret)?, created_key: None }),
        Signer::Ed25519PrivateKey(path) => {
            let pem = std::fs::read(path).map_err(|source| TokenCommandError::Read { path: path.clone(), source })?;
            Ok(Minted { token: mint_ed25519(&claims, &pem)?, created_key: None })
        }
    }
}

/// Makes sure the dev key exists, creating it if `create`; the key file, when created.
fn dev_key(data_dir: &Path, create: bool) -> Result<Option<PathBuf>, TokenCommandError> {
    let path = data_dir.join(DEV_KEY_FILE);
    if dev_key_exists(data_dir) {
        return Ok(None);
    }
    if !create {
        return Err(TokenCommandError::NoDevKey { path, data_dir: data_dir.to_owned() });
    }
    // Made (or checked) as the server makes its data directory: no other user may write a key of their own there.
    crate::datadir::private_dir(data_dir)?;
    load_or_generate_dev_key(data_dir)?;
    Ok(Some(path))
}

fn claims(request: &TokenRequest, now_s: u64, ttl_s: u64) -> Claims {
    let mut claims = Claims::everything(request.sub.clone(), now_s, ttl_s);
    if !request.rooms.is_empty() || !request.channels.is_empty() {
        let room_rights = if request.post { vec![RoomRight::Join, RoomRight::Post] } else { vec![RoomRight::Join] };
        let channel_rights = if request.publish {
            vec![ChannelRight::Subscribe, ChannelRight::Publish]
        } else {
            vec![ChannelRight::Subscribe]
        };
        claims.rooms = request.rooms.iter().map(|p| (p.clone(), room_rights.clone())).collect();
        claims.channels = request.channels.iter().map(|p| (p.clone(), channel_rights.clone())).collect();
    }
    claims
}

/// "90s", "30m", "1h", "7d" (or plain seconds) → seconds.
pub fn parse_ttl(text: &str) -> Result<u64, TokenCommandError> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| TokenCommandError::BadTtl(text.into()))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(TokenCommandError::TtlUnit { text: text.into(), unit: other.into() }),
    };
    n.checked_mul(unit).filter(|s| (1..=MAX_TTL_S).contains(s)).ok_or_else(|| TokenCommandError::TtlRange(text.into()))
}

/// The longest `--ttl`: 366 days. A token cannot be revoked alone (only its key can), so one that never expires is
/// a leak that never ends; services that need long access renew their tokens.
pub const MAX_TTL_S: u64 = 366 * 86_400;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quiver_proto::Limits;

    use super::*;
    use crate::auth::{Auth, AuthConfig, TokenKey};

    const NOW_S: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_S)
    }

    fn request(sub: &str, signer: Signer) -> TokenRequest {
        TokenRequest::every_right(sub, signer)
    }

    fn dev(data_dir: &Path, create: bool) -> Signer {
        Signer::DevKey { data_dir: data_dir.to_owned(), create }
    }

    #[test]
    fn ttls_take_a_unit() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        assert_eq!(parse_ttl("45").unwrap(), 45);
        assert!(matches!(parse_ttl("5y"), Err(TokenCommandError::TtlUnit { .. })));
        assert!(matches!(parse_ttl("h"), Err(TokenCommandError::BadTtl(_))));
        assert!(matches!(parse_ttl("0s"), Err(TokenCommandError::TtlRange(_))));
        assert!(parse_ttl("366d").is_ok() && matches!(parse_ttl("367d"), Err(TokenCommandError::TtlRange(_))));
        assert!(matches!(parse_ttl("99999999999999999d"), Err(TokenCommandError::TtlRange(_))));
    }

    #[test]
    fn without_a_dev_key_it_refuses_naming_the_file_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let err = mint(&request("alice", dev(&data_dir, false)), now()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TokenCommandError::NoDevKey { .. }), "{err:?}");
        assert!(message.contains(&data_dir.join(DEV_KEY_FILE).display().to_string()), "{message}");
        assert!(message.contains(&format!("data directory {}", data_dir.display())), "{message}");
        assert!(message.contains("--init-key"), "{message}");
        assert!(!data_dir.exists(), "nothing is created");
    }

    #[test]
    fn init_key_creates_the_dev_key_once_and_servers_on_it_accept_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let first = mint(&request("alice", dev(dir.path(), true)), now()).unwrap();
        assert_eq!(first.created_key, Some(dir.path().join(DEV_KEY_FILE)));
        let second = mint(&request("bob", dev(dir.path(), true)), now()).unwrap();
        assert_eq!(second.created_key, None, "an existing key is used, not replaced");
        let auth = Auth::from_config(&AuthConfig::DevKey, dir.path()).unwrap();
        assert_eq!(auth.verify(Some(&first.token), NOW_S).unwrap().unwrap().sub, "alice");
        assert_eq!(auth.verify(Some(&second.token), NOW_S).unwrap().unwrap().sub, "bob");
    }

    #[test]
    fn hs256_key_files_sign_what_servers_with_that_file_accept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.hex");
        std::fs::write(&file, format!("{}\n", "5a".repeat(32))).unwrap();
        let minted = mint(&request("carol", Signer::Hs256Key(file.clone())), now()).unwrap();
        let keys = vec![TokenKey::Hs256(read_hs256_key(&file).unwrap())];
        let auth = Auth::from_config(&AuthConfig::Keys(keys), dir.path()).unwrap();
        let claims = auth.verify(Some(&minted.token), NOW_S).unwrap().unwrap();
        assert_eq!((claims.sub.as_str(), claims.exp), ("carol", NOW_S + 3600));
        assert!(!dev_key_exists(dir.path()), "no dev key involved");
        std::fs::write(&file, "5a5a").unwrap();
        let err = mint(&request("carol", Signer::Hs256Key(file)), now()).unwrap_err().to_string();
        assert!(err.contains("secret.hex") && err.contains("at least 64 hex digits"), "{err}");
    }

    #[test]
    fn subjects_servers_refuse_are_refused_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let max = Limits::MAX_IDENTITY as usize;
        let long = "x".repeat(max + 1);
        let err = mint(&request(&long, dev(dir.path(), true)), now()).unwrap_err().to_string();
        assert!(err.starts_with("--sub:") && err.contains(&format!("at most {max} bytes")), "{err}");
        assert!(!dev_key_exists(dir.path()), "refused before any key is made");
        assert!(mint(&request(&"x".repeat(max), dev(dir.path(), true)), now()).is_ok());
        assert!(mint(&request("", dev(dir.path(), true)), now()).is_err());
    }

    #[test]
    fn rooms_and_channels_narrow_the_grants() {
        let mut narrow = request("dave", Signer::Hs256Key(PathBuf::new()));
        narrow.rooms = vec!["lobby".into()];
        narrow.post = true;
        let granted = claims(&narrow, NOW_S, 60);
        assert!(granted.may_room("lobby", RoomRight::Post));
        assert!(!granted.may_room("other", RoomRight::Join));
        assert!(!granted.may_channel("prices", ChannelRight::Subscribe));
        let everything = claims(&request("dave", Signer::Hs256Key(PathBuf::new())), NOW_S, 60);
        assert!(everything.may_channel("prices", ChannelRight::Publish));
    }

    /// `--sub bot --publish` reads like "publish only" but, with no pattern, would have granted every right.
    #[test]
    fn a_right_without_its_patterns_is_refused_not_widened() {
        let dir = tempfile::tempdir().unwrap();
        let mut publish = request("bot", dev(dir.path(), true));
        publish.publish = true;
        let err = mint(&publish, now()).unwrap_err().to_string();
        assert!(err.starts_with("--publish applies to the --channel patterns") && err.contains("every right"), "{err}");
        publish.rooms = vec!["lobby".into()];
        assert!(mint(&publish, now()).is_err(), "a room pattern does not narrow channels");
        publish.channels = vec!["prices".into()];
        assert!(mint(&publish, now()).is_ok());
        let mut post = request("bot", dev(dir.path(), true));
        post.post = true;
        post.channels = vec!["prices".into()];
        let err = mint(&post, now()).unwrap_err().to_string();
        assert!(err.starts_with("--post applies to the --room patterns"), "{err}");
    }
}

/// `quiver-server token`: without --room or --channel the token grants every right on every room and channel.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The subject: the identity the client gets.
    #[arg(long)]
    sub: String,
    /// A room pattern the token may join (dot-separated; `*` one segment, final `**` the rest). Repeatable.
    #[arg(long = "room", value_name = "PATTERN")]
    rooms: Vec<String>,
    /// Also allow posting to the --room patterns.
    #[arg(long)]
    post: bool,
    /// A channel pattern the token may subscribe to. Repeatable.
    #[arg(long = "channel", value_name = "PATTERN")]
    channels: Vec<String>,
    /// Also allow publishing on the --channel patterns.
    #[arg(long)]
    publish: bool,
    /// Validity, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The server's data directory (its dev key signs the token). Default: the server's own, from its
    /// configuration (--config, QUIVER_CONFIG, QUIVER_DATA_DIR, the --data-dir before `token`), else .quiver.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Create the dev key in --data-dir if there is none (said on stderr): servers started on that directory from
    /// then on accept the token. Without it, a missing dev key is an error.
    #[arg(long, conflicts_with_all = ["hs256_key", "ed25519_private_key"])]
    init_key: bool,
    /// Sign with the HS256 secret in this file (hex, at least 64 digits: a server's --hs256-key) instead of the dev
    /// key.
    #[arg(long, value_name = "FILE", conflicts_with = "ed25519_private_key")]
    hs256_key: Option<PathBuf>,
    /// Sign with this Ed25519 private key (PKCS#8 PEM) instead of the dev key.
    #[arg(long, value_name = "FILE")]
    ed25519_private_key: Option<PathBuf>,
}

impl TokenArgs {
    /// What to mint: signed with the key given, else with what the server's configuration (`settings`) verifies
    /// tokens with: its HS256 secret or first HS256 key file, else the dev key in its data directory. A token no
    /// such server would accept is refused here, not printed.
    pub fn request(
        self,
        settings: impl FnOnce() -> Result<Settings, TokenCommandError>,
    ) -> Result<TokenRequest, TokenCommandError> {
        let explicit = match (self.hs256_key.clone(), self.ed25519_private_key.clone(), self.data_dir.clone()) {
            (Some(path), _, _) => Some(Signer::Hs256Key(path)),
            (None, Some(path), _) => Some(Signer::Ed25519PrivateKey(path)),
            (None, None, Some(data_dir)) => Some(Signer::DevKey { data_dir, create: self.init_key }),
            (None, None, None) => None,
        };
        // The configuration is read only when nothing says what to sign with (it may be unreadable to whoever
        // mints with a key file of their own).
        let signer = match explicit {
            Some(signer) => signer,
            None => {
                let settings = settings()?;
                configured_signer(&settings.auth, &settings.data_dir, self.init_key)?
            }
        };
        Ok(TokenRequest {
            sub: self.sub,
            rooms: self.rooms,
            post: self.post,
            channels: self.channels,
            publish: self.publish,
            ttl: self.ttl,
            signer,
        })
    }
}
