//! The link a benchmark crosses: loopback (through the UDP relay when impaired), or the netns emulator with its
//! servers in one network namespace and its clients in the other, each on a tokio runtime whose threads live
//! there, so UDP and TCP alike cross the same impaired link. Also what `rtt` and `fanout` share about it.

use std::{net::IpAddr, sync::Arc, time::Duration};

use super::BenchError;
use crate::impair::{Backend, ImpairmentProfile};

/// What the emulator did, for the report: its kind, addresses and per-direction counters.
pub(crate) type EmulatorReport = serde_json::Value;

/// Hears what a run is doing; callable from the namespaces' runtimes too.
pub(crate) type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Refuses what the links cannot carry: an impaired WebSocket comparison without the netns emulator (TCP cannot
/// pass the UDP relay), and `--netns` with an external server (the emulator runs the servers itself).
pub(crate) fn check(
    profile: Option<&ImpairmentProfile>,
    compare_websocket: bool,
    netns: Option<Backend>,
    external_server: bool,
) -> Result<(), BenchError> {
    if compare_websocket && impaired(profile) && netns.is_none() {
        return Err(BenchError::WebSocketNeedsNetns);
    }
    if netns.is_some() && external_server {
        return Err(BenchError::NetnsWithExternalServer);
    }
    Ok(())
}

/// True when `profile` changes anything.
pub(crate) fn impaired(profile: Option<&ImpairmentProfile>) -> bool {
    profile.is_some_and(|p| !p.is_clean())
}

/// The report's `emulator` for a run on loopback.
pub(crate) fn loopback(profile: Option<&ImpairmentProfile>) -> EmulatorReport {
    serde_json::json!({ "kind": if impaired(profile) { "udp relay" } else { "none (loopback)" } })
}

/// A direction's counters in a run's record: every one, the rate limiter's drops and the reorders included (they
/// were left out, so a rate-limited run's series lost more than its link said it dropped, unexplained).
fn link_json(d: &crate::impair::LinkStats) -> serde_json::Value {
    serde_json::json!({
        "passed": d.passed,
        "dropped": d.dropped,
        "queue_dropped": d.queue_dropped,
        "duplicated": d.duplicated,
        "reordered": d.reordered,
        "delayed": d.delayed,
    })
}

/// How long replies may still arrive after the last send: 1 s plus 4× the path's delay and jitter, plus what a
/// rate-limited direction's full queue takes to empty (`queue_bytes` at `rate_kbps`: 2 s for the default 64 KiB at
/// 256 kbit/s, whose replies still queued at the end counted as lost).
pub(crate) fn drain(profile: Option<&ImpairmentProfile>) -> Duration {
    let path_ms = profile.map_or(0.0, |p| p.up.delay_ms + p.up.jitter_ms + p.down.delay_ms + p.down.jitter_ms);
    let queue_ms = |d: &crate::impair::DirectionProfile| match d.rate_kbps > 0.0 {
        true => d.queue_bytes as f64 * 8.0 / d.rate_kbps,
        false => 0.0,
    };
    let queues_ms = profile.map_or(0.0, |p| queue_ms(&p.up) + queue_ms(&p.down));
    Duration::from_millis(1000) + Duration::from_secs_f64((path_ms * 4.0 + queues_ms) / 1000.0)
}

/// Starts the emulated link with `profile` on `backend`, runs `servers(ip)` in the server namespace and then
/// `clients(servers' output, server ip)` in the client namespace, and removes everything afterwards (also on
/// error). Needs Linux and root.
#[cfg(target_os = "linux")]
pub(crate) async fn across<T, R, SF, CF>(
    profile: &ImpairmentProfile,
    backend: Backend,
    servers: impl FnOnce(IpAddr) -> SF + Send + 'static,
    clients: impl FnOnce(T) -> CF + Send + 'static,
) -> Result<(R, EmulatorReport), BenchError>
where
    SF: std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
    CF: std::future::Future<Output = Result<R, BenchError>> + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    use crate::impair::netns::{self, NamespaceRuntime, NetnsLink, Side};
    let failed = |source| BenchError::Emulator { backend, source };
    netns::available().map_err(failed)?;
    // Unique per run of this process, so concurrent runs do not collide.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("qb{:04x}{:02x}", std::process::id() & 0xffff, run & 0xff);
    let profile = profile.clone();
    let link_name = name.clone();
    let link = tokio::task::spawn_blocking(move || NetnsLink::start_with(&link_name, &profile, backend))
        .await?
        .map_err(failed)?;
    // Two threads each: the servers and the clients do not compete for one runtime.
    let runtimes = NamespaceRuntime::start(&link, Side::Server, 2)
        .and_then(|servers| Ok((servers, NamespaceRuntime::start(&link, Side::Client, 2)?)));
    let (outcome, runtimes) = match runtimes {
        Ok((server_rt, client_rt)) => {
            let outcome = match flatten(server_rt.handle().spawn(servers(IpAddr::V4(netns::SERVER_ADDR))).await) {
                Ok(started) => flatten(client_rt.handle().spawn(clients(started)).await),
                Err(err) => Err(err),
            };
            (outcome, Some((server_rt, client_rt)))
        }
        Err(err) => (Err(failed(err)), None),
    };
    // The runtimes end (stopping the servers and joining their threads) before the link goes.
    let (stats, cleanup) = tokio::task::spawn_blocking(move || {
        drop(runtimes);
        let stats = link.stats();
        (stats, link.stop())
    })
    .await?;
    let direction = |d: crate::impair::LinkStats| match backend {
        // netem's counters stay in the kernel: unknown rather than zero.
        Backend::Netem => serde_json::Value::Null,
        Backend::Tun => link_json(&d),
    };
    let mut emulator = serde_json::json!({
        "kind": format!("netns ({})", backend.name()),
        "name": name,
        "server_addr": netns::SERVER_ADDR.to_string(),
        "client_addr": netns::CLIENT_ADDR.to_string(),
        "up": direction(stats.up),
        "down": direction(stats.down),
    });
    if let Err(err) = cleanup {
        // The results stand; what was left behind is said loudly and recorded.
        tracing::error!(%err, %name, "netns emulator cleanup failed: check `ip netns list`");
        emulator["cleanup_error"] = serde_json::Value::String(err.to_string());
    }
    Ok((outcome?, emulator))
}

