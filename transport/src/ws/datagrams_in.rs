//! Datagrams received and not read yet: bounded in bytes, the oldest dropped past the bound (latest wins, as
//! quinn's receive buffer does: `DatagramState::received` drops from the front).

use std::{collections::VecDeque, sync::Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes of datagrams waiting for their reader, each counted with [`DATAGRAM_OVERHEAD`] more: the QUIC lane's
/// server-side bound (`tuning::SERVER_DATAGRAM_RECEIVE_BUFFER`). Past it the oldest go. (Until 2026-12-06, 256
/// datagrams, the newest dropped: a reader behind kept stale ticks and lost the latest, ~300 KB per connection.)
pub(super) const INBOUND_DATAGRAM_BYTES: usize = 64 * 1024;

/// What a waiting datagram costs besides its bytes (as quinn counts one).
const DATAGRAM_OVERHEAD: usize = 32;

/// The queue: one reader at a time takes from it ([`super::WsSession::read_datagram`] holds a lock for that).
#[derive(Debug, Default)]
pub(super) struct DatagramsIn {
    queue: Mutex<(VecDeque<Bytes>, usize)>,
    ready: Notify,
}

impl DatagramsIn {
    /// Queues `datagram`, dropping the oldest while over the bound (never the one just queued); returns how many
    /// were dropped.
    pub(super) fn push(&self, datagram: Bytes) -> usize {
        let mut dropped = 0;
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let (waiting, bytes) = &mut *queue;
            *bytes += datagram.len() + DATAGRAM_OVERHEAD;
            waiting.push_back(datagram);
            while *bytes > INBOUND_DATAGRAM_BYTES && waiting.len() > 1 {
                let Some(old) = waiting.pop_front() else { break };
                *bytes -= old.len() + DATAGRAM_OVERHEAD;
                dropped += 1;
            }
        }
        self.ready.notify_one();
        dropped
    }

    /// The oldest datagram waiting, waiting for one if none is.
    pub(super) async fn pop(&self) -> Bytes {
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let (waiting, bytes) = &mut *queue;
                if let Some(datagram) = waiting.pop_front() {
                    *bytes -= datagram.len() + DATAGRAM_OVERHEAD;
                    return datagram;
                }
            }
            // (A push between the look and this wait leaves a permit: the wait ends at once.)
            self.ready.notified().await;
        }
    }
}
