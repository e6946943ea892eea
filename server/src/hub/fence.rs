//! [`PostFence`]: a connection's posts kept in the order it made them across an `Unavailable` refusal.

use std::sync::{Arc, Mutex};

use quiver_proto::{ErrorCode, Failure};

use super::lock::lock;

/// A post's place behind its connection's [`PostFence`].
#[derive(Debug, Clone, Copy)]
pub struct Fenced<'a> {
    /// The connection's fence.
    pub fence: &'a Arc<PostFence>,
    /// The post's place among the connection's posts (1, 2, …).
    pub order: u64,
}

/// Keeps a connection's posts in the order it made them when one is refused as `Unavailable` (the broker cannot be
/// reached, or answered its call with an error): the connection's later posts are refused too until that one comes
/// again, so that a client retrying it does not see its later posts sequenced first. With posts pipelined a refusal can come after later posts were
/// taken: the first refused by order holds the fence, and the engine checks the fence again where it queues posts
/// (under the lock it refuses them under).
#[derive(Debug, Default)]
pub struct PostFence(Mutex<FenceState>);

#[derive(Debug, Default)]
struct FenceState {
    /// The refused post the connection must send again first: order, room, client_msg_id.
    refused: Option<(u64, String, u64)>,
    /// Posts taken before this order were taken before the last retry that cleared the fence: their refusals no
    /// longer hold it (the client sends everything after its refused post again anyway).
    floor: u64,
}

impl PostFence {
    /// Lets post `order` of `room` and `client_msg_id` through, or refuses it when an earlier post of the
    /// connection was refused and this is not that one coming again (which clears the fence).
    pub fn pass(&self, order: u64, room: &str, client_msg_id: u64) -> Result<(), Failure> {
        let mut state = lock(&self.0);
        match &state.refused {
            Some((_, r, id)) if (r.as_str(), *id) == (room, client_msg_id) => {
                state.refused = None;
                state.floor = order;
                Ok(())
            }
            Some((_, r, id)) => Err(refusal(r, *id)),
            None => Ok(()),
        }
    }

    /// Whether post `order` may still be queued (an earlier one may have been refused since it passed).
    pub fn still_open(&self, order: u64) -> Result<(), Failure> {
        match &lock(&self.0).refused {
            Some((first, r, id)) if *first < order => Err(refusal(r, *id)),
            _ => Ok(()),
        }
    }

    /// Notes that post `order` (of `room`, `client_msg_id`) was refused as `Unavailable`.
    pub fn refused(&self, order: u64, room: &str, client_msg_id: u64) {
        let mut state = lock(&self.0);
        if order < state.floor || state.refused.as_ref().is_some_and(|(first, _, _)| *first <= order) {
            return;
        }
        state.refused = Some((order, room.to_string(), client_msg_id));
    }
}

fn refusal(room: &str, client_msg_id: u64) -> Failure {
    let why = format!(
        "an earlier post (room {room}, client_msg_id {client_msg_id}) was refused as unavailable; send it again first"
    );
    Failure::new(ErrorCode::Unavailable, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_post_holds_back_the_later_ones_until_it_comes_again() {
        let fence = PostFence::default();
        for order in 1..=3 {
            fence.pass(order, "r", order).unwrap();
        }
        fence.refused(2, "r", 2);
        // Post 3 passed before the refusal, and is checked again where it queues; 1 was ahead of it.
        assert!(fence.still_open(3).is_err());
        assert!(fence.still_open(1).is_ok());
        let refused = fence.pass(4, "other", 4).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable);
        assert!(refused.message.contains("client_msg_id 2"), "{}", refused.message);
        // Its retry clears the fence; then the rest go again.
        fence.pass(5, "r", 2).unwrap();
        fence.pass(6, "r", 3).unwrap();
        assert!(fence.still_open(6).is_ok());
    }

    #[test]
    fn the_first_refused_by_order_holds_the_fence_and_refusals_from_before_a_retry_do_not() {
        let fence = PostFence::default();
        // Refusals of pipelined posts may complete out of order: the earliest post wins.
        fence.refused(9, "r", 9);
        fence.refused(5, "r", 5);
        fence.refused(7, "r", 7);
        assert!(fence.pass(10, "r", 9).unwrap_err().message.contains("client_msg_id 5"));
        fence.pass(11, "r", 5).unwrap();
        // Post 9 was taken before the retry (order 11): its late refusal no longer closes the fence (the client
        // sends everything after its refused post again anyway).
        fence.refused(9, "r", 9);
        fence.pass(12, "r", 6).unwrap();
        // A post taken after the retry does.
        fence.refused(12, "r", 6);
        assert!(fence.pass(13, "r", 7).is_err());
        fence.pass(14, "r", 6).unwrap();
    }
}
