//! The server process's signals, registered before the server exists (a store's recovery after a crash can take a
//! while): SIGTERM and SIGINT drain (a second one exits at once), SIGHUP reloads the certificate and token keys.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Weak,
};

use tokio_util::sync::CancellationToken;

use crate::{
    settings::{Settings, SettingsError},
    store::Store,
    Reloader,
};

/// How long a second signal waits for the room store's sync before the process exits all the same (a disk that
/// hangs must not keep it from exiting).
const SEAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the process waits at exit for work left on the runtime's blocking threads ([`run_to_end`]).
const BLOCKING_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `serve` on `runtime` to its end, then shuts the runtime down, waiting at most 5 s (`BLOCKING_AT_EXIT`) for its
/// blocking threads: a reload stuck reading a file on a mount that stalls runs on one, which the runtime's drop
/// would wait for, for ever, after the server has stopped.
pub fn run_to_end<T>(runtime: tokio::runtime::Runtime, serve: impl std::future::Future<Output = T>) -> T {
    let outcome = runtime.block_on(serve);
    runtime.shutdown_timeout(BLOCKING_AT_EXIT);
    outcome
}

/// A SIGHUP before the server's handlers are registered ([`Signals::install`]; a `systemctl reload` just after a
/// start, or a configuration file that is slow to read) ended the process by its default action. Called first in
/// `main`, before any other thread starts: it is blocked from then on in this thread, and so in every thread started
/// after it (the runtime's), and stays pending until [`release_reloads`] unblocks it in this thread once the
/// handlers are there; the reload then runs once the server is up ([`Signals::handle`]). (A SIGHUP before `main`
/// runs at all still ends the process.)
#[cfg(unix)]
pub fn hold_reloads() -> nix::Result<()> {
    reloads().thread_block()
}

#[cfg(not(unix))]
pub fn hold_reloads() -> Result<(), std::convert::Infallible> {
    Ok(())
}

/// Lets a SIGHUP held by [`hold_reloads`] (and every one after it) reach the handlers, from this thread (the one
/// `block_on` runs the server on; the runtime's own threads keep it blocked, so it is always this one that takes it).
#[cfg(unix)]
pub fn release_reloads() -> nix::Result<()> {
    reloads().thread_unblock()
}

#[cfg(not(unix))]
pub fn release_reloads() -> Result<(), std::convert::Infallible> {
    Ok(())
}

#[cfg(unix)]
fn reloads() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGHUP);
    set
}

/// What the signals act on once the server is there: its reloader (SIGHUP), and its room store (sealed before a
/// second SIGTERM exits).
#[derive(Debug)]
pub struct Served {
    /// Reloads the certificate and token keys.
    pub reloader: Reloader,
    /// The server's room store, if it has one (not kept alive by the signals), and its [`Store::closed_flag`].
    pub store: Option<(Weak<Store>, Arc<AtomicBool>)>,
}

/// The settings the server started with, and how to read them again as it read them (the same file, the
/// environment, the same flags) for a reload.
pub struct Reread {
    /// What the server started with.
    pub started: Settings,
    /// Reads the settings again (an error as the operator should read it).
    pub again: Box<dyn Fn() -> Result<Settings, SettingsError> + Send>,
    /// The settings the last reload read (at first, `started`): a reload that cannot read them again reloads the
    /// certificate and token key files with these.
    pub applied: Settings,
}

impl Reread {
    /// Settings read at start, read again with `again`.
    pub fn new(started: Settings, again: Box<dyn Fn() -> Result<Settings, SettingsError> + Send>) -> Reread {
        Reread { applied: started.clone(), started, again }
    }
}

