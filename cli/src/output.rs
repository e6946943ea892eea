//! Output that survives its reader going away: `quiver impair … | head -2` must end quietly, not panic with
//! "failed printing to stdout: Broken pipe" as `println!` does, and not skip its cleanup either. Once stdout is
//! gone, printing becomes a no-op and [`Stop`] fires, so a command ends as on Ctrl-C: namespaces removed, files
//! written, connections closed.

use std::{io::Write, sync::OnceLock};

use tokio_util::sync::CancellationToken;

/// Cancelled when a write to stdout finds its reader gone.
fn stdout_gone() -> &'static CancellationToken {
    static GONE: OnceLock<CancellationToken> = OnceLock::new();
    GONE.get_or_init(CancellationToken::new)
}

/// The first write to stdout that failed for another reason than its reader going away (a full disk, an I/O error):
/// the command's status says so at its end ([`write_failure`]).
static WRITE_FAILED: OnceLock<std::io::Error> = OnceLock::new();

/// Writes a line to stdout; once the reader is gone (a broken pipe), nothing more is written and [`Stop`] fires.
/// Another write error (`quiver history --json > dump.jsonl` on a full disk) is kept for the command's status and
/// also ends output: until 2026-12-08 it was ignored, and a script read a truncated file after status 0.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let gone = stdout_gone();
    if gone.is_cancelled() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_fmt(format_args!("{args}\n")).and_then(|()| stdout.flush()) {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = WRITE_FAILED.set(err);
        }
        gone.cancel();
    }
}

/// Why the command's output could not all be written (not a reader that went away, which is a normal end).
pub(crate) fn write_failure() -> Option<&'static std::io::Error> {
    WRITE_FAILED.get()
}

/// Writes a line to stderr, ignoring errors (a closed stderr is no reason to fail).
pub(crate) fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(format_args!("{args}\n"));
}

/// Why a long-running command should stop now: Ctrl-C (SIGINT), SIGTERM or SIGHUP (`timeout`, `kill`, systemd, a
/// closed terminal: each must let the command clean up what it made, namespaces and child servers, as Ctrl-C
/// does), or nobody reading its output any more. The handlers are registered when this is made, so a signal that
/// comes before (or between) waits is not lost.
#[derive(Debug)]
pub(crate) struct Stop {
    #[cfg(unix)]
    signals: [Option<tokio::signal::unix::Signal>; 3],
}

impl Stop {
    /// Registers for the signals now.
    pub(crate) fn new() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // SIGHUP only where it is not ignored: a handler would replace `nohup`'s "ignore", and a run started
            // to outlive its terminal would stop with it.
            let hangup = (!hangup_ignored()).then(|| signal(SignalKind::hangup()).ok()).flatten();
            Stop { signals: [signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok(), hangup] }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// Waits for a signal or stdout's reader to go (cancel-safe).
    pub(crate) async fn requested(&mut self) {
        #[cfg(unix)]
        let interrupted = async {
            let [interrupt, terminate, hangup] = &mut self.signals;
            if interrupt.is_some() {
                tokio::select! {
                    () = received(interrupt.as_mut()) => {}
                    () = received(terminate.as_mut()) => {}
                    () = received(hangup.as_mut()) => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        #[cfg(not(unix))]
        let interrupted = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        tokio::select! {
            () = interrupted => {}
            () = stdout_gone().cancelled() => {}
        }
    }
}

/// Whether this process ignores SIGHUP (`nohup`), as Linux's `/proc/self/status` says (`SigIgn`, a hex mask with
/// bit 0 for signal 1); elsewhere taken as ignored, so that SIGHUP keeps its inherited disposition.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    let mask = status.lines().find_map(|line| line.strip_prefix("SigIgn:")).map(str::trim);
    mask.and_then(|hex| u64::from_str_radix(hex, 16).ok()).is_none_or(|mask| mask & 1 != 0)
}

/// The next delivery of `signal` (never, without a handler).
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// `println!` for the CLI: see [`line`].
#[macro_export]
macro_rules! out {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` for the CLI: see [`err_line`].
#[macro_export]
macro_rules! err {
    () => { $crate::output::err_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::err_line(format_args!($($arg)*)) };
}
