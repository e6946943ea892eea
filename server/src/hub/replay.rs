//! A join's replay read in pages, from the durable store or a memory room's history: the next page is read only
//! once the previous one was handed to the joiner's stream ([`Outbox::drained`]), so a replay holds one page however
//! long the history and however slow the reader.
//! Live frames wait in the joiner's outbox meanwhile (within its live bound) and follow the last page.

use std::sync::Arc;

use super::{room::ReplayRange, Outbox};
use crate::store::Store;

/// Messages per page at most.
const PAGE_MESSAGES: usize = 256;
/// Bytes of frames per page at most (a single bigger message still makes a page).
const PAGE_BYTES: usize = 256 << 10;
/// Before a failed page is read again.
const READ_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The replay of one join, to run on its own task: it writes the replay page by page into the joiner's outbox,
/// then lets the held live frames follow.
#[must_use = "the joiner's live frames are held until the replay runs"]
pub struct Replay(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

impl Replay {
    /// A replay carried out by `task` (another engine's paged read), which must end with
    /// [`Outbox::release_hold`] and a flush.
    pub fn new(task: impl std::future::Future<Output = ()> + Send + 'static) -> Replay {
        Replay(Box::pin(task))
    }

    /// A replay of `range` of `room` from the durable store, of frames no longer than `codec` allows. When part of
    /// the range cannot be read (a store read fails, a stored frame is over the server's `max_frame`, lowered since
    /// it was stored), `unreadable(upto)` is called with the range's end and the joiner is dropped from the room
    /// as a slow consumer: its rejoin finds the history it asked for unreadable and is told it missed messages
    /// (`recovered: false`), rather than being sent the live frames after a replay cut short under `recovered:
    /// true`, a gap nobody would see.
    pub(super) fn from_store(
        store: Arc<Store>,
        (room, codec): (String, quiver_proto::FrameCodec),
        range: ReplayRange,
        outbox: Arc<dyn Outbox>,
        unreadable: Box<dyn FnOnce(u64) + Send>,
    ) -> Replay {
        Replay::new(from_store(store, (room, codec), range, outbox, unreadable))
    }

    /// The rest of an in-memory room's replay (`range`, after the page [`super::room::Room::join`] queued), read
    /// from `room`'s history a page at a time as the joiner's stream takes them. A message of the range gone from
    /// memory meanwhile (retention, or the room evicted) ends a recovered replay as a slow consumer's: the joiner
    /// rejoins and is told it missed messages.
    pub(super) fn from_memory(
        room: std::sync::Weak<std::sync::Mutex<super::rooms::Slot>>,
        range: ReplayRange,
        outbox: Arc<dyn Outbox>,
    ) -> Replay {
        Replay::new(from_memory(room, range, outbox))
    }

    /// Writes the replay, then lets the held live frames follow.
    pub async fn run(self) {
        self.0.await
    }
}

async fn from_store(
    store: Arc<Store>,
    (room, codec): (String, quiver_proto::FrameCodec),
    range: ReplayRange,
    outbox: Arc<dyn Outbox>,
    unreadable: Box<dyn FnOnce(u64) + Send>,
) {
    let ReplayRange { room_id, mut after, upto, recovered } = range;
    let joiner = outbox.clone();
    // The history up to the range's end is taken for unreadable (by whoever joins next, until a restart), and the
    // joiner rejoins to learn so. Not the failing seq alone: a read error does not say which record it met, and a
    // floor raised a message at a time would have the joiner rejoin once per message.
    let cut_short = move |after: u64, why: &dyn std::fmt::Display| {
        tracing::error!(
            room = %room,
            after,
            upto,
            %why,
            "the replay cannot go on: the room's history up to its seq {upto} is taken for unreadable, and the \
             joiner rejoins to be told it missed messages"
        );
        unreadable(upto);
        joiner.kick_replay();
        joiner.flush();
    };
    while after < upto {
        // Each page read once what is queued before it (Open, or the last page) was handed to the stream.
        if !outbox.drained().await {
            return; // the stream is gone
        }
        // On the blocking pool: a page not in the cache is read from disk (up to 256 KiB), which must not hold up
        // the runtime's threads (every connection's tasks); at most `READS_AT_ONCE` at once, a replay given up
        // (its joiner gone) while its read is stuck holding its turn.
        let read = || {
            let reading = store.clone();
            store.read_off_runtime(move || reading.page(room_id, after, upto, PAGE_MESSAGES, PAGE_BYTES))
        };
        // Tried twice (a moment apart): the history is taken for unreadable, until the room is loaded again, only
        // when reading fails again, not at a passing error.
        let mut page = read().await;
        if !matches!(page, Ok(Ok(_))) {
            tokio::time::sleep(READ_RETRY).await;
            page = read().await;
        }
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(err)) => return cut_short(after, &format_args!("replay read failed (twice): {err}")),
            Err(err) => return cut_short(after, &format_args!("replay read did not finish: {err}")),
        };
        // Not the next seq: retention deleted some of the range meanwhile (or all of the rest: an empty page). A
        // joiner told it was not recovered knows it missed messages: its replay goes on past the jump.
        if recovered && page.frames.first().is_none_or(|first| first.seq != after + 1) {
            // Ended as an overflowed subscription (`SlowConsumer`): the client rejoins from what it got, which is
            // no longer recoverable, so it learns that it missed messages.
            outbox.kick_replay();
            outbox.flush();
            return;
        }
        // A frame the client would refuse (it decodes with the Welcome's `max_frame`) breaks its connection, and it
        // would reconnect into the same replay for as long as the message is retained.
        if let Some(long) = page.frames.iter().find(|stored| !fits(&stored.frame, codec.max_frame())) {
            let why = format!("stored message {} is over max_frame ({} bytes)", long.seq, codec.max_frame());
            return cut_short(after, &why);
        }
        let Some(last) = page.frames.last() else { break };
        after = last.seq;
        for stored in page.frames {
            outbox.push_replay(stored.frame);
        }
        outbox.flush();
    }
    release_after_the_last_page(&*outbox).await;
}

