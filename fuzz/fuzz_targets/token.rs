//! Token verification on arbitrary text: never a panic, always a typed refusal (or, for the rare valid token,
//! claims), with a fixed HS256 key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_auth::{Auth, AuthConfig, TokenKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = TokenKey::Hs256(b"quiver fuzz key, 32 bytes long!!".to_vec());
    let Ok(auth) = Auth::from_config(&AuthConfig::Keys(vec![key]), std::path::Path::new("/nonexistent")) else {
        return;
    };
    if let Err(failure) = auth.verify(Some(text), 1_800_000_000) {
        assert!(failure.code.to_u32() >= 20 && failure.code.to_u32() <= 24, "{failure:?}");
    }
});
