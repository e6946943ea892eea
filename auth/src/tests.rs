//! Tokens, patterns and grants, without IO.

use super::*;

const NOW: u64 = 1_800_000_000;

fn hs_auth(secret: &[u8]) -> Auth {
    let key = TokenKey::Hs256(secret.to_vec());
    Auth::Tokens(vec![(Algorithm::HS256, DecodingKey::from_secret(secret), KeyId::of(&key))])
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
    // A wildcard stands for a segment, never an empty one.
    for (pattern, name) in [("game.*", "game."), ("*.x", ".x"), ("prices.**", "prices."), ("prices.**", "prices.eu.")] {
        assert!(!pattern_matches(pattern, name), "{pattern} matched {name:?}");
    }
    // But `**` alone is every name the server takes (it was not: a token with every right was refused these).
    for name in ["a..b", "lobby.", ".", ".x"] {
        assert!(pattern_matches("**", name), "{name:?}");
    }
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
    let later = Claims { nbf: Some(NOW + NBF_LEEWAY_S + 1), ..claims() };
    assert_eq!(code(Some(&mint_hs256(&later, secret).unwrap()), NOW), ErrorCode::TokenNotYetValid);
    // An issuer whose clock runs a few seconds ahead: its `nbf` (its own now) is within the leeway.
    let skewed = Claims { nbf: Some(NOW + 10), ..claims() };
    assert_eq!(auth.verify(Some(&mint_hs256(&skewed, secret).unwrap()), NOW).unwrap(), Some(skewed));
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
    // Names that read as another: invisible characters, whitespace at an end.
    for spoof in [
        "alice\u{200B}",
        "al\u{202E}ice",
        "\u{FEFF}alice",
        "alice\u{2028}",
        "ali\u{00AD}ce",
        "a\u{E0041}",
        "alice\u{200D}",
        "al\u{200C}ice",
        "alice\u{3164}",
        "alice\u{FE00}",
        "alice\u{2800}",
        "\u{115F}alice",
        "al\u{034F}ice",
        "\u{200D}",
        // Rendered as nothing though unassigned, and runs of selectors or joiners after one letter.
        "alice\u{2065}",
        "alice\u{FFF0}",
        "alice\u{E0000}",
        "alice\u{E0080}",
        "alice\u{E01F0}",
        "José\u{FE0F}\u{FE0F}",
        "José\u{200D}\u{200D}x",
        "José\u{200C}\u{FE0F}",
        "José\u{FE0F}\u{200D}x",
        "José\u{034F}\u{200C}x",
        "José\u{FE0F}\u{200C}x",
        "Jose\u{0301}\u{FE0F}\u{200D}x",
        "alice·\u{FE0F}\u{200D}bob",
        // Not a keycap, chillu or Mongolian word: the same characters where they show nothing.
        "a\u{FE0F}\u{20E3}",
        "1\u{FE0F}",
        "alice\u{0D4D}\u{200D}\u{200D}",
        "x\u{0D4D}\u{200D}",
        "alice\u{180E}",
        "\u{1820}\u{180E}",
        "a\u{180E}\u{1820}",
        // Read as another name: a keycap without U+FE0F (1️⃣ in emoji fonts), an old-style chillu (the atomic one,
        // here U+0D7B), the vowel separator between other letters (a ZWNJ's break).
        "team1\u{20E3}",
        "\u{0D05}\u{0D35}\u{0D28}\u{0D4D}\u{200D}",
        "\u{0D28}\u{0D4D}\u{200D}\u{0D31}",
        "\u{182D}\u{180E}\u{1823}",
        // A joiner or selector after a Latin letter (drawn as nothing), a flag's tags without their cancel tag or
        // a cancel tag alone.
        "Bjö\u{200C}rn",
        "Bjö\u{200D}rn",
        "Bjö\u{FE0F}rn",
        "Zoë\u{FE0E}",
        "ann🏴\u{E0061}",
        "ann🏴\u{E007F}",
        "ann🏴\u{E0061}\u{E007F}",
        "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E0067}\u{E007F}",
        "🏴\u{E0075}\u{E0073}\u{E0074}\u{E0078}\u{E007F}",
        "alice❤\u{FE00}",
        "é\u{E0100}",
        "ی\u{200C}x",
        // A ZWNJ in an emoji sequence, a joiner between digits or after a script's punctuation: drawn as nothing.
        "bob😀\u{200C}😀",
        "۱\u{200C}۲",
        "علی۱\u{200C}۲",
        "ی\u{200D}١",
        "ی،\u{200C}ی",
        "क।\u{200D}क",
        // A presentation selector after what has one form only: drawn as nothing.
        "bob😀\u{FE0F}",
        "bob●\u{FE0F}",
        "bob🚀\u{FE0E}",
    ] {
        assert_eq!(check_subject(spoof), Err(SubjectError::Invisible), "{spoof:?}");
    }
    // The same letters in another composition (José written whole and with its accent apart) are one identity, and
    // a letter never in NFC (Bengali য়, U+09DF) is a name.
    assert_eq!(check_subject("Jose\u{0301}"), Ok(()));
    assert_eq!(identity("Jose\u{0301}"), "Jos\u{00E9}");
    assert!(matches!(identity("Zoë"), std::borrow::Cow::Borrowed(_)), "a subject in NFC is itself");
    assert_eq!(check_subject("\u{09AC}\u{09BF}\u{099C}\u{09DF}"), Ok(()));
    let token = mint_hs256(&Claims { sub: "Jose\u{0301}".into(), ..claims() }, SECRET).unwrap();
    let verified = hs_auth(SECRET).verify(Some(&token), NOW).unwrap().unwrap();
    assert_eq!(verified.sub, "Jos\u{00E9}", "the token's subject, composed, is the identity");
    // Emoji sequences (ZWJ, variation selector, a flag's tags) and ZWNJ in a Persian name are names.
    for fine in [
        "👩\u{200D}💻",
        "❤\u{FE0F}",
        "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        "ann🏴\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F}🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        "می\u{200C}خواهم",
        "🏳\u{FE0F}\u{200D}🌈",
        "👁\u{FE0F}\u{200D}🗨\u{FE0F}",
        "❤\u{FE0F}\u{200D}🔥",
        "🧑🏽\u{200D}💻",
        "🏴\u{200D}☠\u{FE0F}",
        // A keycap, the Mongolian vowel separator before a final a, an atomic chillu.
        "1\u{FE0F}\u{20E3}",
        "team#\u{FE0F}\u{20E3}",
        "\u{182D}\u{1823}\u{180E}\u{1820}",
        "\u{0D05}\u{0D35}\u{0D7B}",
        // Conjuncts and ideographic variants: a Devanagari half form (ZWJ after the virama), a Japanese name's
        // ideographic variation sequence, Mongolian's free variation selector.
        "\u{0915}\u{094D}\u{200D}\u{0937}",
        "\u{845B}\u{E0100}\u{98FE}",
        "\u{182D}\u{180B}",
    ] {
        assert_eq!(check_subject(fine), Ok(()), "{fine:?}");
    }
    for spoof in ["alice ", " alice", "\u{3000}alice", "   "] {
        assert_eq!(check_subject(spoof), Err(SubjectError::Whitespace), "{spoof:?}");
    }
    for fine in ["alice", "ann b", "Zoë", "李明", "user@example.com", "a-b_c.d"] {
        assert_eq!(check_subject(fine), Ok(()), "{fine:?}");
    }
}

