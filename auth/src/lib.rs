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
mod keys;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quiver_proto::{ErrorCode, Failure, Limits};
use serde::{Deserialize, Serialize};

pub use keys::{
    dev_key_exists, load_or_generate_dev_key, parse_hs256_secret, read_hs256_key, AuthError, DEV_KEY_FILE,
    MIN_HS256_SECRET,
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
        self.rooms.iter().any(|(pattern, rights)| rights.contains(&right) && pattern_matches(pattern, room))
    }

    /// True if some channel pattern matching `channel` grants `right`.
    pub fn may_channel(&self, channel: &str, right: ChannelRight) -> bool {
        self.channels.iter().any(|(pattern, rights)| rights.contains(&right) && pattern_matches(pattern, channel))
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
        self.rooms.iter().any(|(pattern, rights)| rights.contains(&right) && pattern_matches(pattern, room))
    }

    /// True if some channel pattern matching `channel` grants `right` (as [`Claims::may_channel`]).
    pub fn may_channel(&self, channel: &str, right: ChannelRight) -> bool {
        self.channels.iter().any(|(pattern, rights)| rights.contains(&right) && pattern_matches(pattern, channel))
    }
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
}

/// Whether `sub` can be an identity: 1 to [`Limits::MAX_IDENTITY`] bytes without control characters. Servers refuse
/// other tokens (`TokenMalformed`) and nothing here mints them.
pub fn check_subject(sub: &str) -> Result<(), SubjectError> {
    if sub.is_empty() {
        Err(SubjectError::Empty)
    } else if sub.len() > Limits::MAX_IDENTITY as usize {
        Err(SubjectError::TooLong { len: sub.len(), max: Limits::MAX_IDENTITY })
    } else if sub.chars().any(char::is_control) {
        Err(SubjectError::Control)
    } else {
        Ok(())
    }
}

/// Whether `name` matches `pattern` (dot-separated segments; `*` one segment; a final `**` one or more).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut name = name.split('.');
    loop {
        match (pattern.next(), name.next()) {
            (Some("**"), Some(_)) => return pattern.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(p), Some(n)) if p == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A key tokens may be signed with.
#[derive(Clone)]
pub enum TokenKey {
    /// HMAC-SHA256 shared secret.
    Hs256(Vec<u8>),
    /// Ed25519 public key (EdDSA), as PEM.
    Ed25519Pem(Vec<u8>),
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            TokenKey::Ed25519Pem(_) => f.write_str("Ed25519Pem(<public key>)"),
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

/// Verifies tokens; built once per server.
pub enum Auth {
    /// No tokens.
    Anonymous,
    /// Tokens required.
    Tokens(Vec<(Algorithm, DecodingKey)>),
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
        let mut decoding = Vec::new();
        for key in keys {
            decoding.push(match key {
                TokenKey::Hs256(secret) => (Algorithm::HS256, DecodingKey::from_secret(&secret)),
                TokenKey::Ed25519Pem(pem) => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_pem(&pem).map_err(|e| AuthError::BadKey {
                        path: PathBuf::from("(Ed25519 public key)"),
                        reason: e.to_string(),
                    })?,
                ),
            });
        }
        Ok(Auth::Tokens(decoding))
    }

    /// Checks Hello's token at `now_s`. `Ok(None)`: anonymous server, no grants to check.
    pub fn verify(&self, token: Option<&str>, now_s: u64) -> Result<Option<Claims>, Failure> {
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
        let mut last = refused();
        for (alg, key) in keys.iter().filter(|(alg, _)| *alg == header_alg) {
            let mut validation = Validation::new(*alg);
            // Time is checked below against the caller's clock (sans-IO), not jsonwebtoken's.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return check_claims(data.claims, now_s).map(Some),
                Err(err) => last = token_failure(err.kind()),
            }
        }
        Err(last)
    }
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

