//! A connection's post copies (redundant delivery, `quiver_proto::copies`), without IO: which copied posts to
//! sequence now, and what to answer when a post's request arrives on the control stream after its copy was
//! sequenced. Requests after Hello are numbered by their order on the control stream (the client numbers them the
//! same way), a copy names its post by that number, and a copy is taken only when every request before it was
//! served: a connection's posts are sequenced in the order it made them, after whatever it asked before them (a
//! Join, a History), whichever path brings each first, and each exactly once.

use std::collections::VecDeque;

use quiver_proto::{ErrorCode, Failure, Post, Reply};

/// Posts sequenced from their copies and still waiting for their control-stream request, at most: a client that
/// sends copies without the requests cannot make the server hold more.
pub const MAX_EARLY_POSTS: usize = 64;

/// What the stream's next request is.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamPost<T> {
    /// Not handled yet: serve it as usual.
    New,
    /// A post whose copy was handled: answer with this outcome.
    Answered(T),
}

/// A copied post's outcome: known when it was handled, or once its commit completes (the control loop goes on
/// meanwhile, as for a post from the stream, so that copied posts share commits).
#[derive(Debug)]
pub enum Copied {
    /// Known now.
    Now(Result<Reply, Failure>),
    /// Sent here once the post's commit completes.
    Later(tokio::sync::oneshot::Receiver<Result<Reply, Failure>>),
}

/// The post-copy state of one connection (`T`: a copied post's outcome, [`Copied`]).
#[derive(Debug)]
pub struct PostCopies<T = Copied> {
    /// Requests read from the control stream after Hello so far.
    stream_requests: u64,
    /// Every request numbered up to this one was served (from the stream, or a post from its copy).
    handled: u64,
    /// Posts handled from their copy, oldest first, with their outcome, until their request comes.
    early: VecDeque<(u64, Post, T)>,
}

impl<T> Default for PostCopies<T> {
    fn default() -> Self {
        PostCopies { stream_requests: 0, handled: 0, early: VecDeque::new() }
    }
}

impl<T> PostCopies<T> {
    /// The control stream's next request after Hello (`post`: its body, when it is a Post). `Err`: a copy said it was
    /// another post (a broken client).
    pub fn on_stream(&mut self, post: Option<&Post>) -> Result<StreamPost<T>, Failure> {
        self.stream_requests += 1;
        let number = self.stream_requests;
        if number > self.handled {
            self.handled = number;
            return Ok(StreamPost::New);
        }
        match (self.early.pop_front(), post) {
            (Some((n, copied, outcome)), Some(post)) if n == number && copied == *post => {
                Ok(StreamPost::Answered(outcome))
            }
            _ => Err(Failure::new(
                ErrorCode::ProtocolViolation,
                format!("request {number} on the control stream differs from its datagram copy"),
            )),
        }
    }

    /// The numbers of a copy's frames (`first`, `first + 1`, ...; `count` of them) to handle now, as indexes into
    /// its frames: those that are the next requests not served yet, while the early queue has room.
    pub fn due(&self, first: u64, count: usize) -> std::ops::Range<usize> {
        let next = self.handled + 1;
        if first > next {
            return 0..0; // an earlier post has not come yet: its request will bring this one in order
        }
        let skip = usize::try_from(next - first).unwrap_or(usize::MAX).min(count);
        let room = MAX_EARLY_POSTS - self.early.len();
        skip..count.min(skip.saturating_add(room))
    }

    /// Request number `handled + 1`, a post, was handled from its copy, with `outcome`.
    pub fn handled_copy(&mut self, post: Post, outcome: T) {
        self.handled += 1;
        self.early.push_back((self.handled, post, outcome));
    }

    /// Posts handled from their copies whose requests have not come yet.
    pub fn early(&self) -> usize {
        self.early.len()
    }

    /// The number of the next request to serve.
    pub fn next(&self) -> u64 {
        self.handled + 1
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn post(id: u64) -> Post {
        Post { room: "r".into(), client_msg_id: id, body: Bytes::from_static(b"x") }
    }

    fn posted(seq: u64) -> Result<Reply, Failure> {
        Ok(Reply::Posted { room: "r".into(), seq, duplicate: false })
    }

    #[test]
    fn copies_run_ahead_of_the_stream_in_order_and_each_post_is_handled_once() {
        let mut copies = PostCopies::<Result<Reply, Failure>>::default();
        assert_eq!(copies.on_stream(Some(&post(1))), Ok(StreamPost::New));
        // A copy of requests 1..=3: 1 came already; 2 and 3 are next.
        assert_eq!(copies.due(1, 3), 1..3);
        copies.handled_copy(post(2), posted(20));
        copies.handled_copy(post(3), posted(21));
        assert_eq!(copies.due(2, 2), 2..2, "both handled: nothing again");
        assert_eq!(copies.due(5, 1), 0..0, "request 4 (a Join, say) has not come: 5 waits for it");
        assert_eq!(copies.on_stream(Some(&post(2))), Ok(StreamPost::Answered(posted(20))));
        assert_eq!(copies.on_stream(Some(&post(3))), Ok(StreamPost::Answered(posted(21))));
        assert_eq!(copies.on_stream(None), Ok(StreamPost::New), "request 4, not a post");
        assert_eq!(copies.next(), 5);
        assert_eq!(copies.due(5, 1), 0..1, "now 5 may go");
    }

    #[test]
    fn a_request_unlike_its_copy_is_a_violation_and_copies_without_requests_are_bounded() {
        let mut copies = PostCopies::<Result<Reply, Failure>>::default();
        copies.handled_copy(post(1), posted(1));
        let err = copies.on_stream(Some(&post(9))).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProtocolViolation);
        let mut copies = PostCopies::<Result<Reply, Failure>>::default();
        copies.handled_copy(post(1), posted(1));
        let err = copies.on_stream(None).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProtocolViolation, "a copy of a post where the stream has a Ping");

        let mut copies = PostCopies::<Result<Reply, Failure>>::default();
        for _ in 0..MAX_EARLY_POSTS {
            let range = copies.due(copies.next(), 1);
            assert_eq!(range, 0..1);
            copies.handled_copy(post(copies.next()), posted(0));
        }
        assert_eq!(copies.due(copies.next(), 1), 0..0, "the early queue is full");
        assert_eq!(copies.on_stream(Some(&post(1))), Ok(StreamPost::Answered(posted(0))));
        assert_eq!(copies.due(copies.next(), 1), 0..1, "room again");
    }
}
