//! A room backed by the durable store: posts are sequenced under the room's lock as in memory, handed to the
//! store's writer, and wait in the room (`pending`) until their commit completes; [`Room::release`] then delivers
//! them, in seq order, and only then is the post acknowledged. So a member never sees, and a poster is never told
//! of, a message a crash could take back. History and replays are read from the store. Retention plans its
//! deletions as a room passes its bounds (and in the sweep, for age), a run at a time, and the store's retention
//! thread writes them: a post never waits for a deletion to be written.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use quiver_proto::{ErrorCode, Failure, Limits, Position, RoomFrame};

use super::{
    plan::{self, TrimInput, TrimPlan},
    ReplayRange, Room,
};
use crate::{
    hub::{history::MemoryHistory, DedupeWindow, Delivery},
    store::{Append, Commit, Extent, Op, Record, Remembered, Retention, Store, StoredRoom},
};

/// A durable room without members stays in memory this long after its last use (then it is unloaded and read
/// again from the store on the next use, keeping its epoch).
const UNLOAD_AFTER_US: u64 = 60_000_000;

/// Dedupe entries deleted at once, at least (fewer, more useful deletions).
const DEDUPE_TRIM_RUN: u64 = 256;

/// A post sequenced but not yet stored.
#[derive(Debug)]
struct PendingPost {
    seq: u64,
    frame: Bytes,
}

/// The room's part of the store.
#[derive(Debug)]
pub(super) struct DiskRoom {
    store: Arc<Store>,
    id: u64,
    name: Arc<str>,
    pending: VecDeque<PendingPost>,
    /// Seq of the oldest retained message (`delivered_seq + 1` when none is).
    first_seq: u64,
    first_time_us: Option<u64>,
    extent: Extent,
    retention: Retention,
    /// False until the room's creation is stored (a new room must not leave memory before: it would come back
    /// with another epoch).
    settled: bool,
    /// The creation's commit, until it is known stored: a room whose first user gave up waiting for it settles
    /// once it is (it stayed in memory for good).
    creating: Option<Commit>,
    /// Dedupe entries below this seq were deleted from the store already.
    dedupe_trimmed: u64,
    /// The last retention deletion, until it is stored: the room stays in memory meanwhile (loaded again before,
    /// it would count the messages being deleted and cut too many next time).
    trimming: Option<Commit>,
    /// The last deletion's plan could not read the store: the sweep tries again, not every post.
    plan_failed: bool,
    /// A cut a post's delivery found due with none planned, until its plan is made ([`Room::take_due_plan`]).
    due: Due,
    /// A cut planned off the lock, as the room was loaded or by the sweep: used while the room's oldest message is
    /// still the one it started from ([`TrimPlan`]).
    planned: Option<TrimPlan>,
    /// History up to this seq is not given to readers: a replay could not read it back ([`Room::unreadable_through`];
    /// in memory only, until the room is loaded again).
    unreadable_through: u64,
    codec: quiver_proto::FrameCodec,
}

/// Where a cut found due in a post's delivery stands ([`DiskRoom::trim_if_over`]).
#[derive(Debug)]
enum Due {
    /// None found, or its plan made.
    Idle,
    /// What to read for it, for the caller to take ([`Room::take_due_plan`]) and plan off the room's lock.
    Read(TrimInput),
    /// Taken: its plan is being made.
    Planning,
}

impl Room {
    /// What the sweep's trim would read to plan a retention cut, when it has to (past a bound, or its oldest message
    /// too old) and no plan for the room as it is now is at hand; `None` for a room in memory only.
    pub(crate) fn trim_input(&mut self, now_us: u64) -> Option<TrimInput> {
        let delivered = self.delivered_seq;
        self.disk.as_mut()?.trim_input(now_us, delivered)
    }

    /// A plan made from [`Room::trim_input`]: the next trim uses it if the room's oldest message is still the one
    /// it started from. A read that succeeded lets posts plan again (`plan_failed`).
    pub(crate) fn planned(&mut self, plan: TrimPlan) {
        if let Some(disk) = &mut self.disk {
            disk.planned = Some(plan);
            disk.plan_failed = false;
        }
    }

    /// The store read a post's delivery found due ([`Room::release`]): the caller plans it on the blocking pool,
    /// off the room's lock, and hands the plan back to [`Room::due_planned`].
    pub(crate) fn take_due_plan(&mut self) -> Option<TrimInput> {
        let disk = self.disk.as_mut()?;
        match std::mem::replace(&mut disk.due, Due::Planning) {
            Due::Read(input) => Some(input),
            other => {
                disk.due = other;
                None
            }
        }
    }

