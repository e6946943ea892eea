//! Every room of this process, in memory: [`LocalRooms`], the single-node [`RoomHub`], within the server's
//! [`Budget`]: at most `max_rooms` rooms and `retained_bytes` of history and dedupe memory. Rooms idle longest give
//! memory back first; a room with no members and nothing retained is removed.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use quiver_proto::{ErrorCode, Failure, HistoryPage, Limits};

use super::{
    lock::{lock, try_lock, HubGuard},
    replay::Replay,
    room::{plan_at_load, HistoryRead, Posting, TrimPlan},
    Delivery, JoinRoom, Joining, PostMessage, PostProgress, Posted, Room, RoomHub, SubscriberId,
};
use crate::{
    budget::Budget,
    store::{Op, Retention, Store, StoredRoom},
};

/// A room as the map holds it. `removed` is set, under the room's lock, when the room leaves the map: a caller
/// that found the room just before looks it up again instead of using a room nobody else sees.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) room: Room,
    pub(super) removed: bool,
    /// Loaded from the store and not yet trimmed: its history may hold messages past the age bound, which the
    /// sweep's walk over stored rooms reaches only later. Its first user trims it (under the room's lock, not the
    /// map's: the plan reads the store).
    untrimmed: bool,
}

pub(super) type Shared = Arc<Mutex<Slot>>;
type RoomMap = HashMap<String, Shared>;

/// What looking a room up found.
enum Found {
    /// The room.
    Room(Shared),
    /// No such room, and it may not be created.
    Absent,
    /// A room left the map while the store was read: the read may be stale, look again.
    Retry,
}

/// What the rooms hold now, and what the budget made them give up so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomUsage {
    /// Rooms held.
    pub rooms: u64,
    /// Bytes of history and dedupe memory retained by all rooms.
    pub retained_bytes: u64,
    /// Rooms removed because they had no members and nothing retained.
    pub rooms_removed: u64,
    /// Idle rooms evicted (with their history) to make place for a new room at `max_rooms`.
    pub rooms_evicted: u64,
    /// New rooms refused with `ServerFull` (at `max_rooms`, every room with members).
    pub rooms_refused: u64,
    /// Bytes of history and dedupe memory shed to stay within `retained_bytes`.
    pub bytes_shed: u64,
}

mod shedding;
pub(super) use shedding::account;
use shedding::ShedState;

#[derive(Debug, Default)]
struct Counters {
    /// Shared with posts waiting for their commit ([`super::release::Release`]): a failed one gives its dedupe
    /// entry back.
    retained: Arc<AtomicU64>,
    removed: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
    /// When a scan for a room to evict at `max_rooms` last found none (µs; 0: not since one was found), and the
    /// count of `freed` it began at.
    full_at_us: AtomicU64,
    full_freed: AtomicU64,
    /// Leaves, sweeps and stored posts that left their room evictable so far: each may have left a room to evict
    /// (shared with posts waiting for their commit: a room without members is evictable once its last is stored,
    /// and nothing else would say so during a disk stall).
    freed: Arc<AtomicU64>,
    /// Such scans (tests).
    #[cfg(test)]
    full_scans: AtomicU64,
    /// Passes of [`LocalRooms::shed_if_over`] over the rooms (tests).
    #[cfg(test)]
    shed_passes: AtomicU64,
}

/// All rooms in this process's memory, each behind its own lock (the map's lock is held only to find, add or
/// remove a room; a room's lock is never held while the map's is taken).
#[derive(Debug)]
pub struct LocalRooms {
    rooms: Mutex<RoomMap>,
    limits: Limits,
    budget: Budget,
    next_subscriber: AtomicU64,
    counters: Counters,
    /// Held by the one caller shedding memory at a time: how the last pass ended.
    shedding: Mutex<ShedState>,
    /// The durable store rooms live in; `None`: in memory only.
    store: Option<Arc<Store>>,
    /// Rooms taken out of the map so far, counted by a hash of their name ([`REMOVAL_BUCKETS`]): a room read from
    /// the store is put in the map only if it did not leave it meanwhile (it may have stored more since that
    /// read). By name, roughly: one count for the whole server had a long load retried for as long as any other
    /// room kept leaving during it (the sweep, an eviction burst), possibly for ever.
    removals: Box<[AtomicU64]>,
    /// Picks a name's bucket in `removals` (seeded per hub: names cannot be chosen to share one).
    removal_hasher: std::collections::hash_map::RandomState,
    /// Where the sweep's walk over stored rooms for aged history goes on ([`LocalRooms::load_aged`]).
    aged_cursor: Mutex<Option<Vec<u8>>>,
    /// Loads from the store under way at most ([`LOADS_AT_ONCE`]): requests for rooms not in memory (clients
    /// rejoining a big room after a restart, all at once) wait here, and find the room loaded by the first.
    loads: Arc<tokio::sync::Semaphore>,
}

