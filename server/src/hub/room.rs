//! One room's state machine: sequencing, history, dedupe, members and delivery to subscribers' outboxes. Every
//! operation runs under the room's lock, so a join's history replay and its live subscription start at the same
//! point of the room's order: nothing is missed or doubled between them. Operations enqueue frames and return the
//! [`Delivery`] to flush; nothing here writes to a stream.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use quiver_proto::{
    ErrorCode, EventKind, Failure, FrameCodec, HistoryPage, Joined, Limits, Position, RoomEvent, RoomFrame,
};

use super::{
    dedupe::DedupeWindow,
    history::{HistoryStore, MemoryHistory, StoredMessage},
    Delivery, Outbox, Posted, SubscriberId,
};
use crate::store::Commit;

mod durable;
mod members;
mod plan;
mod retention;

pub(crate) use members::fit_members;

pub(super) use plan::{plan_at_load, TrimInput, TrimPlan};

#[derive(Debug)]
struct Subscriber {
    identity: String,
    outbox: Arc<dyn Outbox>,
}

/// A room.
#[derive(Debug)]
pub struct Room {
    name: String,
    epoch: u64,
    sequenced_seq: u64,
    /// Identity → number of its subscriptions (one identity may be in a room from several connections).
    members: BTreeMap<String, u32>,
    subscribers: HashMap<SubscriberId, Subscriber>,
    history: Box<dyn HistoryStore>,
    dedupe: DedupeWindow,
    codec: FrameCodec,
    gap_replay: usize,
    /// Last join, leave or post (µs since the Unix epoch): rooms idle longest give up their memory first.
    last_active_us: u64,
    /// Seq of the newest message delivered (and acknowledged). Equal to `sequenced_seq` in memory; behind it by the
    /// posts waiting for the store.
    delivered_seq: u64,
    /// Time of the newest message sequenced: messages are stamped in seq order ([`Room::post`]).
    last_time_us: u64,
    /// The room's part of the durable store; `None` in memory (`history` holds everything then).
    disk: Option<durable::DiskRoom>,
}

/// What a post did: its acknowledgement, the outboxes it enqueued into, and, with a durable store, the commit to
/// wait for before [`Room::release`] delivers it and the acknowledgement may be sent.
#[derive(Debug)]
#[must_use = "a durable post is acknowledged and delivered only after its commit"]
pub struct Posting {
    /// The acknowledgement (valid once `commit` completes).
    pub posted: Posted,
    /// What to flush now.
    pub delivery: Delivery,
    /// The store's commit of the post (`None` in memory, or when the seq was already delivered).
    pub commit: Option<Commit>,
}

/// Messages a join replays from the store after the Open frame, paged by the caller (`after + 1 ..= upto`); the
/// joiner's outbox holds live frames until the replay is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRange {
    /// The room's id in the store.
    pub room_id: u64,
    /// The last seq the joiner has.
    pub after: u64,
    /// The last seq delivered when it joined (live frames begin after it).
    pub upto: u64,
    /// The joiner was told its position was recovered: every seq of the range must reach it.
    pub recovered: bool,
}

/// A History request's page ([`Room::history`]): ready (a room in memory only), or to be read from the store.
#[derive(Debug)]
pub enum HistoryRead {
    Page(HistoryPage),
    Disk(durable::DiskHistory),
}

impl HistoryRead {
    /// Tests: the page, read at once.
    #[cfg(test)]
    pub fn page(self) -> Result<HistoryPage, Failure> {
        match self {
            HistoryRead::Page(page) => Ok(page),
            HistoryRead::Disk(read) => read.read(),
        }
    }
}

impl Room {
    /// A new, empty room with the given epoch and the in-memory history `limits` describe, holding at most
    /// `history_bytes` of it.
    pub fn new(name: String, epoch: u64, limits: &Limits, history_bytes: u64) -> Room {
        let max_age_us = limits.history_max_age_us().unwrap_or(u64::MAX);
        let history = MemoryHistory::new(limits.history_max_messages as usize, history_bytes, max_age_us);
        Room::with_history(name, epoch, limits, Box::new(history))
    }

