//! Reloading a running server's certificate and token keys (SIGHUP), and renewing the dev certificate while it
//! runs.

use std::sync::Arc;

use quiver_certs::Fingerprint;
use tokio_util::sync::CancellationToken;

use super::endpoint;
use crate::{config::ServerConfig, ServerError};

/// What connections are accepted with now: swapped by [`Reloader::reload`] (new handshakes get the new certificate
/// and token keys; live connections keep their certificate, and are closed if the key of their token was removed).
/// Every connection is accepted with `quic` (`Incoming::accept_with`); the endpoint's own configuration only
/// decides whether connections are taken at all (none while draining) and checks address-validation tokens (with
/// the one key every configuration shares, `endpoint::Tickets`).
#[derive(Debug)]
pub(super) struct Current {
    pub(super) quic: Arc<quinn::ServerConfig>,
    /// The WebSocket listener's TLS (the same certificate).
    pub(super) tcp: Arc<rustls::ServerConfig>,
    /// The token verifier: new connections take it (and a receiver, [`Current::auth`]); a reload sends the new one to
    /// every live session, which checks itself again with it (`ControlSession::readmitted`).
    pub(super) keys: Arc<tokio::sync::watch::Sender<Arc<crate::auth::Auth>>>,
}

impl Current {
    /// The token verifier for a new connection, watching for reloads from now on.
    pub(super) fn auth(&self) -> tokio::sync::watch::Receiver<Arc<crate::auth::Auth>> {
        self.keys.subscribe()
    }
}

/// Reloads a running server's certificate and token keys (SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) config: Arc<ServerConfig>,
    pub(super) current: Arc<std::sync::RwLock<Current>>,
    pub(super) fingerprint: crate::web::LiveFingerprint,
    pub(super) tickets: endpoint::Tickets,
    /// When the certificate in use expires.
    pub(super) not_after: Arc<std::sync::Mutex<std::time::SystemTime>>,
    /// Where the expiry is shown (`quiver_tls_certificate_expiry_timestamp_seconds`).
    pub(super) stats: Arc<crate::stats::ServerStats>,
}

/// How often a running server looks at its certificate's expiry (the dev one's renewal, the operator's warning).
/// Often, because the timer's clock stops while the machine sleeps, and the check reads the wall clock: with an hourly
/// timer a laptop that slept past its dev certificate's renewal served it expired for up to an hour of waking time.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a warning of the certificate's expiry (or of a failing dev renewal) is repeated, on the wall clock.
const WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl Reloader {
    /// Loads the certificate again (from `config.tls`: the PEM files, or the dev certificate, renewed if due) and
    /// verifies tokens with `auth` from now on: every handshake after this returns uses them (the demo page hands
    /// browsers the new hash); live connections keep their certificate, and a session whose token was verified
    /// with a key `auth` no longer has (or that has none, where `auth` now requires tokens) is closed. Returns the certificate's fingerprint. On an error
    /// nothing changes.
    pub fn reload(&self, auth: crate::auth::AuthConfig) -> Result<Fingerprint, ServerError> {
        // One reload or renewal at a time (`not_after`'s lock, held throughout): a SIGHUP meeting the periodic
        // renewal could otherwise install one certificate and publish the other's fingerprint to the demo page.
        let mut not_after = self.not_after.lock().unwrap_or_else(|p| p.into_inner());
        // A new certificate that is not valid now is refused (the one in use stays); the one in use, read again
        // (a reload for the token keys), is served as before.
        let in_use = self.fingerprint.get();
        let refuse = |new: &Fingerprint| *new != in_use;
        // The keys first: the certificate's config may renew the dev certificate on disk, which a reload that then
        // failed (a damaged key file) left there unserved, and clients pinning the file's hash were refused.
        let auth = Arc::new(crate::auth::Auth::from_config(&auth, &self.config.data_dir)?);
        let certified = endpoint::server_config(&self.config, &self.tickets, std::time::SystemTime::now(), refuse)?;
        Ok(self.install(&mut not_after, certified, Some(auth)))
    }

    /// With the dev certificate: renews it once less than [`quiver_certs::dev::RENEW_BEFORE`] is left at `now`
    /// (a server that runs for weeks would otherwise serve it expired, and browsers refuse it), keeping the token
    /// keys. `Some(fingerprint)` when it renewed.
    pub fn renew_dev_if_due(&self, now: std::time::SystemTime) -> Result<Option<Fingerprint>, ServerError> {
        let mut not_after = self.not_after.lock().unwrap_or_else(|p| p.into_inner()); // (as `reload`'s)
        self.renew_dev_locked(&mut not_after, now)
    }

    /// [`Reloader::renew_dev_if_due`] with `not_after`'s lock held by the caller.
    fn renew_dev_locked(
        &self,
        not_after: &mut std::time::SystemTime,
        now: std::time::SystemTime,
    ) -> Result<Option<Fingerprint>, ServerError> {
        let due = not_after.duration_since(now).map_or(true, |left| left <= quiver_certs::dev::RENEW_BEFORE);
        if !matches!(self.config.tls, crate::config::TlsSource::Dev) {
            return Ok(None);
        }
        // Not valid yet either (made while the clock ran ahead, corrected since, or a VM's snapshot restored): as at a
        // start, which makes one anew. Browsers check the dates; they refused the server until its next restart.
        let not_yet = || {
            let cert = quiver_certs::dev::read(&self.config.data_dir).ok()?;
            let path = self.config.data_dir.join(quiver_certs::dev::CERT_FILE);
            quiver_certs::dev::validity(&cert, &path).ok().map(|(not_before, _)| not_before > now)
        };
        if !due && not_yet() != Some(true) {
            return Ok(None);
        }
        let certified = endpoint::server_config(&self.config, &self.tickets, now, |_| true)?;
        Ok(Some(self.install(not_after, certified, None)))
    }

    /// Makes `certified` (and `auth`, if given) what new connections are accepted with, its expiry `not_after`
    /// (the caller holds its lock) and its fingerprint the demo page's, all under the configuration's write lock.
    fn install(
        &self,
        not_after: &mut std::time::SystemTime,
        certified: endpoint::Certified,
        auth: Option<Arc<crate::auth::Auth>>,
    ) -> Fingerprint {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.quic = Arc::new(certified.quic);
        current.tcp = certified.tcp;
        if let Some(auth) = auth {
            // Live sessions check themselves again with the new keys.
            current.keys.send_replace(auth);
        }
        *not_after = certified.not_after;
        self.stats.certificate_expires(certified.not_after);
        self.fingerprint.set(certified.fingerprint);
        drop(current);
        certified.fingerprint
    }
}

