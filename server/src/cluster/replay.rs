//! A join's replay in a cluster: what it replays from the room's Redis stream ([`plan`]: recovered or not, the first
//! page), and the pages after the first ([`replay_rest`]), each read once the one before was handed to the joiner's
//! stream and at most [`PAGE_BYTES`]; messages past the age bound and holes in the stream are not replayed as
//! recovered.

use std::sync::Arc;

use quiver_proto::Position;

use super::{
    node_room::Ctx,
    stream::{self, Entry},
};
use crate::hub::Outbox;

/// What a join replays: whether `since` is recovered, the first page, and what is left to read after it.
pub(super) struct Plan {
    pub(super) recovered: bool,
    pub(super) first: Vec<Entry>,
    pub(super) rest: Option<(u64, u64)>,
}

/// Bytes of frames a replay page holds at most (a single bigger message still makes a page), as the single node's
/// pages: 256 messages of up to `max_body` each were up to 4 MiB a page.
const PAGE_BYTES: usize = 256 << 10;

/// Cuts `page` after the entries that fit [`PAGE_BYTES`] (the first always stays).
fn within_page_bytes(page: &mut Vec<Entry>) {
    let mut bytes = 0;
    let keep = page
        .iter()
        .position(|entry| {
            bytes += entry.frame.len();
            bytes > PAGE_BYTES
        })
        .map_or(page.len(), |over| over.max(1));
    page.truncate(keep);
}

/// Whether `entries` follow `after` one by one (seqs `after + 1`, `after + 2`, …): a stream entry that does not
/// decode, or whose frame is over this node's `max_frame` (a node configured with smaller limits than the one that
/// took the post), is left out by [`stream::range`], and a replay that checked only a page's first entry passed over
/// it in silence, `recovered` and all.
fn contiguous(after: u64, entries: &[Entry]) -> bool {
    entries.iter().zip(after.saturating_add(1)..).all(|(entry, seq)| entry.seq() == seq)
}

/// Whether `entry` is older than `history_max_age_s` at `now_us`: no longer retained, though Redis may still hold
/// it (its stream is trimmed by age only as posts come, [`super::scripts`]' POST, so a room gone quiet kept serving
/// its aged messages to History and to resumes, `recovered` and all, until its keys expired; a review's find).
pub(super) fn aged(ctx: &Ctx, entry: &Entry, now_us: u64) -> bool {
    ctx.limits.history_max_age_us().is_some_and(|max_age| entry.event.time_us.saturating_add(max_age) < now_us)
}

/// What a join that read the room at `(epoch, seq)` replays for `since`; `None` when the room is in another epoch
/// by now (its history was lost and it started anew between the join's script and this read: the same seqs are
/// other messages, and the join is tried again).
pub(super) async fn plan(
    ctx: &Ctx,
    conn: &mut redis::aio::ConnectionManager,
    (keys, epoch, seq): ((&str, &str), u64, u64),
    since: Option<Position>,
    now_us: u64,
) -> redis::RedisResult<Option<Plan>> {
    let Some(since) = since else { return Ok(Some(Plan { recovered: true, first: Vec::new(), rest: None })) };
    if since.epoch == epoch && since.seq <= seq {
        if since.seq == seq {
            return Ok(Some(Plan { recovered: true, first: Vec::new(), rest: None }));
        }
        let bounds = (since.seq, seq, stream::PAGE);
        let Some(mut first) = stream::range_in_epoch(conn, keys, epoch, bounds, &ctx.codec).await? else {
            return Ok(None);
        };
        within_page_bytes(&mut first);
        // (The entries after a retained one are newer: retained too.)
        let retained = first.first().is_some_and(|e| !aged(ctx, e, now_us));
        if retained && !first.is_empty() && contiguous(since.seq, &first) {
            let last = first.last().map_or(seq, Entry::seq);
            let rest = (last < seq).then_some((last, seq));
            return Ok(Some(Plan { recovered: true, first, rest }));
        }
    }
    let newest = (seq, ctx.limits.gap_replay as usize);
    let Some(mut first) = stream::latest_in_epoch(conn, keys, epoch, newest, &ctx.codec).await? else {
        return Ok(None);
    };
    first.retain(|e| !aged(ctx, e, now_us));
    Ok(Some(Plan { recovered: false, first, rest: None }))
}