    /// Tests: a plan of [`Room::take_due_plan`]'s is being made.
    #[cfg(test)]
    pub(crate) fn due_planning(&self) -> bool {
        self.disk.as_ref().is_some_and(|disk| !matches!(disk.due, Due::Idle))
    }

    /// The plan of [`Room::take_due_plan`]'s read (`None`: the read failed, and the sweep tries again, not every
    /// post), and the cut made from it.
    pub(crate) fn due_planned(&mut self, plan: Option<TrimPlan>, now_us: u64) {
        let (epoch, delivered) = (self.epoch, self.delivered_seq);
        let Some(disk) = &mut self.disk else { return };
        disk.due = Due::Idle;
        match plan {
            Some(plan) => {
                (disk.planned, disk.plan_failed) = (Some(plan), false);
                disk.trim(now_us, &self.dedupe, epoch, delivered, false);
            }
            None => disk.plan_failed = true,
        }
    }

    /// A room loaded from the store (or just created in it: `settled` false until its creation commits), with the
    /// first trim's cut if it was planned as the room was loaded.
    pub(crate) fn durable(
        name: String,
        stored: StoredRoom,
        limits: &Limits,
        retention: Retention,
        store: Arc<Store>,
        (creating, planned): (Option<Commit>, Option<TrimPlan>),
    ) -> Room {
        let settled = creating.is_none();
        let mut room = Room::with_history(name.clone(), stored.epoch, limits, Box::new(MemoryHistory::new(0, 0, 0)));
        room.sequenced_seq = stored.last_seq;
        room.delivered_seq = stored.last_seq;
        for (identity, client_msg_id, seq, time_us) in &stored.dedupe {
            room.dedupe.record(identity, *client_msg_id, *seq, *time_us, stored.last_seq);
        }
        room.last_time_us = stored.dedupe.iter().map(|entry| entry.3).max().unwrap_or(0);
        // From 0: entries below the loaded window (expired, or past `max_entries`) are deleted by the first trim.
        let dedupe_trimmed = 0;
        room.disk = Some(DiskRoom {
            store,
            id: stored.id,
            name: name.into(),
            pending: VecDeque::new(),
            first_seq: stored.first_seq,
            first_time_us: stored.first_time_us,
            extent: stored.extent,
            retention,
            settled,
            creating,
            dedupe_trimmed,
            trimming: None,
            plan_failed: false,
            due: Due::Idle,
            planned,
            unreadable_through: 0,
            codec: quiver_proto::FrameCodec::new(limits.max_frame as usize),
        });
        room
    }

    /// A replay could not read this room's history back up to `seq` (a failed read, a message over `max_frame`):
    /// joins and History requests start after it from now on, so a member resuming from before it is told it missed
    /// messages instead of being replayed into the same failure.
    pub(crate) fn unreadable_through(&mut self, seq: u64) {
        if let Some(disk) = &mut self.disk {
            disk.unreadable_through = disk.unreadable_through.max(seq);
        }
    }

    /// The room's creation is stored: it may leave memory from now on.
    pub fn settle(&mut self) {
        if let Some(disk) = &mut self.disk {
            disk.settled = true;
            // Its outcome taken (stored: a barrier after it completed), the commit is let go of without writing
            // what other tasks queued under `os` (a commit dropped unwritten writes the queue, here under this
            // room's lock).
            if let Some(mut created) = disk.creating.take() {
                let _ = created.outcome();
            }
        }
    }

    /// Delivers, in seq order, the waiting posts up to `upto` (their commit completed: everything handed to the
    /// writer before a completed commit is stored too).
    pub fn release(&mut self, upto: u64, now_us: u64) -> Delivery {
        let Some(disk) = &mut self.disk else { return Delivery::default() };
        let mut frames = Vec::new();
        while disk.pending.front().is_some_and(|post| post.seq <= upto) {
            let Some(post) = disk.pending.pop_front() else { break };
            disk.extent.messages += 1;
            disk.extent.bytes += post.frame.len() as u64;
            disk.first_time_us.get_or_insert(now_us);
            frames.push((post.seq, post.frame));
        }
        // A busy room is trimmed as it passes its bounds, a run at a time, rather than by the sweep only (a
        // second's worth of posts at once otherwise); the plan's read is made off the lock (`take_due_plan`).
        if let Some(&(last, _)) = frames.last() {
            disk.trim_if_over(now_us, &self.dedupe, self.epoch, last);
        }
        // Delivered one at a time: a slow consumer dropped on the way leaves with the seq of the last message sent
        // before its `MemberLeft`, not the batch's last.
        // Every outbox once for the batch (the first frame's subscribers: later frames reach only those still
        // there): a commit may release thousands of posts into a room of thousands of members.
        let mut delivery = Delivery::default();
        for (i, (seq, frame)) in frames.into_iter().enumerate() {
            self.delivered_seq = seq;
            self.deliver_into(frame, now_us, &mut delivery, i == 0);
        }
        delivery
    }