/// Counts of removed rooms, by a hash of the name.
const REMOVAL_BUCKETS: usize = 1024;
/// Stored room records the sweep examines each time for history past its age in rooms not in memory.
const AGED_EXAMINED_PER_SWEEP: usize = 64;
/// Such rooms loaded (to be trimmed) per sweep at most: a load reads the room's history.
const AGED_LOADS_PER_SWEEP: usize = 2;
/// Rooms read from the store at once, at most (each on a thread of the blocking pool, reading up to a room's
/// retained history): more would only share the same disk and cores, and the same room would be read once each.
pub(super) const LOADS_AT_ONCE: usize = 2;

impl LocalRooms {
    /// An empty hub whose rooms follow `limits` (history, dedupe, frame size) within `budget`.
    pub fn new(limits: Limits, budget: Budget) -> Self {
        LocalRooms {
            rooms: Mutex::new(HashMap::new()),
            limits,
            budget,
            next_subscriber: AtomicU64::new(1),
            counters: Counters::default(),
            shedding: Mutex::new(ShedState::default()),
            store: None,
            removals: (0..REMOVAL_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            removal_hasher: std::collections::hash_map::RandomState::new(),
            aged_cursor: Mutex::new(None),
            loads: Arc::new(tokio::sync::Semaphore::new(LOADS_AT_ONCE)),
        }
    }

    /// Like [`LocalRooms::new`], with every room's epoch, seq, history and dedupe window in `store`: posts are
    /// acknowledged once stored, and rooms leave memory when unused (loaded again, same epoch, on the next use).
    pub fn durable(limits: Limits, budget: Budget, store: Arc<Store>) -> Self {
        store.check_disk(budget.disk_min_free_bytes); // then at every sweep
        store.backlog().set_limit(budget.store_backlog_bytes);
        LocalRooms { store: Some(store), ..LocalRooms::new(limits, budget) }
    }

    /// The store, if rooms are durable.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// How much history each durable room keeps.
    fn retention(&self) -> Retention {
        Retention {
            max_messages: u64::from(self.limits.history_max_messages),
            max_bytes: self.budget.room_history_bytes,
            max_age_us: self.limits.history_max_age_us().unwrap_or(u64::MAX),
        }
    }

    /// What the rooms hold now, and what the budget made them give up.
    pub fn usage(&self) -> RoomUsage {
        let c = &self.counters;
        RoomUsage {
            rooms: lock(&self.rooms).len() as u64,
            retained_bytes: c.retained.load(Ordering::Relaxed),
            rooms_removed: c.removed.load(Ordering::Relaxed),
            rooms_evicted: c.evicted.load(Ordering::Relaxed),
            rooms_refused: c.refused.load(Ordering::Relaxed),
            bytes_shed: c.shed.load(Ordering::Relaxed),
        }
    }

    /// The room named `name`: in memory, else loaded from the store, else (when `create`) created, if there is
    /// place for it (evicting idle rooms at `max_rooms`). A room just created in the store is not settled until
    /// its creation is stored (`with_room` waits for it before anyone learns its epoch). The store is read on the
    /// blocking pool: a load reads the room's whole retained extent, which a peer could otherwise have the
    /// runtime's threads do (a History of a stored room not in memory, again and again), stalling every
    /// connection.
    async fn room(&self, name: &str, create: bool, now_us: u64) -> Result<Option<Shared>, Failure> {
        loop {
            if let Some(room) = self.existing(name) {
                return Ok(Some(room));
            }
            // Held until the room is in the map (later requests find it loaded), and by the read itself too (on the
            // blocking pool): a request given up while the read is stuck (a stalled disk, its connection ended)
            // must not let another read start beside it.
            let load = match &self.store {
                Some(_) => {
                    let permit = self.loads.clone().acquire_owned().await;
                    Some(Arc::new(permit.map_err(|_| Failure::new(ErrorCode::Internal, "closed"))?))
                }
                None => None,
            };
            // Loaded by another request while this one waited for its turn: that room.
            if let Some(room) = self.existing(name) {
                return Ok(Some(room));
            }
            let removals = self.removals_of(name).load(Ordering::Acquire);
            // Read outside the map's lock; the map is checked again (`settle`).
            let stored = self.load_stored(name, now_us, load.clone()).await?;
            match self.settle(name, create, now_us, removals, stored)? {
                Found::Room(room) => return Ok(Some(room)),
                Found::Absent => return Ok(None),
                Found::Retry => continue,
            }
        }
    }

    /// One attempt of [`LocalRooms::room`] once the store was read (`stored`; `removals`: the name's removal count
    /// before that read): the room in the map, the loaded or a new one put there, or `Retry` if the read may be
    /// stale.
    fn settle(
        &self,
        name: &str,
        create: bool,
        now_us: u64,
        removals: u64,
        stored: Option<(StoredRoom, Option<TrimPlan>)>,
    ) -> Result<Found, Failure> {
        let mut rooms = lock(&self.rooms);
        // Look up before inserting: `entry` would allocate the name on every post.
        if let Some(room) = rooms.get(name) {
            return Ok(Found::Room(room.clone()));
        }
        if self.store.is_some() && self.removals_of(name).load(Ordering::Acquire) != removals {
            return Ok(Found::Retry);
        }
        if stored.is_none() && !create {
            return Ok(Found::Absent);
        }
        // At the disk floor a new room is not created: its record would be stored (and room evicted for it).
        if let Some(why) = self.store.as_ref().filter(|_| stored.is_none()).and_then(|s| s.disk().refuse()) {
            return Err(Failure::new(ErrorCode::ServerFull, why));
        }
        if rooms.len() >= self.budget.max_rooms as usize && !self.evict_for_new(&mut rooms, now_us) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let max = self.budget.max_rooms;
            return Err(Failure::new(
                ErrorCode::ServerFull,
                format!("the server holds {max} rooms, all with members; cannot open room {name} now"),
            ));
        }
        let untrimmed = stored.is_some();
        let room = match (&self.store, stored) {
            (Some(store), Some((stored, planned))) => {
                let retention = self.retention();
                Room::durable(name.to_string(), stored, &self.limits, retention, store.clone(), (None, planned))
            }
            (Some(store), None) => {
                let (id, epoch) = (store.allocate_room_id(), new_epoch());
                // Under `os` only queued, not written under the map of rooms' lock (a write held there, with what
                // other rooms' posts it took along, stopped every room's lookups): its first user's wait writes it
                // (`with_room`), or any later write takes it along. Settled at once if it is stored already;
                // otherwise the room settles once it finds the creation stored.
                let mut created = store.submit_queued(Op::Create { name: name.into(), id, epoch });
                let creating = (!matches!(created.outcome(), Some(Ok(())))).then_some(created);
                let stored = StoredRoom::new(id, epoch);
                let retention = self.retention();
                Room::durable(name.to_string(), stored, &self.limits, retention, store.clone(), (creating, None))
            }
            (None, _) => Room::new(name.to_string(), new_epoch(), &self.limits, self.budget.room_history_bytes),
        };
        // Not idle since 1970: made or loaded for a join or a post, it is not the first to evict (or unload) before
        // its user gets it. (A history read touches it itself; the sweep's loads for retention do not.)
        let mut room = room;
        if create {
            room.touch(now_us);
        }
        // A room loaded from the store holds its dedupe window already: counted from the start, like every change.
        self.account(0, room.retained_bytes());
        let room = Arc::new(Mutex::new(Slot { room, removed: false, untrimmed }));
        rooms.insert(name.to_string(), room.clone());
        Ok(Found::Room(room))
    }

