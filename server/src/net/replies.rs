//! A connection's replies in the order of its requests, with posts pipelined: a post waiting for the store's commit
//! (group commit, docs/durability.md) does not stop the control loop from sequencing the connection's next posts,
//! so that one connection's pipelined posts share commits instead of taking one commit each. A Join, Leave or
//! History waits until the posts before it are answered (it sees them stored: a History or a Join after a Post
//! includes it); tick requests and pings are carried out at once; every reply waits for the replies before it, so
//! the client sees replies in request order, as before.
//!
//! The poster's loop releases its posts to the room when it sees their commits complete, also while a later post
//! of the connection waits for its room to be loaded ([`Replies::meanwhile`]); while it is busy otherwise (writing
//! to a client slow to read, for at most the frame timeout) a later post in the room, by anyone, releases them
//! too, and a loop that ends leaves the release to `hub::release`. A post sequenced from its datagram copy
//! (redundant mode) commits on a task of the connection's, and its request's reply joins these in order when the
//! request comes.
//!
//! Also the connection's last words: what is queued, a refusal's reply or a GoAway, flushed before the close.

use std::{future::Future, pin::Pin, time::Duration};

use bytes::BytesMut;
use futures_util::{stream::FuturesOrdered, FutureExt, StreamExt};
use quiver_proto::{FrameCodec, ServerMsg};

use quiver_proto::ErrorCode;

use crate::{
    net::wire::{Wire, WireSend},
    session::{RoomRequest, Step},
    stats::ServerStats,
};

/// Posts of one connection waiting for their commit, at most; past it the connection's requests wait (its
/// control stream is not read, so QUIC's flow control holds the client back) until the oldest is answered.
pub(super) const POSTS_IN_FLIGHT: usize = 64;

/// Replies queued behind waiting posts, at most (tick requests and pings run at once, their replies wait their
/// turn): past it every request waits too.
const REPLIES_WAITING: usize = 4 * POSTS_IN_FLIGHT;

/// A reply, and whether it answers a post that waited for its commit.
type Later = Pin<Box<dyn Future<Output = (ServerMsg, bool)> + Send>>;

/// The replies not sent yet because an earlier one waits for a commit.
#[derive(Default)]
pub(super) struct Replies {
    queue: FuturesOrdered<Later>,
    posts: usize,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies").field("waiting", &self.queue.len()).field("posts", &self.posts).finish()
    }
}

impl Replies {
    /// Posts sequenced whose replies wait for their commits.
    pub(super) fn posts_in_flight(&self) -> usize {
        self.posts
    }

    /// Whether some reply waits for a commit.
    pub(super) fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether `step` may be carried out now: a post while fewer than [`POSTS_IN_FLIGHT`] wait for their commits
    /// and fewer than `REPLIES_WAITING` replies in all (a post may be answered at once, refused, and its reply
    /// then waits behind the others: with a disk that stalls, or the store's backlog at its bound, every post after
    /// the first was refused `Unavailable` at once and queued, without bound, until the commit came), anything
    /// else that reads or changes rooms only once no post waits; the rest (tick requests, pings, replies known
    /// already) at once while fewer than `REPLIES_WAITING` replies wait.
    pub(super) fn may_run(&self, step: &Step) -> bool {
        match step {
            Step::Room { request: RoomRequest::Post(_), .. } => {
                self.posts < POSTS_IN_FLIGHT && self.queue.len() < REPLIES_WAITING
            }
            Step::Room { .. } | Step::ReplyAndClose(..) => !self.waiting(),
            Step::Reply(_) | Step::Tick { .. } => self.queue.len() < REPLIES_WAITING,
        }
    }

    /// `msg` back to send now when nothing waits before it; else it is queued behind what waits.
    pub(super) fn ready(&mut self, msg: ServerMsg) -> Option<ServerMsg> {
        if !self.waiting() {
            return Some(msg);
        }
        self.queue.push_back(Box::pin(std::future::ready((msg, false))));
        None
    }