    /// The store failed to commit the post `seq`: it and every post after it (the store refuses those too) are
    /// dropped, never delivered, never acknowledged, and their seqs and dedupe entries given back. Posts before it
    /// were committed in earlier batches and are released by their own posters.
    pub fn abort(&mut self, seq: u64) {
        let Some(disk) = &mut self.disk else { return };
        while disk.pending.back().is_some_and(|post| post.seq >= seq) {
            disk.pending.pop_back();
        }
        self.dedupe.forget_from(seq);
        self.sequenced_seq = self.sequenced_seq.min(seq.saturating_sub(1)).max(self.delivered_seq);
    }

    /// When the room's creation may not be stored yet: a commit to wait for before anyone learns the room's epoch,
    /// or before the room may leave memory (a deletion in flight keeps it in memory by itself: `settled()`). Under
    /// `os` only queued: the caller holds the room's lock, and the wait writes it once let go. Counted in the store's
    /// backlog as a retry's wait is, and past its bound refused `Unavailable`: while a disk
    /// stalls, a room's creation does not complete, and every request to it queued a barrier, without a bound for
    /// clients that gave up, reconnected and asked again (until 2026-12-07, a review's find).
    pub fn unsettled(&self) -> Result<Option<Commit>, Failure> {
        let Some(disk) = self.disk.as_ref().filter(|disk| !disk.settled) else { return Ok(None) };
        match disk.refuse_backlog() {
            Some(why) => Err(Failure::new(ErrorCode::Unavailable, why)),
            None => Ok(Some(disk.store.submit_queued(Op::RetryWait))),
        }
    }
}

impl DiskRoom {
    /// Nothing of the room waits for the store (a deletion stored already is let go of here, not only by the next
    /// trim: a room without members may leave memory as soon as it is).
    pub(super) fn settled(&mut self) -> bool {
        if self.trimming.as_mut().is_some_and(|trimming| trimming.outcome().is_some()) {
            self.trimming = None;
        }
        if self.creating.as_mut().is_some_and(|created| matches!(created.outcome(), Some(Ok(())))) {
            (self.settled, self.creating) = (true, None);
        }
        self.settled && self.pending.is_empty() && self.trimming.is_none()
    }

    pub(super) fn idle_long_enough(&self, last_active_us: u64, now_us: u64) -> bool {
        now_us.saturating_sub(last_active_us) >= UNLOAD_AFTER_US
    }

    /// Past a count or bytes bound by the slack, or its oldest message past the age bound.
    fn needs_trim(&self, now_us: u64) -> bool {
        plan::needs_trim(self.extent, self.first_time_us, &self.retention, now_us)
    }

    /// More is stored than the count or bytes bound allow, by the slack a deletion waits for.
    fn over_retention(&self) -> bool {
        plan::over_bounds(self.extent, &self.retention)
    }

    /// Why a new post cannot be stored now (the disk floor), if it cannot.
    pub(super) fn refuse_post(&self) -> Option<String> {
        self.store.disk().refuse()
    }

    /// Why a new post cannot be taken now (the store's backlog at its bound), if it cannot.
    pub(super) fn refuse_backlog(&self) -> Option<String> {
        self.store.backlog().refuse()
    }

    /// A commit that completes once everything handed to the writer so far is stored. Under `os` only queued: the
    /// caller holds the room's lock, and writes it ([`Commit::write_queued`]) once let go.
    pub(super) fn barrier(&self) -> Commit {
        self.store.submit_queued(Op::RetryWait)
    }

    /// Hands a sequenced post to the writer and keeps it until [`Room::release`]. Under `os` it is only queued:
    /// the poster writes it ([`Commit::write_queued`]) once it let go of the room's lock.
    pub(super) fn append(&mut self, seq: u64, time_us: u64, frame: Bytes) -> Commit {
        let append = Append { id: self.id, seq, time_us, frame: frame.clone() };
        self.pending.push_back(PendingPost { seq, frame });
        self.store.submit_queued(Op::Append(append))
    }

    /// The oldest seq a reader gets: the oldest stored, or the newest `max_messages` if the sweep has not deleted
    /// the older ones yet (the count bound holds exactly for readers; bytes and age within a sweep interval, or,
    /// for bounds lowered far, within the sweeps the cut takes at `store::MAX_TRIM_MESSAGES` each).
    fn first_readable(&self, delivered: u64) -> u64 {
        let by_count = delivered.saturating_add(1).saturating_sub(self.retention.max_messages);
        self.first_seq.max(by_count).max(self.unreadable_through.saturating_add(1))
    }

