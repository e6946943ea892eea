// Posts on the wire: every queued post not yet sent on a session goes out, pipelined, and is settled by its reply
// (or left for the next session when the connection goes, or sent again after a pause when the server's broker is
// unreachable).

import { ErrorCode } from '../wire/errors.js';
import { expectReply } from './values.js';

/**
 * Sends every post of `posts` (a PostQueue) not yet sent on `session`; resolves each job with its seq, or rejects it
 * with the server's refusal. `unavailable` (`{backoff, tries, paused}`) paces the retries while the server answers
 * Unavailable, sleeping on `timers`: nothing is sent during a pause (new posts wait behind the refused ones), and
 * `again()` sends what is queued once it is over.
 */
export function sendPosts(session, posts, unavailable, timers, again) {
  if (unavailable.paused) return;
  // This send's own token: the reply to an earlier send of the same post (refused late, on the same session) is
  // not taken for this one's, which would put that post back in front of those sent before it.
  const token = { session };
  for (const job of posts.startSending(token)) {
    const body = { Post: { room: job.room, client_msg_id: job.clientMsgId, body: job.body } };
    session.request(body).then(
      (reply) => {
        if (!posts.settle(job, token)) return;
        unavailable.tries = 0;
        try {
          job.resolve(expectReply(reply, 'Posted').seq);
        } catch (err) {
          job.reject(err);
        }
      },
      (err) => {
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
        if (posts.settle(job, token)) job.reject(err);
      },
    );
  }
}