    /// A post's reply that comes once its commit completes.
    pub(super) fn later(&mut self, reply: impl Future<Output = ServerMsg> + Send + 'static) {
        self.posts += 1;
        self.queue.push_back(Box::pin(reply.map(|msg| (msg, true))));
    }

    /// Waits for the oldest waiting reply, then encodes it and every reply ready behind it into `out`.
    pub(super) async fn next(&mut self, codec: &FrameCodec, stats: &ServerStats, out: &mut BytesMut) {
        let Some(first) = self.queue.next().await else { return };
        self.sent(first, codec, stats, out);
        while let Some(Some(next)) = self.queue.next().now_or_never() {
            self.sent(next, codec, stats, out);
        }
    }

    /// Runs `work` (a post, which may wait long for its room to be loaded from the store) while the replies before
    /// it go on: each waiting post is released to its room's members once its commit completes, and its reply
    /// encoded into `out` and written to `send` as the stream takes it (a write that fails is left to the caller's
    /// next, which meets the error again). Until 2026-12-06 a post to a room not in memory held the connection's
    /// earlier stored posts undelivered and unanswered for as long as the room's load took. Returns `work`'s
    /// output, and whether anything was written. (Writes here are not under the frame timeout, and a token's
    /// expiry, a shutdown or a stream opened beside wait for `work` as before: the caller's loop sees them after.)
    pub(super) async fn meanwhile<T>(
        &mut self,
        work: impl Future<Output = T>,
        (codec, stats): (&FrameCodec, &ServerStats),
        (out, send): (&mut BytesMut, &mut WireSend),
    ) -> (T, bool) {
        if !self.waiting() && out.is_empty() {
            return (work.await, false); // (nothing to go on with)
        }
        let mut work = std::pin::pin!(work);
        // The common case: the post is sequenced at once (its room in memory), and what is unwritten stays so until
        // the loop writes the chunk's replies together.
        if let Some(done) = (&mut work).now_or_never() {
            return (done, false);
        }
        let (mut wrote, mut failed) = (false, false);
        // Replies made meanwhile, put behind `out` between turns (the write borrows `out`).
        let mut made = BytesMut::new();
        loop {
            tokio::select! {
                biased;
                done = &mut work => {
                    out.extend_from_slice(&made);
                    return (done, wrote);
                }
                () = self.next(codec, stats, &mut made), if self.waiting() => {}
                // (Both writers are cancel-safe: a write not completed wrote nothing.)
                written = send.write(out), if !out.is_empty() && !failed => match written {
                    Ok(n) => {
                        bytes::Buf::advance(out, n);
                        wrote = true;
                    }
                    Err(_) => failed = true,
                },
            }
            out.extend_from_slice(&made);
            made.clear();
        }
    }

