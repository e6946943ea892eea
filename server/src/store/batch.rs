//! What one commit writes: a batch of the writer's operations (messages, the records of rooms created or trimmed,
//! the room id counter, retention's deletions) as one atomic fjall batch, for the writer thread, the `os` writer
//! (`inline.rs`) and the retention thread alike.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use fjall::PersistMode;

use super::{
    key, runs,
    writer::{Op, Record, WriterStats},
    Keyspaces,
};

/// A message deletion of at most this many seqs writes their tombstones without reading the keys first.
const BLIND_SPAN: u64 = 1 << 20;

/// Writes one batch: the messages and dedupe entries, the records of rooms created or trimmed, the room id counter
/// when rooms were created, and the deletions retention asked for.
pub(super) fn commit<'a>(
    ks: &Keyspaces,
    ops: impl IntoIterator<Item = &'a Op>,
    mode: PersistMode,
    next_room_id: Option<&mut u64>,
    stats: &WriterStats,
) -> Result<(), fjall::Error> {
    let mut batch = ks.db.batch().durability(Some(mode));
    let mut rooms: HashMap<u64, (&Arc<str>, u64, u64)> = HashMap::new();
    let counter = next_room_id.as_deref().copied();
    let mut next = counter.unwrap_or(0);
    let mut writes = 0usize;
    let mut appends = 0;
    for op in ops {
        match op {
            Op::Create { name, id, epoch } => {
                debug_assert!(counter.is_some(), "rooms are created through the writer");
                rooms.entry(*id).or_insert((name, *epoch, 0));
                next = next.max(id + 1);
            }
            Op::Append(a) => {
                // Made in fjall's own buffer (one allocation, where a Vec and then fjall's copy of it took two).
                let (time, len) = (a.time_us.to_be_bytes(), 8 + a.frame.len());
                let message = fjall::Slice::from_reader(&mut std::io::Read::chain(&time[..], &a.frame[..]), len)?;
                batch.insert(&ks.messages, key(a.id, a.seq), message);
                writes += 1;
                appends += 1;
            }
            Op::TrimMessages { id, from, before, room, keep } => {
                // The record must cover every seq the deletion takes away (the last seq is read from the newest
                // stored message, which this may delete).
                debug_assert!(room.last_seq.saturating_add(1) >= *before, "{room:?} below {before}");
                for run in keep.chunks(runs::RUN_ENTRIES) {
                    let Some(last) = run.last() else { continue };
                    batch.insert(&ks.dedupe_runs, key(*id, last.seq), runs::encode(run));
                    writes += 1;
                }
                // The plan read every seq in the range (seqs are contiguous): their keys are known without a
                // second read. A range over `BLIND_SPAN` (an age deletion of a huge history) is read instead.
                writes += match before.saturating_sub(*from) {
                    span if span <= BLIND_SPAN => {
                        (*from..*before).for_each(|seq| batch.remove(&ks.messages, key(*id, seq)));
                        span as usize
                    }
                    _ => remove(&mut batch, &ks.messages, *id, *from, *before),
                };
                note(&mut rooms, *id, room);
            }
            Op::TrimDedupe { id, from, before, room } => {
                writes += remove(&mut batch, &ks.dedupe_runs, *id, *from, *before);
                // Entries a store of format 1 or 2 kept one per post.
                writes += remove(&mut batch, &ks.dedupe, *id, *from, *before);
                note(&mut rooms, *id, room);
            }
            Op::RetryWait => {}
            #[cfg(test)]
            Op::Barrier => {}
            #[cfg(test)]
            Op::Hold(..) => {}
        }
    }
    for (id, (name, epoch, last_seq)) in rooms {
        let mut record = [0u8; 24];
        record[..8].copy_from_slice(&id.to_be_bytes());
        record[8..16].copy_from_slice(&epoch.to_be_bytes());
        record[16..].copy_from_slice(&last_seq.to_be_bytes());
        batch.insert(&ks.rooms, name.as_bytes(), record);
        writes += 1;
    }
    if counter.is_some_and(|counter| next != counter) {
        batch.insert(&ks.meta, "next_room_id", next.to_be_bytes());
        // Also beside the records (fjall flushes each keyspace on its own: after a lost journal, the flushed
        // records of rooms must not be newer than the counter, or a new room would reuse a recorded room's id).
        batch.insert(&ks.rooms, super::ROOM_COUNTER_KEY, next.to_be_bytes());
        writes += 2;
    }
    if writes == 0 {
        return Ok(()); // barriers only: what they wait for is in earlier batches, already stored
    }
    let start = std::time::Instant::now();
    batch.commit()?;
    stats.commit_us.observe_since(start);
    if let Some(counter) = next_room_id {
        *counter = next;
    }
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.appends.fetch_add(appends, Ordering::Relaxed);
    Ok(())
}

/// Notes room `id`'s record, as a deletion carries it, among the records the batch writes (the newest last seq).
fn note<'a>(rooms: &mut HashMap<u64, (&'a Arc<str>, u64, u64)>, id: u64, room: &'a Record) {
    let record = rooms.entry(id).or_insert((&room.name, room.epoch, room.last_seq));
    record.2 = record.2.max(room.last_seq);
}

/// Adds to `batch` the deletion of room `id`'s keys with a seq in `from..before` in `keyspace`; returns how many. A
/// read error (a damaged old block) ends the deletion there instead of failing the batch: other rooms' posts are
/// in it.
fn remove(batch: &mut fjall::OwnedWriteBatch, keyspace: &fjall::Keyspace, id: u64, from: u64, before: u64) -> usize {
    let mut removed = 0;
    for guard in keyspace.range(key(id, from)..key(id, before)) {
        let Ok(key) = guard.key() else {
            tracing::error!(room_id = id, "room store: retention stopped at an unreadable key");
            break;
        };
        batch.remove(keyspace, key);
        removed += 1;
    }
    removed
}