/// The netns emulator needs Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) async fn across<T, R, SF, CF>(
    _: &ImpairmentProfile,
    _: Backend,
    _: impl FnOnce(IpAddr) -> SF + Send + 'static,
    _: impl FnOnce(T) -> CF + Send + 'static,
) -> Result<(R, EmulatorReport), BenchError>
where
    SF: std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
    CF: std::future::Future<Output = Result<R, BenchError>> + Send + 'static,
{
    Err(BenchError::NeedsLinux)
}

/// A spawned task's outcome, its panic or cancellation included.
#[cfg(target_os = "linux")]
fn flatten<T>(joined: Result<Result<T, BenchError>, tokio::task::JoinError>) -> Result<T, BenchError> {
    joined?
}

/// The address the clients' sockets bind to: any (the namespace has one route, to the server).
pub(crate) const CLIENT_BIND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    /// A rate-limited direction's full queue is waited out too: 64 KiB at 256 kbit/s is 2 s more (replies still
    /// queued at the end counted as lost, behind a 1 s drain).
    #[test]
    fn the_drain_waits_out_a_rate_limited_queue() {
        let clean = drain(None);
        assert_eq!(clean, Duration::from_secs(1));
        let mut profile = ImpairmentProfile::default();
        profile.down.rate_kbps = 256.0;
        profile.down.queue_bytes = 64 * 1024;
        let drained = drain(Some(&profile));
        assert!(drained >= Duration::from_millis(3_048), "{drained:?}");
    }

    #[test]
    fn a_runs_link_record_has_every_counter() {
        let stats = crate::impair::LinkStats { queue_dropped: 3, reordered: 2, ..Default::default() };
        let json = link_json(&stats);
        assert_eq!((json["queue_dropped"].as_u64(), json["reordered"].as_u64()), (Some(3), Some(2)));
    }
}
