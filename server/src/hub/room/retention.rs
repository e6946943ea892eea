//! A room's retention in memory: history past its age, dedupe entries past the window, and (durable rooms) the
//! store's retention cut; shedding for the server's memory budget.

use super::Room;

impl Room {
    /// Forgets history older than `history_max_age_s` and dedupe entries older than the window.
    pub fn trim(&mut self, now_us: u64) {
        self.trim_with(now_us, true);
    }

    /// [`Room::trim`]; with `read` false a durable room's retention cut is made only from a plan at hand
    /// (`Room::planned`), never from a store read under the room's lock (the sweep plans off it).
    pub fn trim_with(&mut self, now_us: u64, read: bool) {
        self.history.trim(now_us);
        self.dedupe.expire(now_us, self.delivered_seq);
        if let Some(disk) = &mut self.disk {
            disk.trim(now_us, &self.dedupe, self.epoch, self.delivered_seq, read);
        }
    }

    /// Gives up memory for the server's budget: oldest messages first, then oldest dedupe entries, until
    /// `bytes` are freed or nothing is left. Returns the bytes freed. Members keep receiving; a resume from a
    /// position before the remaining history answers `recovered: false`. A durable room keeps its dedupe window
    /// (a promise kept across restarts, which its store would be told to forget too): it is unloaded instead, once
    /// without members ([`crate::hub::LocalRooms`]).
    pub fn shed(&mut self, bytes: u64) -> u64 {
        let start = self.retained_bytes();
        let target = start.saturating_sub(bytes);
        while self.retained_bytes() > target && self.history.forget_oldest() {}
        while self.disk.is_none() && self.retained_bytes() > target && self.dedupe.forget_oldest() {}
        start - self.retained_bytes()
    }
}
