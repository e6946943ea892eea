//! Quiver access tokens: JWTs (HS256 or EdDSA/Ed25519) carried in Hello. A token names its subject (`sub`, the identity
//! used for presence and post deduplication), its validity (`exp`, optional `nbf`, seconds since the Unix epoch)
//! and its grants: room patterns with `join` / `post` rights and channel patterns with `subscribe` / `publish`
//! rights. Patterns are dot-separated; `*` matches exactly one segment and a final `**` one or more (so `**`
//! alone matches every name).
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600, "rooms": {"lobby": ["join", "post"], "game.*": ["join"]},
//!  "channels": {"prices.**": ["subscribe"]}}
//! ```
//!
//! Verification is sans-IO: the caller passes the time, so expiry is tested without waiting. Key files (the dev
//! key, HS256 secrets) are read and created in `keys.rs`.

#![warn(missing_docs)]
mod invisible;
mod key;
mod keys;
mod variation;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quiver_proto::{ErrorCode, Failure, Limits};
use serde::{Deserialize, Serialize};

pub use key::{KeyId, TokenKey};
pub use keys::{
    dev_key_exists, exposed_key, load_or_generate_dev_key, parse_hs256_secret, read_hs256_key, warn_exposed, AuthError,
    DEV_KEY_FILE, MIN_HS256_SECRET,
};

/// A room right a token can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomRight {
    /// Join the room (receive its messages and presence) and read its history.
    Join,
    /// Post to it.
    Post,
}

/// A channel right a token can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelRight {
    /// Receive its ticks.
    Subscribe,
    /// Publish ticks on it.
    Publish,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: the client's identity.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Room pattern → rights.
    #[serde(default)]
    pub rooms: BTreeMap<String, Vec<RoomRight>>,
    /// Channel pattern → rights.
    #[serde(default)]
    pub channels: BTreeMap<String, Vec<ChannelRight>>,
}

impl Claims {
    /// Every right on every room and channel, for `ttl_s` seconds from `now_s`.
    pub fn everything(sub: impl Into<String>, now_s: u64, ttl_s: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp: now_s.saturating_add(ttl_s),
            nbf: None,
            rooms: BTreeMap::from([("**".to_string(), vec![RoomRight::Join, RoomRight::Post])]),
            channels: BTreeMap::from([("**".to_string(), vec![ChannelRight::Subscribe, ChannelRight::Publish])]),
        }
    }

    /// True if some room pattern matching `room` grants `right`.
    pub fn may_room(&self, room: &str, right: RoomRight) -> bool {
        grants(self.rooms.iter().map(|(pattern, rights)| (pattern.as_str(), rights.as_slice())), room, right)
    }

    /// True if some channel pattern matching `channel` grants `right`.
    pub fn may_channel(&self, channel: &str, right: ChannelRight) -> bool {
        grants(self.channels.iter().map(|(pattern, rights)| (pattern.as_str(), rights.as_slice())), channel, right)
    }
}

/// What a server keeps of a token for as long as the connection lasts: its expiry and its rights, each pattern
/// with its rights in one boxed slice. [`Claims`] holds them in two `BTreeMap`s of `String` → `Vec`, whose leaves
/// have room for eleven entries: about 1 KB per connection for a dev token's two patterns, where this is about
/// 100 bytes (docs/benchmarks.md, "10,000 idle connections").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    rooms: Patterns<RoomRight>,
    channels: Patterns<ChannelRight>,
}

/// Patterns, each with its rights.
type Patterns<R> = Box<[(Box<str>, Box<[R]>)]>;

impl Grant {
    /// True if some room pattern matching `room` grants `right` (as [`Claims::may_room`]).
    pub fn may_room(&self, room: &str, right: RoomRight) -> bool {
        grants(self.rooms.iter().map(|(pattern, rights)| (&**pattern, &**rights)), room, right)
    }

    /// True if some channel pattern matching `channel` grants `right` (as [`Claims::may_channel`]).
    pub fn may_channel(&self, channel: &str, right: ChannelRight) -> bool {
        grants(self.channels.iter().map(|(pattern, rights)| (&**pattern, &**rights)), channel, right)
    }
}

/// True if some pattern matching `name` lists `right`: [`Claims`] and [`Grant`] answer alike.
fn grants<'a, R: PartialEq + 'a>(mut patterns: impl Iterator<Item = (&'a str, &'a [R])>, name: &str, right: R) -> bool {
    patterns.any(|(pattern, rights)| rights.contains(&right) && pattern_matches(pattern, name))
}