/// Left before a certificate of the operator's expires when the periodic check starts warning.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Every [`CERTIFICATE_CHECK`] until `shutdown`: renews the dev certificate when due; warns (once per
/// [`WARNING_EVERY`]) when the operator's certificate has less than [`EXPIRY_WARNING`] left, or has expired (a renewal
/// hook that stopped runs unseen until clients start failing; `quiver_tls_certificate_expiry_timestamp_seconds`
/// charts it too). Each look runs on the blocking pool (it reads the dev certificate's file, and may write a new
/// one), and is skipped while a reload holds the certificate's lock: a SIGHUP reload stuck reading files on a mount
/// that hangs holds it for as long (until 2026-12-08 this task then blocked its runtime thread on the lock for
/// good, and a drain waited for it to its timeout; with one worker thread, the whole server stopped).
pub(super) async fn watch_certificate(reloader: Reloader, shutdown: CancellationToken) {
    let mut warned = None;
    loop {
        let look = {
            let reloader = reloader.clone();
            tokio::task::spawn_blocking(move || {
                look_at_certificate(&reloader, std::time::SystemTime::now(), &mut warned);
                warned
            })
        };
        tokio::select! {
            looked = look => if let Ok(looked) = looked { warned = looked },
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(CERTIFICATE_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One look of [`watch_certificate`]'s at `now`, unless a reload holds the lock (the next look is a minute away).
fn look_at_certificate(reloader: &Reloader, now: std::time::SystemTime, warned: &mut Option<std::time::SystemTime>) {
    let mut not_after = match reloader.not_after.try_lock() {
        Ok(held) => held,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            tracing::debug!("a reload holds the certificate: its expiry is looked at again in a minute");
            return;
        }
    };
    if matches!(reloader.config.tls, crate::config::TlsSource::Dev) {
        match reloader.renew_dev_locked(&mut not_after, now) {
            Ok(Some(fingerprint)) => tracing::info!(%fingerprint, "renewed the dev certificate"),
            Ok(None) => {}
            Err(err) if repeat_due(warned, now) => {
                tracing::warn!(%err, "cannot renew the dev certificate; trying again every minute")
            }
            Err(_) => {}
        }
    } else if let Some(warning) = expiry_warning(*not_after, now) {
        if repeat_due(warned, now) {
            tracing::warn!("{warning}");
        }
    }
}

/// Whether a warning last given at `last` is due again at `now` (then `now` becomes its last time): the first at
/// once, then once per [`WARNING_EVERY`] of the wall clock (a clock set back makes it due at once).
fn repeat_due(last: &mut Option<std::time::SystemTime>, now: std::time::SystemTime) -> bool {
    let due = last.is_none_or(|at| now.duration_since(at).map_or(true, |since| since >= WARNING_EVERY));
    if due {
        *last = Some(now);
    }
    due
}

/// What to say of a certificate expiring at `not_after`, seen at `now`: nothing while more than [`EXPIRY_WARNING`]
/// is left.
fn expiry_warning(not_after: std::time::SystemTime, now: std::time::SystemTime) -> Option<String> {
    let date = quiver_certs::pem::date(not_after);
    match not_after.duration_since(now) {
        Ok(left) if left > EXPIRY_WARNING => None,
        Ok(left) => Some(format!(
            "the certificate expires in {} h ({date}): replace its files and reload (SIGHUP)",
            left.as_secs() / 3600
        )),
        Err(_) => Some(format!(
            "the certificate expired at {date}: clients that check it are refused; replace its files and reload \
             (SIGHUP)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{expiry_warning, repeat_due, WARNING_EVERY};

    #[test]
    fn a_warning_is_repeated_once_an_hour_of_the_wall_clock() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut last = None;
        assert!(repeat_due(&mut last, now), "the first at once");
        assert!(!repeat_due(&mut last, now + Duration::from_secs(60)));
        assert!(!repeat_due(&mut last, now + WARNING_EVERY - Duration::from_secs(1)));
        assert!(repeat_due(&mut last, now + WARNING_EVERY), "an hour later (slept through or not)");
        assert!(repeat_due(&mut last, now), "the clock set back");
    }

    #[test]
    fn a_certificate_close_to_its_expiry_or_past_it_is_warned_of() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(expiry_warning(now + Duration::from_secs(30 * 86_400), now), None);
        let soon = expiry_warning(now + Duration::from_secs(3 * 86_400), now).unwrap();
        assert!(soon.contains("expires in 72 h"), "{soon}");
        let past = expiry_warning(now - Duration::from_secs(60), now).unwrap();
        assert!(past.contains("expired at"), "{past}");
    }
}
