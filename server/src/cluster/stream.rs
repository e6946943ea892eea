//! Reading a room's stream (`q:{room}:log`): entries by seq range, newest first or oldest first, decoded into
//! events and encoded once into room frames. An entry that does not decode is skipped with a warning (a broker is
//! a peer: its bytes are checked like a client's).

use bytes::Bytes;
use quiver_proto::{FrameCodec, RoomEvent, RoomFrame};
use redis::{
    aio::ConnectionManager,
    streams::{StreamId, StreamRangeReply},
    RedisResult, Value,
};

use super::event;

/// Messages per read at most.
pub(super) const PAGE: usize = 256;
/// Entries one History read takes at most.
pub(super) const MAX_READ: usize = 1024;

/// One stored message.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The room's op count at this message.
    pub op: u64,
    /// The event.
    pub event: RoomEvent,
    /// Its room frame.
    pub frame: Bytes,
}

impl Entry {
    /// The message's seq.
    pub(super) fn seq(&self) -> u64 {
        self.event.seq
    }
}

fn field<'a>(id: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match id.map.get(name)? {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn number(id: &StreamId, name: &str) -> Option<u64> {
    std::str::from_utf8(field(id, name)?).ok()?.parse().ok()
}

fn decode(id: &StreamId, codec: &FrameCodec) -> Option<Entry> {
    let seq: u64 = id.id.split_once('-')?.0.parse().ok()?;
    let op = number(id, "o")?;
    let time_us = number(id, "t")?;
    let event = event::message(seq, time_us, field(id, "p")?).ok()?;
    let frame = codec.encode_to_vec(&RoomFrame::Event(event.clone())).ok()?.freeze();
    Some(Entry { op, event, frame })
}

fn decode_all(reply: StreamRangeReply, log: &str, codec: &FrameCodec) -> Vec<Entry> {
    reply
        .ids
        .iter()
        .filter_map(|id| {
            let entry = decode(id, codec);
            if entry.is_none() {
                tracing::warn!(stream = %log, id = %id.id, "a stream entry does not decode; skipped");
            }
            entry
        })
        .collect()
}

/// Messages with seq in `after + 1 ..= upto`, oldest first, at most `count`, read only while the room's epoch (in
/// `meta`) is `epoch`: `None` when it is another (the room's history was lost and it started anew: the same seqs
/// are other messages now). `XRANGE` alone cannot tell which epoch it reads: every read of a room's messages goes
/// through here or [`latest_in_epoch`].
pub(super) async fn range_in_epoch(
    conn: &mut ConnectionManager,
    keys: (&str, &str),
    epoch: u64,
    bounds: (u64, u64, usize),
    codec: &FrameCodec,
) -> RedisResult<Option<Vec<Entry>>> {
    Ok(range_read_in_epoch(conn, keys, epoch, bounds, codec).await?.map(|(entries, _)| entries))
}

/// [`range_in_epoch`], and how many entries Redis returned (entries that do not decode are skipped, so there may be
/// fewer): `count` of them means there may be more.
pub(super) async fn range_read_in_epoch(
    conn: &mut ConnectionManager,
    (meta, log): (&str, &str),
    epoch: u64,
    (after, upto, count): (u64, u64, usize),
    codec: &FrameCodec,
) -> RedisResult<Option<(Vec<Entry>, usize)>> {
    if after >= upto || count == 0 {
        return Ok(Some((Vec::new(), 0)));
    }
    let reply: Option<StreamRangeReply> = super::scripts::RANGE_IN_EPOCH_SCRIPT
        .key(meta)
        .key(log)
        .arg(epoch.to_string())
        .arg(format!("{}-0", after + 1))
        .arg(format!("{upto}-0"))
        .arg(count)
        .invoke_async(conn)
        .await?;
    Ok(reply.map(|reply| {
        let read = reply.ids.len();
        (decode_all(reply, log, codec), read)
    }))
}

/// The newest `count` messages with seq at most `upto`, oldest first, read only in `epoch` as [`range_in_epoch`]:
/// `None` when the room is in another.
pub(super) async fn latest_in_epoch(
    conn: &mut ConnectionManager,
    (meta, log): (&str, &str),
    epoch: u64,
    (upto, count): (u64, usize),
    codec: &FrameCodec,
) -> RedisResult<Option<Vec<Entry>>> {
    if upto == 0 || count == 0 {
        return Ok(Some(Vec::new()));
    }
    let reply: Option<StreamRangeReply> = super::scripts::LATEST_IN_EPOCH_SCRIPT
        .key(meta)
        .key(log)
        .arg(epoch.to_string())
        .arg(format!("{upto}-0"))
        .arg(count)
        .invoke_async(conn)
        .await?;
    Ok(reply.map(|reply| {
        let mut entries = decode_all(reply, log, codec);
        entries.reverse();
        entries
    }))
}
