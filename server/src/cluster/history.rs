//! A History page in a cluster: read from the room's Redis stream in the epoch the page names, past the messages
//! older than the age bound (which Redis may still hold: [`aged`]).

use quiver_proto::{ErrorCode, Failure, HistoryPage};

use super::{keys::RoomKeys, node_room::Ctx, replay::aged, stream};

/// Reads of one page tried before it is refused `Unavailable`: each is given up when the room started a new epoch
/// under way (its history lost, the same seqs other messages since), and read again in the new one.
const ATTEMPTS: u32 = 3;

/// The page of `room` after `since`, at most `limit` messages and `budget` bytes of them.
pub(super) async fn page(
    ctx: &Ctx,
    room: &str,
    since: Option<u64>,
    (limit, budget): (u32, usize),
    now_us: u64,
) -> Result<HistoryPage, Failure> {
    let keys = RoomKeys::new(room);
    for _ in 0..ATTEMPTS {
        if let Some(page) = read(ctx, &keys, room, since, (limit, budget), now_us).await? {
            return Ok(page);
        }
    }
    Err(Failure::new(ErrorCode::Unavailable, format!("room {room} keeps starting new epochs; retry")))
}

/// [`page`] once: `None` when the room was in another epoch at one of its reads than at the first.
async fn read(
    ctx: &Ctx,
    keys: &RoomKeys,
    room: &str,
    since: Option<u64>,
    (limit, budget): (u32, usize),
    now_us: u64,
) -> Result<Option<HistoryPage>, Failure> {
    let mut conn = ctx.broker.conn();
    let meta: (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("seq")
        .query_async(&mut conn)
        .await
        .map_err(|err| ctx.unavailable(err))?;
    let (Some(epoch), Some(seq)) = meta else {
        return Ok(Some(HistoryPage { room: room.to_string(), epoch: 0, messages: Vec::new(), more: false }));
    };
    let epoch = epoch.parse().map_err(|_| Failure::new(ErrorCode::Internal, "unreadable room epoch"))?;
    // One more than asked tells whether there is more; a page never reads more than 1,024 entries.
    let count = (limit as usize).saturating_add(1).min(stream::MAX_READ);
    let read_from = |from: u64, count: usize| {
        let mut conn = conn.clone();
        async move {
            let keys = (keys.meta.as_str(), keys.log.as_str());
            let read = stream::range_read_in_epoch(&mut conn, keys, epoch, (from, seq, count), &ctx.codec).await;
            read.map_err(|err| ctx.unavailable(err))
        }
    };
    let Some((mut entries, mut read)) = read_from(since.unwrap_or(0), count).await? else { return Ok(None) };
    if entries.first().is_some_and(|e| aged(ctx, e, now_us)) {
        // Aged messages first (a room gone quiet after many, its stream not trimmed since): past them in reads
        // of 1,024, as many as the stream can hold, then the page from the first retained one.
        let mut from = since.unwrap_or(0);
        let most_reads = ctx.limits.history_max_messages as usize / stream::MAX_READ + 2;
        for _ in 0..most_reads {
            let Some((skipped, read)) = read_from(from, stream::MAX_READ).await? else { return Ok(None) };
            match (skipped.iter().position(|e| !aged(ctx, e, now_us)), skipped.last()) {
                (Some(0), _) => break,
                (Some(i), _) => {
                    from = skipped[i - 1].seq();
                    break;
                }
                (None, Some(last)) if read == stream::MAX_READ && from < last.seq() => from = last.seq(),
                (None, _) => {
                    from = seq; // every one aged
                    break;
                }
            }
        }
        let Some(page) = read_from(from, count).await? else { return Ok(None) };
        (entries, read) = page;
    }
    // A full read (cut short by `limit` + 1 or by the 1,024 cap) may leave more unread, also when some of its
    // entries did not decode and were skipped.
    let (mut messages, mut used, mut more) = (Vec::new(), 0, read == count);
    // Aged messages are no longer retained ([`aged`]): left out, and not counted against `limit`.
    for (i, entry) in entries.into_iter().filter(|e| !aged(ctx, e, now_us)).enumerate() {
        if i == limit as usize || used + entry.frame.len() > budget {
            more = true;
            break;
        }
        used += entry.frame.len();
        messages.push(entry.event);
    }
    // A page with nothing in it that says there is more would have its reader ask for the same page again.
    more &= !messages.is_empty();
    Ok(Some(HistoryPage { room: room.to_string(), epoch, messages, more }))
}