    /// The removal count `name` is counted in.
    fn removals_of(&self, name: &str) -> &AtomicU64 {
        use std::hash::BuildHasher;
        let hash = self.removal_hasher.hash_one(name);
        &self.removals[(hash % REMOVAL_BUCKETS as u64) as usize]
    }

    fn existing(&self, name: &str) -> Option<Shared> {
        lock(&self.rooms).get(name).cloned()
    }

    /// Runs `f` on the room named `name` (loaded from the store, or created when `create`; `None` when it does not
    /// exist and may not be created) under its lock, keeping the server's retained-bytes count in step. Returns
    /// the room too, for what has to come back to it later (a post's release).
    async fn with_room<T>(
        &self,
        name: &str,
        create: bool,
        now_us: u64,
        f: impl FnOnce(&mut Room) -> T,
    ) -> Result<Option<(Shared, T)>, Failure> {
        loop {
            let Some(shared) = self.room(name, create, now_us).await? else { return Ok(None) };
            // A room whose creation may not be stored yet: nobody learns its epoch before it is (whoever comes
            // first waits; a waiter that gives up leaves it to the next).
            let unsettled = lock(&shared).room.unsettled()?;
            if let Some(stored) = unsettled {
                let created = stored.wait().await;
                created.map_err(|failed| {
                    Failure::new(ErrorCode::Internal, format!("{failed}: cannot store room {name}"))
                })?;
                lock(&shared).room.settle();
            }
            let mut slot = lock(&shared);
            if slot.removed {
                continue; // removed between the lookup and the lock: look it up again
            }
            let before = slot.room.retained_bytes();
            if std::mem::take(&mut slot.untrimmed) {
                slot.room.trim(now_us);
            }
            let out = f(&mut slot.room);
            self.account(before, slot.room.retained_bytes());
            drop(slot);
            return Ok(Some((shared, out)));
        }
    }

