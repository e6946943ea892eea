//! Room history behind [`HistoryStore`], and the bounded in-memory store used by default.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use quiver_proto::RoomEvent;

/// A retained message: the event and its frame, encoded once and shared by every replay.
#[derive(Debug)]
pub struct StoredMessage {
    /// The message event (kind `Message`).
    pub event: RoomEvent,
    /// `event` framed as `RoomFrame::Event`, ready to send.
    pub frame: Bytes,
}

/// Memory a retained message costs besides its frame and body: the shared allocation, the event's fields, the
/// queue slot (an estimate, kept on the high side).
pub(crate) const STORED_OVERHEAD: u64 = 160;

impl StoredMessage {
    /// A message to retain. The event's body is kept as a slice of the frame (postcard writes the body last, as
    /// its length and bytes), so a retained message holds its body once, not twice.
    pub fn new(mut event: RoomEvent, frame: Bytes) -> StoredMessage {
        if let quiver_proto::EventKind::Message { body, .. } = &mut event.kind {
            if frame.ends_with(body) {
                *body = frame.slice(frame.len() - body.len()..);
            }
        }
        StoredMessage { event, frame }
    }

    /// Bytes this message keeps in memory (counted against the room's and the server's budget): the frame, the
    /// sender's name, the body unless it is a slice of the frame, and the bookkeeping.
    pub fn cost(&self) -> u64 {
        let (sender, body) = match &self.event.kind {
            quiver_proto::EventKind::Message { sender, body, .. } => {
                let frame = self.frame.as_ptr() as usize..self.frame.as_ptr() as usize + self.frame.len();
                let shared = frame.contains(&(body.as_ptr() as usize)) || body.is_empty();
                (sender.len(), if shared { 0 } else { body.len() })
            }
            _ => (0, 0),
        };
        (self.frame.len() + sender + body) as u64 + STORED_OVERHEAD
    }
}

/// Where a room keeps its messages. Seqs are appended in increasing order; the store may forget the oldest.
pub trait HistoryStore: Send + std::fmt::Debug {
    /// Appends the message with the next seq.
    fn append(&mut self, message: Arc<StoredMessage>);
    /// Forgets what its bounds no longer allow at `now_us`.
    fn trim(&mut self, now_us: u64);
    /// Forgets the oldest message; false when there was none.
    fn forget_oldest(&mut self) -> bool;
    /// Bytes of memory the retained messages cost.
    fn bytes(&self) -> u64;
    /// Time of the oldest retained message, if any.
    fn oldest_time_us(&self) -> Option<u64>;
    /// Seq of the oldest retained message, if any.
    fn first_seq(&self) -> Option<u64>;
    /// Up to `limit` messages with a seq above `after`, oldest first.
    fn after(&self, after: u64, limit: usize) -> Vec<Arc<StoredMessage>>;
    /// The newest `n` messages, oldest first.
    fn latest(&self, n: usize) -> Vec<Arc<StoredMessage>>;
}

/// In-memory history bounded by message count, bytes and age.
#[derive(Debug)]
pub struct MemoryHistory {
    messages: VecDeque<Arc<StoredMessage>>,
    max_messages: usize,
    max_bytes: u64,
    max_age_us: u64,
    bytes: u64,
}

impl MemoryHistory {
    /// Keeps at most `max_messages` costing at most `max_bytes` ([`StoredMessage::cost`]), none older than
    /// `max_age_us`.
    pub fn new(max_messages: usize, max_bytes: u64, max_age_us: u64) -> Self {
        MemoryHistory { messages: VecDeque::new(), max_messages, max_bytes, max_age_us, bytes: 0 }
    }
}

impl HistoryStore for MemoryHistory {
    fn append(&mut self, message: Arc<StoredMessage>) {
        self.bytes += message.cost();
        self.messages.push_back(message);
        while self.messages.len() > self.max_messages || self.bytes > self.max_bytes {
            self.forget_oldest();
        }
        if self.messages.capacity() > 2 * self.messages.len() + 16 {
            self.messages.shrink_to_fit();
        }
    }

    fn trim(&mut self, now_us: u64) {
        let oldest_allowed = now_us.saturating_sub(self.max_age_us);
        while self.messages.front().is_some_and(|m| m.event.time_us < oldest_allowed) {
            self.forget_oldest();
        }
        if self.messages.is_empty() && self.messages.capacity() > 0 {
            self.messages = VecDeque::new();
        }
    }