/// The pages of a replay after the first, read once the joiner's stream took the previous one.
/// Read in the join's epoch only: a room that lost its history meanwhile (and started a new epoch under the same
/// seqs) ends the replay, and the member rejoins.
pub(super) async fn replay_rest(
    ctx: Arc<Ctx>,
    (meta, log, epoch): (String, String, u64),
    (mut after, upto): (u64, u64),
    outbox: Arc<dyn Outbox>,
) {
    // Entries read at a time: a page's worth of the last page's size (with large messages, 256 a read fetched and
    // decoded up to 4 MiB to keep 256 KiB, and read most of it again for the next page).
    let mut count = stream::PAGE;
    while after < upto {
        // Each page read once what is queued before it (the join's first page, then the last one) was handed to the
        // stream (read at once after the join's, two pages were held for a reader taking nothing).
        if !outbox.drained().await {
            return;
        }
        let mut conn = ctx.broker.conn();
        let keys = (meta.as_str(), log.as_str());
        let read = stream::range_in_epoch(&mut conn, keys, epoch, (after, upto, count), &ctx.codec).await;
        let read = read.map(|page| {
            page.map(|mut page| {
                // (Cut before the gap check: a gap past the cut is the next page's, not a reason to end this one.)
                within_page_bytes(&mut page);
                page
            })
        });
        match read {
            Ok(Some(page)) if !page.is_empty() && contiguous(after, &page) => {
                count = (page.len() * 2).clamp(8, stream::PAGE);
                after = page.last().map_or(upto, Entry::seq);
                for entry in page {
                    outbox.push_replay(entry.frame);
                }
                outbox.flush();
            }
            outcome => {
                if let Err(err) = outcome {
                    ctx.broker.failed(&err);
                }
                // Trimmed meanwhile, unreadable, or another epoch: the member rejoins from where it got to.
                outbox.kick_replay();
                outbox.release_hold();
                outbox.flush();
                return;
            }
        }
    }
    // The held live frames follow once the last page was written, in a write of their own: in one with the page
    // they would be counted against `room_queue_bytes` as the page's frames were written.
    if outbox.drained().await {
        outbox.release_hold();
        outbox.flush();
    }
}

#[cfg(test)]
mod page_tests {
    use super::*;

    fn entry(seq: u64, bytes: usize) -> Entry {
        let kind = quiver_proto::EventKind::Message { sender: "s".into(), client_msg_id: seq, body: vec![0; 8].into() };
        let event = quiver_proto::RoomEvent { seq, time_us: 1, kind };
        Entry { op: seq, event, frame: bytes::Bytes::from(vec![0; bytes]) }
    }

    /// A replay page holds at most 256 KiB of frames, as the single node's (256 messages of 16 KiB were 4 MiB), and
    /// always its first message, however big.
    #[test]
    fn a_replay_page_is_bounded_in_bytes() {
        let mut page: Vec<Entry> = (1..=256).map(|seq| entry(seq, 16 * 1024)).collect();
        within_page_bytes(&mut page);
        assert_eq!(page.len(), 16, "256 KiB of 16 KiB frames");
        assert!(contiguous(0, &page));
        let mut one = vec![entry(1, 1 << 20), entry(2, 10)];
        within_page_bytes(&mut one);
        assert_eq!(one.len(), 1, "the first stays, however big");
        let mut small: Vec<Entry> = (1..=10).map(|seq| entry(seq, 100)).collect();
        within_page_bytes(&mut small);
        assert_eq!(small.len(), 10);
    }
}