    /// Whether `since` can be resumed exactly, and what to replay: everything after it, or (when it cannot) the
    /// latest `gap_replay` messages.
    pub(super) fn replay_range(
        &self,
        epoch: u64,
        delivered: u64,
        gap_replay: usize,
        since: Option<Position>,
    ) -> (bool, ReplayRange) {
        let range = |after: u64| ReplayRange { room_id: self.id, after, upto: delivered, recovered: true };
        let Some(since) = since else { return (true, range(delivered)) };
        let first_needed = since.seq.saturating_add(1);
        let first = self.first_readable(delivered);
        let recoverable =
            since.epoch == epoch && since.seq <= delivered && (first_needed > delivered || first <= first_needed);
        if recoverable {
            return (true, range(since.seq));
        }
        let latest = delivered.saturating_sub(gap_replay as u64).max(first.saturating_sub(1));
        (false, ReplayRange { recovered: false, ..range(latest) })
    }

    /// A page of history after `since` (default: from the oldest retained), to be read from the store by
    /// [`DiskHistory::read`], outside the room's lock.
    pub(super) fn history(
        &self,
        since: Option<u64>,
        (epoch, delivered): (u64, u64),
        limit: usize,
        budget: usize,
    ) -> DiskHistory {
        let after = since.unwrap_or(0).max(self.first_readable(delivered).saturating_sub(1));
        let (store, id, name, codec) = (self.store.clone(), self.id, self.name.clone(), self.codec);
        DiskHistory { store, id, name, codec, epoch, after, delivered, limit, budget }
    }

    /// Retention: plans the deletion of the dedupe entries the window forgot (below `dedupe_from`) and of the
    /// messages beyond the retention bounds, for the store's retention thread to write. Deletions wait until a
    /// bound is passed by an eighth (or a message is too old), so each one removes a run of messages rather than a
    /// few every post; readers never see more than `max_messages` meanwhile ([`DiskRoom::first_readable`]).
    /// `epoch` and `last_seq` (the room's last delivered seq: every post up to it is stored) go into the room's
    /// record with each deletion, and no deletion reaches past `last_seq` (deletions are written by a thread of
    /// their own, not behind the posts handed to the writer); the posts `dedupe` remembers are kept as dedupe
    /// entries when their messages are deleted.
    pub(super) fn trim(&mut self, now_us: u64, dedupe: &DedupeWindow, epoch: u64, last_seq: u64, read: bool) {
        let room = || Record { name: self.name.clone(), epoch, last_seq };
        let dedupe_from = dedupe.oldest_seq().unwrap_or(last_seq.saturating_add(1));
        if let Some(mut trimming) = self.trimming.take() {
            if trimming.outcome().is_none() {
                self.trimming = Some(trimming);
                return; // the last deletion is not stored yet: plan the next from what is stored
            }
        }
        let r = self.retention;
        if dedupe_from >= self.dedupe_trimmed.saturating_add(DEDUPE_TRIM_RUN) {
            let from = std::mem::replace(&mut self.dedupe_trimmed, dedupe_from);
            let op = Op::TrimDedupe { id: self.id, from, before: dedupe_from, room: room() };
            self.trimming = Some(self.store.submit(op));
        }
        if !self.needs_trim(now_us) {
            return;
        }
        let planned = self.planned.take().and_then(|p| p.now(self.first_seq, last_seq, self.extent));
        let plan = match planned {
            Some(p) => Ok(p),
            // The sweep plans off the lock: a room cut since (by a post's trim) waits for its next sweep.
            None if !read => return,
            None => self.store.plan_trim(self.id, self.first_seq, last_seq, self.extent, &r, now_us),
        };
        self.plan_failed = plan.is_err();
        match plan {
            // Nothing stored to delete yet; the oldest message's time as read (one taken for older, from a plan
            // that cut through its view, would have every sweep plan again until it aged).
            Ok((cut, _, first_time_us)) if cut == self.first_seq => {
                self.first_time_us = first_time_us.or(self.first_time_us);
            }
            Ok((cut, left, first_time_us)) => {
                let from = std::mem::replace(&mut self.first_seq, cut);
                // Behind the dedupe deletion, if any: its commit vouches for both.
                let keep = dedupe.remembered(from, cut).map(|(identity, client_msg_id, seq, time_us)| Remembered {
                    seq,
                    time_us,
                    client_msg_id,
                    identity: identity.clone(),
                });
                let op = Op::TrimMessages { id: self.id, from, before: cut, room: room(), keep: keep.collect() };
                self.trimming = Some(self.store.submit(op));
                self.extent = left;
                self.first_time_us = first_time_us;
            }
            Err(err) => {
                // Tried again by the sweep, not by every post (`plan_failed`).
                tracing::error!(room = %self.name, %err, "retention read failed");
            }
        }
    }

