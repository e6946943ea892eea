//! The fan-out's servers run on a runtime of their own whose threads carry one name, so the CPU time they use is
//! theirs alone: the bench's clients and publisher share the process but not those threads. Summed from
//! `/proc/self/task/*/schedstat` (nanoseconds on CPU; Linux); elsewhere not measured.

use std::time::Duration;

/// The name of every thread of the servers' runtime (at most 15 bytes: Linux truncates thread names).
pub(super) const SERVER_THREAD: &str = "qbench-server";

/// A multi-threaded tokio runtime for the servers, shut down in the background when dropped (dropping a runtime
/// inside another runtime's task would panic).
#[derive(Debug)]
pub(super) struct ServerRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ServerRuntime {
    /// A runtime with `workers` threads named [`SERVER_THREAD`].
    pub(super) fn new(workers: usize) -> std::io::Result<ServerRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()?;
        Ok(ServerRuntime { runtime: Some(runtime) })
    }

    /// Where the servers' tasks are spawned.
    pub(super) fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// CPU time the servers' threads have used so far, or `None` where `/proc` does not tell (not Linux). Threads
/// that exited took their time with them; the servers' workers live as long as the runtime.
pub(super) fn server_cpu() -> Option<Duration> {
    threads_cpu(|name| name == SERVER_THREAD)
}

/// Whether a thread named `name` is the link emulator's (the UDP relay's `impair-*`, the netns emulator's
/// `netns-*`): an impaired run's link, neither server nor client.
fn link_thread(name: &str) -> bool {
    name.starts_with("impair-") || name.starts_with("netns-")
}

/// CPU time the live threads named as `wanted` says have used so far (`/proc/self/task/*/schedstat`).
fn threads_cpu(wanted: impl Fn(&str) -> bool) -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let (mut total, mut wanted_threads, mut read) = (Duration::ZERO, 0, 0);
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        if !wanted(name.trim_end()) {
            continue;
        }
        wanted_threads += 1;
        // A thread that exited since the listing: nothing to add.
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else { continue };
        let Some(on_cpu_ns) = schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()) else {
            continue;
        };
        total += Duration::from_nanos(on_cpu_ns);
        read += 1;
    }
    // Threads there and not one whose time could be read (a kernel without schedstat): not known, rather than 0
    // (which read as free).
    (wanted_threads == 0 || read > 0).then_some(total)
}

/// CPU time the rest of the process has used so far: the clients, the publisher and the bench's own bookkeeping
/// (the load generator). The whole process's time (`/proc/self/stat`, which keeps exited threads' time, in 10 ms
/// ticks) less the servers' and the link emulator's (an impaired run's relay threads live through its series).
pub(super) fn client_cpu() -> Option<Duration> {
    Some(the_rest(crate::bench::proc::cpu_time("self")?, server_cpu()?, threads_cpu(link_thread)?))
}

/// The process's CPU time less the servers' and the link's.
fn the_rest(process: Duration, server: Duration, link: Duration) -> Duration {
    process.saturating_sub(server).saturating_sub(link)
}

/// What the servers' threads spent between two readings of [`server_cpu`].
pub(super) fn spent(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

/// The servers' and the clients' CPU time over one series' run.
#[derive(Debug)]
pub(super) struct CpuMeter {
    server: Option<Duration>,
    clients: Option<Duration>,
}

/// What a series' run cost: the servers' threads (`None` for an external server) and everything else.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spent {
    pub(super) server: Option<Duration>,
    pub(super) clients: Option<Duration>,
}

impl CpuMeter {
    /// Starts measuring; `server` false (an external server) leaves the server unmeasured.
    pub(super) fn start(server: bool) -> CpuMeter {
        CpuMeter { server: if server { server_cpu() } else { None }, clients: client_cpu() }
    }

    /// What was spent since [`CpuMeter::start`].
    pub(super) fn stop(self) -> Spent {
        Spent { server: spent(self.server, server_cpu()), clients: spent(self.clients, client_cpu()) }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The process's CPU time is read whole: one test at a time, or one's busy loop is the other's.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn only_the_servers_threads_are_counted() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let runtime = ServerRuntime::new(1).unwrap();
        let idle = server_cpu().unwrap();
        // Busy on this (test) thread: not the server's.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(start.elapsed());
        }
        let after_own_work = server_cpu().unwrap();
        assert!(after_own_work - idle < Duration::from_millis(20), "{idle:?} -> {after_own_work:?}");
        // Busy on the server's thread for 100 ms of that thread's own CPU time (not wall time: on a loaded machine
        // the thread may get a fraction of the wall clock), at most 20 s.
        let own_cpu = || {
            let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            Duration::from_nanos(schedstat.split_whitespace().next().unwrap().parse().unwrap())
        };
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.handle().spawn(async move {
            let (start, started) = (own_cpu(), std::time::Instant::now());
            while own_cpu() - start < Duration::from_millis(100) && started.elapsed() < Duration::from_secs(20) {
                std::hint::black_box(started.elapsed());
            }
            let _ = tx.send(());
        });
        rx.recv().unwrap();
        let spent = spent(Some(after_own_work), server_cpu()).unwrap();
        assert!(spent >= Duration::from_millis(60), "the server's busy loop: {spent:?}");
    }

    /// A link emulator's thread (an impaired run's relay) is counted as the link's, not the server's, and the
    /// clients' share is what is left of the process's.
    #[test]
    fn the_link_emulators_threads_are_not_the_clients() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let own_cpu = || {
            let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            Duration::from_nanos(schedstat.split_whitespace().next().unwrap().parse().unwrap())
        };
        let (busy, done) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (server, link) = (server_cpu().unwrap(), threads_cpu(link_thread).unwrap());
        let relay = std::thread::Builder::new()
            .name("impair-down-0".into())
            .spawn(move || {
                let (start, started) = (own_cpu(), std::time::Instant::now());
                while own_cpu() - start < Duration::from_millis(200) && started.elapsed() < Duration::from_secs(20) {
                    std::hint::black_box(started.elapsed());
                }
                busy.0.send(()).unwrap();
                let _ = done.1.recv(); // alive (its time listed) until the readings are taken
            })
            .unwrap();
        busy.1.recv().unwrap();
        let (server_after, link_after) = (server_cpu().unwrap(), threads_cpu(link_thread).unwrap());
        done.0.send(()).unwrap();
        relay.join().unwrap();
        // (Saturating: a thread of another test of this process that ends between the readings takes its time out
        // of the sum, which then goes back; it overflowed once in CI.)
        let (linked, served) = (link_after.saturating_sub(link), server_after.saturating_sub(server));
        assert!(linked >= Duration::from_millis(150), "the relay's busy loop: {link:?} -> {link_after:?}");
        assert!(served < Duration::from_millis(50), "the server's: {server:?} -> {server_after:?}");
        let ms = Duration::from_millis;
        assert_eq!(the_rest(ms(1000), ms(300), ms(200)), ms(500));
        assert_eq!(the_rest(ms(100), ms(300), ms(200)), Duration::ZERO, "never below zero");
    }
}