    /// A new room over the given history store.
    pub fn with_history(name: String, epoch: u64, limits: &Limits, history: Box<dyn HistoryStore>) -> Room {
        Room {
            name,
            epoch,
            sequenced_seq: 0,
            last_time_us: 0,
            members: BTreeMap::new(),
            subscribers: HashMap::new(),
            history,
            dedupe: DedupeWindow::new(
                u64::from(limits.dedupe_window_s) * 1_000_000,
                limits.dedupe_max_entries as usize,
            ),
            codec: FrameCodec::new(limits.max_frame as usize),
            gap_replay: limits.gap_replay as usize,
            last_active_us: 0,
            delivered_seq: 0,
            disk: None,
        }
    }

    /// Bytes of memory the room's history and dedupe window hold.
    pub fn retained_bytes(&self) -> u64 {
        self.history.bytes() + self.dedupe.bytes()
    }

    /// Last join, leave, post or history read (or the room's creation or loading).
    pub fn last_active_us(&self) -> u64 {
        self.last_active_us
    }

    /// True for a memory room that remembers posts for the dedupe window: evicted, it forgets them (a retry made
    /// after is stored again, in a new epoch). A durable room's window is read back from the store.
    pub fn eviction_forgets_retries(&self) -> bool {
        self.disk.is_none() && !self.dedupe.is_empty()
    }

    /// The room is used at `now_us` (made, loaded or read): it is not the idle room to evict or unload first.
    pub fn touch(&mut self, now_us: u64) {
        self.last_active_us = self.last_active_us.max(now_us);
    }

    /// True when the room holds nothing worth keeping: no subscribers, no history, no dedupe memory. Dropping it
    /// loses nothing; a later join starts a new epoch. A durable room: no subscribers, nothing waiting for the store,
    /// and unused for a minute (everything is in the store, and a later use loads it again, same epoch, reading its
    /// retained messages' extent: up to `room_history_bytes`). Until then one whose dedupe window was empty left at
    /// the next sweep, and a client paging a quiet room's history, or joining and leaving it, had it read back
    /// from the store at every page or join.
    pub fn is_idle_and_empty(&mut self, now_us: u64) -> bool {
        let evictable = self.evictable();
        match &self.disk {
            None => self.subscribers.is_empty() && self.history.first_seq().is_none() && self.dedupe.is_empty(),
            Some(disk) => evictable && disk.idle_long_enough(self.last_active_us, now_us),
        }
    }

    /// True when the room may leave memory now: no subscribers, and nothing waiting for the store.
    pub fn evictable(&mut self) -> bool {
        self.subscribers.is_empty() && self.disk.as_mut().is_none_or(durable::DiskRoom::settled)
    }

