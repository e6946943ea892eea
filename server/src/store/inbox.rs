//! The queue a store thread takes its jobs from, and the thread itself. Two threads use it: the writer (posts,
//! room creations, barriers: group commit, with fsync under `Durability::Fsync`) and the retention thread
//! (deletions, never synced on their own, so that a large deletion never holds back a post's commit).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::writer::Job;

/// Jobs handed to a store thread. A plain queue the thread swaps with its own emptied one, so that handing over a
/// job allocates nothing (a channel allocated a block of jobs, over a kilobyte, every 31 posts, and glibc
/// consolidated its free lists at each), and the thread is woken only when it waits.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    state: Mutex<Queued>,
    ready: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct Queued {
    pub(super) jobs: Vec<Job>,
    /// True once the handle is dropped: the thread commits what it has and exits.
    pub(super) closed: bool,
    /// The thread waits for `ready`.
    waiting: bool,
}

impl Inbox {
    pub(super) fn lock(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` (dropped, and its commit told the writer stopped, once closed).
    pub(super) fn push(&self, job: Job) {
        let mut queued = self.lock();
        if queued.closed {
            return;
        }
        queued.jobs.push(job);
        if std::mem::take(&mut queued.waiting) {
            drop(queued);
            self.ready.notify_one();
        }
    }

    /// Waits for jobs and moves them all into `batch` (empty); false once closed and drained.
    pub(super) fn take(&self, batch: &mut Vec<Job>) -> bool {
        let mut queued = self.lock();
        while queued.jobs.is_empty() && !queued.closed {
            queued.waiting = true;
            queued = self.ready.wait(queued).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::swap(&mut queued.jobs, batch);
        !batch.is_empty()
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

/// A store thread and its inbox; [`Worker::stop`] lets it finish what it was handed and waits for it.
#[derive(Debug)]
pub(super) struct Worker {
    inbox: Arc<Inbox>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Worker {
    /// Starts a thread named `name` running `run` on the new inbox.
    pub(super) fn spawn(name: &str, run: impl FnOnce(&Inbox) + Send + 'static) -> std::io::Result<Worker> {
        let inbox = Arc::new(Inbox::default());
        let jobs = Arc::clone(&inbox);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || run(&jobs))?;
        Ok(Worker { inbox, thread: Mutex::new(Some(thread)) })
    }

    pub(super) fn push(&self, job: Job) {
        self.inbox.push(job);
    }

    /// Closes the inbox and waits until the thread has committed what it had and exited.
    pub(super) fn stop(&self) {
        self.inbox.close();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    /// Also when the store's handle is never made (a second thread failed to start): no thread is left waiting.
    fn drop(&mut self) {
        self.stop();
    }
}
