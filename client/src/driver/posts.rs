//! The driver's post sender: posts go out in the order they were made, pipelined on the current connection, and
//! every one not acknowledged when a connection goes is sent again, in order, on the next (the server
//! deduplicates by `client_msg_id`, so each is delivered once).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use quiver_proto::{ErrorCode, Post, Reply, RequestBody};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    connection::{Connection, Handler},
    error::RequestError,
    state::{
        backoff::Backoff,
        pacer::Pacer,
        posts::{PostQueue, QueuedPost},
    },
};

/// The longest a post waits, after its connection refused it as closed, before the next try (the close usually
/// comes sooner, and then the next connection).
const CLOSED_PAUSE: Duration = Duration::from_millis(50);
/// After an `Unavailable` refusal (the server's broker unreachable, or its room store behind), the pause before
/// posting again: from the first to the last, doubling.
const UNAVAILABLE_DELAY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Told the outcome of a post; until then (or until dropped) the post counts against
/// `ConnectOptions::max_queued_posts`.
#[derive(Debug)]
pub(crate) struct PostDone {
    tx: oneshot::Sender<Result<u64, RequestError>>,
    _queued: QueuedSlot,
}

impl PostDone {
    pub(crate) fn new(tx: oneshot::Sender<Result<u64, RequestError>>, queued: QueuedSlot) -> PostDone {
        PostDone { tx, _queued: queued }
    }

    /// Tells the outcome (nobody may be waiting any more).
    pub(crate) fn send(self, outcome: Result<u64, RequestError>) {
        let _ = self.tx.send(outcome);
    }
}

/// One post counted in the queued total, until dropped.
#[derive(Debug)]
pub(crate) struct QueuedSlot(Arc<AtomicUsize>);

impl QueuedSlot {
    /// Counts one more post in `total`; returns the slot and how many there were before.
    pub(crate) fn take(total: &Arc<AtomicUsize>) -> (QueuedSlot, usize) {
        let before = total.fetch_add(1, Ordering::Relaxed);
        (QueuedSlot(total.clone()), before)
    }
}

impl Drop for QueuedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
type PostReply = crate::connection::Pending;

/// Sends the posts `queued` on whichever connection `current` holds, until `stop` is cancelled or the queue's
/// sender is gone; returns the posts never acknowledged, for the caller to fail. Posts leave no faster than the
/// connection's server takes them ([`Pacer`]): the rest wait here, in order.
pub(crate) async fn send_posts<H: Handler>(
    mut current: watch::Receiver<Option<Arc<Connection<H>>>>,
    mut queued: mpsc::UnboundedReceiver<QueuedPost<PostDone>>,
    stop: CancellationToken,
) -> Vec<QueuedPost<PostDone>> {
    let mut posts: PostQueue<PostDone, PostReply> = PostQueue::default();
    let mut unavailable = Backoff::new(UNAVAILABLE_DELAY.0, UNAVAILABLE_DELAY.1);
    // The pacer of the connection posts last went on (a new connection starts with a full bucket, as the server's).
    let mut pacer: Option<(usize, Pacer)> = None;
    'connected: loop {
        let connection = tokio::select! {
            // (Not one whose control stream ended: a draining server's, about to close.)
            found = current.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_done())) => match found {
                Ok(connection) => connection.clone(),
                Err(_) => None,
            },
            () = stop.cancelled() => None,
        };
        let Some(connection) = connection else { break };
        if pacer.as_ref().is_none_or(|(id, _)| *id != connection.id) {
            pacer = Some((connection.id, Pacer::new(&connection.welcome.limits, Instant::now())));
        }
        let Some((_, pace)) = pacer.as_mut() else { break };
        loop {
            // When the pacer lets the next post go.
            let mut paced_until = None;
            while posts.has_pending() {
                let now = Instant::now();
                if let Some(wait) = pace.wait(now) {
                    paced_until = Some(tokio::time::Instant::from_std(now + wait));
                    break;
                }
                let Some(post) = posts.next_to_send() else { break };
                pace.take(now);
                let body = RequestBody::Post(Post {
                    room: post.room.clone(),
                    client_msg_id: post.client_msg_id,
                    body: post.body.clone(),
                });
                match connection.send(body).await {
                    Ok(reply) => posts.sent(post, reply),
                    Err(RequestError::Closed { .. }) => {
                        posts.unsent(post);
                        settle(&mut posts);
                        posts.requeue();
                        // The connection takes no more requests but may not be closed yet (its control stream ended
                        // first, the close is on its way): wait for the close, or a moment, before trying again,
                        // instead of trying it again at once, in a loop that kept a core busy until the close came.
                        tokio::select! {
                            () = connection.link.closed() => {}
                            () = tokio::time::sleep(CLOSED_PAUSE) => {}
                            () = stop.cancelled() => break 'connected,
                        }
                        continue 'connected;
                    }
                    Err(err) => {
                        post.done.send(Err(err));
                    }
                }
            }
            tokio::select! {
                post = queued.recv() => match post {
                    Some(post) => {
                        posts.push(post);
                        // Posts made in the same turn of the scheduler go out together (one write each, one packet
                        // for all): the tasks that make them (woken by the replies just taken) run first.
                        tokio::task::yield_now().await;
                        while let Ok(post) = queued.try_recv() {
                            posts.push(post);
                        }
                    }
                    None => break 'connected,
                },
                reply = async {
                    match posts.oldest_reply() {
                        Some(reply) => reply.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let outcome = match reply {
                        Ok(Err(RequestError::Failed(failure))) if failure.code == ErrorCode::Unavailable => {
                            // Nothing was sequenced (the server's broker is unreachable, or its store behind): this
                            // post and every later one go again, in order, after a pause; the server deduplicates
                            // any that went through.
                            let delay = unavailable.next_delay(rand::random());
                            tracing::debug!(reason = %failure.message, ?delay, "post refused as unavailable; retrying");
                            posts.requeue();
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                () = stop.cancelled() => break 'connected,
                            }
                            continue 'connected;
                        }
                        Ok(Ok(Reply::Posted { seq, .. })) => {
                            unavailable = Backoff::new(UNAVAILABLE_DELAY.0, UNAVAILABLE_DELAY.1);
                            Ok(seq)
                        }
                        Ok(Ok(other)) => Err(RequestError::unexpected(other)),
                        Ok(Err(RequestError::Failed(failure))) if failure.code == ErrorCode::RateLimited => {
                            // Over the server's rate anyway (its other requests took tokens too): the posts behind
                            // it slow down. It fails (a retry now would be sequenced after later posts taken since).
                            pace.empty(Instant::now());
                            Err(RequestError::Failed(failure))
                        }
                        Ok(Err(RequestError::Closed { .. })) | Err(_) => {
                            // The connection went: this post and every later one go again, in order.
                            posts.requeue(); // (later ones were answered after this one, if at all: none to settle)
                            continue 'connected;
                        }
                        Ok(Err(err)) => Err(err),
                    };
                    if let Some(post) = posts.answered() {
                        post.done.send(outcome);
                    }
                }
                () = async {
                    match paced_until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = stop.cancelled() => break 'connected,
            }
        }
    }
    settle(&mut posts);
    posts.drain()
}

