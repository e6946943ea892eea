//! Every room of this process, in memory: [`LocalRooms`], the single-node [`RoomHub`].

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use quiver_proto::{Failure, HistoryPage, Limits};

use super::{lock::lock, Delivery, JoinRoom, Joining, PostMessage, Posted, Room, RoomHub, SubscriberId};

/// All rooms in this process's memory, each behind its own lock (the map's lock is held only to find a room).
#[derive(Debug)]
pub struct LocalRooms {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    limits: Limits,
    next_subscriber: AtomicU64,
}

impl LocalRooms {
    /// An empty hub whose rooms follow `limits` (history, dedupe, frame size).
    pub fn new(limits: Limits) -> Self {
        LocalRooms { rooms: Mutex::new(HashMap::new()), limits, next_subscriber: AtomicU64::new(1) }
    }

    fn room(&self, name: &str) -> Arc<Mutex<Room>> {
        let mut rooms = lock(&self.rooms);
        // Look up before inserting: `entry` would allocate the name on every post.
        if let Some(room) = rooms.get(name) {
            return room.clone();
        }
        let room = Arc::new(Mutex::new(Room::new(name.to_string(), new_epoch(), &self.limits)));
        rooms.insert(name.to_string(), room.clone());
        room
    }

    fn existing(&self, name: &str) -> Option<Arc<Mutex<Room>>> {
        lock(&self.rooms).get(name).cloned()
    }
}

/// A fresh random epoch; never 0, which stands for "no room" in replies.
fn new_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

impl RoomHub for LocalRooms {
    async fn join(&self, join: JoinRoom) -> Result<Joining, Failure> {
        let subscriber: SubscriberId = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let room = self.room(&join.room);
        let (joined, delivery) = lock(&room).join(subscriber, &join.identity, join.since, join.outbox, join.now_us);
        Ok(Joining { joined, subscriber, delivery })
    }

    async fn leave(&self, room: &str, subscriber: SubscriberId, now_us: u64) -> Delivery {
        let Some(room) = self.existing(room) else { return Delivery::default() };
        let left = lock(&room).leave(subscriber, now_us);
        left.unwrap_or_default()
    }

    async fn post(&self, post: PostMessage<'_>) -> Result<(Posted, Delivery), Failure> {
        let room = self.room(post.room);
        let posted = lock(&room).post(post.identity, post.client_msg_id, post.body, post.now_us);
        posted
    }

    async fn history(&self, room: &str, since: Option<u64>, limit: u32, budget: usize, now_us: u64) -> HistoryPage {
        match self.existing(room) {
            Some(r) => lock(&r).history(since, limit as usize, budget, now_us),
            None => HistoryPage { room: room.to_string(), epoch: 0, messages: Vec::new(), more: false },
        }
    }
}
