//! The driver's rooms: which rooms the application joined and the state of each, joining, leaving and joining again
//! from a position. Reading their streams into their channels is `streams.rs`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use quiver_proto::{ErrorCode, Failure, Join, Joined, Position, Reply, RequestBody};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    error::RequestError,
    options::JoinOptions,
    state::room::{RoomEvent, RoomState},
    sync::lock,
};

/// Events buffered per room before its stream's reader stops reading (or [`EVENT_BUFFER_BYTES`] of them, whichever
/// comes first; the server, after `room_queue_bytes` more, resets the stream as a slow consumer).
pub const EVENT_BUFFER: usize = 1024;

/// Bytes of events (a message's body and sender, a presence event's member, and 64 for the rest of each) a room
/// holds for the application before its stream's reader stops reading, as at [`EVENT_BUFFER`] events (one event past it still goes in). Without it a room could
/// hold 1,024 events of up to the Welcome's `max_frame` each: 64 MiB at the default 64 KiB, 16 GiB under a server
/// announcing the 16 MiB the client accepts.
pub const EVENT_BUFFER_BYTES: usize = 8 << 20;

/// What `event` counts toward [`EVENT_BUFFER_BYTES`].
fn held_bytes(event: &RoomEvent) -> usize {
    const REST: usize = 64;
    REST + match event {
        RoomEvent::Message(message) => message.body.len() + message.sender.len(),
        RoomEvent::MemberJoined { member } | RoomEvent::MemberLeft { member } => member.len(),
        RoomEvent::Resumed { .. } => 0,
    }
}

/// What the client keeps per joined room.
#[derive(Debug)]
pub(crate) struct RoomEntry {
    pub(crate) name: String,
    /// Joined with redundant delivery (asked again at every rejoin).
    pub(crate) redundant: bool,
    pub(crate) state: Mutex<RoomState>,
    pub(super) events: mpsc::Sender<RoomEvent>,
    /// Cancelled once the room cannot be taken back after a reconnect (the server refused the rejoin for good):
    /// its reader then gets `None`, and `end_reason` says why.
    pub(crate) ended: CancellationToken,
    end_reason: Mutex<Option<(ErrorCode, String)>>,
    /// A Join of the room was answered: a reconnect rejoins it. (Before that, the application's own Join is still on
    /// its way, to the new connection if the old one went, and a rejoin beside it would race it.)
    joined: AtomicBool,
    /// A `Kicked` for the room came before its Join's reply was taken (both in one read): the join rejoins once it
    /// has it.
    kicked_early: AtomicBool,
    /// Held while a rejoin decides to send its Join and writes it, and while a leave ends the entry and writes its
    /// Leave: the server sees the rejoin's Join before the Leave, or no Join at all (a Join written after the Leave
    /// would keep the connection a member of a room the application left).
    pub(crate) order: tokio::sync::Mutex<()>,
    /// Cancelled when the application gives the room up: `Room::leave`, the `Room` dropped, or its join's future
    /// dropped before it returned. A new join of the name then waits for `gone`, so that its Join comes after this
    /// one's Leave.
    leaving: CancellationToken,
    /// A leave of the entry was started (once: by whichever of the above comes first).
    leave_started: AtomicBool,
    /// Cancelled when the entry is no longer listed ([`Rooms::remove`]): nothing more of it is written.
    pub(super) gone: CancellationToken,
    /// A task waits for room in `events` to hand out what datagram copies brought (`streams::on_copy`).
    pub(super) copies_waiting: AtomicBool,
    /// The connection on which a rejoin for a `Kicked` runs, and whether another kick came meanwhile
    /// ([`RoomEntry::kick_rejoin`]).
    kick_rejoining: Mutex<Option<(usize, bool)>>,
    /// Bytes of the events in `events` ([`EVENT_BUFFER_BYTES`]), and told when the application takes one.
    pub(super) held: AtomicUsize,
    taken: tokio::sync::Notify,
}

impl RoomEntry {
    /// Hands `event` to the application in the place `permit` holds, counting its bytes.
    pub(super) fn hand_out(&self, permit: mpsc::Permit<'_, RoomEvent>, event: RoomEvent) {
        self.held.fetch_add(held_bytes(&event), Ordering::AcqRel);
        permit.send(event);
    }