impl std::fmt::Debug for Reread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reread").finish_non_exhaustive()
    }
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
        settings: Reread,
    ) {
        let mut ready: Option<Reloader> = None;
        let mut store: Option<(Weak<Store>, Arc<AtomicBool>)> = None;
        let mut held_reload = false;
        // A reload runs on a blocking thread, the settings with it, while this loop still hears SIGTERM and SIGINT:
        // run here, a configuration or key file on a mount that stalls (a hung NFS, a FIFO) kept the drain and the
        // second signal's exit from ever running, only SIGKILL ended the process (a review's find). SIGHUPs during a
        // reload make one more after it.
        let mut settings = Some(settings);
        let mut reloading: Option<tokio::task::JoinHandle<Reread>> = None;
        loop {
            if held_reload && reloading.is_none() && ready.is_some() {
                if let (Some(reloader), Some(mut reread)) = (ready.clone(), settings.take()) {
                    held_reload = false;
                    reloading = Some(tokio::task::spawn_blocking(move || {
                        let reloaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            reload(&reloader, &mut reread);
                        }));
                        if reloaded.is_err() {
                            tracing::error!("reload: failed unexpectedly (a panic); nothing more was changed");
                        }
                        reread
                    }));
                }
            }
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
                _ = self.hangup.recv() => {
                    held_reload = true;
                    continue;
                }
                reread = async {
                    match reloading.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                } => {
                    reloading = None;
                    match reread {
                        Ok(reread) => settings = Some(reread),
                        Err(err) => tracing::error!(%err, "reload: its task ended; further reloads cannot run"),
                    }
                    continue;
                }
                set = &mut served, if ready.is_none() => {
                    let Ok(set) = set else { return }; // the server did not start: the process is ending
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
        _settings: Reread,
    ) {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: draining (a second signal exits at once)");
        shutdown.cancel();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(1);
    }
}

/// SIGHUP: the settings are read again (file, environment, flags); new handshakes get the certificate and the token
/// keys they name now; live connections stay, but for the sessions whose token was signed with a key no longer
/// among them (closed, `TokenInvalid`). Until 2026-12-06 the settings read at start were used again: a key removed
/// from `auth.hs256_key_files` (or a changed `auth.hs256_secret`) stayed trusted, and the reload said it had
/// worked. Other settings that changed are named as waiting for a restart (the certificate is read from the paths
/// the server started with). Settings that no longer read (a typo staged for the next restart) do not hold up the
/// certificate: it and the token key files are read again with the settings the last reload read, and a line says
/// so.
fn reload(reloader: &Reloader, reread: &mut Reread) {
    let (settings, read) = match (reread.again)() {
        Ok(settings) => (settings, true),
        Err(err) => {
            tracing::error!(%err, "reload: the settings do not read; the certificate and token keys are reloaded with the settings read before");
            // (On one line: a settings error can take several.)
            let err = err.to_string();
            let err = err.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("; ");
            say(&format!("reload: the settings do not read, those read before are used: {err}"));
            (reread.applied.clone(), false)
        }
    };
    let mut waiting = changed_keys(&reread.started, &settings);
    // The demo page's dev tokens are decided at start: a server started anonymous gives its page none until then.
    let started_anonymous =
        matches!(reread.started.auth_config_for_reload(), Ok((crate::auth::AuthConfig::Anonymous, _)));
    if started_anonymous && !settings.auth.anonymous {
        waiting.push("auth.anonymous (the demo page's dev tokens)".to_string());
    }
    // Likewise a server started with the dev key hands its page dev-key tokens until a restart, which keys of the
    // operator's no longer verify (only where it started with a page: one with none hands out no tokens).
    let reloaded = settings.auth_config_for_reload_after(&reread.applied);
    let started_dev = matches!(reread.started.auth_config_for_reload(), Ok((crate::auth::AuthConfig::DevKey, _)));
    let now_keys = matches!(reloaded, Ok((crate::auth::AuthConfig::Keys(_), _)));
    let page = reread.started.page_addr().ok().flatten().is_some();
    if started_dev && now_keys && page {
        waiting.push("auth (the demo page's dev tokens, which the new keys do not verify)".to_string());
    }
    if !waiting.is_empty() {
        tracing::warn!(keys = %waiting.join(", "), "settings changed that only a restart applies");
    }
    let auth = match reloaded {
        Ok((auth, gone)) => {
            for path in gone {
                let file = path.display();
                tracing::warn!(%file, "a token key file is gone: its key is removed, and its sessions are closed");
            }
            auth
        }
        Err(invalid) => {
            tracing::error!(key = invalid.key, error = invalid.message, "reload failed; keeping the current keys");
            say(&format!("reload failed: {}: {} (nothing changed)", invalid.key, invalid.message));
            return;
        }
    };
    // Settings that name no token key any more (the list emptied) would fall back to the dev key, as a start does:
    // a reload keeps the keys instead, as it does when every key file is gone. Not when tokens were not asked for
    // at all (`auth.anonymous`): the dev key is then the tighter setting, and the anonymous sessions are refused
    // (`TokenRequired`) as the reload checks them.
    let before = reread.applied.auth_config_for_reload();
    let was_dev_or_anonymous =
        matches!(before, Ok((crate::auth::AuthConfig::DevKey | crate::auth::AuthConfig::Anonymous, _)));
    if matches!(auth, crate::auth::AuthConfig::DevKey) && !was_dev_or_anonymous {
        let why = "the settings name no token key any more: a reload must leave at least one key";
        tracing::error!(why, "reload failed; keeping the current keys");
        say(&format!("reload failed: auth: {why} (nothing changed)"));
        return;
    }
    match reloader.reload(auth) {
        Ok(fingerprint) => {
            tracing::info!(%fingerprint, "reloaded the certificate and token keys");
            say(&format!("reloaded: certificate sha256 {fingerprint}"));
            // As loud as at start: a reload that turned tokens off opened the server to anyone.
            if settings.auth.anonymous && !reread.applied.auth.anonymous {
                let warning = "ANONYMOUS ACCESS from now on (auth.anonymous): no tokens required; anyone who reaches \
                               this server may join, post and publish";
                tracing::warn!("{warning}");
                say(&format!("reload: {warning}"));
            }
            if read {
                reread.applied = settings;
            }
            if !waiting.is_empty() {
                say(&format!("changed, applied at the next restart: {}", waiting.join(", ")));
            }
        }
        Err(err) => {
            tracing::error!(%err, "reload failed; keeping the current certificate and keys");
            say(&format!("reload failed: {err} (nothing changed)"));
        }
    }
}

