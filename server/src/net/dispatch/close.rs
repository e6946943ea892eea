//! A connection's end: what it holds released, its rooms left, its tasks stopped; and the same, as far as can be
//! done without waiting, when its task ends without that close (`Drop`).

use quiver_proto::ErrorCode;

use crate::{hub::RoomHub, stats::ServerStats};

use super::Connection;

impl<R: RoomHub> Connection<R> {
    /// Takes everything the connection holds from its state: its subscriptions and claims are released at once, its
    /// rooms' streams closed and the rooms listed in `leaving`, to be left (the hub's leave is async).
    fn release(&mut self) {
        let release = self.state.close();
        for (channel, subscriber) in release.subscriptions {
            ServerStats::add(&self.stats.subscriptions, -1);
            self.ticks.unsubscribe(&channel, subscriber);
        }
        for (channel, max_age_us) in release.claims {
            self.ticks.release(&channel, max_age_us);
        }
        for (room, joined) in release.rooms {
            ServerStats::add(&self.stats.room_members, -1);
            joined.outbox.close();
            self.leaving.push((room, joined.subscriber));
        }
    }

    /// Leaves every room and ends every subscription (the connection is ending), and stops the tasks. Once: a
    /// session closed early (its token expired, its key removed) is not closed again at the connection's end (that
    /// waited a second frame timeout for commits, holding the task and its admission slot).
    pub(in crate::net) async fn close(&mut self, now_us: u64, commit_wait: std::time::Duration) {
        if self.stop.is_cancelled() {
            return;
        }
        self.datagrams.stop().await;
        self.release();
        while let Some((room, subscriber)) = self.leaving.last() {
            self.rooms.leave(room, *subscriber, now_us).await.flush();
            self.leaving.pop();
        }
        self.stop.cancel();
        self.pumps.close();
        self.pumps.wait().await;
        // Copied posts still committing: waited for as long as a stream post's reply is at the end (the frame
        // timeout); a commit that takes longer (a stalled disk) completes on its own, its post delivered once stored.
        self.commits.close();
        let _ = tokio::time::timeout(commit_wait, self.commits.wait()).await;
    }
}

/// A connection whose task ends without [`Connection::close`] (a panic unwinding it, its future dropped) still
/// leaves nothing behind: its tick tasks and room pumps stop, the peer is told, its subscriptions and claims are
/// released, and its rooms are left on a task of their own (a room's members and presence would otherwise keep it
/// for as long as the server runs). After a close this does nothing.
impl<R: RoomHub> Drop for Connection<R> {
    fn drop(&mut self) {
        if self.stop.is_cancelled() {
            return;
        }
        self.stop.cancel();
        self.datagrams.cancel();
        self.conn.close(ErrorCode::Internal, "the server's task for this connection ended");
        self.release();
        let rooms = std::mem::take(&mut self.leaving);
        match self.shutdown.is_cancelled() {
            // (A connection still open after the drain timeout, its task dropped with the runtime.)
            true => {
                tracing::debug!(rooms = rooms.len(), "a connection's task ended at shutdown; released what it held")
            }
            false => {
                tracing::warn!(
                    rooms = rooms.len(),
                    "a connection's task ended without closing it; released what it held"
                )
            }
        }
        if rooms.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left to leave them on: the server is gone with its rooms
        };
        let hub = self.rooms.clone();
        runtime.spawn(async move {
            for (room, subscriber) in rooms {
                hub.leave(&room, subscriber, crate::net::now_us()).await.flush();
            }
        });
    }
}