    /// The application took `event` from the room's channel.
    pub(crate) fn taken(&self, event: &RoomEvent) {
        let bytes = held_bytes(event);
        let _ = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(bytes)));
        self.taken.notify_waiters();
    }

    /// Completes once the room holds less than [`EVENT_BUFFER_BYTES`] for the application.
    pub(super) async fn below_byte_budget(&self) {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.held.load(Ordering::Acquire) < EVENT_BUFFER_BYTES {
                return;
            }
            taken.await;
        }
    }

    /// The Join's reply.
    /// Returns whether a `Kicked` for the room came before it ([`RoomEntry::kicked`]): the room must be joined
    /// again.
    pub(crate) fn replied(&self, joined: &Joined) -> bool {
        let mut state = lock(&self.state);
        state.replied(joined);
        self.joined.store(true, Ordering::Release);
        self.kicked_early.swap(false, Ordering::AcqRel)
    }

    /// A `Kicked` for the room (it fell behind): true when the room was joined, to be rejoined now; before its
    /// Join's reply was taken, it is noted for [`RoomEntry::replied`] (under the state's lock, so that neither
    /// misses the other).
    pub(crate) fn kicked(&self) -> bool {
        let _state = lock(&self.state);
        if self.joined.load(Ordering::Acquire) {
            return true;
        }
        self.kicked_early.store(true, Ordering::Release);
        false
    }

    /// A `Kicked` for the room on `connection`: true to start a rejoin for it, false when one runs already on that
    /// connection (noted: one more rejoin follows it, [`RoomEntry::kick_rejoined`]). One at a time: a server sending
    /// the same kick over and over made a task each, without bound, waiting while the room was not read, and a
    /// Join (and a retry loop) each once it was.
    pub(crate) fn kick_rejoin(&self, connection: usize) -> bool {
        let mut rejoining = lock(&self.kick_rejoining);
        match &mut *rejoining {
            Some((on, again)) if *on == connection => {
                *again = true;
                false
            }
            _ => {
                *rejoining = Some((connection, false));
                true
            }
        }
    }

    /// Forgets the rejoin for a kick on `connection` (its task ends without another: the connection or client is
    /// done), if that is the one noted.
    pub(crate) fn kick_rejoin_ended(&self, connection: usize) {
        let mut rejoining = lock(&self.kick_rejoining);
        if rejoining.is_some_and(|(on, _)| on == connection) {
            *rejoining = None;
        }
    }

    /// The rejoin for a kick on `connection` is done (or given up): true when another kick came meanwhile, for one
    /// more rejoin (answered `AlreadyJoined` when the kicks were for the membership it replaced; a kick of the new
    /// membership comes after its `Joined`, maybe in the same read); else a kick from now on starts one anew.
    pub(crate) fn kick_rejoined(&self, connection: usize) -> bool {
        let mut rejoining = lock(&self.kick_rejoining);
        match &mut *rejoining {
            Some((on, again)) if *on == connection && *again => {
                *again = false;
                true
            }
            Some((on, _)) if *on == connection => {
                *rejoining = None;
                false
            }
            _ => false,
        }
    }

    /// Whether a Join of the room was answered ([`RoomEntry::replied`]).
    pub(crate) fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// The room ends here: the server would not take it back (the first reason is kept).
    pub(super) fn end(&self, code: ErrorCode, reason: String) {
        tracing::warn!(room = %self.name, %code, %reason, "cannot rejoin room; it ends here");
        lock(&self.end_reason).get_or_insert((code, reason));
        self.ended.cancel();
    }

    /// Why the room ended, if it did ([`RoomEntry::end`]).
    pub(crate) fn end_reason(&self) -> Option<(ErrorCode, String)> {
        lock(&self.end_reason).clone()
    }

    /// Waits until the application has read from the room's full channel, and holds less than
    /// [`EVENT_BUFFER_BYTES`] (false if the room, the client or the
    /// kicked connection (`closed`) ended first). A stream's reader that waits for room in it is served before this
    /// (the channel's waiters queue), so it reads on and finds its stream's end. Not past its connection: the next
    /// connection rejoins the room itself, and a wait that outlived its connection kept it (and everything it holds)
    /// until the application read, one more at every reconnect while the room was not read.
    pub(crate) async fn has_room(
        &self,
        stop: &CancellationToken,
        closed: impl std::future::Future<Output = ()>,
    ) -> bool {
        // (Room by bytes too: with a place free but the byte budget spent, the rejoin's stream would stop at once
        // and be reset as slow again, a rejoin per kick while the room has traffic.)
        let room = async {
            let placed = self.events.reserve().await.is_ok(); // dropped at once: the place stays free
            if placed {
                self.below_byte_budget().await;
            }
            placed
        };
        tokio::select! {
            placed = room => placed,
            () = self.ended.cancelled() => false,
            () = stop.cancelled() => false,
            () = closed => false,
        }
    }

    /// Claims the entry's leave: true for the first caller only (the others have nothing to write).
    fn start_leave(&self) -> bool {
        self.leaving.cancel();
        !self.leave_started.swap(true, Ordering::AcqRel)
    }
}

