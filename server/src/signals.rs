//! The server process's signals, registered before the server exists (a store's recovery after a crash can take a
//! while): SIGTERM and SIGINT drain (a second one exits at once), SIGHUP reloads the certificate and token keys.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Weak,
};

use tokio_util::sync::CancellationToken;

use crate::{settings::Settings, store::Store, Reloader};

/// How long a second signal waits for the room store's sync before the process exits all the same (a disk that
/// hangs must not keep it from exiting).
const SEAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the signals act on once the server is there: its reloader (SIGHUP), and its room store (sealed before a
/// second SIGTERM exits).
#[derive(Debug)]
pub struct Served {
    /// Reloads the certificate and token keys.
    pub reloader: Reloader,
    /// The server's room store, if it has one (not kept alive by the signals), and its [`Store::closed_flag`].
    pub store: Option<(Weak<Store>, Arc<AtomicBool>)>,
}

/// SIGTERM and SIGINT (drain, then exit; a second one exits at once) and SIGHUP (reload), registered up front.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers: from now on these signals no longer end the process by their default action.
    #[cfg(unix)]
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Registers the handlers (Ctrl-C only, here).
    #[cfg(not(unix))]
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// The first SIGTERM/SIGINT cancels `shutdown` (the server drains, at once or as soon as it runs); the second
    /// exits at once, once the room store is sealed (`Store::seal_for_exit`), or its clean close under way has
    /// finished (at most 2 s either way). SIGHUP reloads the certificate and the token keys from the files
    /// `settings` names, once the server (its `reloader`) is there: one that came before is acted on then.
    #[cfg(unix)]
    pub async fn handle(
        mut self,
        shutdown: CancellationToken,
        mut served: tokio::sync::oneshot::Receiver<Served>,
        settings: Settings,
    ) {
        let mut ready: Option<Reloader> = None;
        let mut store: Option<(Weak<Store>, Arc<AtomicBool>)> = None;
        let mut held_reload = false;
        loop {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
                _ = self.hangup.recv() => {
                    match &ready {
                        Some(reloader) => reload(reloader, &settings),
                        None => held_reload = true,
                    }
                    continue;
                }
                set = &mut served, if ready.is_none() => {
                    let Ok(set) = set else { return }; // the server did not start: the process is ending
                    if std::mem::take(&mut held_reload) {
                        reload(&set.reloader, &settings);
                    }
                    (ready, store) = (Some(set.reloader), set.store);
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                tracing::warn!("second signal: exiting without waiting for the drain");
                if let Some((store, closed)) = store.take() {
                    let sealed = async move {
                        match store.upgrade() {
                            Some(store) => drop(tokio::task::spawn_blocking(move || store.seal_for_exit()).await),
                            // Closing already (the drain is over): its clean close is left to finish.
                            None => {
                                while !closed.load(Ordering::Acquire) {
                                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                                }
                            }
                        }
                    };
                    if tokio::time::timeout(SEAL_WAIT, sealed).await.is_err() {
                        tracing::error!("the room store's sync did not finish in time; exiting without it");
                    }
                }
                std::process::exit(1);
            }
            tracing::info!("shutting down: draining (a second signal exits at once)");
            shutdown.cancel();
        }
    }

    /// Ctrl-C drains; a second one exits at once.
    #[cfg(not(unix))]
    pub async fn handle(
        self,
        shutdown: CancellationToken,
        _served: tokio::sync::oneshot::Receiver<Served>,
        _settings: Settings,
    ) {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: draining (a second signal exits at once)");
        shutdown.cancel();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(1);
    }
}

/// SIGHUP: new handshakes get the certificate and token keys now in the files; live connections stay, but for
/// the sessions whose token was signed with a key no longer in the files (closed, `TokenInvalid`).
fn reload(reloader: &Reloader, settings: &Settings) {
    let auth = match settings.auth_config_for_reload() {
        Ok((auth, gone)) => {
            for path in gone {
                let file = path.display();
                tracing::warn!(%file, "a token key file is gone: its key is removed, and its sessions are closed");
            }
            auth
        }
        Err(invalid) => {
            tracing::error!(key = invalid.key, error = invalid.message, "reload failed; keeping the current keys");
            use std::io::Write;
            let _ =
                writeln!(std::io::stdout(), "reload failed: {}: {} (nothing changed)", invalid.key, invalid.message);
            return;
        }
    };
    match reloader.reload(auth) {
        Ok(fingerprint) => {
            tracing::info!(%fingerprint, "reloaded the certificate and token keys");
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "reloaded: certificate sha256 {fingerprint}");
        }
        Err(err) => {
            tracing::error!(%err, "reload failed; keeping the current certificate and keys");
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "reload failed: {err} (nothing changed)");
        }
    }
}
