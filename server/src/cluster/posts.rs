//! Posts on their way to Redis, pipelined ([`PostQueues`]).
//!
//! A connection pipelines its posts (the client keeps several in flight, `net::replies` lets the control loop go on
//! reading while they wait). Awaiting each post's script before taking the next, as the node once did, left one
//! script call in flight per connection: a round trip to Redis per post, and a QUIC packet per reply. Now a post
//! joins the node's queue and the connection moves on; the node's sender task sends what is queued as one pipeline of script
//! calls (one write, replies in order), then the posts that queued meanwhile, and so on, the way the embedded
//! store's group commit batches fsyncs. (A queue and a pipeline per room was measured too: its task spawned per
//! burst of a room's posts cost more than the concurrency bought, 30–35k against 38–42k posts/s in `quiver bench
//! cluster`; one long-lived task, woken, costs no spawn per burst either.)
//!
//! Order: the node's posts reach Redis in the order the node took them (one pipeline in flight at a time, and Redis
//! runs a pipeline's commands in order), so each room's posts from this node, and each connection's, keep theirs.
//!
//! Failures: when a pipeline cannot be sent or answered (Redis unreachable, the request timeout), its posts and
//! every post queued behind them are refused with `Unavailable`; when Redis answers some calls with an error,
//! those posts and the queued posts of the same connections are, and each is noted on its connection's [`PostFence`] under the queue's lock, where posts are
//! queued: a connection's later posts are refused until its first refused one comes again, so nothing behind a
//! refused post is sequenced before the client sent it again. What cannot be undone: calls after an errored one in
//! the same pipeline ran (an error that hits one call and not the next, such as OOM in between, leaves the later
//! post acknowledged ahead of the earlier one's retry). A call Redis answers `NOSCRIPT` (its script cache was
//! flushed: a restart, `SCRIPT FLUSH`) did not run; the script is loaded and those calls are sent again. A pipeline
//! of more than one post begins with `SCRIPT LOAD`: without it, after a restart, another node's load running between
//! two of its calls (Redis serves other clients between reads of a long pipeline) let the later call run and the
//! earlier one, answered `NOSCRIPT`, land after it when sent again. (A pipeline of one post cannot be reordered so,
//! and pays nothing; what remains is a `SCRIPT FLUSH` and another node's load both within one pipeline's run.)
//!
//! Bounded: at most [`MAX_QUEUED_BYTES`] of calls wait on a node; a post that would pass it waits (its connection's
//! control loop with it, and so QUIC's flow control holds the client back) until the sender takes a pipeline.

use std::sync::{Arc, Mutex, Weak};

use quiver_proto::Failure;
use tokio::sync::{oneshot, Notify};

use super::{node_room::Ctx, scripts};
use crate::hub::{lock::lock, PostFence, Posted};

/// Script calls in one pipeline, at most: a backlog beyond it goes in the next pipeline (Redis answers a pipeline
/// only when all of it ran, ~20 µs per call on this VM; a larger one delays its first posts' replies for little
/// gain).
pub(super) const MAX_PIPELINE: usize = 128;

/// Bytes of script calls waiting on a node, at most (each counted at the size of its command).
pub(super) const MAX_QUEUED_BYTES: usize = 16 << 20;

/// How often a pipeline's `NOSCRIPT` calls are sent again after loading the script, at most.
const NOSCRIPT_RETRIES: usize = 2;

/// A post's outcome: its seq (or the original's, for a retry), or why it was refused.
pub(super) type Outcome = Result<Posted, Failure>;

/// Where a refusal of the post is noted: its connection's fence, its place there, its room and `client_msg_id`.
pub(super) struct FenceNote {
    pub(super) fence: Arc<PostFence>,
    pub(super) order: u64,
    pub(super) room: String,
    pub(super) client_msg_id: u64,
}

/// Who waits for a post's outcome.
struct Waiter {
    done: oneshot::Sender<Outcome>,
    note: Option<FenceNote>,
}

/// One post's script call, its cost against [`MAX_QUEUED_BYTES`], and who waits for it.
struct Queued {
    call: redis::Cmd,
    bytes: usize,
    waiter: Waiter,
}

/// Posts a pipeline left refused (their outcome not sent yet), and why.
struct Refused {
    failure: Failure,
    posts: Vec<Waiter>,
    /// The pipeline failed as a whole (Redis unreachable): every queued post is refused. Else only Redis' answer
    /// to some calls was an error: only the queued posts of those calls' connections are (their order).
    all: bool,
}

