//! TLS session tickets kept across a client's connections, so that a reconnect resumes its TLS session (a fresh
//! ECDHE still, never 0-RTT data) instead of running a full handshake: the server signs nothing and sends no
//! certificate chain (a chain larger than three times the client's first flight costs a full handshake a round trip
//! of its own, QUIC's amplification limit), and the client checks no certificate again. Before, each attempt built
//! a new rustls configuration, with a certificate verifier and an empty ticket cache of its own, so no reconnect
//! ever resumed (rustls resumes a session only under the very verifier it was made under).
//!
//! So one configuration is kept per certificate check ([`Trusted`]), its verifier shared by every attempt under
//! it, with a ticket store per ALPN: a ticket is presented only where it is checked as it was won (a client given
//! another pin or CA runs a full handshake). Process-wide, as a browser keeps them: another [`crate::Client`] with
//! the same trust resumes too. A server that cannot open a ticket (another node, a restart) just runs the full
//! handshake.

use std::sync::{Arc, Mutex};

use quiver_certs::Fingerprint;
use rustls::client::{ClientSessionMemoryCache, Resumption};

/// Certificate checks whose configuration and tickets are kept at once; the least recently used goes first (a
/// test binary's servers each have a certificate of their own: room for those running at once on a large machine).
const STORES: usize = 64;

/// Server names per ticket store (rustls keeps a few tickets for each).
const NAMES_PER_STORE: usize = 64;

/// The certificate check a session was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trusted {
    /// Exactly the certificate with this SHA-256 (a pin, or Auto's dev certificate).
    Pin(Fingerprint),
    /// Chains to these roots (the SHA-256 of their DER, each with its length).
    Roots(Fingerprint),
}

impl Trusted {
    /// The roots of a CA file, as one fingerprint.
    pub(crate) fn roots<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Trusted {
        let mut all = Vec::new();
        for der in certs {
            all.extend_from_slice(&(der.len() as u64).to_be_bytes());
            all.extend_from_slice(der);
        }
        Trusted::Roots(quiver_certs::sha256(&all))
    }
}

/// A certificate check's configuration (its verifier and the rest, shared by every attempt under it) and its ticket
/// stores, one per ALPN.
struct Kept {
    trusted: Trusted,
    config: rustls::ClientConfig,
    stores: Vec<(Vec<u8>, Arc<ClientSessionMemoryCache>)>,
}

static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// The configuration for `trusted` (made by `make` the first time, or again once it was let go of), resuming
/// sessions from the ticket store of `trusted` and `alpn`. The caller sets the ALPN.
pub(crate) fn config<E>(
    trusted: Trusted,
    alpn: &[u8],
    make: impl FnOnce() -> Result<rustls::ClientConfig, E>,
) -> Result<rustls::ClientConfig, E> {
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut entry = match kept.iter().position(|k| k.trusted == trusted) {
        Some(at) => kept.remove(at),
        None => Kept { trusted, config: make()?, stores: Vec::new() },
    };
    let store = match entry.stores.iter().find(|(a, _)| a == alpn) {
        Some((_, store)) => store.clone(),
        None => {
            let store = Arc::new(ClientSessionMemoryCache::new(NAMES_PER_STORE));
            entry.stores.push((alpn.to_vec(), store.clone()));
            store
        }
    };
    let mut config = entry.config.clone();
    config.resumption = Resumption::store(store);
    if kept.len() >= STORES {
        kept.remove(0);
    }
    kept.push(entry);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configuration_per_check_and_a_bounded_number_of_them() {
        let made = std::cell::Cell::new(0);
        let make = || -> Result<rustls::ClientConfig, std::convert::Infallible> {
            made.set(made.get() + 1);
            Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth())
        };
        // (Whether a reconnect resumes: tests/handshake.rs, a_reconnect_resumes_its_tls_session.)
        let pin = |n: u8| Trusted::Pin(Fingerprint([n; 32]));
        config(pin(1), b"quiver", make).unwrap();
        config(pin(1), b"quiver", make).unwrap();
        config(pin(1), b"http/1.1", make).unwrap();
        assert_eq!(made.get(), 1, "made once for a check, whatever the ALPN");
        config(pin(2), b"quiver", make).unwrap();
        assert_eq!(made.get(), 2, "another pin: its own check");
        let roots = Trusted::roots([&b"one"[..], &b"two"[..]]);
        assert_ne!(roots, Trusted::roots([&b"onet"[..], &b"wo"[..]]), "the roots' boundaries count");
        assert_ne!(roots, Trusted::Pin(quiver_certs::sha256(b"onetwo")));
        for n in 10..10 + STORES as u8 {
            config(pin(n), b"quiver", make).unwrap();
        }
        assert!(KEPT.lock().unwrap().len() <= STORES);
        let before = made.get();
        config(pin(1), b"quiver", make).unwrap();
        assert_eq!(made.get(), before + 1, "the least recently used check went, and is made again");
    }
}