    /// Tests: holds every load from the store (rooms not in memory wait for it) until the permit is dropped.
    #[cfg(test)]
    pub(crate) async fn hold_loads(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.loads.clone().acquire_many_owned(LOADS_AT_ONCE as u32).await.expect("the loads' semaphore is open")
    }

    /// Runs `f` on the room named `name` if it is in memory (never loads or creates it).
    pub(super) fn with_loaded<T>(&self, name: &str, f: impl FnOnce(&mut Room) -> T) -> Option<T> {
        self.with_slot(name, |slot| f(&mut slot.room))
    }

    /// [`LocalRooms::with_loaded`], with the room's slot.
    fn with_slot<T>(&self, name: &str, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let shared = self.existing(name)?;
        let mut slot = lock(&shared);
        if slot.removed {
            return None;
        }
        let before = slot.room.retained_bytes();
        let out = f(&mut slot);
        self.account(before, slot.room.retained_bytes());
        Some(out)
    }
}

/// A fresh random epoch; never 0, which stands for "no room" in replies.
fn new_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

pub(super) fn store_failure(failed: crate::store::StoreFailed) -> Failure {
    // What a failed commit wrote may be read back from the journal when the server restarts: the client is told
    // how to learn the outcome without storing the message twice.
    let reason = format!(
        "{failed}; this post may still be stored (it is known once the server restarts): post it again with the \
         same client_msg_id then, to get its seq without storing it twice"
    );
    Failure::new(ErrorCode::Internal, reason)
}

impl RoomHub for LocalRooms {
    async fn join(&self, join: JoinRoom) -> Result<Joining, Failure> {
        let subscriber: SubscriberId = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let JoinRoom { room, identity, since, req_id, outbox, now_us } = join;
        let joiner = outbox.clone();
        let joining = |r: &mut super::room::Room| r.join(subscriber, &identity, (since, req_id), joiner, now_us);
        let joined = self.with_room(&room, true, now_us, joining).await?;
        let (shared, (joined, delivery, range)) =
            joined.ok_or_else(|| Failure::new(ErrorCode::Internal, "room vanished"))?;
        let replay = match (range, &self.store) {
            (Some(range), Some(store)) => {
                let slot = Arc::downgrade(&shared);
                let unreadable = Box::new(move |upto| {
                    let Some(slot) = slot.upgrade() else { return }; // gone from memory: read again when loaded
                    lock(&slot).room.unreadable_through(upto);
                });
                let codec = quiver_proto::FrameCodec::new(self.limits.max_frame as usize);
                Some(Replay::from_store(store.clone(), (room, codec), range, outbox, unreadable))
            }
            (Some(range), None) => Some(Replay::from_memory(Arc::downgrade(&shared), range, outbox)),
            (None, _) => None,
        };
        Ok(Joining { joined, subscriber, delivery, replay })
    }