/// What [`Rooms::add`] found.
pub(crate) enum Added {
    /// A new entry for the room, and the receiver of its events.
    New(Arc<RoomEntry>, mpsc::Receiver<RoomEvent>),
    /// An entry of the name is being left: wait until it is [`RoomEntry::gone`], then try again.
    Leaving(Arc<RoomEntry>),
}

/// The rooms the application has joined, by name.
#[derive(Debug, Default)]
pub(crate) struct Rooms(Mutex<HashMap<String, Arc<RoomEntry>>>);

impl Rooms {
    /// A new entry for `room` (given up when `leaving` is cancelled); `AlreadyJoined` if it has one. An entry that
    /// ended (its rejoin refused) is replaced.
    pub(crate) fn add(&self, room: &str, redundant: bool, leaving: CancellationToken) -> Result<Added, RequestError> {
        let mut rooms = lock(&self.0);
        if let Some(held) = rooms.get(room) {
            if held.leaving.is_cancelled() {
                return Ok(Added::Leaving(held.clone()));
            }
            if !held.ended.is_cancelled() {
                let failure = Failure::new(ErrorCode::AlreadyJoined, format!("already in room {room}"));
                return Err(RequestError::Failed(failure));
            }
            held.gone.cancel();
        }
        let (events, received) = mpsc::channel(EVENT_BUFFER);
        let entry = Arc::new(RoomEntry {
            name: room.to_string(),
            redundant,
            state: Mutex::new(RoomState::new()),
            events,
            ended: CancellationToken::new(),
            end_reason: Mutex::new(None),
            joined: AtomicBool::new(false),
            kicked_early: AtomicBool::new(false),
            order: tokio::sync::Mutex::new(()),
            leaving,
            leave_started: AtomicBool::new(false),
            gone: CancellationToken::new(),
            copies_waiting: AtomicBool::new(false),
            kick_rejoining: Mutex::new(None),
            held: AtomicUsize::new(0),
            taken: tokio::sync::Notify::new(),
        });
        rooms.insert(room.to_string(), entry.clone());
        Ok(Added::New(entry, received))
    }

    /// Rooms the server may still hold for this client (joined, joining, or being left: listed until its Leave is
    /// answered), and one being left (the `gone` of its entry), if any.
    fn census(&self) -> (usize, Option<CancellationToken>) {
        let rooms = lock(&self.0);
        let being_left = |entry: &&Arc<RoomEntry>| entry.leaving.is_cancelled() && !entry.gone.is_cancelled();
        let held = rooms.values().filter(|entry| !entry.ended.is_cancelled() || being_left(entry)).count();
        (held, rooms.values().find(being_left).map(|entry| entry.gone.clone()))
    }

    /// Forgets `entry` (left, or its join failed): a rejoin of it that is waiting to try again gives up, and a join
    /// of its name waiting for it goes on. (Only `entry`: a newer join of its name stays.)
    pub(crate) fn remove(&self, entry: &Arc<RoomEntry>) {
        let mut rooms = lock(&self.0);
        if rooms.get(&entry.name).is_some_and(|held| Arc::ptr_eq(held, entry)) {
            rooms.remove(&entry.name);
        }
        entry.ended.cancel();
        entry.gone.cancel();
    }

    /// The entry of `room`, if it is joined (and has not ended).
    pub(crate) fn get(&self, room: &str) -> Option<Arc<RoomEntry>> {
        lock(&self.0).get(room).filter(|entry| !entry.ended.is_cancelled()).cloned()
    }