impl From<Claims> for Grant {
    fn from(claims: Claims) -> Grant {
        fn compact<R>(rights: BTreeMap<String, Vec<R>>) -> Patterns<R> {
            rights.into_iter().map(|(pattern, rights)| (pattern.into_boxed_str(), rights.into_boxed_slice())).collect()
        }
        Grant { exp: claims.exp, rooms: compact(claims.rooms), channels: compact(claims.channels) }
    }
}

/// Why a subject cannot be an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// `sub` is the empty string.
    #[error("the subject is empty")]
    Empty,
    /// `sub` is longer than [`Limits::MAX_IDENTITY`].
    #[error("the subject is {len} bytes; identities are at most {max} bytes")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`Limits::MAX_IDENTITY`].
        max: u32,
    },
    /// `sub` has control characters.
    #[error("the subject has control characters")]
    Control,
    /// `sub` has characters that show nothing (zero-width, direction marks, line separators): `alice` followed by
    /// a zero-width space reads as `alice` in every member list.
    #[error("the subject has invisible characters (zero-width, direction marks or separators)")]
    Invisible,
    /// `sub` begins or ends with whitespace (`alice ` reads as `alice`).
    #[error("the subject begins or ends with whitespace")]
    Whitespace,
}

/// Whether `sub` can be an identity: [`identity`]`(sub)` is 1 to [`Limits::MAX_IDENTITY`] bytes without control or
/// invisible characters, and without whitespace at either end. Servers refuse other tokens (`TokenMalformed`) and
/// nothing here mints them.
pub fn check_subject(sub: &str) -> Result<(), SubjectError> {
    check_identity(&identity(sub))
}

/// The identity a subject (or an anonymous Hello's name) stands for: the subject in Unicode's composed form (NFC),
/// so that `José` written whole and with its accent apart (e, U+0301), which read alike, are one identity; a
/// subject already in NFC (nearly all) is itself. (Not refused: a few letters are never in NFC, Bengali য় U+09DF
/// among them, and names written with them must keep working.)
pub fn identity(sub: &str) -> std::borrow::Cow<'_, str> {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(sub)
}

/// [`check_subject`] of an identity already in NFC.
fn check_identity(sub: &str) -> Result<(), SubjectError> {
    if sub.is_empty() {
        Err(SubjectError::Empty)
    } else if sub.len() > Limits::MAX_IDENTITY as usize {
        Err(SubjectError::TooLong { len: sub.len(), max: Limits::MAX_IDENTITY })
    } else if sub.chars().any(char::is_control) {
        Err(SubjectError::Control)
    } else if invisible::has_invisible(sub) {
        Err(SubjectError::Invisible)
    } else if sub.starts_with(char::is_whitespace) || sub.ends_with(char::is_whitespace) {
        Err(SubjectError::Whitespace)
    } else {
        Ok(())
    }
}

/// Whether `name` matches `pattern` (dot-separated segments; `*` one segment; a final `**` one or more). A
/// wildcard's segments are never empty: `game.*` grants `game.lobby`, not `game.` nor `game..x`. `**` alone is
/// every name, those with an empty segment too (`lobby.`, `a..b`: names the server takes): a token with every
/// right ([`Claims::everything`], the dev tokens) was refused them.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "**" {
        return !name.is_empty();
    }
    let mut pattern = pattern.split('.');
    let mut name = name.split('.');
    loop {
        match (pattern.next(), name.next()) {
            (Some("**"), Some(n)) if !n.is_empty() => {
                return pattern.next().is_none() && name.all(|rest| !rest.is_empty())
            }
            (Some("*"), Some(n)) if !n.is_empty() => {}
            (Some(p), Some(n)) if p == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// How clients are admitted.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// Tokens required, signed with the HS256 key in the data directory (generated when missing). The default:
    /// `quiver-server token` and same-machine clients mint tokens with it.
    DevKey,
    /// Tokens required, verified with these keys (production).
    Keys(Vec<TokenKey>),
    /// No tokens: anyone may connect, do anything, and name themselves (`--allow-anonymous`; demos only).
    Anonymous,
}

/// Verifies tokens; built once per server (and again at each reload of its keys).
pub enum Auth {
    /// No tokens.
    Anonymous,
    /// Tokens required, verified with these keys.
    Tokens(Vec<(Algorithm, DecodingKey, KeyId)>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Auth::Anonymous"),
            Auth::Tokens(keys) => write!(f, "Auth::Tokens({} keys)", keys.len()),
        }
    }
}