#[test]
fn dev_tokens_need_the_dev_key_and_verify_with_it() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(mint_dev(dir.path(), &claims()), Err(MintError::Key(AuthError::Io { .. }))));
    let auth = Auth::from_config(&AuthConfig::DevKey, dir.path()).unwrap();
    let token = mint_dev(dir.path(), &claims()).unwrap();
    assert!(auth.verify(Some(&token), NOW).is_ok());
}

/// A validly signed token that names an audience is refused as not for this server (`TokenInvalid`, naming `aud`),
/// not as malformed: Quiver has no audience of its own, and a token minted for another service that shares the key
/// must not pass for one of its own.
#[test]
fn a_token_naming_an_audience_is_refused_as_invalid_naming_aud() {
    #[derive(serde::Serialize)]
    struct WithAudience {
        #[serde(flatten)]
        claims: Claims,
        aud: serde_json::Value,
    }
    let secret = b"0123456789abcdef0123456789abcdef";
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    // A string, and shapes jsonwebtoken cannot read as an audience (it let those through).
    for aud in [
        serde_json::json!("billing"),
        serde_json::json!(42),
        serde_json::json!(["svc", 1]),
        serde_json::json!({"a": 1}),
    ] {
        let claims = WithAudience { claims: claims(), aud: aud.clone() };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let refused = hs_auth(secret).verify(Some(&token), NOW).unwrap_err();
        assert_eq!(refused.code, ErrorCode::TokenInvalid, "{aud}: {refused:?}");
        assert!(refused.message.contains("aud"), "{aud}: {}", refused.message);
    }
    // `"aud": null` names none.
    let claims = WithAudience { claims: claims(), aud: serde_json::Value::Null };
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap();
    hs_auth(secret).verify(Some(&token), NOW).unwrap();
}

