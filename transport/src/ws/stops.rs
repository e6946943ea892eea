//! Stops: the peer's of a stream this end writes (answered with a reset, as QUIC answers STOP_SENDING), and this
//! end's (the client's) of streams it can take no more of, queued within a bound; and the control stream's window.

use quiver_proto::ErrorCode;

use super::shared::{lock, End, Shared};

/// Stops waiting to be written at most ([`Shared::send_stop`]), or the streams the server may have open at once if
/// more.
pub(super) const MAX_STOPS: usize = super::MAX_INBOUND_STREAMS;

impl Shared {
    /// The part of a control message of `len` bytes counted against the control stream's window (a message over
    /// the whole window counts as the window).
    pub(super) fn control_permits(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.config.control_window.max(1))).unwrap_or(u32::MAX)
    }

    /// The peer stopped stream `wire_id` (kind 6) with `code`: what waits is dropped, writes fail with `code`.
    pub(super) fn stop_stream(&self, wire_id: u64, code: ErrorCode) {
        let mut state = lock(&self.state);
        let Some(key) = state.wire_ids.get(&wire_id).copied() else { return };
        let Some(stream) = state.streams.get_mut(&key) else { return };
        stream.stopped = Some(code);
        stream.queue.clear();
        let freed = std::mem::take(&mut stream.bytes);
        if let Some(waker) = stream.waker.take() {
            waker.wake();
        }
        // Nothing of it is sent any more but its end (a stale entry in `ready` made the writer skip the control
        // stream once): ended already, with its end not written yet, that end is a reset with the peer's code.
        let ended = stream.end.is_some();
        if ended {
            stream.end = Some(End::Reset(code));
        }
        state.ready.retain(|queued| *queued != key);
        if ended {
            state.ready.push_back(key);
        }
        state.room_freed(key, freed);
        // A writer of it waiting for the connection window learns of the stop now, not at the next free.
        state.wake_blocked();
        drop(state);
        self.wake_writer.notify_one();
        self.changed.notify_waiters();
        self.ended.notify_waiters();
    }

    /// Tells the peer to stop sending stream `wire_id` (the client). A server that takes none of them (its socket
    /// full) while it opens more streams has the connection closed at [`MAX_STOPS`] waiting: each stream owes one
    /// stop, and they were queued without bound.
    pub(super) fn send_stop(&self, wire_id: u64, code: ErrorCode) {
        // Each stream open at once owes at most one stop: the bound grows with what the server's Welcome allows.
        let max = MAX_STOPS.max(self.max_streams_in.load(std::sync::atomic::Ordering::Relaxed));
        let mut state = lock(&self.state);
        if state.stops.len() >= max {
            drop(state);
            let reason = format!("the server opened streams faster than it took {max} stops of them");
            return self.refuse(ErrorCode::ProtocolViolation, &reason);
        }
        state.stops.push_back((wire_id, code));
        drop(state);
        self.wake_writer.notify_one();
    }
}