    fn forget_oldest(&mut self) -> bool {
        match self.messages.pop_front() {
            Some(message) => {
                self.bytes -= message.cost();
                true
            }
            None => false,
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn oldest_time_us(&self) -> Option<u64> {
        self.messages.front().map(|m| m.event.time_us)
    }

    fn first_seq(&self) -> Option<u64> {
        self.messages.front().map(|m| m.event.seq)
    }

    fn after(&self, after: u64, limit: usize) -> Vec<Arc<StoredMessage>> {
        // Seqs are contiguous, so the position of `after + 1` is computed, not searched.
        let Some(first) = self.first_seq() else { return Vec::new() };
        // `after` is the peer's (History's `since`): u64::MAX asks for nothing, not (wrapped) for everything.
        let Some(next) = after.checked_add(1) else { return Vec::new() };
        let start = usize::try_from(next.saturating_sub(first)).unwrap_or(usize::MAX);
        self.messages.iter().skip(start).take(limit).cloned().collect()
    }

    fn latest(&self, n: usize) -> Vec<Arc<StoredMessage>> {
        let skip = self.messages.len().saturating_sub(n);
        self.messages.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_proto::EventKind;

    fn msg(seq: u64, time_us: u64) -> Arc<StoredMessage> {
        let kind = EventKind::Message { sender: "a".into(), client_msg_id: seq, body: Bytes::new() };
        Arc::new(StoredMessage { event: RoomEvent { seq, time_us, kind }, frame: Bytes::new() })
    }

    fn seqs(messages: &[Arc<StoredMessage>]) -> Vec<u64> {
        messages.iter().map(|m| m.event.seq).collect()
    }

    #[test]
    fn bounded_by_count() {
        let mut h = MemoryHistory::new(3, u64::MAX, u64::MAX);
        for seq in 1..=5 {
            h.append(msg(seq, 0));
        }
        assert_eq!(h.first_seq(), Some(3));
        assert_eq!(seqs(&h.after(0, 10)), [3, 4, 5]);
        assert_eq!(seqs(&h.after(3, 10)), [4, 5]);
        assert_eq!(seqs(&h.after(4, 1)), [5]);
        assert_eq!(seqs(&h.after(5, 10)), Vec::<u64>::new());
        // A peer's `since` at the top of the range: nothing (it wrapped to everything, and panicked in debug).
        assert_eq!(seqs(&h.after(u64::MAX, 10)), Vec::<u64>::new());
        assert_eq!(seqs(&h.latest(2)), [4, 5]);
    }

    #[test]
    fn bounded_by_age() {
        let mut h = MemoryHistory::new(100, u64::MAX, 1_000);
        for seq in 1..=5 {
            h.append(msg(seq, seq * 500));
        }
        h.trim(2_600); // keeps time >= 1600: seqs 4 and 5
        assert_eq!(seqs(&h.latest(10)), [4, 5]);
        h.trim(10_000);
        assert_eq!(h.first_seq(), None);
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn a_retained_body_is_a_slice_of_its_frame() {
        let body = Bytes::from(vec![9u8; 4096]);
        let event = RoomEvent {
            seq: 1,
            time_us: 2,
            kind: EventKind::Message { sender: "ann".into(), client_msg_id: 3, body: body.clone() },
        };
        let codec = quiver_proto::FrameCodec::new(65_536);
        let frame = codec.encode_to_vec(&quiver_proto::RoomFrame::Event(event.clone())).unwrap().freeze();
        let stored = StoredMessage::new(event.clone(), frame.clone());
        assert_eq!(stored.event, event, "the same event");
        assert_eq!(stored.cost(), frame.len() as u64 + 3 + STORED_OVERHEAD, "the body is counted once");
        let apart = StoredMessage { event, frame: frame.clone() };
        assert_eq!(apart.cost(), (frame.len() + 3 + 4096) as u64 + STORED_OVERHEAD, "a separate body counts");
    }

    #[test]
    fn bounded_by_bytes_and_counted_exactly() {
        let cost = msg(1, 0).cost();
        let mut h = MemoryHistory::new(100, 3 * cost, u64::MAX);
        for seq in 1..=5 {
            h.append(msg(seq, seq));
        }
        assert_eq!((seqs(&h.latest(10)), h.bytes()), (vec![3, 4, 5], 3 * cost));
        assert_eq!(h.oldest_time_us(), Some(3));
        assert!(h.forget_oldest());
        assert_eq!((h.first_seq(), h.bytes()), (Some(4), 2 * cost));
        while h.forget_oldest() {}
        assert_eq!(h.bytes(), 0);
    }
}