/// A line on stdout, where the operator who sent the signal looks.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The settings that differ between `started` and `now`, as `section.key` (or `key`), but for `auth.*`, which a
/// reload applies.
pub fn changed_keys(started: &Settings, now: &Settings) -> Vec<String> {
    let table = |settings: &Settings| match toml::Value::try_from(settings) {
        Ok(toml::Value::Table(table)) => Some(table),
        _ => None,
    };
    let (Some(before), Some(after)) = (table(started), table(now)) else {
        return vec!["(settings that cannot be compared: take any change for one that needs a restart)".into()];
    };
    let mut changed = Vec::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        match (before.get(name), after.get(name)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) if name != "auth" => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                changed.extend(keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("{name}.{k}")));
            }
            (Some(toml::Value::Table(_)), _) | (_, Some(toml::Value::Table(_))) if name == "auth" => {}
            (a, b) if a != b => changed.push(name.clone()),
            _ => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload names what it does not apply: keys of any section but `auth` (which it applies), and top-level keys.
    #[test]
    fn changed_keys_are_named_but_for_auth() {
        let started = Settings::default();
        let mut now = started.clone();
        assert!(changed_keys(&started, &now).is_empty());
        now.limits.max_rooms += 1;
        now.auth.anonymous = !now.auth.anonymous;
        now.drain_timeout_ms += 1;
        now.tls.cert = "/etc/quiver/new.pem".into();
        assert_eq!(changed_keys(&started, &now), ["drain_timeout_ms", "limits.max_rooms", "tls.cert"]);
    }
}
