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
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        if name.trim_end() != SERVER_THREAD {
            continue;
        }
        // A thread that exited since the listing: nothing to add.
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else { continue };
        let on_cpu_ns = schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok());
        total += Duration::from_nanos(on_cpu_ns.unwrap_or(0));
    }
    Some(total)
}

/// CPU time the rest of the process has used so far: the clients, the publisher, the bench's own bookkeeping, and
/// the UDP relay or netns emulator threads when the link is impaired (the load generator). The whole process's
/// time (`/proc/self/stat`, which keeps exited threads' time, in 10 ms ticks) less the servers'.
pub(super) fn client_cpu() -> Option<Duration> {
    Some(crate::bench::proc::cpu_time("self")?.saturating_sub(server_cpu()?))
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

    #[test]
    fn only_the_servers_threads_are_counted() {
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
}
