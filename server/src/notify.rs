//! systemd's service notifications (`sd_notify(3)`): `READY=1` once the server serves, `STOPPING=1` when it
//! drains, and, where the unit sets `WatchdogSec=`, `WATCHDOG=1` at half that interval for as long as the server
//! is alive ([`crate::metrics::ServerMetrics::alive`]). A room store that failed to write is not alive: the pings
//! stop, systemd ends the process once the interval passes and `Restart=on-failure` starts it again, which is what
//! recovers the store. Before, only `/healthz` said so, and the shipped unit (`Restart=on-failure`, nothing probing
//! `/healthz`) left a server refusing every post until someone noticed.
//!
//! The protocol is one datagram per message to the Unix socket `$NOTIFY_SOCKET` names (a path, or `@` and an
//! abstract name): a few lines here rather than a crate. Without `$NOTIFY_SOCKET` (not started by systemd as
//! `Type=notify`) nothing is sent.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Where systemd listens for this process's notifications.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    #[cfg(target_os = "linux")]
    Abstract(std::os::unix::net::SocketAddr),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, and `$WATCHDOG_USEC` (with `$WATCHDOG_PID`, when set, naming this process): `None`
    /// when systemd asked for no notifications, or the socket cannot be made (said in the log).
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let target = match socket.as_encoded_bytes() {
            [b'@', name @ ..] => {
                #[cfg(target_os = "linux")]
                {
                    use std::os::linux::net::SocketAddrExt;
                    match std::os::unix::net::SocketAddr::from_abstract_name(name) {
                        Ok(addr) => Target::Abstract(addr),
                        Err(err) => {
                            tracing::warn!(%err, "NOTIFY_SOCKET names an abstract socket that cannot be addressed");
                            return None;
                        }
                    }
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = name;
                    tracing::warn!("NOTIFY_SOCKET names an abstract socket: only Linux has them");
                    return None;
                }
            }
            _ => Target::Path(socket.into()),
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Notifier { socket, target, watchdog }),
            Err(err) => {
                tracing::warn!(%err, "cannot make a socket for systemd's notifications");
                None
            }
        }
    }

    /// Sends `state` (`READY=1`, `WATCHDOG=1`, …); a failure is logged, not fatal.
    pub fn send(&self, state: &str) {
        let sent = match &self.target {
            Target::Path(path) => self.socket.send_to(state.as_bytes(), path),
            #[cfg(target_os = "linux")]
            Target::Abstract(addr) => self.socket.send_to_addr(state.as_bytes(), addr),
        };
        if let Err(err) = sent {
            tracing::warn!(%err, state, "cannot notify systemd");
        }
    }

    /// How often to send `WATCHDOG=1`: half the unit's `WatchdogSec=`, if it set one.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `WATCHDOG=1` every [`Notifier::watchdog`] interval while `alive` says so; once it does not, says why
    /// (once) and sends nothing more until it does again. Returns at once without a watchdog, and once `alive` says
    /// `None` (the server is gone: what it asks must not keep the server's parts, its store, alive past its end).
    pub async fn keep_alive(&self, alive: impl Fn() -> Option<Result<(), &'static str>>) {
        let Some(every) = self.watchdog else { return };
        let mut failing = false;
        while let Some(alive) = alive() {
            match alive {
                Ok(()) => {
                    failing = false;
                    self.send("WATCHDOG=1");
                }
                Err(why) if !failing => {
                    failing = true;
                    tracing::error!(why, "not alive: no more watchdog pings, so systemd restarts the server");
                }
                Err(_) => {}
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Half of `WATCHDOG_USEC` (systemd's advice), when it is a number above 0 and `WATCHDOG_PID`, if set, is `pid`.
fn watchdog_interval(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if for_pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_the_units_interval_and_only_for_this_process() {
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None, "another process's");
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    /// Once the server is gone (`alive` says `None`), the pings end and so does the task holding what `alive` reads:
    /// it held the server's metrics, hubs and store for the runtime's life.
    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_end_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            target: Target::Path(path),
            watchdog: Some(Duration::from_secs(1)),
        };
        let server = std::sync::Arc::new(());
        let weak = std::sync::Arc::downgrade(&server);
        let pings = tokio::spawn(async move { notifier.keep_alive(|| weak.upgrade().map(|_| Ok(()))).await });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!pings.is_finished());
        drop(server);
        tokio::time::timeout(Duration::from_secs(2), pings).await.expect("ended with the server").unwrap();
    }

    /// `WATCHDOG=1` goes while alive, stops while not (a failed store), and goes again once alive.
    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_stop_while_the_server_is_not_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd.set_nonblocking(true).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            target: Target::Path(path),
            watchdog: Some(Duration::from_secs(1)),
        };
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = alive.clone();
        let pings = async {
            notifier
                .keep_alive(|| match flag.load(std::sync::atomic::Ordering::Relaxed) {
                    true => Some(Ok(())),
                    false => Some(Err("the store failed")),
                })
                .await
        };
        let received = || {
            let (mut count, mut buf) = (0, [0u8; 64]);
            while let Ok(n) = systemd.recv(&mut buf) {
                assert_eq!(&buf[..n], b"WATCHDOG=1");
                count += 1;
            }
            count
        };
        tokio::select! {
            () = pings => unreachable!(),
            () = async {
                tokio::time::sleep(Duration::from_millis(2_500)).await; // pings at 0, 1 and 2 s
                assert_eq!(received(), 3);
                alive.store(false, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(3)).await;
                assert_eq!(received(), 0, "not alive: no pings");
                alive.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert_eq!(received(), 1, "alive again");
            } => {}
        }
    }
}