fn check_claims(claims: Claims, now_s: u64) -> Result<Claims, Failure> {
    if claims.exp <= now_s {
        return Err(Failure::new(ErrorCode::TokenExpired, format!("token expired {} s ago", now_s - claims.exp)));
    }
    if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now_s) {
        return Err(Failure::new(ErrorCode::TokenNotYetValid, format!("token valid in {} s", nbf - now_s)));
    }
    check_subject(&claims.sub).map_err(|e| Failure::new(ErrorCode::TokenMalformed, format!("token: {e}")))?;
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
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn hs_auth(secret: &[u8]) -> Auth {
        Auth::Tokens(vec![(Algorithm::HS256, DecodingKey::from_secret(secret))])
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: NOW + 60,
            nbf: None,
            rooms: BTreeMap::from([("lobby".into(), vec![RoomRight::Join]), ("game.*".into(), vec![RoomRight::Post])]),
            channels: BTreeMap::from([("prices.**".into(), vec![ChannelRight::Subscribe])]),
        }
    }

    #[test]
    fn patterns_match_per_segment() {
        assert!(pattern_matches("lobby", "lobby"));
        assert!(!pattern_matches("lobby", "lobby.x"));
        assert!(pattern_matches("game.*", "game.1"));
        assert!(!pattern_matches("game.*", "game.1.2"));
        assert!(!pattern_matches("game.*", "game"));
        assert!(pattern_matches("prices.**", "prices.eu.btc"));
        assert!(!pattern_matches("prices.**", "prices"));
        assert!(pattern_matches("**", "anything.at.all"));
        assert!(pattern_matches("*.x", "a.x"));
        assert!(!pattern_matches("a.**.b", "a.x.b"), "** only at the end");
    }

    #[test]
    fn grants_are_checked_per_right() {
        let c = claims();
        assert!(c.may_room("lobby", RoomRight::Join));
        assert!(!c.may_room("lobby", RoomRight::Post));
        assert!(c.may_room("game.7", RoomRight::Post));
        assert!(c.may_channel("prices.eu", ChannelRight::Subscribe));
        assert!(!c.may_channel("prices.eu", ChannelRight::Publish));
        assert!(!c.may_channel("news", ChannelRight::Subscribe));
    }

    #[test]
    fn a_grant_answers_as_its_claims_do() {
        let mut wider = claims();
        wider.rooms.insert("**".into(), vec![RoomRight::Join]);
        let none = Claims { rooms: BTreeMap::new(), ..claims() };
        for claims in [claims(), wider, Claims::everything("a", NOW, 60), none] {
            let grant = Grant::from(claims.clone());
            assert_eq!(grant.exp, claims.exp);
            for name in ["lobby", "game.7", "game.7.x", "prices", "prices.eu", "prices.eu.x", "news", ""] {
                for right in [RoomRight::Join, RoomRight::Post] {
                    assert_eq!(grant.may_room(name, right), claims.may_room(name, right), "{name} {right:?}");
                }
                for right in [ChannelRight::Subscribe, ChannelRight::Publish] {
                    assert_eq!(grant.may_channel(name, right), claims.may_channel(name, right), "{name} {right:?}");
                }
            }
        }
    }

    #[test]
    fn valid_tokens_pass_and_every_failure_has_its_code() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = hs_auth(secret);
        let token = mint_hs256(&claims(), secret).unwrap();
        assert_eq!(auth.verify(Some(&token), NOW).unwrap(), Some(claims()));
        let code = |token: Option<&str>, now| auth.verify(token, now).unwrap_err().code;
        assert_eq!(code(None, NOW), ErrorCode::TokenRequired);
        assert_eq!(code(Some("not a token"), NOW), ErrorCode::TokenMalformed);
        assert_eq!(code(Some("a.b.c"), NOW), ErrorCode::TokenMalformed);
        assert_eq!(code(Some(&token), NOW + 60), ErrorCode::TokenExpired);
        let other = mint_hs256(&claims(), b"another secret, 32 bytes long!!!").unwrap();
        assert_eq!(code(Some(&other), NOW), ErrorCode::TokenInvalid);
        let later = Claims { nbf: Some(NOW + 10), ..claims() };
        assert_eq!(code(Some(&mint_hs256(&later, secret).unwrap()), NOW), ErrorCode::TokenNotYetValid);
        // A token whose signature part was altered.
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(code(Some(&tampered), NOW), ErrorCode::TokenInvalid | ErrorCode::TokenMalformed));
        assert_eq!(Auth::Anonymous.verify(None, NOW).unwrap(), None);
    }

    #[test]
    fn ed25519_tokens_verify_with_the_public_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let token = mint_ed25519(&claims(), pair.serialize_pem().as_bytes()).unwrap();
        let auth = Auth::from_config(
            &AuthConfig::Keys(vec![TokenKey::Ed25519Pem(pair.public_key_pem().into_bytes())]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(auth.verify(Some(&token), NOW).unwrap().unwrap().sub, "alice");
        // An HS256 token is refused by an EdDSA-only server: algorithm confusion is not possible.
        let hs = mint_hs256(&claims(), b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(auth.verify(Some(&hs), NOW).unwrap_err().code, ErrorCode::TokenInvalid);
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// `header` and `claims()` encoded, with `signature` as the third part.
    fn with_header(header: &str, signature: &str) -> String {
        let payload = serde_json::to_vec(&claims()).unwrap();
        format!("{}.{}.{signature}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn algorithms_the_server_refuses_are_invalid_not_malformed() {
        let auth = hs_auth(SECRET);
        let unsigned = with_header(r#"{"alg":"none","typ":"JWT"}"#, "");
        assert_eq!(auth.verify(Some(&unsigned), NOW).unwrap_err().code, ErrorCode::TokenInvalid);
        // Names jsonwebtoken knows but this server has no key for, and names nobody knows.
        for alg in ["none", "None", "HS512", "RS256", "ES256", "EdDSA", "XY999", ""] {
            let token = with_header(&format!(r#"{{"alg":"{alg}"}}"#), "c2lnbmF0dXJl");
            let failure = auth.verify(Some(&token), NOW).unwrap_err();
            assert_eq!(failure.code, ErrorCode::TokenInvalid, "{alg}: {failure:?}");
            assert!(failure.message.contains("not accepted here"), "{failure:?}");
        }
    }

    #[test]
    fn tokens_that_are_not_jwts_are_malformed() {
        let auth = hs_auth(SECRET);
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        for token in [
            "",
            "not a token",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            &with_header("{}", "x"),
            &with_header(r#"{"alg":5}"#, "x"),
            &with_header(r#"{"typ":"JWT"}"#, "x"),
            &with_header("not json", "x"),
            &format!("!!!.{}", with_header(r#"{"alg":"HS256"}"#, "x").split_once('.').unwrap().1),
            &no_exp,
        ] {
            let failure = auth.verify(Some(token), NOW).unwrap_err();
            assert_eq!(failure.code, ErrorCode::TokenMalformed, "{token:?}: {failure:?}");
        }
    }

    #[test]
    fn subjects_are_limited_to_max_identity_bytes() {
        let max = Limits::MAX_IDENTITY as usize;
        let auth = hs_auth(SECRET);
        let at_limit = Claims { sub: "x".repeat(max), ..claims() };
        assert!(auth.verify(Some(&mint_hs256(&at_limit, SECRET).unwrap()), NOW).is_ok());
        let over = Claims { sub: "x".repeat(max + 1), ..claims() };
        let err = mint_hs256(&over, SECRET).unwrap_err();
        assert!(matches!(err, MintError::Subject(SubjectError::TooLong { len: 129, max: 128 })), "{err:?}");
        assert!(err.to_string().contains("at most 128 bytes"), "{err}");
        // Minted by something else: refused at Hello.
        let elsewhere =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &over, &EncodingKey::from_secret(SECRET)).unwrap();
        let failure = auth.verify(Some(&elsewhere), NOW).unwrap_err();
        assert_eq!(failure.code, ErrorCode::TokenMalformed);
        assert!(failure.message.contains("at most 128 bytes"), "{failure:?}");
        assert_eq!(check_subject(""), Err(SubjectError::Empty));
        assert_eq!(check_subject("a\nb"), Err(SubjectError::Control));
    }

    #[test]
    fn dev_tokens_need_the_dev_key_and_verify_with_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(mint_dev(dir.path(), &claims()), Err(MintError::Key(AuthError::Io { .. }))));
        let auth = Auth::from_config(&AuthConfig::DevKey, dir.path()).unwrap();
        let token = mint_dev(dir.path(), &claims()).unwrap();
        assert!(auth.verify(Some(&token), NOW).is_ok());
    }
}