async fn from_memory(
    room: std::sync::Weak<std::sync::Mutex<super::rooms::Slot>>,
    ReplayRange { mut after, upto, recovered, .. }: ReplayRange,
    outbox: Arc<dyn Outbox>,
) {
    while after < upto {
        // Each page read once what is queued before it (the join's own first page, then the last one) was handed to
        // the stream: the next page was read at once after the join's, two pages held for a reader taking nothing.
        if !outbox.drained().await {
            return; // the stream is gone
        }
        let page = room.upgrade().and_then(|slot| {
            let slot = super::lock::lock(&slot);
            (!slot.removed).then(|| slot.room.memory_page(after, upto, PAGE_MESSAGES, PAGE_BYTES))
        });
        let page = page.unwrap_or_default();
        if recovered && page.first().is_none_or(|(seq, _)| *seq != after + 1) {
            outbox.kick_replay();
            outbox.flush();
            return;
        }
        let Some(&(last, _)) = page.last() else { break };
        after = last;
        for (_, frame) in page {
            outbox.push_replay(frame);
        }
        outbox.flush();
    }
    release_after_the_last_page(&*outbox).await;
}

/// Lets the held live frames follow once the last page was written, in a write of their own: in one with the page,
/// they would be counted against `room_queue_bytes` as the page's frames were written. Nothing when the stream is
/// gone meanwhile.
async fn release_after_the_last_page(outbox: &dyn Outbox) {
    if outbox.drained().await {
        outbox.release_hold();
        outbox.flush();
    }
}

/// Whether `frame` (a length prefix and a body) has a body of at most `max_frame` bytes.
fn fits(frame: &[u8], max_frame: usize) -> bool {
    quiver_proto::varint::decode(frame)
        .is_some_and(|(len, prefix)| len <= max_frame as u64 && prefix as u64 + len == frame.len() as u64)
}

/// Splits an in-memory replay into the page queued at once and, when more follows, the seq the rest of it starts
/// after (the last seq of the page).
pub(super) fn first_page(
    mut replay: Vec<Arc<super::history::StoredMessage>>,
) -> (Vec<Arc<super::history::StoredMessage>>, Option<u64>) {
    let mut bytes = 0;
    let fits = replay.iter().take(PAGE_MESSAGES).take_while(|message| {
        bytes += message.frame.len();
        bytes <= PAGE_BYTES
    });
    let len = fits.count().max(1).min(replay.len());
    if len == replay.len() {
        return (replay, None);
    }
    replay.truncate(len);
    let after = replay.last().map(|message| message.event.seq);
    (replay, after)
}