impl Auth {
    /// Builds the verifier for `config`, generating the dev key in `data_dir` when needed.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> Result<Auth, AuthError> {
        let keys = match config {
            AuthConfig::Anonymous => return Ok(Auth::Anonymous),
            AuthConfig::DevKey => vec![TokenKey::Hs256(load_or_generate_dev_key(data_dir)?)],
            AuthConfig::Keys(keys) => keys.clone(),
        };
        // A program embedding the server holds to what key files are held to: a short secret is guessed, and no
        // key at all would verify nothing while looking like a server that requires tokens.
        if keys.is_empty() {
            return Err(AuthError::BadKey { path: PathBuf::from("(token keys)"), reason: "no key given".into() });
        }
        if keys.iter().any(|key| matches!(key, TokenKey::Hs256(secret) if secret.len() < MIN_HS256_SECRET)) {
            let reason = format!("an HS256 secret shorter than {MIN_HS256_SECRET} bytes");
            return Err(AuthError::BadKey { path: PathBuf::from("(HS256 secret)"), reason });
        }
        let mut decoding = Vec::new();
        for key in keys {
            let id = KeyId::of(&key);
            decoding.push(match key {
                TokenKey::Hs256(secret) => (Algorithm::HS256, DecodingKey::from_secret(&secret), id),
                TokenKey::Ed25519Pem(pem) => {
                    let bad =
                        |reason: String| AuthError::BadKey { path: PathBuf::from("(Ed25519 public key)"), reason };
                    keys::check_ed25519_pem(&pem)?;
                    (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem).map_err(|e| bad(e.to_string()))?, id)
                }
            });
        }
        Ok(Auth::Tokens(decoding))
    }

    /// Checks Hello's token at `now_s`. `Ok(None)`: anonymous server, no grants to check.
    pub fn verify(&self, token: Option<&str>, now_s: u64) -> Result<Option<Claims>, Failure> {
        Ok(self.verify_keyed(token, now_s)?.map(|(claims, _)| claims))
    }

    /// Whether a session admitted earlier (with a token verified by `key`, or on an anonymous server: `None`) is
    /// still admitted by this verifier, after a reload of the keys. A session whose key was removed is refused
    /// `TokenInvalid`; one admitted without a token, by a server that now requires tokens, `TokenRequired`.
    pub fn readmits(&self, key: Option<KeyId>) -> Result<(), Failure> {
        match (self, key) {
            (Auth::Anonymous, _) => Ok(()),
            (Auth::Tokens(keys), Some(key)) if keys.iter().any(|(_, _, id)| *id == key) => Ok(()),
            (Auth::Tokens(_), Some(_)) => Err(Failure::new(
                ErrorCode::TokenInvalid,
                "the key that signed this session's token is no longer trusted (removed at a reload of the keys)",
            )),
            (Auth::Tokens(_), None) => Err(Failure::new(
                ErrorCode::TokenRequired,
                "this server requires a token since a reload of its configuration; reconnect with one",
            )),
        }
    }

    /// As [`Auth::verify`], with the id of the key that verified the token.
    pub fn verify_keyed(&self, token: Option<&str>, now_s: u64) -> Result<Option<(Claims, KeyId)>, Failure> {
        let keys = match self {
            Auth::Anonymous => return Ok(None),
            Auth::Tokens(keys) => keys,
        };
        let token = token.ok_or_else(|| Failure::new(ErrorCode::TokenRequired, "this server requires a token"))?;
        let named = header_algorithm(token)?;
        let refused = || {
            let shown: String = named.chars().take(32).collect();
            Failure::new(ErrorCode::TokenInvalid, format!("tokens signed with {shown:?} are not accepted here"))
        };
        // Names jsonwebtoken does not know (`none`, …) are refused like known ones this server has no key for.
        let header_alg = Algorithm::from_str(&named).map_err(|_| refused())?;
        let (mut last, mut signed_by_one) = (refused(), false);
        for (alg, key, id) in keys.iter().filter(|(alg, _, _)| *alg == header_alg) {
            let mut validation = Validation::new(*alg);
            // Time is checked below against the caller's clock (sans-IO), not jsonwebtoken's.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
            match jsonwebtoken::decode::<Received>(token, key, &validation) {
                // jsonwebtoken refuses an `aud` it can read; one of another shape (a number, a list with one) it
                // lets through: refused here the same way.
                Ok(data) if data.claims.aud.as_ref().is_some_and(|aud| !aud.is_null()) => {
                    return Err(token_failure(&ErrorKind::InvalidAudience))
                }
                Ok(data) => return check_claims(data.claims.claims, now_s).map(|claims| Some((claims, *id))),
                // The signature is checked first: an error past it (claims malformed, a claim missing) comes from
                // the key that signed the token, and says more than another key's "invalid signature".
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) && signed_by_one => {}
                Err(err) => {
                    signed_by_one |= !matches!(err.kind(), ErrorKind::InvalidSignature);
                    last = token_failure(err.kind());
                }
            }
        }
        Err(last)
    }
}

