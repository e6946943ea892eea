//! Hooks the store's and the hub's tests use: a commit held until told to go on, a damaged record, a barrier
//! behind the retention thread, a gate that stops page reads (a stalled disk).

use super::{key, u64_at, Commit, Op, Store};

impl Store {
    /// Tests, under `os`: the next task to commit stops in its batch until the returned sender says go (or is
    /// dropped); the receiver hears when it stopped there.
    pub(crate) fn hold_next_commit(&self) -> (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>) {
        let (go, hold) = std::sync::mpsc::channel();
        let (reached, stopped) = std::sync::mpsc::channel();
        let held = self.writer.inline().expect("an os store").hold();
        let op = Op::Hold(std::sync::Mutex::new(hold), std::sync::Mutex::new(Some(reached)));
        drop(self.submit(op)); // queued: the committer is held
        drop(held);
        (go, stopped)
    }

    /// Tests: overwrites room `name`'s message `seq` with a record too short to be one (a damaged record, as a read
    /// meets it).
    pub(crate) fn damage_message(&self, name: &str, seq: u64) {
        let meta = self.keyspaces.rooms.get(name).unwrap().expect("a stored room");
        let id = u64_at(&meta, 0).unwrap();
        self.keyspaces.messages.insert(key(id, seq), b"bad").unwrap();
    }

    /// Completes once every retention deletion handed over before it is written (deletions have a thread of their
    /// own: a [`Op::Barrier`] through [`Store::submit`] does not wait for them).
    pub(crate) fn retention_barrier(&self) -> Commit {
        self.writer.retention_barrier()
    }
}

/// Tests: a gate [`Store::page`] stops at while it is closed, counting the reads stopped there (a stalled disk).
#[derive(Debug, Default)]
pub(crate) struct ReadGate {
    /// Closed, and the reads stopped at it now.
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

/// A read stopped at (or passed through) the gate: no longer counted once dropped.
pub(crate) struct Passed<'a>(&'a ReadGate);

impl ReadGate {
    /// Closes or opens the gate.
    pub(crate) fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().0 = closed;
        self.changed.notify_all();
    }

    /// Reads in [`Store::page`] now (stopped at the gate, or on their way).
    pub(crate) fn reading(&self) -> usize {
        self.state.lock().unwrap().1
    }

    /// Waits while the gate is closed; counted as reading until the returned guard is dropped.
    pub(crate) fn pass(&self) -> Passed<'_> {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while state.0 {
            state = self.changed.wait(state).unwrap();
        }
        Passed(self)
    }
}

impl Drop for Passed<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().1 -= 1;
    }
}
