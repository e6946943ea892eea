// Posts on the wire: every queued post not yet sent on a session goes out, pipelined, as fast as the session's
// server takes posts (`Pacer`), and is settled by its reply (or left for the next session when the connection goes,
// or sent again after a pause when the server's broker is unreachable or its store behind).

import { ErrorCode } from '../wire/errors.js';
import { Pacer } from '../state.js';
import { expectReply } from './values.js';

/** The session's pacer (made with its Welcome's limits), or none for a session without a Welcome (tests). */
function pacerOf(session, nowMs) {
  if (!session.welcome?.limits) return null;
  session.postPacer ??= new Pacer(session.welcome.limits, nowMs);
  return session.postPacer;
}

/**
 * Sends every post of `posts` (a PostQueue) not yet sent on `session`; resolves each job with its seq, or rejects it
 * with the server's refusal. `unavailable` (`{backoff, tries, paused}`) paces the retries while the server answers
 * Unavailable, sleeping on `timers`: nothing is sent during a pause (new posts wait behind the refused ones), and
 * `again()` sends what is queued once it is over.
 */
export function sendPosts(session, posts, unavailable, timers, again, now = () => performance.now()) {
  if (unavailable.paused) return;
  // This send's own token: the reply to an earlier send of the same post (refused late, on the same session) is
  // not taken for this one's, which would put that post back in front of those sent before it.
  const token = { session };
  const pacer = pacerOf(session, now());
  const jobs = posts.startSending(token, pacer ? pacer.allowed(now()) : Infinity);
  pacer?.take(now(), jobs.length);
  // The rest wait for the pacer: one timer per session at a time sends what it allows then.
  if (pacer && posts.pending.length > 0 && !session.pacedWait) {
    session.pacedWait = true;
    timers.sleep(pacer.wait(now())).then(() => {
      session.pacedWait = false;
      again();
    });
  }
  for (const job of jobs) {
    const body = { Post: { room: job.room, client_msg_id: job.clientMsgId, body: job.body } };
    const posted = (reply) => {
      if (!posts.settle(job, token)) return;
      unavailable.tries = 0;
      try {
        job.resolve(expectReply(reply, 'Posted').seq);
      } catch (err) {
        job.reject(err);
      }
    };
    const refused = (err) => {
      if (err?.closed) return; // sent again on the next connection (see PostQueue.connectionLost)
      if (err?.code === ErrorCode.Unavailable && posts.settle(job, token)) {
        // The server's broker is unreachable and nothing was sequenced: this post and every later one go again,
        // in order, after a pause (the server deduplicates any that went through).
        posts.retryFrom(job);
        unavailable.paused = true;
        timers.sleep(unavailable.backoff.delay(unavailable.tries++)).then(() => {
          unavailable.paused = false;
          again();
        });
        return;
      }
      // Over the server's rate anyway (its other requests took tokens too): the posts behind it slow down. It
      // fails (a retry now would be sequenced after later posts taken since).
      if (err?.code === ErrorCode.RateLimited) pacer?.empty(now());
      if (posts.settle(job, token)) job.reject(err);
    };
    // The reply is taken as its frame is read, before the frames behind it in the same chunk: a push that closes
    // the client, or a loss that puts the posts in flight back in the queue, no longer finds this post unanswered
    // (it was rejected as closed although stored, or sent again).
    session.request(body, null, (reply, err) => (err ? refused(err) : posted(reply))).catch(refused);
  }
}