    async fn leave(&self, room: &str, subscriber: SubscriberId, now_us: u64) -> Delivery {
        // Never loads: a room not in memory has no subscribers.
        let left = self.with_loaded(room, |r| r.leave(subscriber, now_us)).flatten().unwrap_or_default();
        // The room may have no member left (counted once it is so): the next new room looks for one to evict again.
        self.counters.freed.fetch_add(1, Ordering::Release);
        left
    }

    async fn post(&self, post: PostMessage<'_>) -> Result<(Posted, Delivery), Failure> {
        match self.sequence_post(post).await? {
            PostProgress::Done(done) => Ok(done),
            PostProgress::Committing(commit) => commit.await,
        }
    }

    async fn sequence_post(&self, post: PostMessage<'_>) -> Result<PostProgress, Failure> {
        let PostMessage { room, identity, client_msg_id, body, now_us, .. } = post;
        let post = |r: &mut Room| (r.post(identity, client_msg_id, body, now_us), r.take_due_plan());
        let posting = self.with_room(room, true, now_us, post).await?;
        let (shared, (posting, due)) = posting.ok_or_else(|| Failure::new(ErrorCode::Internal, "room vanished"))?;
        super::release::plan_due(&shared, due, now_us);
        let Posting { posted, delivery, commit } = posting?;
        self.shed_if_over(now_us);
        let Some(commit) = commit else { return Ok(PostProgress::Done((posted, delivery))) };
        // The room stays in memory meanwhile: a room with posts waiting is never evicted or unloaded.
        let counts =
            super::release::Counts { retained: self.counters.retained.clone(), freed: self.counters.freed.clone() };
        super::release::Release::progress(shared, posted, (commit, counts), now_us)
    }

    async fn history(
        &self,
        room: &str,
        since: Option<u64>,
        limit: u32,
        budget: usize,
        now_us: u64,
    ) -> Result<HistoryPage, Failure> {
        // A room that does not exist has an empty history; one that cannot be loaded or read is an error (at
        // `max_rooms` with every room in use, `ServerFull`; a store read that failed, `Internal`), not "empty".
        match self.with_room(room, false, now_us, |r| r.history(since, limit as usize, budget, now_us)).await? {
            Some((_, HistoryRead::Page(page))) => Ok(page),
            // Read outside the room's lock (posts and joins of the room go on meanwhile), on the blocking pool, at
            // most `READS_AT_ONCE` at once.
            Some((_, HistoryRead::Disk(read))) => read.read_off_runtime().await.map_err(|err| {
                Failure::new(ErrorCode::Internal, format!("the history of room {room} could not be read: {err}"))
            })?,
            None => Ok(HistoryPage { room: room.to_string(), epoch: 0, messages: Vec::new(), more: false }),
        }
    }

    fn room_usage(&self) -> RoomUsage {
        self.usage()
    }

    fn durable_store(&self) -> Option<Arc<Store>> {
        self.store.clone()
    }

    async fn sweep(&self, now_us: u64) {
        if let Some(store) = &self.store {
            // (A `statvfs`: on the blocking pool, as every store read of the sweep, so that a stalled disk holds no
            // runtime thread.)
            let (store, floor) = (store.clone(), self.budget.disk_min_free_bytes);
            let _ = tokio::task::spawn_blocking(move || store.check_disk(floor)).await;
        }
        self.load_aged(now_us).await;
        let names: Vec<String> = lock(&self.rooms).keys().cloned().collect();
        let mut emptied = Vec::new();
        for name in names {
            if self.trim_room(&name, now_us).await == Some(true) {
                emptied.push(name);
            }
        }
        self.remove_if_empty(emptied, now_us);
        // Pending posts settled and deletions stored meanwhile: the next new room looks for one to evict again.
        self.counters.freed.fetch_add(1, Ordering::Release);
        // Over the budget without a post (rooms loaded by joins and History reads, a pass that left busy rooms
        // alone): shed here too, not only at the next post.
        self.shed_if_over(now_us);
    }
}

#[path = "rooms_load.rs"]
mod load;

#[cfg(test)]
#[path = "budget_tests.rs"]
mod budget_tests;