/// The node's posts on their way to Redis.
pub(super) struct PostQueues {
    ctx: Arc<Ctx>,
    queue: Mutex<Queue>,
    /// Wakes the sender task (a permit waits for it while it sends); also when the queues are dropped, so that it
    /// ends.
    wake: Arc<Notify>,
    /// Wakes posts waiting for room in the queue.
    space: Notify,
}

#[derive(Default)]
struct Queue {
    posts: Vec<Queued>,
    bytes: usize,
    /// Whether the sender task was started (on the first post: it needs the runtime).
    started: bool,
}

impl PostQueues {
    pub(super) fn new(ctx: Arc<Ctx>) -> Arc<PostQueues> {
        Arc::new(PostQueues { ctx, queue: Mutex::default(), wake: Arc::default(), space: Notify::new() })
    }

    /// Queues `call` (the post script's `EVALSHA`, `bytes` long) behind the node's earlier posts, waiting while the queue is full; the receiver gets its outcome. Refused at once when an earlier post
    /// of the same connection was refused since this one passed its fence.
    pub(super) async fn push(
        self: &Arc<Self>,
        call: redis::Cmd,
        bytes: usize,
        note: Option<FenceNote>,
    ) -> Result<oneshot::Receiver<Outcome>, Failure> {
        loop {
            let space = self.space.notified();
            {
                let mut queue = lock(&self.queue);
                if let Some(note) = &note {
                    note.fence.still_open(note.order)?;
                }
                if queue.posts.is_empty() || queue.bytes + bytes <= MAX_QUEUED_BYTES {
                    let (done, outcome) = oneshot::channel();
                    queue.posts.push(Queued { call, bytes, waiter: Waiter { done, note } });
                    queue.bytes += bytes;
                    if !std::mem::replace(&mut queue.started, true) {
                        tokio::spawn(send(Arc::downgrade(self), self.wake.clone()));
                    }
                    drop(queue);
                    // The sender runs once the caller yields (a task woken by the running one runs next on its
                    // thread): the posts the caller's connection takes meanwhile join this pipeline.
                    self.wake.notify_one();
                    return Ok(outcome);
                }
            }
            space.await;
        }
    }

    /// Takes the next pipeline's worth of posts (none: the queue is empty).
    fn take(&self) -> Vec<Queued> {
        let mut queue = lock(&self.queue);
        let batch: Vec<Queued> = match queue.posts.len() {
            n if n > MAX_PIPELINE => queue.posts.drain(..MAX_PIPELINE).collect(),
            _ => std::mem::take(&mut queue.posts),
        };
        queue.bytes -= batch.iter().map(|queued| queued.bytes).sum::<usize>();
        drop(queue);
        if !batch.is_empty() {
            self.space.notify_waiters();
        }
        batch
    }

    /// Refuses `refused`'s posts and the posts queued behind them (all, or those of the same connections), noting
    /// each on its connection's fence under the queue's lock (so that no later post of those connections is queued
    /// meanwhile).
    fn refuse(&self, Refused { failure, mut posts, all }: Refused) {
        {
            let mut queue = lock(&self.queue);
            let fences: Vec<Arc<PostFence>> =
                posts.iter().filter_map(|waiter| waiter.note.as_ref().map(|note| note.fence.clone())).collect();
            let behind = |queued: &Queued| {
                all || queued
                    .waiter
                    .note
                    .as_ref()
                    .is_some_and(|note| fences.iter().any(|f| Arc::ptr_eq(f, &note.fence)))
            };
            let (refused, kept): (Vec<Queued>, Vec<Queued>) =
                std::mem::take(&mut queue.posts).into_iter().partition(behind);
            queue.bytes = kept.iter().map(|queued| queued.bytes).sum();
            queue.posts = kept;
            posts.extend(refused.into_iter().map(|queued| queued.waiter));
            for note in posts.iter().filter_map(|waiter| waiter.note.as_ref()) {
                note.fence.refused(note.order, &note.room, note.client_msg_id);
            }
        }
        self.space.notify_waiters();
        for waiter in posts {
            let _ = waiter.done.send(Err(failure.clone()));
        }
    }

