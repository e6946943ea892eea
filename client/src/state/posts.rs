//! Posts in the order the application made them, pipelined on the connection, and re-sent in the same order on the
//! next connection until each is acknowledged. The server deduplicates by `client_msg_id`, so a post whose
//! acknowledgement was lost with the connection is delivered once.

use std::collections::VecDeque;

use bytes::Bytes;

/// One post and whoever waits for its outcome (`D`, e.g. a oneshot sender).
#[derive(Debug)]
pub struct QueuedPost<D> {
    /// Room name.
    pub room: String,
    /// The client's id for the post (stable across re-sends).
    pub client_msg_id: u64,
    /// Payload.
    pub body: Bytes,
    /// Told the outcome.
    pub done: D,
}

/// Posts not sent yet on this connection, and posts sent and awaiting their reply (`R`, e.g. a reply receiver),
/// oldest first.
#[derive(Debug)]
pub struct PostQueue<D, R> {
    pending: VecDeque<QueuedPost<D>>,
    inflight: VecDeque<(QueuedPost<D>, R)>,
}

impl<D, R> Default for PostQueue<D, R> {
    fn default() -> Self {
        PostQueue { pending: VecDeque::new(), inflight: VecDeque::new() }
    }
}

impl<D, R> PostQueue<D, R> {
    /// Queues a new post behind every earlier one.
    pub fn push(&mut self, post: QueuedPost<D>) {
        self.pending.push_back(post);
    }

    /// True when a post waits to be sent on the current connection.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next post to send on the current connection, taken from the queue (hand it back with
    /// [`PostQueue::sent`] or [`PostQueue::unsent`]).
    pub fn next_to_send(&mut self) -> Option<QueuedPost<D>> {
        self.pending.pop_front()
    }

    /// `post` was written; `reply` will say how it went.
    pub fn sent(&mut self, post: QueuedPost<D>, reply: R) {
        self.inflight.push_back((post, reply));
    }

    /// `post` could not be written (the connection went): it goes first on the next connection, after the posts
    /// in flight ([`PostQueue::requeue`] puts those in front).
    pub fn unsent(&mut self, post: QueuedPost<D>) {
        self.pending.push_front(post);
    }

    /// The oldest post in flight's reply, to wait on.
    pub fn oldest_reply(&mut self) -> Option<&mut R> {
        self.inflight.front_mut().map(|(_, reply)| reply)
    }

    /// The oldest post in flight got its reply: it leaves the queue.
    pub fn answered(&mut self) -> Option<QueuedPost<D>> {
        self.inflight.pop_front().map(|(post, _)| post)
    }

    /// The connection went: every post in flight goes back in front of the pending ones, in order, to be re-sent.
    pub fn requeue(&mut self) {
        while let Some((post, _)) = self.inflight.pop_back() {
            self.pending.push_front(post);
        }
    }

    /// Every post still queued or in flight, oldest first (the client ended: each is told why).
    pub fn drain(&mut self) -> Vec<QueuedPost<D>> {
        self.requeue();
        self.pending.drain(..).collect()
    }

    /// True when nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(id: u64) -> QueuedPost<u64> {
        QueuedPost { room: "r".into(), client_msg_id: id, body: Bytes::new(), done: id }
    }

    fn ids(queue: &mut PostQueue<u64, ()>) -> Vec<u64> {
        queue.drain().into_iter().map(|p| p.client_msg_id).collect()
    }

    #[test]
    fn a_lost_connection_resends_every_unacknowledged_post_in_order() {
        let mut queue = PostQueue::default();
        for id in 1..=5 {
            queue.push(post(id));
        }
        for _ in 0..3 {
            let next = queue.next_to_send().unwrap();
            queue.sent(next, ());
        }
        assert_eq!(queue.answered().map(|p| p.client_msg_id), Some(1));
        // 2 and 3 in flight, 4 and 5 pending; 4 fails to be written as the connection goes.
        let failed = queue.next_to_send().unwrap();
        queue.unsent(failed);
        queue.requeue();
        let resent: Vec<u64> = std::iter::from_fn(|| queue.next_to_send()).map(|p| p.client_msg_id).collect();
        assert_eq!(resent, [2, 3, 4, 5]);
        assert!(queue.is_empty());
    }

    #[test]
    fn drain_hands_back_everything_oldest_first() {
        let mut queue = PostQueue::default();
        queue.push(post(1));
        queue.push(post(2));
        let first = queue.next_to_send().unwrap();
        queue.sent(first, ());
        queue.push(post(3));
        assert!(queue.oldest_reply().is_some());
        assert_eq!(ids(&mut queue), [1, 2, 3]);
        assert!(queue.is_empty());
    }
}
