//! A joined room as the application holds it: its events in the room's order, posting, members, position.

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::{ErrorCode, Position};
use tokio::sync::mpsc;

pub use crate::state::room::{Message, RoomEvent};
use crate::{
    driver::{DriverHandle, RoomEntry},
    sync::lock,
    RequestError,
};

/// A joined room: its events, in order, and posting. Dropping it leaves the room (in the background), as
/// [`Room::leave`] does without waiting for the server's answer.
#[derive(Debug)]
pub struct Room {
    pub(crate) entry: Arc<RoomEntry>,
    pub(crate) events: mpsc::Receiver<RoomEvent>,
    pub(crate) handle: DriverHandle,
    /// The position of the last message handed to the application, or where the join started.
    pub(crate) read: Option<Position>,
}

impl Room {
    /// The room's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The next event; `None` once the client is closed for good, or once the room ended because the server would
    /// not take it back after a reconnect ([`Room::end_reason`] says why). Events that arrived before are handed out
    /// first.
    pub async fn next(&mut self) -> Option<RoomEvent> {
        let event = tokio::select! {
            biased;
            event = self.events.recv() => event,
            () = self.entry.ended.cancelled() => self.events.try_recv().ok(),
            () = self.handle.driver.stop.cancelled() => self.events.try_recv().ok(),
        };
        self.handed_out(event)
    }

    /// `event` goes to the application: a message moves [`Room::position`].
    fn handed_out(&mut self, event: Option<RoomEvent>) -> Option<RoomEvent> {
        if let Some(event) = &event {
            self.entry.taken(event);
        }
        if let Some(RoomEvent::Message(message)) = &event {
            self.read = Some(Position { epoch: message.epoch, seq: message.seq });
        }
        event
    }

    /// Why [`Room::next`] returns `None`: the server's refusal to take the room back, or why the client ended;
    /// `None` while the room goes on.
    pub fn end_reason(&self) -> Option<(ErrorCode, String)> {
        match self.entry.end_reason() {
            Some(why) => Some(why),
            None if self.handle.driver.stop.is_cancelled() => Some(self.handle.driver.end_reason()),
            None => None,
        }
    }

    /// The next event if one is waiting, without waiting: for a game loop that polls once a frame. `None` when
    /// nothing is waiting (or the room was left).
    pub fn try_next(&mut self) -> Option<RoomEvent> {
        let event = self.events.try_recv().ok();
        self.handed_out(event)
    }

    /// Events received and waiting to be read (up to [`crate::EVENT_BUFFER`], and [`crate::EVENT_BUFFER_BYTES`] of
    /// them: past that, the room falls behind
    /// and the server resets it as a slow consumer; the client joins it again once there is room).
    pub fn pending(&self) -> usize {
        self.events.len()
    }

    /// Posts `body`; the future resolves to the seq the message got. Queued at the call (posts keep the order of
    /// the calls), retried across reconnects until acknowledged (the server deduplicates retries): delivered once.
    pub fn post(&self, body: impl Into<Bytes>) -> impl std::future::Future<Output = Result<u64, RequestError>> {
        self.handle.driver.post(&self.entry.name, None, body.into())
    }

    /// Members present, as of the events this client has received for the room: a join or leave still waiting to
    /// be read ([`Room::pending`]) is counted already, and a rejoin's stream replaces the list whole.
    pub fn members(&self) -> Vec<String> {
        lock(&self.entry.state).members()
    }

    /// The position of the last message this `Room` handed out ([`Room::next`], [`Room::try_next`]), or, before
    /// the first, where the join started (its `since`, or the room's head): store it after handling each message,
    /// and [`crate::Client::join_from`] it after a restart to go on with the next one. Messages received but not
    /// read yet ([`Room::pending`]) are after it, so a crash loses none of them.
    pub fn position(&self) -> Option<Position> {
        self.read
    }

    /// Leaves the room; its event stream ends. A room that already ended ([`Room::end_reason`]) has nothing to
    /// leave: `Ok` at once (a newer join of the same name is not touched). A connection lost meanwhile does not make
    /// it fail: while the client reconnects there is nothing to write (the reconnect does not take the room back),
    /// and a connection lost under the Leave ends the membership with it. Dropping this future before it completes
    /// still leaves the room.
    pub async fn leave(self) -> Result<(), RequestError> {
        if self.entry.ended.is_cancelled() {
            return Ok(()); // (forgotten as `self` drops)
        }
        self.handle.driver.leave(&self.entry).await
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.handle.driver.leave_dropped(&self.entry);
    }
}
