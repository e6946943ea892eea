//! The keys tokens are verified with, and the id that tells them apart across reloads.

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

/// Which key verified a token: the same key gets the same id in every [`crate::Auth`] built in this process, so that a
/// session can be checked again after the keys are reloaded ([`crate::Auth::readmits`]). A hash of the key, never shown
/// (its `Debug` prints nothing of it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(u64);

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyId(<hidden>)")
    }
}

impl KeyId {
    /// The id of `key`. An Ed25519 PEM is taken by the 32-byte key it holds: the same key read from a file written
    /// differently (a comment or `openssl pkey -text`'s dump added or dropped, other line breaks) keeps its id, so a
    /// reload does not take it for a removed key and close its sessions. (Until 2026-12-06 the id was the PEM's
    /// text without whitespace.) A PEM that holds no such key (never a verifier's) is taken by that text.
    pub fn of(key: &TokenKey) -> KeyId {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match key {
            TokenKey::Hs256(secret) => (0u8, secret).hash(&mut hasher),
            TokenKey::Ed25519Pem(pem) => match crate::keys::ed25519_key(pem) {
                Ok(key) => (1u8, key).hash(&mut hasher),
                Err(_) => {
                    2u8.hash(&mut hasher);
                    pem.iter().filter(|b| !b.is_ascii_whitespace()).for_each(|b| b.hash(&mut hasher));
                }
            },
        }
        KeyId(hasher.finish())
    }
}
