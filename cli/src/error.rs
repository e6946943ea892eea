//! [`CliError`]: why a subcommand failed, printed as `error: …` with exit code 1. The libraries' errors are wrapped
//! as they are; the variants of the CLI's own say which argument or step of the subcommand failed.

use std::{io, net::SocketAddr, time::TryFromFloatSecsError};

use quiver_client::{ConnectError, RequestError, TickError};
use quiver_lab::{
    bench::{BenchError, PlotError},
    impair::{ProfileError, UnknownBackend},
};
use quiver_transport::UnknownTuning;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// `--profile` and the impairment flags.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// `--backend`.
    #[error(transparent)]
    Backend(#[from] UnknownBackend),
    /// `--tuning`.
    #[error(transparent)]
    Tuning(#[from] UnknownTuning),
    /// A duration in seconds that is negative, not a number or too large.
    #[error("--{flag}: {source}")]
    Seconds { flag: &'static str, source: TryFromFloatSecsError },
    /// A bench's measured window past a day (every bench run is bounded).
    #[error("--{flag} {value} s: a bench measures for at most {max} s (a day)", max = crate::bench::MAX_BENCH_SECONDS)]
    BenchTooLong { flag: &'static str, value: f64 },
    /// `quiver tick pub --rate`.
    #[error("--rate must be from 0.01 to 1,000,000 per second")]
    TickRate(f64),
    /// `quiver tick pub`: every tick of the run came while the client was reconnecting.
    #[error("no tick was sent: all {0} came while the client was reconnecting")]
    TicksNotSent(u64),
    /// `quiver impair` without the relay's addresses or `--netns`.
    #[error("--listen and --upstream are required (or --netns)")]
    RelayAddresses,
    /// `quiver post --id` with an identity that changes from run to run.
    #[error("--modes: {0}")]
    Modes(#[from] quiver_lab::bench::UnknownDurability),
    #[error(
        "--id needs the same identity every time: give --name (or a token, --token-file or QUIVER_TOKEN, on a \
         server that requires tokens: one that admits anonymous sessions ignores tokens)"
    )]
    IdWithoutIdentity,
    /// `quiver churn` met errors, or made no connection at all.
    #[error("churn: {errors} errors in {connections} connections (each is listed above)")]
    Churn { connections: u64, errors: u64 },
    /// The connection to `--server`.
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: ConnectError },
    /// `quiver chat`: joining the room.
    #[error("cannot join {room}: {source}")]
    Join { room: String, source: RequestError },
    /// `quiver chat`: the room ended (the client ended, or the server would not take the room back after a
    /// reconnect), with why.
    #[error("room {room}: ended ({code:?}: {reason})")]
    RoomEnded {
        /// The room.
        room: String,
        /// Why, as the server or the client said.
        code: quiver_proto::ErrorCode,
        /// The reason.
        reason: String,
    },
    /// `quiver tick`: the subscription or the claim ended (the client gave up: a refused reconnect, an expired
    /// token), so no tick would flow any more.
    #[error("channel {channel}: ended ({code:?}: {reason})")]
    TicksEnded {
        /// The channel.
        channel: String,
        /// Why, as the server or the client said.
        code: quiver_proto::ErrorCode,
        /// The reason.
        reason: String,
    },
    /// `chat --since` without an epoch: a seq alone cannot tell a lost history from a kept one.
    #[error("--since needs EPOCH:SEQ for chat (the epoch tells whether the room still holds what followed)")]
    SinceNeedsEpoch,
    /// `quiver chat`: standard input.
    #[error("reading stdin: {0}")]
    Stdin(io::Error),
    /// `quiver post`.
    #[error("post failed: {0}")]
    Post(RequestError),
    /// `quiver post --timeout`: no answer in time (the post may still have been stored).
    #[error(
        "no answer within {after:?} (the server or its broker is unreachable); the post may have been stored: {}",
        if *with_id {
            "run the command again with the same --id to find out without posting twice"
        } else {
            "running the command again may post it twice (give it --id KEY to make a retry safe)"
        }
    )]
    PostTimeout { after: std::time::Duration, with_id: bool },
    /// `quiver history`: a page did not come within --timeout.
    #[error("no history page within {0:?} (the server does not answer)")]
    HistoryTimeout(std::time::Duration),
    /// `quiver chat --timeout`: no join in time.
    #[error("not joined within {0:?} (the server does not answer)")]
    JoinTimeout(std::time::Duration),
    /// `quiver chat --timeout`: posts waited that long with none acknowledged, once input had ended or stalled
    /// behind them.
    #[error(
        "{left} posts not acknowledged: none was for {after:?} (the server or its broker is unreachable); they may \
         have been stored"
    )]
    PostsUnacknowledged { left: usize, after: std::time::Duration },
    /// `quiver chat` stopped (a signal, or its output's reader gone) with posts not acknowledged yet.
    #[error("stopped with {left} posts not acknowledged: they may or may not have been stored")]
    PostsInterrupted { left: usize },
    /// `quiver chat`: posts refused (each said on stderr, or as a `post_failed` line).
    #[error("{failed} of {posted} posts failed (see above)")]
    PostsFailed { failed: u64, posted: u64 },
    /// `quiver history`.
    #[error("history failed: {0}")]
    History(RequestError),
    /// `quiver ping`.
    /// Pings that got no answer within the timeout (exit 1 after the report).
    #[error("{lost} of {sent} pings got no answer")]
    PingsLost { lost: u64, sent: u64 },
    /// `quiver tick pub`: claiming the channel.
    #[error("cannot publish: {0}")]
    Publish(RequestError),
    /// `quiver tick sub`.
    #[error("cannot subscribe: {0}")]
    Subscribe(RequestError),
    /// `quiver tick sub|pub --duration`: the connection or the Subscribe/Publish claim took the whole duration (the
    /// server does not answer).
    #[error("--duration ended before the server answered ({0}): it does not answer")]
    TickSetupTimeout(&'static str),
    /// A tick that cannot be sent.
    #[error(transparent)]
    Tick(#[from] TickError),
    /// `quiver impair`: the UDP relay.
    #[error("cannot start the relay on {listen}: {source}")]
    Relay { listen: SocketAddr, source: io::Error },
    /// The relay stopped relaying during the run (a socket error): the run ends, failed.
    #[error("the relay stopped: {0}")]
    RelayStopped(String),
    /// `quiver impair --netns` when the emulator cannot run here.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Netns(#[from] quiver_lab::impair::netns::NetnsError),
    /// `quiver impair --netns`: creating the namespaces.
    #[cfg(target_os = "linux")]
    #[error("cannot set up the namespaces ({} backend): {source}", backend.name())]
    NetnsSetup { backend: quiver_lab::impair::Backend, source: quiver_lab::impair::netns::NetnsError },
    /// `quiver impair --netns`: removing the namespaces.
    #[cfg(target_os = "linux")]
    #[error("cleanup: {0}")]
    NetnsCleanup(quiver_lab::impair::netns::NetnsError),
    /// This program's own path is unknown (`quiver bench connections` runs itself as the server process).
    #[error("cannot find this program to run the bench's server process: {0}")]
    CurrentExe(io::Error),
    /// `quiver impair --netns --server-cmd`.
    #[cfg(target_os = "linux")]
    #[error("server command: {0}")]
    ServerCommand(io::Error),
    /// `quiver impair --netns --server-cmd` exited on its own before the run ended, failing.
    #[cfg(target_os = "linux")]
    #[error("the server command exited with {0} before the run ended")]
    ServerFailed(std::process::ExitStatus),
    /// `quiver impair --netns --client-cmd` could not be run.
    #[cfg(target_os = "linux")]
    #[error("client command: {0}")]
    ClientCommand(io::Error),
    /// `quiver impair --netns --client-cmd` failed.
    #[cfg(target_os = "linux")]
    #[error("the client command exited with {0}")]
    ClientFailed(std::process::ExitStatus),
    /// `quiver impair --netns --client-cmd` still running at the end of `--duration` (stopped).
    #[cfg(target_os = "linux")]
    #[error("the client command was still running after --duration {0} s; stopped before it finished")]
    ClientCutOff(f64),
    /// `quiver impair --netns` elsewhere.
    #[cfg(not(target_os = "linux"))]
    #[error("--netns needs Linux")]
    NetnsNeedsLinux,
    /// `quiver bench`.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// `quiver bench rtt --plot`.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// `quiver tick sub` or `tick pub` whose client was reconnecting when the run ended.
    #[error("channel {0}: not connected at the end of the run (the server went away?); what it printed is partial")]
    NotConnectedAtEnd(String),
    /// Ctrl-C during a benchmark.
    #[error("interrupted")]
    Interrupted,
    /// An output file that cannot be written (checked before a bench runs).
    #[error("{}: {why}", path.display())]
    Output { path: std::path::PathBuf, why: String },
    /// `--json` output.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A task of the subcommand panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl CliError {
    /// Whether this error carries the server's words (a refusal's or a close's reason, its Display): printed with
    /// them escaped whole, line breaks included ([`crate::chat::terminal_line`]). The others are this program's
    /// own, some of them over several lines (a TOML error's snippet, `ip`'s stderr).
    pub(crate) fn carries_server_words(&self) -> bool {
        matches!(
            self,
            CliError::Connect { .. }
                | CliError::Join { .. }
                | CliError::Post(_)
                | CliError::History(_)
                | CliError::Publish(_)
                | CliError::Subscribe(_)
                | CliError::TicksEnded { .. }
                | CliError::RoomEnded { .. }
                | CliError::Tick(_)
                | CliError::Bench(
                    BenchError::Connect(_)
                        | BenchError::Request { .. }
                        | BenchError::Unanswered { .. }
                        | BenchError::QuinnConnection(_)
                        | BenchError::WebSocket(_)
                )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors that carry the server's words (a refusal's or a close's reason) are told apart from the CLI's own,
    /// a bench's against an external server's among them.
    #[test]
    fn errors_with_the_servers_words_are_told_apart() {
        let timeout = || ConnectError::Timeout(std::time::Duration::from_secs(1));
        assert!(CliError::Connect { server: "s".into(), source: timeout() }.carries_server_words());
        assert!(CliError::Bench(BenchError::Connect(timeout())).carries_server_words());
        assert!(!CliError::SinceNeedsEpoch.carries_server_words());
        // A chat's room that ended says why (it said only "the room's event stream ended").
        let code = quiver_proto::ErrorCode::PermissionDenied;
        let ended = CliError::RoomEnded { room: "town".into(), code, reason: "not for this token".into() };
        assert!(ended.carries_server_words());
        assert_eq!(ended.to_string(), "room town: ended (PermissionDenied: not for this token)");
        assert!(!CliError::Bench(BenchError::NeedsLinux).carries_server_words());
    }
}