    /// The room's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seq of the newest message delivered (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.delivered_seq
    }

    /// Identities present, sorted.
    pub fn members(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// Number of subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Subscribes `outbox` as `identity`: queues the stream's Open frame, then the replay `since` asks for (or,
    /// when it cannot be recovered, the latest messages), then this member's join event to everyone. With a
    /// durable store the replay is left to the caller (the returned range, read from the store in pages) and the
    /// outbox holds live frames until it is done.
    pub fn join(
        &mut self,
        subscriber: SubscriberId,
        identity: &str,
        (since, req_id): (Option<Position>, u64),
        outbox: Arc<dyn Outbox>,
        now_us: u64,
    ) -> (Joined, Delivery, Option<ReplayRange>) {
        self.last_active_us = now_us;
        self.history.trim(now_us);
        let (recovered, replay, range) = match &self.disk {
            None => {
                let (recovered, replay) = self.replay_for(since);
                // The first page goes now; the rest, if any, is paged from memory by the caller like a durable
                // room's ([`super::replay`]): a join never queues a whole history (up to `history_max_messages`
                // frames, outside the member's live bound, and held past retention while it waits).
                let (replay, rest) = super::replay::first_page(replay);
                let range = rest.map(|after| ReplayRange { room_id: 0, after, upto: self.delivered_seq, recovered });
                (recovered, replay, range)
            }
            Some(disk) => {
                let (recovered, range) = disk.replay_range(self.epoch, self.delivered_seq, self.gap_replay, since);
                (recovered, Vec::new(), Some(range))
            }
        };
        let replay_from = match (range, replay.first()) {
            (_, Some(first)) => first.event.seq,
            (Some(range), None) => range.after + 1,
            (None, None) => self.sequenced_seq.saturating_add(1),
        };
        let count = self.members.entry(identity.to_string()).or_insert(0);
        *count += 1;
        let first_connection = *count == 1;
        let mut joined = Joined {
            room: self.name.clone(),
            epoch: self.epoch,
            recovered,
            replay_from,
            last_seq: self.delivered_seq,
            members: self.members(),
            req_id,
        };
        fit_members(&mut joined, identity, self.codec.max_frame());
        if let Some(frame) = self.encode(&RoomFrame::Open(joined.clone())) {
            outbox.push_replay(frame);
        }
        for message in &replay {
            outbox.push_replay(message.frame.clone());
        }
        let range = range.filter(|range| range.after < range.upto);
        if range.is_some() {
            outbox.hold();
        }
        let mut delivery = Delivery::default();
        delivery.add(outbox.clone());
        self.subscribers.insert(subscriber, Subscriber { identity: identity.to_string(), outbox });
        if first_connection {
            delivery.extend(self.broadcast(EventKind::MemberJoined { member: identity.to_string() }, now_us));
        }
        (joined, delivery, range)
    }

    /// A page of the in-memory history for a paged replay: the messages after `after` up to `upto`, at most
    /// `max_messages` and (but the first) `max_bytes` of frames; each with its seq.
    pub fn memory_page(&self, after: u64, upto: u64, max_messages: usize, max_bytes: usize) -> Vec<(u64, Bytes)> {
        let mut bytes = 0;
        let mut page = Vec::new();
        for message in self.history.after(after, max_messages) {
            bytes += message.frame.len();
            if message.event.seq > upto || (!page.is_empty() && bytes > max_bytes) {
                break;
            }
            page.push((message.event.seq, message.frame.clone()));
        }
        page
    }

    fn replay_for(&self, since: Option<Position>) -> (bool, Vec<Arc<StoredMessage>>) {
        let Some(since) = since else { return (true, Vec::new()) };
        let first_needed = since.seq.saturating_add(1);
        let recoverable = since.epoch == self.epoch
            && since.seq <= self.sequenced_seq
            && (first_needed > self.sequenced_seq
                || self.history.first_seq().is_some_and(|first| first <= first_needed));
        if recoverable {
            (true, self.history.after(since.seq, usize::MAX))
        } else {
            (false, self.history.latest(self.gap_replay))
        }
    }

    /// Removes a subscription; the last subscription of an identity makes it leave (a presence event to the rest).
    /// `None` if the subscription is unknown (left already).
    pub fn leave(&mut self, subscriber: SubscriberId, now_us: u64) -> Option<Delivery> {
        let gone = self.subscribers.remove(&subscriber)?;
        self.last_active_us = now_us;
        Some(self.drop_membership(&gone.identity, now_us))
    }

    fn drop_membership(&mut self, identity: &str, now_us: u64) -> Delivery {
        match self.membership_dropped(identity, now_us) {
            Some(frame) => self.deliver(frame, now_us),
            None => Delivery::default(),
        }
    }

    /// Counts a subscription of `identity` gone; the identity's last one makes it leave: its `MemberLeft` frame,
    /// for the caller to deliver.
    fn membership_dropped(&mut self, identity: &str, now_us: u64) -> Option<Bytes> {
        let count = self.members.get_mut(identity)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.members.remove(identity);
        let kind = EventKind::MemberLeft { member: identity.to_string() };
        self.encode(&RoomFrame::Event(RoomEvent { seq: self.delivered_seq, time_us: now_us, kind }))
    }

    /// Sequences a post (or finds the seq of its earlier copy). In memory it is enqueued for every subscriber at
    /// once; with a durable store it waits in the room until its commit completes and [`Room::release`] delivers
    /// it (a retry of a post still waiting waits for the same commit).
    pub fn post(&mut self, identity: &str, client_msg_id: u64, body: Bytes, now_us: u64) -> Result<Posting, Failure> {
        if let Some(seq) = self.dedupe.lookup(identity, client_msg_id, now_us, self.delivered_seq) {
            let waits = seq > self.delivered_seq;
            // A retry of a post still waiting for its commit waits too, a barrier in the store's queue: counted in
            // its backlog, and refused like a new post at the bound (retried later, it gets its seq).
            if self.disk.as_ref().filter(|_| waits).and_then(durable::DiskRoom::refuse_backlog).is_some() {
                // (Not the new post's "nothing was done": this one is sequenced, and will be delivered.)
                let why = format!(
                    "your post {client_msg_id} is seq {seq}, still waiting for the room store (it is behind, \
                     budget.store_backlog_bytes): retry it later for its acknowledgement; do not post it anew"
                );
                return Err(Failure::new(ErrorCode::Unavailable, why));
            }
            self.last_active_us = now_us;
            let posted = Posted { seq, duplicate: true };
            let commit = self.disk.as_ref().filter(|_| waits).map(durable::DiskRoom::barrier);
            return Ok(Posting { posted, delivery: Delivery::default(), commit });
        }
        // The disk floor (`budget.disk_min_free_bytes`): no new post is stored while it is reached (and a refusal
        // does not keep the room in memory).
        if let Some(why) = self.disk.as_ref().and_then(durable::DiskRoom::refuse_post) {
            return Err(Failure::new(ErrorCode::ServerFull, why));
        }
        // The store's backlog (`budget.store_backlog_bytes`): a disk that stalls does not keep every post taken
        // meanwhile in memory; the post is retried by its client (with its `client_msg_id`, so it is sequenced once).
        if let Some(why) = self.disk.as_ref().and_then(durable::DiskRoom::refuse_backlog) {
            return Err(Failure::new(ErrorCode::Unavailable, why));
        }
        self.last_active_us = now_us;
        self.history.trim(now_us);
        let Some(seq) = self.sequenced_seq.checked_add(1) else {
            return Err(Failure::new(ErrorCode::Internal, "the room's seqs are exhausted"));
        };
        // Stamped no earlier than the message sequenced before it: a post's time is taken when its request is read,
        // and one that waited for its room (a load, a creation being stored) is sequenced after later ones. A
        // restart's newest-first walk of the dedupe window stops at the first message older than the window, and
        // forgot every message sequenced before it, inside the window or not (a review's find).
        let time_us = now_us.max(self.last_time_us);
        self.last_time_us = time_us;
        let event =
            RoomEvent { seq, time_us, kind: EventKind::Message { sender: identity.to_string(), client_msg_id, body } };
        let frame = self.codec.encode_to_vec(&RoomFrame::Event(event.clone())).map_err(|err| {
            Failure::new(ErrorCode::BodyTooLarge, format!("message does not fit a room frame: {err}"))
        })?;
        let frame = frame.freeze();
        self.sequenced_seq = seq;
        // (In memory the post is delivered below, under this lock: it counts as delivered.)
        let delivered = if self.disk.is_some() { self.delivered_seq } else { seq };
        self.dedupe.record(identity, client_msg_id, seq, time_us, delivered);
        let posted = Posted { seq, duplicate: false };
        if let Some(disk) = &mut self.disk {
            let mut commit = disk.append(seq, time_us, frame);
            // Under `os` the post is only queued here: its poster writes it once it let go of this room's lock
            // (`Commit::write_queued`), and delivers it then.
            return match commit.outcome() {
                None => Ok(Posting { posted, delivery: Delivery::default(), commit: Some(commit) }),
                Some(Ok(())) => Ok(Posting { posted, delivery: self.release(seq, now_us), commit: None }),
                Some(Err(failed)) => {
                    self.abort(seq);
                    Err(Failure::new(ErrorCode::Internal, failed.to_string()))
                }
            };
        }
        self.delivered_seq = seq;
        let stored = Arc::new(StoredMessage::new(event, frame.clone()));
        self.history.append(stored);
        Ok(Posting { posted, delivery: self.deliver(frame, now_us), commit: None })
    }

    /// Retained messages after `since`, at most `limit`, and no more than fit `budget` encoded bytes: the page, or
    /// for a durable room what to read from the store once the room's lock is let go.
    pub fn history(&mut self, since: Option<u64>, limit: usize, budget: usize, now_us: u64) -> HistoryRead {
        self.touch(now_us);
        self.history.trim(now_us);
        if let Some(disk) = &self.disk {
            return HistoryRead::Disk(disk.history(since, (self.epoch, self.delivered_seq), limit, budget));
        }
        let after = since.unwrap_or(0);
        let candidates = self.history.after(after, limit.saturating_add(1));
        let mut messages = Vec::new();
        let mut used = 0;
        let mut more = false;
        for (i, m) in candidates.iter().enumerate() {
            if i == limit || used + m.frame.len() > budget {
                more = true;
                break;
            }
            used += m.frame.len();
            messages.push(m.event.clone());
        }
        HistoryRead::Page(HistoryPage { room: self.name.clone(), epoch: self.epoch, messages, more })
    }

    fn broadcast(&mut self, kind: EventKind, now_us: u64) -> Delivery {
        let event = RoomEvent { seq: self.delivered_seq, time_us: now_us, kind };
        match self.encode(&RoomFrame::Event(event)) {
            Some(frame) => self.deliver(frame, now_us),
            None => Delivery::default(),
        }
    }

    /// Enqueues `frame` for every subscriber. The ones whose outbox overflows are dropped (flushing their outbox
    /// resets their stream) and leave the room like any other member: all of one frame's at once, before their
    /// `MemberLeft` events go to the rest (which can drop more). A loop, not a recursion: many slow consumers
    /// overflowing together once made one nested call each, every level pushing to all of them again, under the
    /// room's lock.
    fn deliver(&mut self, frame: Bytes, now_us: u64) -> Delivery {
        let mut delivery = Delivery::default();
        self.deliver_into(frame, now_us, &mut delivery, true);
        delivery
    }

    /// [`Room::deliver`] into `delivery`, which already holds every subscriber's outbox unless `add` (a batch of
    /// frames delivered under one lock: each outbox once, not once per frame).
    fn deliver_into(&mut self, frame: Bytes, now_us: u64, delivery: &mut Delivery, add: bool) {
        let mut frames = std::collections::VecDeque::from([frame]);
        let mut first = add;
        while let Some(frame) = frames.pop_front() {
            let mut overflowed = Vec::new();
            for (id, subscriber) in &self.subscribers {
                if !subscriber.outbox.push(frame.clone()) {
                    overflowed.push(*id);
                }
                // Later frames go to subscribers the first one reached: each outbox is flushed once.
                if first {
                    delivery.add(subscriber.outbox.clone());
                }
            }
            first = false;
            let gone: Vec<Subscriber> = overflowed.iter().filter_map(|id| self.subscribers.remove(id)).collect();
            if !gone.is_empty() {
                self.last_active_us = now_us;
            }
            for subscriber in gone {
                tracing::debug!(room = %self.name, identity = %subscriber.identity, "slow consumer dropped");
                frames.extend(self.membership_dropped(&subscriber.identity, now_us));
            }
        }
    }

    fn encode(&self, frame: &RoomFrame) -> Option<Bytes> {
        match self.codec.encode_to_vec(frame) {
            Ok(bytes) => Some(bytes.freeze()),
            Err(err) => {
                tracing::error!(room = %self.name, %err, "room frame does not fit max_frame");
                None
            }
        }
    }
}