/// A token's claims as received: [`Claims`] and any `aud`, whatever its shape.
#[derive(Deserialize)]
struct Received {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    aud: Option<serde_json::Value>,
}

/// The algorithm a token's header names. A token that is not three dot-separated parts, or whose header is not
/// base64url JSON with a string `alg`, is malformed; any name is returned, for the caller to accept or refuse.
fn header_algorithm(token: &str) -> Result<String, Failure> {
    #[derive(Deserialize)]
    struct NamedAlgorithm {
        alg: String,
    }
    let malformed = |why: String| Failure::new(ErrorCode::TokenMalformed, format!("token header: {why}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("a token is three base64url parts separated by dots".into()));
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|e| malformed(format!("not base64url: {e}")))?;
    let header: NamedAlgorithm = serde_json::from_slice(&json).map_err(|e| malformed(e.to_string()))?;
    Ok(header.alg)
}

/// How far in the future a token's `nbf` may be and the token still be taken: an issuer whose clock runs a little
/// ahead of the server's, setting `nbf` to its own now, would otherwise mint tokens refused for their first seconds.
/// `exp` has none: a session never outlives its token.
pub const NBF_LEEWAY_S: u64 = 30;

fn check_claims(claims: Claims, now_s: u64) -> Result<Claims, Failure> {
    if claims.exp <= now_s {
        return Err(Failure::new(ErrorCode::TokenExpired, format!("token expired {} s ago", now_s - claims.exp)));
    }
    if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now_s.saturating_add(NBF_LEEWAY_S)) {
        return Err(Failure::new(ErrorCode::TokenNotYetValid, format!("token valid in {} s", nbf - now_s)));
    }
    let mut claims = claims;
    if let std::borrow::Cow::Owned(composed) = identity(&claims.sub) {
        claims.sub = composed;
    }
    check_identity(&claims.sub).map_err(|e| Failure::new(ErrorCode::TokenMalformed, format!("token: {e}")))?;
    Ok(claims)
}

fn token_failure(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_) => Failure::new(ErrorCode::TokenInvalid, format!("token signature: {kind:?}")),
        // Quiver has no audience to check a token's `aud` against: a token that names one (minted for some other
        // service with a shared key, maybe) is refused as not for this server, not as malformed.
        ErrorKind::InvalidAudience => Failure::new(
            ErrorCode::TokenInvalid,
            "the token names an audience (aud); this server checks none and accepts only tokens without one",
        ),
        ErrorKind::ExpiredSignature => Failure::new(ErrorCode::TokenExpired, "token expired"),
        ErrorKind::ImmatureSignature => Failure::new(ErrorCode::TokenNotYetValid, "token not yet valid"),
        other => Failure::new(ErrorCode::TokenMalformed, format!("token: {other:?}")),
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The signing key could not be read.
    #[error(transparent)]
    Key(#[from] AuthError),
    /// The subject is not one a server accepts.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The private key is not an Ed25519 key in PKCS#8 PEM.
    #[error("not an Ed25519 private key (PKCS#8 PEM): {0}")]
    BadPrivateKey(jsonwebtoken::errors::Error),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Signs `claims` with an HS256 secret.
pub fn mint_hs256(claims: &Claims, secret: &[u8]) -> Result<String, MintError> {
    check_subject(&claims.sub)?;
    if secret.len() < MIN_HS256_SECRET {
        let reason = format!("an HS256 secret shorter than {MIN_HS256_SECRET} bytes");
        return Err(MintError::Key(AuthError::BadKey { path: PathBuf::from("(HS256 secret)"), reason }));
    }
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .map_err(MintError::Sign)
}

/// Signs `claims` with an Ed25519 private key (PKCS#8 PEM).
pub fn mint_ed25519(claims: &Claims, private_pem: &[u8]) -> Result<String, MintError> {
    check_subject(&claims.sub)?;
    let key = EncodingKey::from_ed_pem(private_pem).map_err(MintError::BadPrivateKey)?;
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).map_err(MintError::Sign)
}

/// Mints a token with the dev key of `data_dir` (which must exist: the server creates it on start).
pub fn mint_dev(data_dir: &Path, claims: &Claims) -> Result<String, MintError> {
    let secret = read_hs256_key(&data_dir.join(DEV_KEY_FILE))?;
    mint_hs256(claims, &secret)
}

#[cfg(test)]
mod tests;