    /// [`DiskRoom::trim`] from a plan at hand if the room is past its count or bytes bound by the slack (and its
    /// last plan did not fail): a post's delivery calls it. Without a plan, what to read for one is left in `due`
    /// for the caller to read off the room's lock: read under it, on a runtime thread, a slow disk held every
    /// post and join of the room, and the thread, for as long as the read took (until 2026-12-07).
    pub(super) fn trim_if_over(&mut self, now_us: u64, dedupe: &DedupeWindow, epoch: u64, last_seq: u64) {
        if self.plan_failed || !matches!(self.due, Due::Idle) || !self.over_retention() {
            return;
        }
        self.trim(now_us, dedupe, epoch, last_seq, false);
        if self.trimming.is_none() && self.over_retention() {
            if let Some(input) = self.trim_input(now_us, last_seq) {
                self.due = Due::Read(input);
            }
        }
    }

    /// [`DiskRoom::trim`]'s store read, when it would make one now: past a bound or too old, its last deletion
    /// stored, and no plan at hand for the room as it is.
    fn trim_input(&mut self, now_us: u64, last_seq: u64) -> Option<TrimInput> {
        // (A deletion stored is let go of here too: for a room with members nothing else would before the trim.)
        if self.trimming.as_mut().is_some_and(|trimming| trimming.outcome().is_some()) {
            self.trimming = None;
        }
        if self.trimming.is_some() {
            return None; // the last deletion is not stored yet: the next sweep plans from what is
        }
        let planned = self.planned.is_some_and(|p| p.now(self.first_seq, last_seq, self.extent).is_some());
        if !self.needs_trim(now_us) || planned || last_seq < self.first_seq {
            return None;
        }
        Some(TrimInput {
            store: self.store.clone(),
            id: self.id,
            from: self.first_seq,
            upto: last_seq,
            extent: self.extent,
            retention: self.retention,
            now_us,
        })
    }
}

/// A History page of a durable room, read from the store outside the room's lock (a page not in the store's cache
/// is read from disk, up to a frame's worth): [`DiskHistory::read`], on a blocking thread.
#[derive(Debug)]
pub struct DiskHistory {
    store: Arc<Store>,
    id: u64,
    name: Arc<str>,
    codec: quiver_proto::FrameCodec,
    epoch: u64,
    after: u64,
    delivered: u64,
    limit: usize,
    budget: usize,
}

impl DiskHistory {
    /// [`DiskHistory::read`] on the blocking pool, taking one of the store's turns to read
    /// ([`Store::read_off_runtime`]).
    pub async fn read_off_runtime(self) -> Result<Result<quiver_proto::HistoryPage, Failure>, tokio::task::JoinError> {
        let store = self.store.clone();
        store.read_off_runtime(move || self.read()).await
    }

    /// Reads the page (blocking: the store's read).
    pub fn read(self) -> Result<quiver_proto::HistoryPage, Failure> {
        let DiskHistory { store, id, name, codec, epoch, after, delivered, limit, budget } = self;
        // A read that fails is the client's error to see (an empty last page said "no more history").
        let page = store.page(id, after, delivered, limit, budget).map_err(|err| {
            tracing::error!(room = %name, %err, "history read failed");
            Failure::new(ErrorCode::Internal, format!("the history of room {name} could not be read"))
        })?;
        let mut messages = Vec::with_capacity(page.frames.len());
        for stored in page.frames {
            let mut frame = bytes::BytesMut::from(&stored.frame[..]);
            match codec.decode::<RoomFrame>(&mut frame) {
                Ok(Some(RoomFrame::Event(event))) => messages.push(event),
                // Skipped, the page would hold nothing past it and say "more": a client paging from its last
                // seq asked for the same page forever (e.g. `max_frame` lowered below stored messages).
                other => {
                    tracing::error!(room = %name, seq = stored.seq, ?other, "a stored frame is not an event");
                    let reason = format!("message {} of room {name} cannot be read back", stored.seq);
                    return Err(Failure::new(ErrorCode::Internal, reason));
                }
            }
        }
        // A frame over the budget alone still counts against it: the page stops before it.
        Ok(quiver_proto::HistoryPage { room: name.to_string(), epoch, messages, more: page.more })
    }
}