    /// Every joined room (that has not ended).
    pub(crate) fn all(&self) -> Vec<Arc<RoomEntry>> {
        lock(&self.0).values().filter(|entry| !entry.ended.is_cancelled()).cloned().collect()
    }
}

/// The application's joins and leaves. Each runs on a task of its own ([`super::Driver::detached`]): a join's
/// future dropped midway (a timeout around it) leaves the room once its Join is answered, and a leave, once
/// started, writes its Leave whether or not anyone waits for the reply.
impl super::Driver {
    /// Joins `room`; its events arrive on the returned receiver, after the returned position (the join's `since`,
    /// or the room's head). `leaving` is cancelled if the application gives the join up before it returns.
    pub(crate) async fn join(
        &self,
        room: &str,
        options: JoinOptions,
        leaving: CancellationToken,
    ) -> Result<(Arc<RoomEntry>, mpsc::Receiver<RoomEvent>, Option<Position>), RequestError> {
        let JoinOptions { since, redundant } = options;
        // A join of the room that is being left: its Leave is written first, or this Join could reach the server
        // before it and be undone by it (or be refused as a second join).
        let (entry, events) = loop {
            match self.rooms.add(room, redundant, leaving.clone())? {
                Added::New(entry, events) => break (entry, events),
                Added::Leaving(old) => tokio::select! {
                    () = old.gone.cancelled() => {}
                    () = self.stop.cancelled() => return Err(RequestError::closed(self.end_reason())),
                },
            }
        };
        if let Some(position) = since {
            lock(&entry.state).resume_from(position);
        }
        // At `max_rooms` with a room being left (a dropped `Room`'s Leave is written in the background): this Join
        // waits for the Leave's answer, or it could reach the server first and be refused `TooManyRooms`.
        let max_rooms = self.welcome().limits.client_max_rooms() as usize;
        while let (held, Some(gone)) = self.rooms.census() {
            if held <= max_rooms {
                break;
            }
            tokio::select! {
                () = gone.cancelled() => {}
                () = leaving.cancelled() => break, // given up: the join below finds out and cleans up
                () = self.stop.cancelled() => {
                    self.forget_room(&entry);
                    return Err(RequestError::closed(self.end_reason()));
                }
            }
        }
        // Sent again on the next connection if the connection drops before the reply (that connection's membership
        // went with it): from `since` the first time, from what the first stream delivered if it opened (as a
        // reconnect's rejoin).
        let join = |live: Arc<super::Live>| {
            let (entry, leaving) = (&entry, &leaving);
            async move {
                let sent = {
                    let _order = entry.order.lock().await;
                    if leaving.is_cancelled() {
                        return Err(RequestError::closed((ErrorCode::NoError, "join given up".into())));
                    }
                    // A kick read on a connection that went is nothing to this attempt.
                    entry.kicked_early.store(false, Ordering::Release);
                    let since = lock(&entry.state).rejoin_position();
                    let join = RequestBody::Join(Join { room: room.to_string(), since, redundant });
                    let joining = |req_id| lock(&entry.state).joining((live.id, req_id));
                    live.send_noting(join, joining).await?
                };
                Ok((crate::connection::reply(sent).await?, live))
            }
        };
        let (reply, used) = match self.across_reconnects(join, || leaving.is_cancelled()).await {
            Ok((reply, used)) => (Ok(reply), Some(used)),
            Err(err) => (Err(err), None),
        };
        match reply {
            Ok(Reply::Joined(joined)) => {
                let kicked = entry.replied(&joined);
                if leaving.is_cancelled() && entry.start_leave() {
                    // Given up while its Join was answered: nobody holds the room, so it is left at once (nobody
                    // waits for the Leave's reply either).
                    let _ = self.write_leave(&entry).await;
                    return Err(RequestError::closed((ErrorCode::NoError, "join given up".into())));
                }
                // Answered on a connection replaced meanwhile: the reconnect may have rejoined the rooms answered
                // before this one only. (A second rejoin is refused as `AlreadyJoined`, which it ignores.)
                if let Some(current) = used.and_then(|used| self.replaced(&used)) {
                    let again = entry.clone();
                    self.spawn(async move { rejoin(&current, &again).await });
                } else if let Some(current) = self.current.borrow().clone().filter(|_| kicked) {
                    // Kicked before this took the reply: its stream was reset; joined again once the application
                    // reads (as any kicked room).
                    let (again, stop) = (entry.clone(), self.stop.clone());
                    self.spawn(async move {
                        if again.has_room(&stop, current.link.closed()).await {
                            rejoin(&current, &again).await;
                        }
                    });
                }
                // (A stream of an earlier attempt, on a connection that went, may have delivered events already:
                // the room's events are after where that stream started.)
                let head = Position { epoch: joined.epoch, seq: joined.replay_from.saturating_sub(1) };
                let started = lock(&entry.state).started();
                Ok((entry, events, Some(since.or(started).unwrap_or(head))))
            }
            other => {
                self.forget_room(&entry);
                Err(other.map_or_else(|err| err, RequestError::unexpected))
            }
        }
    }

