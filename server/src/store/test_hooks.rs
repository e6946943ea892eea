//! Hooks the store's and the hub's tests use: a commit held until told to go on, a damaged record, a barrier
//! behind the retention thread.

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
