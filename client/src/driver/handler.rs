//! What the connection hands the driver (ticks, room streams, pushed messages), and the watch on a silent server.

use crate::wire::{Link, LinkRecv};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use quiver_proto::{ErrorCode, ServerMsg, TickHeader};

use super::{rooms, streams, ticks, Driver, RoomEntry, SubEntry};
use crate::{connection::Handler, state::room::StreamNumber, sync::lock};

impl Handler for Driver {
    type Route = Arc<SubEntry>;

    fn tick(&self, connection: usize, route: &Arc<SubEntry>, header: TickHeader, payload: Bytes, ago: Duration) {
        let arrived_us = self.server_clock_us().saturating_sub(u64::try_from(ago.as_micros()).unwrap_or(u64::MAX));
        ticks::on_tick(route, connection, header, payload, arrived_us);
    }

    fn room_stream(
        &self,
        (connection, link, max_frame): (usize, &Link, usize),
        recv: LinkRecv,
        unfinished: &Arc<AtomicUsize>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        // Numbered here, in accept order, not when its reader gets to its Open frame.
        let stream = self.room_streams.fetch_add(1, Ordering::Relaxed) + 1;
        let unfinished = streams::Unfinished::new(unfinished.clone());
        // Its connection, watched while the reader waits for the application: a reader parked on a room nobody reads
        // must not outlive it (each reconnect rejoins the room, and would leave one more, holding a dead connection).
        let link = link.clone();
        self.tasks.spawn(async move {
            let copies = |slot, entry: &Arc<RoomEntry>| me.copies_opened(connection, slot, entry, stream);
            let frames: (usize, streams::Unfinished, streams::CopiesOpened<'_>) = (max_frame, unfinished, &copies);
            let running = (&me.stop, &me.tasks);
            let read = streams::read_stream(&me.rooms, (connection, stream, &link), recv, frames, running);
            if let Err((code, why)) = read.await {
                // The room cannot go on from this stream: the connection goes, and the reconnect resumes every room
                // from its position.
                tracing::warn!(%code, %why, "the server broke the protocol on a room stream; reconnecting");
                // The stream's own connection, current or not: one still in its connect (a stream opened before the
                // client's first Pings were answered) was left open, its stream dropped in silence.
                link.close(code, &why);
            }
        });
    }

    fn room_copy(&self, connection: usize, slot: u64, first: u64, frames: Vec<Bytes>) {
        let found = lock(&self.copy_slots).get(&(connection, slot)).cloned();
        if let Some((entry, stream)) = found {
            streams::on_copy(&entry, stream, first, &frames, (&self.stop, &self.tasks));
        }
    }

    fn pushed(&self, connection: usize, msg: ServerMsg) {
        match msg {
            ServerMsg::Kicked { room: Some(room), code: ErrorCode::SlowConsumer, reason } => {
                tracing::info!(%room, %reason, "fell behind in a room; resuming it");
                // (Read late from a replaced connection: nothing of it.)
                let Some(current) = self.current.borrow().clone().filter(|c| c.id == connection) else { return };
                // (A room whose Join's reply is not taken yet is rejoined by its join: `RoomEntry::kicked`.)
                let Some(entry) = self.rooms.get(&room).filter(|entry| entry.kicked()) else { return };
                if !entry.kick_rejoin(connection) {
                    return; // a rejoin runs for an earlier kick: one more follows it
                }
                let stop = self.stop.clone();
                self.tasks.spawn(async move {
                    loop {
                        // Not before the application reads: a room it does not read would be joined, fall behind
                        // and be reset again and again, each time leaving a reader waiting with its stream.
                        if entry.has_room(&stop, current.link.closed()).await {
                            rooms::rejoin(&current, &entry).await;
                        }
                        if !entry.kick_rejoined(current.id) {
                            break;
                        }
                        if stop.is_cancelled() || current.is_done() {
                            entry.kick_rejoin_ended(current.id);
                            break;
                        }
                    }
                });
            }
            // Dropped from the room for another reason (no code but `SlowConsumer` is defined for a room's kick
            // today; its stream is reset or finished with it): the room ends here with the server's reason. Only
            // logged before, and the room's reader waited for ever on a stream that had ended.
            ServerMsg::Kicked { room: Some(room), code, reason } => {
                tracing::warn!(%room, %code, %reason, "kicked from a room");
                if self.current.borrow().as_ref().is_some_and(|c| c.id == connection) {
                    if let Some(entry) = self.rooms.get(&room) {
                        entry.end(code, reason);
                    }
                }
            }
            ServerMsg::Kicked { room: None, code, reason } => tracing::warn!(%code, %reason, "kicked"),
            ServerMsg::GoAway { code, reason } => tracing::info!(%code, %reason, "server is going away"),
            ServerMsg::Error(failure) => tracing::warn!(%failure, "server error"),
            ServerMsg::Reply { .. } => {}
        }
    }
}

impl Driver {
    /// Stream `stream` of `entry`'s room, on connection `connection`, has datagram copies with `slot`: route them
    /// to it, and copy the room's posts on that connection.
    pub(crate) fn copies_opened(&self, connection: usize, slot: u64, entry: &Arc<RoomEntry>, stream: StreamNumber) {
        // Checked under the routes' lock: checked before it, an older stream's reader held up between the check and
        // the lock replaced the newer stream's route (the room then went without redundancy until its next rejoin).
        // (Nothing takes the routes' lock while it holds a room's state.)
        let mut slots = lock(&self.copy_slots);
        if !lock(&entry.state).is_current(stream) {
            return; // an older stream of the room, read late: the newer one's slot stays
        }
        // Nor for a room left since (its Leave let go of its routes under this lock, and turned post copies off).
        if entry.ended.is_cancelled() {
            return;
        }
        // Slots of connections that are gone, and the room's older streams, route nothing any more.
        let current = self.current.borrow().as_ref().map(|c| c.id);
        slots.retain(|(on, _), (room, _)| Some(*on) == current && !Arc::ptr_eq(room, entry));
        if current == Some(connection) {
            slots.insert((connection, slot), (entry.clone(), stream));
            if let Some(live) = self.current.borrow().as_ref() {
                live.copy_posts_to(&entry.name, true);
            }
        }
    }
}

/// Completes once `link` has received nothing for `after` (never, with `None`).
pub(super) async fn silent(link: &Link, after: Option<Duration>) {
    let Some(after) = after else { return std::future::pending().await };
    let mut received = link.received();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(after / 8).await;
        let now = link.received();
        if now != received {
            (received, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= after {
            return;
        }
    }
}