    /// Leaves `entry`'s room and waits for the server's answer. Cancelling this future does not stop the leave.
    /// Never fails for the connection's sake ([`super::calls::let_go`]).
    pub(crate) async fn leave(&self, entry: &Arc<RoomEntry>) -> Result<(), RequestError> {
        if !entry.start_leave() {
            return Ok(());
        }
        let entry = entry.clone();
        let left = self.detached(move |driver| async move { driver.write_leave(&entry).await }).await;
        super::calls::let_go(left, |reply| matches!(reply, Reply::Left { .. })).await
    }

    /// Leaves `entry`'s room in the background (its `Room` was dropped), unless a leave was started already or the
    /// client is ending.
    pub(crate) fn leave_dropped(&self, entry: &Arc<RoomEntry>) {
        if !entry.start_leave() {
            return;
        }
        let driver = self.me.upgrade().filter(|_| !entry.ended.is_cancelled() && !self.stop.is_cancelled());
        let Some(driver) = driver else {
            self.forget_room(entry); // nothing to write: a join of its name goes on at once
            return;
        };
        let entry = entry.clone();
        self.spawn(async move { drop(driver.write_leave(&entry).await) });
    }

    /// Forgets an ended `entry`: a join of its name goes on, and no copy slot routes to it any more (a redundant room
    /// refused at a rejoin kept its slot, and with it the room's state, until the next redundant room's stream).
    fn forget_room(&self, entry: &Arc<RoomEntry>) {
        lock(&self.copy_slots).retain(|_, (held, _)| !Arc::ptr_eq(held, entry));
        self.rooms.remove(entry);
    }

    /// Ends `entry`, writes its Leave (unless it had ended: nothing of it is on the server) and forgets it once the
    /// Leave is answered; the reply and its connection, if one was written. A Leave refused `RateLimited` goes again
    /// ([`crate::connection::until_taken`]), the entry listed meanwhile so that a join of its room waits for it.
    async fn write_leave(
        &self,
        entry: &Arc<RoomEntry>,
    ) -> Result<Option<crate::connection::Answered<super::Driver>>, RequestError> {
        let room = entry.name.as_str();
        // Ordered with a rejoin of the entry (`RoomEntry::order`): its Join goes before this Leave, or not at all.
        let _order = entry.order.lock().await;
        if entry.ended.is_cancelled() {
            self.forget_room(entry);
            return Ok(None); // ended meanwhile (its rejoin refused): nothing of it on the server
        }
        // Ended now (its reader stops, a rejoin gives up), listed until its Leave is answered: a join of the room
        // meanwhile waits until it is gone.
        entry.ended.cancel();
        lock(&self.copy_slots).retain(|_, (held, _)| !Arc::ptr_eq(held, entry));
        if let Some(live) = self.current.borrow().as_ref() {
            live.copy_posts_to(room, false);
        }
        // No connection up now: nothing of the room is on a server (a reconnect does not take an ended room back,
        // and this holds the order lock a rejoin writes under), so there is nothing to write or wait for.
        let live = self.current.borrow().clone().filter(|live| live.close_reason().is_none());
        let left = match live {
            Some(live) => {
                let reply = crate::connection::until_taken(&live, RequestBody::Leave { room: room.to_string() }).await;
                Some((reply, live))
            }
            None => None,
        };
        self.rooms.remove(entry);
        Ok(left)
    }
}

pub(crate) use super::rejoin::{refused_for_now, rejoin, RETRIED_REJOINS};

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;