/// After a reload of the keys, a session is admitted again only while the key that verified its token is still
/// trusted; one admitted without a token, only while the server needs none.
#[test]
fn a_session_is_readmitted_after_a_reload_only_while_its_key_is_trusted() {
    let (a, b) = (TokenKey::Hs256(vec![1; 32]), TokenKey::Hs256(vec![2; 32]));
    let dir = std::path::Path::new("/nonexistent");
    let build = |keys: Vec<TokenKey>| Auth::from_config(&AuthConfig::Keys(keys), dir).unwrap();
    let token = mint_hs256(&claims(), &[1; 32]).unwrap();
    let (_, key) = build(vec![b.clone(), a.clone()]).verify_keyed(Some(&token), NOW).unwrap().unwrap();
    assert_eq!(key, KeyId::of(&a));
    // Rebuilt from the same keys (a reload that changed something else): still trusted.
    assert!(build(vec![a.clone()]).readmits(Some(key)).is_ok());
    assert!(build(vec![b.clone(), a]).readmits(Some(key)).is_ok());
    let removed = build(vec![b]).readmits(Some(key)).unwrap_err();
    assert_eq!(removed.code, ErrorCode::TokenInvalid);
    assert!(removed.message.contains("no longer trusted"), "{}", removed.message);
    assert!(Auth::Anonymous.readmits(Some(key)).is_ok());
    assert!(Auth::Anonymous.readmits(None).is_ok());
    assert_eq!(build(vec![TokenKey::Hs256(vec![3; 32])]).readmits(None).unwrap_err().code, ErrorCode::TokenRequired);
    // An Ed25519 key keeps its id however its PEM is wrapped.
    let pem = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    let crlf: Vec<u8> = String::from_utf8_lossy(pem).replace('\n', "\r\n").into_bytes();
    assert_eq!(KeyId::of(&TokenKey::Ed25519Pem(pem.to_vec())), KeyId::of(&TokenKey::Ed25519Pem(crlf)));
    // ... and whatever text is around the block (a comment, `openssl pkey -text`'s dump): before, such an edit made
    // the next reload take the key for removed and close every session it signed.
    let mut commented = b"# managed by ansible\n".to_vec();
    commented.extend_from_slice(pem);
    commented.extend_from_slice(b"ED25519 Public-Key:\npub:\n    19:bf:44:09\n");
    assert_eq!(KeyId::of(&TokenKey::Ed25519Pem(pem.to_vec())), KeyId::of(&TokenKey::Ed25519Pem(commented)));
    let other = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuA=\n-----END PUBLIC KEY-----\n";
    assert_ne!(KeyId::of(&TokenKey::Ed25519Pem(pem.to_vec())), KeyId::of(&TokenKey::Ed25519Pem(other.to_vec())));
    assert_ne!(KeyId::of(&TokenKey::Hs256(vec![1; 32])), KeyId::of(&TokenKey::Hs256(vec![2; 32])));
}

