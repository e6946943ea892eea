//! Reading a room's stream (`q:{room}:log`): entries by seq range, newest first or oldest first, decoded into
//! events and encoded once into room frames. An entry that does not decode is skipped with a warning (a broker is
//! a peer: its bytes are checked like a client's).

use bytes::Bytes;
use quiver_proto::{FrameCodec, RoomEvent, RoomFrame};
use redis::{
    aio::ConnectionManager,
    streams::{StreamId, StreamRangeReply},
    AsyncCommands, RedisResult, Value,
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

/// Messages with seq in `after + 1 ..= upto`, oldest first, at most `count`.
pub(super) async fn range(
    conn: &mut ConnectionManager,
    log: &str,
    after: u64,
    upto: u64,
    count: usize,
    codec: &FrameCodec,
) -> RedisResult<Vec<Entry>> {
    Ok(range_read(conn, log, after, upto, count, codec).await?.0)
}

/// [`range`], and how many entries Redis returned (entries that do not decode are skipped, so there may be fewer):
/// `count` of them means there may be more.
pub(super) async fn range_read(
    conn: &mut ConnectionManager,
    log: &str,
    after: u64,
    upto: u64,
    count: usize,
    codec: &FrameCodec,
) -> RedisResult<(Vec<Entry>, usize)> {
    if after >= upto || count == 0 {
        return Ok((Vec::new(), 0));
    }
    let reply: StreamRangeReply =
        conn.xrange_count(log, format!("{}-0", after + 1), format!("{upto}-0"), count).await?;
    let read = reply.ids.len();
    Ok((decode_all(reply, log, codec), read))
}

/// [`range`], read only while the room's epoch (in `meta`) is `epoch`: `None` when it is another (the room's
/// history was lost and it started anew: the same seqs are other messages now).
pub(super) async fn range_in_epoch(
    conn: &mut ConnectionManager,
    (meta, log): (&str, &str),
    epoch: u64,
    (after, upto, count): (u64, u64, usize),
    codec: &FrameCodec,
) -> RedisResult<Option<Vec<Entry>>> {
    if after >= upto || count == 0 {
        return Ok(Some(Vec::new()));
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
    Ok(reply.map(|reply| decode_all(reply, log, codec)))
}

/// The newest `count` messages with seq at most `upto`, oldest first.
pub(super) async fn latest(
    conn: &mut ConnectionManager,
    log: &str,
    upto: u64,
    count: usize,
    codec: &FrameCodec,
) -> RedisResult<Vec<Entry>> {
    if upto == 0 || count == 0 {
        return Ok(Vec::new());
    }
    let reply: StreamRangeReply = conn.xrevrange_count(log, format!("{upto}-0"), "-", count).await?;
    let mut entries = decode_all(reply, log, codec);
    entries.reverse();
    Ok(entries)
}
