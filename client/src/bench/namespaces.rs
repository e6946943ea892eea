//! Running a benchmark across the netns emulator: its servers in one network namespace, its clients in the other,
//! each on a tokio runtime whose threads live there, so UDP and TCP alike cross the same impaired link.

use std::net::IpAddr;

use crate::impair::{Backend, ImpairmentProfile};

/// What the emulator did, for the report: its kind, addresses and per-direction counters.
pub(crate) type EmulatorReport = serde_json::Value;

/// Starts the emulated link with `profile` on `backend`, runs `servers(ip)` in the server namespace and then
/// `clients(servers' output, server ip)` in the client namespace, and removes everything afterwards (also on
/// error). Needs Linux and root.
#[cfg(target_os = "linux")]
pub(crate) async fn across<T, R, SF, CF>(
    profile: &ImpairmentProfile,
    backend: Backend,
    servers: impl FnOnce(IpAddr) -> SF + Send + 'static,
    clients: impl FnOnce(T) -> CF + Send + 'static,
) -> Result<(R, EmulatorReport), String>
where
    SF: std::future::Future<Output = Result<T, String>> + Send + 'static,
    CF: std::future::Future<Output = Result<R, String>> + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    use crate::impair::netns::{self, NamespaceRuntime, NetnsLink, Side};
    netns::available()?;
    // Unique per run of this process, so concurrent runs do not collide.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("qb{:04x}{:02x}", std::process::id() & 0xffff, run & 0xff);
    let profile = profile.clone();
    let link_name = name.clone();
    let link = tokio::task::spawn_blocking(move || NetnsLink::start_with(&link_name, &profile, backend))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("netns emulator ({}): {e}", backend.name()))?;
    // Two threads each: the servers and the clients do not compete for one runtime.
    let runtimes = NamespaceRuntime::start(&link, Side::Server, 2)
        .and_then(|servers| Ok((servers, NamespaceRuntime::start(&link, Side::Client, 2)?)))
        .map_err(|e| format!("namespace runtime: {e}"));
    let outcome = match &runtimes {
        Ok((server_rt, client_rt)) => {
            let started = server_rt.handle().spawn(servers(IpAddr::V4(netns::SERVER_ADDR))).await;
            match started.map_err(|e| e.to_string()).and_then(|t| t) {
                Ok(started) => {
                    client_rt.handle().spawn(clients(started)).await.map_err(|e| e.to_string()).and_then(|r| r)
                }
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err.clone()),
    };
    // The runtimes end (stopping the servers and joining their threads) before the link goes.
    let (stats, cleanup) = tokio::task::spawn_blocking(move || {
        drop(runtimes);
        let stats = link.stats();
        (stats, link.stop())
    })
    .await
    .map_err(|e| e.to_string())?;
    let direction = |d: crate::impair::LinkStats| match backend {
        // netem's counters stay in the kernel: unknown rather than zero.
        Backend::Netem => serde_json::Value::Null,
        Backend::Tun => serde_json::json!({ "passed": d.passed, "dropped": d.dropped, "duplicated": d.duplicated }),
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
) -> Result<(R, EmulatorReport), String>
where
    SF: std::future::Future<Output = Result<T, String>> + Send + 'static,
    CF: std::future::Future<Output = Result<R, String>> + Send + 'static,
{
    Err("the netns emulator needs Linux".into())
}

/// The address the clients' sockets bind to: any (the namespace has one route, to the server).
pub(crate) const CLIENT_BIND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