    /// Before the connection closes: waits up to `limit` for every waiting reply, encoding them into `out`.
    pub(super) async fn finish(
        &mut self,
        codec: &FrameCodec,
        stats: &ServerStats,
        out: &mut BytesMut,
        limit: Duration,
    ) {
        let all = async {
            while self.waiting() {
                self.next(codec, stats, out).await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::debug!(left = self.queue.len(), "closing with post replies still waiting for their commit");
        }
    }

    fn sent(&mut self, (msg, post): (ServerMsg, bool), codec: &FrameCodec, stats: &ServerStats, out: &mut BytesMut) {
        self.posts -= usize::from(post);
        stats.reply(&msg);
        encode(codec, &msg, out);
    }
}

/// Encodes `msg` into `out`.
pub(super) fn encode(codec: &FrameCodec, msg: &ServerMsg, out: &mut BytesMut) {
    // Replies are built by the server from bounded inputs; one that does not fit is a server bug, reported as such.
    // A reply's request is answered with the failure (a client waits for that reply, and an `Error` names none).
    if let Err(err) = codec.encode(msg, out) {
        tracing::error!(%err, "reply does not fit a frame");
        let failure = quiver_proto::Failure::new(ErrorCode::Internal, "reply too large");
        let instead = match msg {
            ServerMsg::Reply { req_id, .. } => ServerMsg::Reply { req_id: *req_id, result: Err(failure) },
            _ => ServerMsg::Error(failure),
        };
        let _ = codec.encode(&instead, out);
    }
}

/// How long a refusal's reply (or a GoAway) may take to reach the peer before the connection is closed anyway.
const FLUSH_BEFORE_CLOSE: Duration = Duration::from_millis(500);

/// Sends what is queued, finishes the control stream, gives the peer a moment to receive it, then closes.
pub(super) async fn flush_and_close(conn: &Wire, send: &mut WireSend, outbound: &[u8], code: ErrorCode, reason: &str) {
    let delivered = async {
        send.write_all(outbound).await.ok()?;
        send.finish();
        send.stopped().await.ok()
    };
    let _ = tokio::time::timeout(FLUSH_BEFORE_CLOSE, delivered).await;
    conn.close(code, reason);
}

/// Sends what `send` still has to say (replies), then GoAway, and closes.
pub(super) async fn going_away(conn: &Wire, send: Option<(&mut WireSend, BytesMut)>) -> String {
    // The hint: this server is going, not the service; clients reconnect (with backoff) to it or its replacement.
    let reason = "server shutting down; reconnect";
    match send {
        Some((send, mut out)) => {
            let codec = FrameCodec::new(usize::MAX);
            encode(&codec, &ServerMsg::GoAway { code: ErrorCode::GoingAway, reason: reason.into() }, &mut out);
            flush_and_close(conn, send, &out, ErrorCode::GoingAway, reason).await;
        }
        None => conn.close(ErrorCode::GoingAway, reason),
    }
    "server shutdown".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Posts answered at once (refused) behind one that waits for its commit queue their replies: at most
    /// `REPLIES_WAITING` of them, then the connection's requests wait. Before, only posts waiting for commits were
    /// counted, and refused ones queued without bound for as long as the commit took.
    #[test]
    fn posts_answered_at_once_behind_a_waiting_commit_queue_at_most_replies_waiting() {
        let mut replies = Replies::default();
        replies.later(std::future::pending());
        let post = Step::Room {
            req_id: 1,
            identity: "p".into(),
            request: RoomRequest::Post(quiver_proto::Post {
                room: "r".into(),
                client_msg_id: 1,
                body: Default::default(),
            }),
        };
        let refused = |req_id| ServerMsg::Reply {
            req_id,
            result: Err(quiver_proto::Failure::new(ErrorCode::Unavailable, "the store is behind")),
        };
        let mut taken = 0;
        while replies.may_run(&post) {
            assert!(replies.ready(refused(taken)).is_none(), "queued behind the waiting commit");
            taken += 1;
            assert!(taken <= 10 * REPLIES_WAITING as u64, "the refused posts' replies queue without bound");
        }
        assert_eq!(taken, REPLIES_WAITING as u64 - 1, "with the waiting post: REPLIES_WAITING in all");
    }

    #[test]
    fn a_reply_too_large_for_a_frame_answers_its_request_with_the_failure() {
        let codec = FrameCodec::new(64);
        let pong = |server_time_us| ServerMsg::Reply {
            req_id: 7,
            result: Ok(quiver_proto::Reply::Pong { client_time_us: 0, server_time_us }),
        };
        let big = ServerMsg::Reply {
            req_id: 7,
            result: Err(quiver_proto::Failure::new(ErrorCode::BadRequest, "x".repeat(100))),
        };
        let mut out = BytesMut::new();
        encode(&codec, &pong(1), &mut out);
        encode(&codec, &big, &mut out);
        assert_eq!(codec.decode::<ServerMsg>(&mut out).unwrap(), Some(pong(1)));
        match codec.decode::<ServerMsg>(&mut out).unwrap() {
            Some(ServerMsg::Reply { req_id: 7, result: Err(failure) }) => assert_eq!(failure.code, ErrorCode::Internal),
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
    }
}
