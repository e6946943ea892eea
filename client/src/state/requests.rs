//! Bookkeeping of the control stream's outstanding requests, without IO: ids are handed out in order, each reply
//! completes exactly one waiter, and once the connection is gone every waiter (and every later request) learns why.

use std::collections::HashMap;

use quiver_proto::ErrorCode;

/// Outstanding requests, each with a waiter `W` (e.g. a oneshot sender).
#[derive(Debug)]
pub struct Outstanding<W> {
    next_req_id: u64,
    waiting: HashMap<u64, W>,
    closed: Option<(ErrorCode, String)>,
}

impl<W> Outstanding<W> {
    /// Ids start after `first_free` (ids below it were used during the handshake).
    pub fn new(first_free: u64) -> Self {
        Outstanding { next_req_id: first_free, waiting: HashMap::new(), closed: None }
    }

    /// Registers a waiter; returns its request id, or why the connection is gone.
    pub fn start(&mut self, waiter: W) -> Result<u64, (ErrorCode, String)> {
        if let Some(closed) = &self.closed {
            return Err(closed.clone());
        }
        let id = self.next_req_id;
        self.next_req_id += 1;
        self.waiting.insert(id, waiter);
        Ok(id)
    }

    /// The waiter of `req_id`, which is no longer outstanding. `None` for an id that is not outstanding.
    pub fn complete(&mut self, req_id: u64) -> Option<W> {
        self.waiting.remove(&req_id)
    }

    /// Forgets a request whose caller stopped waiting.
    pub fn abandon(&mut self, req_id: u64) {
        self.waiting.remove(&req_id);
    }

    /// Marks the connection gone; returns every waiter, to be told `why`.
    pub fn close(&mut self, why: (ErrorCode, String)) -> Vec<W> {
        self.closed.get_or_insert(why);
        self.waiting.drain().map(|(_, w)| w).collect()
    }

    /// True once [`Outstanding::close`]d: no request can be sent any more.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Number of requests awaiting a reply.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when no request awaits a reply.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_replies_complete_once() {
        let mut out = Outstanding::new(1);
        let a = out.start("a").unwrap();
        let b = out.start("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(out.complete(b), Some("b"));
        assert_eq!(out.complete(b), None, "a second reply to the same id is not delivered");
        assert_eq!(out.complete(99), None);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn close_fails_waiters_and_later_requests() {
        let mut out = Outstanding::new(0);
        out.start(1).unwrap();
        out.start(2).unwrap();
        let mut failed = out.close((ErrorCode::GoingAway, "bye".into()));
        failed.sort();
        assert_eq!(failed, [1, 2]);
        assert_eq!(out.start(3), Err((ErrorCode::GoingAway, "bye".into())));
        // The first reason sticks.
        out.close((ErrorCode::Internal, "later".into()));
        assert_eq!(out.start(4).unwrap_err().0, ErrorCode::GoingAway);
    }
}