    /// Sends `batch` as one pipeline and hands each post its outcome, but for those refused (returned).
    async fn run(&self, batch: Vec<Queued>) -> Option<Refused> {
        let mut conn = self.ctx.broker.conn();
        let (mut calls, mut waiting) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
        for Queued { call, waiter, .. } in batch {
            calls.push(call);
            waiting.push(waiter);
        }
        for attempt in 0..=NOSCRIPT_RETRIES {
            let mut pipe = redis::pipe();
            let head = calls.len() > 1;
            if head {
                // Its reply (the script's hash) is not one of the posts': ignored; its failure shows as `NOSCRIPT`.
                pipe.cmd("SCRIPT").arg("LOAD").arg(scripts::POST_SOURCE.as_str()).ignore();
            }
            for call in calls {
                pipe.add_command(call);
            }
            pipe.ignore_errors();
            // The epoch comes back as a string: kept as the parser's value, not copied.
            let answered: redis::RedisResult<Vec<redis::RedisResult<(redis::Value, u64, u8)>>> =
                pipe.query_async(&mut conn).await;
            let results = match answered {
                Ok(results) if results.len() == waiting.len() => results,
                Ok(results) => {
                    let detail = format!("{} replies to a pipeline of {} posts", results.len(), waiting.len());
                    let err = redis::RedisError::from((redis::ErrorKind::Client, "pipeline", detail));
                    return Some(Refused { failure: self.ctx.unavailable(err), posts: waiting, all: true });
                }
                Err(err) => return Some(Refused { failure: self.ctx.unavailable(err), posts: waiting, all: true }),
            };
            let (mut again, mut unloaded) = (Vec::new(), Vec::new());
            let mut refused: Option<Refused> = None;
            for ((waiter, result), call) in waiting.into_iter().zip(results).zip(pipe.cmd_iter().skip(head.into())) {
                match result {
                    Ok((_epoch, seq, duplicate)) => {
                        let _ = waiter.done.send(Ok(Posted { seq, duplicate: duplicate == 1 }));
                    }
                    Err(err) if is_noscript(&err) && attempt < NOSCRIPT_RETRIES => {
                        again.push(call.clone());
                        unloaded.push(waiter);
                    }
                    Err(err) => match &mut refused {
                        Some(refused) => refused.posts.push(waiter),
                        None => {
                            let failure = self.ctx.unavailable(err);
                            refused = Some(Refused { failure, posts: vec![waiter], all: false });
                        }
                    },
                }
            }
            if let Some(mut refused) = refused {
                refused.posts.extend(unloaded); // not sent again: they would land behind the refused ones
                return Some(refused);
            }
            if unloaded.is_empty() {
                return None;
            }
            tracing::info!(posts = unloaded.len(), "the post script was not in Redis' cache: loading it");
            if let Err(err) = scripts::POST_SCRIPT.prepare_invoke().load_async(&mut conn).await {
                return Some(Refused { failure: self.ctx.unavailable(err), posts: unloaded, all: true });
            }
            (calls, waiting) = (again, unloaded);
        }
        None // not reached: the last attempt hands every post its outcome
    }
}

impl Drop for PostQueues {
    fn drop(&mut self) {
        self.wake.notify_one(); // the sender finds the queues gone and ends
    }
}

/// The sender task: sends the queued posts, a pipeline at a time, then waits for more. Holds the queues only while
/// it sends, so that they can be dropped (and it ends) when the node's rooms are.
async fn send(queues: Weak<PostQueues>, wake: Arc<Notify>) {
    let _restart = Restart(queues.clone());
    loop {
        wake.notified().await;
        loop {
            let Some(live) = queues.upgrade() else { return };
            let batch = live.take();
            if batch.is_empty() {
                break;
            }
            if let Some(refused) = live.run(batch).await {
                live.refuse(refused);
            }
        }
    }
}

/// Lets the next post start a new sender if this one panicked (its posts would otherwise wait forever).
struct Restart(Weak<PostQueues>);

impl Drop for Restart {
    fn drop(&mut self) {
        let (true, Some(queues)) = (std::thread::panicking(), self.0.upgrade()) else { return };
        tracing::error!(
            "the broker's post sender panicked: its queued posts are refused; the next post starts another"
        );
        // The posts queued now are refused and noted like a failed pipeline's; the panicked batch's own posts fail
        // when their senders drop ("the node is stopping").
        let failure = Failure::new(quiver_proto::ErrorCode::Unavailable, "the node's post sender failed; retry");
        queues.refuse(Refused { failure, posts: Vec::new(), all: true });
        lock(&queues.queue).started = false;
    }
}

fn is_noscript(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
