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
//! every post queued behind them are refused with `Unavailable`: nothing behind a refused post is sequenced before
//! the client had a chance to send it again. A script call Redis answers `NOSCRIPT` (its script cache was flushed:
//! a restart, `SCRIPT FLUSH`) did not run; the script is loaded and those calls are sent again.

use std::sync::{Arc, Mutex, Weak};

use quiver_proto::Failure;
use tokio::sync::{oneshot, Notify};

use super::{node_room::Ctx, scripts};
use crate::hub::{lock::lock, Posted};

/// Script calls in one pipeline, at most: a backlog beyond it goes in the next pipeline (Redis answers a pipeline
/// only when all of it ran, ~20 µs per call on this VM; a larger one delays its first posts' replies for little
/// gain).
pub(super) const MAX_PIPELINE: usize = 128;

/// How often a pipeline's `NOSCRIPT` calls are sent again after loading the script, at most.
const NOSCRIPT_RETRIES: usize = 2;

/// A post's outcome: its seq (or the original's, for a retry), or why it was refused.
pub(super) type Outcome = Result<Posted, Failure>;

/// One post's script call, and who waits for its outcome.
struct Queued {
    call: redis::Cmd,
    done: oneshot::Sender<Outcome>,
}

/// The node's posts on their way to Redis.
pub(super) struct PostQueues {
    ctx: Arc<Ctx>,
    queue: Mutex<Queue>,
    /// Wakes the sender task (a permit waits for it while it sends); also when the queues are dropped, so that it
    /// ends.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Queue {
    posts: Vec<Queued>,
    /// Whether the sender task was started (on the first post: it needs the runtime).
    started: bool,
}

impl PostQueues {
    pub(super) fn new(ctx: Arc<Ctx>) -> Arc<PostQueues> {
        Arc::new(PostQueues { ctx, queue: Mutex::default(), wake: Arc::default() })
    }

    /// Queues `call` (the post script's `EVALSHA`) behind the node's earlier posts; the receiver gets its outcome.
    pub(super) fn push(self: &Arc<Self>, call: redis::Cmd) -> oneshot::Receiver<Outcome> {
        let (done, outcome) = oneshot::channel();
        let mut queue = lock(&self.queue);
        queue.posts.push(Queued { call, done });
        if !std::mem::replace(&mut queue.started, true) {
            tokio::spawn(send(Arc::downgrade(self), self.wake.clone()));
        }
        drop(queue);
        // The sender runs once the caller yields (a task woken by the running one runs next on its thread): the
        // posts the caller's connection takes meanwhile join this pipeline.
        self.wake.notify_one();
        outcome
    }

    /// Sends `batch` as one pipeline and hands each post its outcome. Err: the pipeline failed as a whole (every
    /// post of the batch was told so).
    async fn run(&self, batch: Vec<Queued>) -> Result<(), Failure> {
        let mut conn = self.ctx.broker.conn();
        let (mut pipe, mut waiting) = (redis::pipe(), Vec::with_capacity(batch.len()));
        for Queued { call, done } in batch {
            pipe.add_command(call);
            waiting.push(done);
        }
        for attempt in 0..=NOSCRIPT_RETRIES {
            pipe.ignore_errors();
            // The epoch comes back as a string: kept as the parser's value, not copied.
            let answered: redis::RedisResult<Vec<redis::RedisResult<(redis::Value, u64, u8)>>> =
                pipe.query_async(&mut conn).await;
            let results = match answered {
                Ok(results) if results.len() == waiting.len() => results,
                Ok(results) => {
                    let detail = format!("{} replies to a pipeline of {} posts", results.len(), waiting.len());
                    let err = redis::RedisError::from((redis::ErrorKind::Client, "pipeline", detail));
                    return Err(self.refuse(waiting, err));
                }
                Err(err) => return Err(self.refuse(waiting, err)),
            };
            let (mut again, mut unloaded) = (redis::pipe(), Vec::new());
            for ((done, result), call) in waiting.into_iter().zip(results).zip(pipe.cmd_iter()) {
                let outcome = match result {
                    Err(err) if is_noscript(&err) && attempt < NOSCRIPT_RETRIES => {
                        again.add_command(call.clone());
                        unloaded.push(done);
                        continue;
                    }
                    Ok((_epoch, seq, duplicate)) => Ok(Posted { seq, duplicate: duplicate == 1 }),
                    Err(err) => Err(self.ctx.unavailable(err)),
                };
                let _ = done.send(outcome);
            }
            if unloaded.is_empty() {
                return Ok(());
            }
            tracing::info!(posts = unloaded.len(), "the post script was not in Redis' cache: loading it");
            if let Err(err) = scripts::POST_SCRIPT.prepare_invoke().load_async(&mut conn).await {
                return Err(self.refuse(unloaded, err));
            }
            (pipe, waiting) = (again, unloaded);
        }
        Ok(()) // not reached: the last attempt hands every post its outcome
    }

    /// Refuses every post waiting with `Unavailable`; returns the failure.
    fn refuse(&self, waiting: Vec<oneshot::Sender<Outcome>>, err: redis::RedisError) -> Failure {
        let failure = self.ctx.unavailable(err);
        for done in waiting {
            let _ = done.send(Err(failure.clone()));
        }
        failure
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
    loop {
        wake.notified().await;
        loop {
            let Some(live) = queues.upgrade() else { return };
            let batch: Vec<Queued> = {
                let mut queue = lock(&live.queue);
                match queue.posts.len() {
                    0 => break,
                    n if n > MAX_PIPELINE => queue.posts.drain(..MAX_PIPELINE).collect(),
                    _ => std::mem::take(&mut queue.posts),
                }
            };
            if let Err(failure) = live.run(batch).await {
                // Everything queued behind a refused post is refused too, in order.
                let behind = std::mem::take(&mut lock(&live.queue).posts);
                for queued in behind {
                    let _ = queued.done.send(Err(failure.clone()));
                }
            }
        }
    }
}

fn is_noscript(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