/// A program embedding the server is held to what key files are: an HS256 secret under 32 bytes (anyone could
/// guess it and forge tokens) and an empty key list are refused, and nothing is minted with a short secret.
#[test]
fn short_secrets_and_no_keys_are_refused_by_the_library_too() {
    let dir = std::path::Path::new("/nonexistent");
    for keys in [vec![TokenKey::Hs256(b"secret".to_vec())], vec![TokenKey::Hs256(Vec::new())], vec![]] {
        let err = Auth::from_config(&AuthConfig::Keys(keys.clone()), dir).unwrap_err();
        assert!(matches!(err, AuthError::BadKey { .. }), "{keys:?}: {err}");
    }
    assert!(Auth::from_config(&AuthConfig::Keys(vec![TokenKey::Hs256(vec![7; 32])]), dir).is_ok());
    assert!(matches!(mint_hs256(&claims(), b"secret"), Err(MintError::Key(AuthError::BadKey { .. }))));
}

/// A token its key signed but whose claims are malformed is refused as malformed whichever place that key has
/// among several: a later key's "invalid signature" said TokenInvalid, sending its minter after the wrong fault.
#[test]
fn a_signed_token_with_bad_claims_is_malformed_whatever_the_order_of_the_keys() {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let no_exp = serde_json::json!({ "sub": "x" });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &no_exp,
        &jsonwebtoken::EncodingKey::from_secret(&a),
    )
    .unwrap();
    for keys in [vec![a, b], vec![b, a]] {
        let keys = keys.iter().map(|k| TokenKey::Hs256(k.to_vec())).collect();
        let auth = Auth::from_config(&AuthConfig::Keys(keys), std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(auth.verify(Some(&token), NOW).unwrap_err().code, ErrorCode::TokenMalformed);
    }
}

/// An Ed25519 key file must be one `PUBLIC KEY` block of a 32-byte Ed25519 key: a short key, a certificate, another
/// algorithm's key or a second block are refused when the keys are loaded (the PEM reader took them, and every
/// token was refused afterwards).
#[test]
fn ed25519_key_files_are_checked_strictly() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let good = pair.public_key_pem();
    let load = |pem: &str| {
        Auth::from_config(&AuthConfig::Keys(vec![TokenKey::Ed25519Pem(pem.as_bytes().to_vec())]), Path::new("."))
    };
    assert!(load(&good).is_ok(), "{good}");
    assert!(load(&format!("\n{good}\n")).is_ok(), "whitespace around the block");
    assert!(
        load(&format!("a comment\r\n{}ED25519 Public-Key:\n  pub: 00\n", good.replace('\n', "\r\n"))).is_ok(),
        "text around"
    );
    use base64::Engine as _;
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let block = |label: &str, der: &[u8]| format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", b64(der));
    let mut short = keys::ED25519_SPKI_PREFIX.to_vec();
    short[1] = 0x29;
    short[10] = 0x20;
    short.extend_from_slice(&[7u8; 31]);
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&pair).unwrap();
    for (bad, why) in [
        (block("PUBLIC KEY", &short), "a 31-byte key"),
        (p256.public_key_pem(), "a P-256 key"),
        (cert.pem(), "a certificate"),
        (format!("{good}{good}"), "two blocks"),
        ("not a key".to_string(), "no block"),
    ] {
        let err = load(&bad).map(|_| ()).expect_err(why);
        assert!(err.to_string().contains("PUBLIC KEY") || err.to_string().contains("PEM"), "{why}: {err}");
    }
}
