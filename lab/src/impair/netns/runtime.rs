//! Async code of this process inside one namespace: how the benchmarks put their servers on one end of the link
//! and their clients on the other without spawning programs.

use std::{sync::mpsc, thread::JoinHandle};

use super::{setns, spawn, NetnsError, NetnsLink, Side};

/// A tokio runtime whose threads all live in one side's namespace, so every socket its tasks create is there
/// (sockets keep the namespace they were created in; threads inherit it from the thread that spawns them). Used
/// to run servers and clients of one process on the two ends of a [`NetnsLink`].
#[derive(Debug)]
pub struct NamespaceRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NamespaceRuntime {
    /// Starts a runtime with `workers` threads inside `side`'s namespace of `link`.
    pub fn start(link: &NetnsLink, side: Side, workers: usize) -> Result<NamespaceRuntime, NetnsError> {
        let namespace = link.namespace(side);
        let (ready, handle) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn(&format!("netns-{namespace}"), move || {
            let runtime = setns(&namespace).and_then(|()| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .enable_all()
                    .build()
                    .map_err(NetnsError::Runtime)
            });
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let _ = ready.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = stopped.await;
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        })?;
        let handle = handle.recv().map_err(|_| NetnsError::RuntimeThreadDied)??;
        Ok(NamespaceRuntime { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn tasks that belong in the namespace.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NamespaceRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
