//! Loading a room: its record, its retained extent, its last seq and its dedupe window, none of which a post
//! writes apart from its message. The window is read from the newest messages (each stored event names its sender
//! and `client_msg_id`), then from the dedupe runs kept for messages that retention deleted while the window
//! still remembered them (then from the single entries older formats kept).

use super::{key, read_err, runs, seq_of, u64_at, Extent, Store, StoreError, StoredRoom};

impl Store {
    /// The room named `name` as stored, with its retained extent and the dedupe window remembered at `now_us`
    /// (entries younger than `window_us`, the newest `max_entries` at most); `None` if it was never stored.
    pub fn load_room(
        &self,
        name: &str,
        now_us: u64,
        window_us: u64,
        max_entries: usize,
    ) -> Result<Option<StoredRoom>, StoreError> {
        #[cfg(test)]
        self.loaded_on.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(std::thread::current().id());
        let Some(meta) = self.keyspaces.rooms.get(name).map_err(read_err)? else { return Ok(None) };
        let (Some(id), Some(epoch), Some(recorded)) = (u64_at(&meta, 0), u64_at(&meta, 8), u64_at(&meta, 16)) else {
            return Err(StoreError::Read(format!("room {name}: a malformed record ({} bytes)", meta.len())));
        };
        let malformed = |what: &str| StoreError::Read(format!("room {name}: a malformed {what}"));
        let messages = || self.keyspaces.messages.range(key(id, 0)..=key(id, u64::MAX));
        let mut extent = Extent::default();
        let mut first: Option<(u64, u64)> = None;
        let mut newest = 0;
        for guard in messages() {
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let (Some(seq), Some(time_us)) = (seq_of(&k), u64_at(&v, 0)) else { return Err(malformed("message")) };
            first.get_or_insert((seq, time_us));
            newest = seq;
            extent.messages += 1;
            extent.bytes += v.len().saturating_sub(8) as u64;
        }
        // The record is not rewritten with every post (`writer::Record`): the last seq is the newest one stored, as
        // a message, a dedupe entry, or in the record by the deletion that took both away.
        let mut newest_dedupe = 0;
        for keyspace in [&self.keyspaces.dedupe_runs, &self.keyspaces.dedupe] {
            if let Some(guard) = keyspace.range(key(id, 0)..=key(id, u64::MAX)).next_back() {
                let seq = seq_of(&guard.key().map_err(read_err)?).ok_or_else(|| malformed("dedupe key"))?;
                newest_dedupe = newest_dedupe.max(seq);
            }
        }
        let last_seq = recorded.max(newest).max(newest_dedupe);
        if last_seq >= super::MAX_SEQ {
            let why =
                format!("room {name}: its last seq {last_seq} is past any room's (2^62): a damaged record or key");
            return Err(StoreError::Read(why));
        }
        // Newest first: the messages, then the entries kept for deleted ones (older than every message; a store of
        // format 1 also holds entries for retained messages, which the messages give already).
        let oldest_remembered = now_us.saturating_sub(window_us);
        let mut dedupe = Vec::new();
        for guard in messages().rev() {
            if dedupe.len() >= max_entries {
                break;
            }
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let (Some(seq), Some(time_us)) = (seq_of(&k), u64_at(&v, 0)) else { return Err(malformed("message")) };
            if time_us < oldest_remembered {
                break;
            }
            // Only the sender and client_msg_id are read (no copy): every stored message is a post the hub encoded.
            let Some((sender, client_msg_id)) = quiver_proto::room::message_sender(&v[8..]) else {
                return Err(malformed("stored post (not an encoded message event)"));
            };
            dedupe.push((sender.to_string(), client_msg_id, seq, time_us));
        }
        let below = first.map_or(u64::MAX, |(seq, _)| seq);
        // Runs, newest first; a run's entries are older than every message (their messages were deleted).
        'runs: for guard in self.keyspaces.dedupe_runs.range(key(id, 0)..key(id, below)).rev() {
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let entries = seq_of(&k).and_then(|last| runs::decode(&v, last)).ok_or_else(|| malformed("dedupe run"))?;
            for entry in entries.iter().rev() {
                if dedupe.len() >= max_entries || entry.time_us < oldest_remembered {
                    break 'runs;
                }
                let identity = String::from_utf8_lossy(entry.identity).into_owned();
                dedupe.push((identity, entry.client_msg_id, entry.seq, entry.time_us));
            }
        }
        // Single entries (formats 1 and 2), older than every run: where the runs stopped for age or count, these
        // stop at their first.
        let below = dedupe.last().map_or(below, |entry| entry.2);
        for guard in self.keyspaces.dedupe.range(key(id, 0)..key(id, below)).rev() {
            if dedupe.len() >= max_entries {
                break;
            }
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let (Some(seq), Some(time_us), Some(client_msg_id)) = (seq_of(&k), u64_at(&v, 0), u64_at(&v, 8)) else {
                return Err(malformed("dedupe record"));
            };
            if time_us < oldest_remembered {
                break;
            }
            let identity = String::from_utf8_lossy(&v[16..]).into_owned();
            dedupe.push((identity, client_msg_id, seq, time_us));
        }
        dedupe.reverse();
        Ok(Some(StoredRoom {
            id,
            epoch,
            last_seq,
            first_seq: first.map_or(last_seq + 1, |(seq, _)| seq),
            first_time_us: first.map(|(_, time)| time),
            extent,
            dedupe,
        }))
    }
}