/// Resolves the posts in flight whose replies have arrived but were not taken yet, oldest first, up to the first
/// without one (or with `Unavailable`: sent again), before the rest are sent again on the next connection or failed
/// as the client ends. The sender takes replies only between bursts of sending (up to a server's burst of posts),
/// so a connection that went mid-burst left acknowledged posts in flight: they were sent again (stored twice where
/// the server's dedupe was gone meanwhile) or, as the client ended, failed `Closed` although stored.
fn settle(posts: &mut PostQueue<PostDone, PostReply>) {
    while let Some(reply) = posts.oldest_reply() {
        let outcome = match reply.try_recv() {
            Ok(Ok(Reply::Posted { seq, .. })) => Ok(seq),
            Ok(Ok(other)) => Err(RequestError::unexpected(other)),
            Ok(Err(RequestError::Failed(failure))) if failure.code != ErrorCode::Unavailable => {
                Err(RequestError::Failed(failure))
            }
            _ => return,
        };
        if let Some(post) = posts.answered() {
            post.done.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(
        id: u64,
        total: &Arc<AtomicUsize>,
    ) -> (QueuedPost<PostDone>, oneshot::Receiver<Result<u64, RequestError>>) {
        let (tx, rx) = oneshot::channel();
        let done = PostDone::new(tx, QueuedSlot::take(total).0);
        (QueuedPost { room: "r".into(), client_msg_id: id, body: bytes::Bytes::new(), done }, rx)
    }

    /// Posts whose replies arrived before the connection went (not taken yet: the sender was sending) are resolved
    /// with their seq, not sent again nor failed; the first without a reply, and every one after it, go again.
    #[test]
    fn posts_answered_before_the_connection_went_are_resolved_not_sent_again() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut posts: PostQueue<PostDone, PostReply> = PostQueue::default();
        let mut outcomes = Vec::new();
        let mut replies = Vec::new();
        for id in 1..=4 {
            let (post, outcome) = queued(id, &total);
            let (tx, rx) = oneshot::channel();
            posts.push(post);
            let post = posts.next_to_send().unwrap();
            posts.sent(post, rx);
            outcomes.push(outcome);
            replies.push(tx);
        }
        let mut replies = replies.into_iter();
        let posted = |seq| Ok(Reply::Posted { room: "r".into(), seq, duplicate: false });
        replies.next().unwrap().send(posted(10)).unwrap();
        replies.next().unwrap().send(posted(11)).unwrap();
        let _third_unanswered = replies.next();
        replies.next().unwrap().send(posted(13)).unwrap(); // (answered out of turn: left to the re-send)
        settle(&mut posts);
        assert_eq!(outcomes[0].try_recv().unwrap().unwrap(), 10);
        assert_eq!(outcomes[1].try_recv().unwrap().unwrap(), 11);
        assert!(outcomes[2].try_recv().is_err(), "no reply yet: not resolved");
        assert_eq!(total.load(Ordering::Relaxed), 2, "the resolved posts no longer count as queued");
        posts.requeue();
        let again: Vec<u64> = std::iter::from_fn(|| posts.next_to_send()).map(|p| p.client_msg_id).collect();
        assert_eq!(again, [3, 4], "only the unanswered and what follows go again");
    }
}
