// Posts refused as Unavailable (the server's broker unreachable): sendPosts (client/posts.js) driven with a session
// whose replies the test gives, in the order it chooses, and a pause the test ends.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, QuiverError } from '../quiver/index.js';
import { Backoff, PostQueue } from '../quiver/state.js';
import { sendPosts } from '../quiver/client/posts.js';

/** A session whose requests wait for the test: `sent` lists `{id, answer(result), refuse(err)}` in order. */
function heldSession() {
  const sent = [];
  const session = {
    request(body) {
      return new Promise((resolve, reject) => {
        sent.push({ id: body.Post.client_msg_id, answer: resolve, refuse: reject });
      });
    },
  };
  return { session, sent };
}

/** Timers whose sleeps end when the test calls `wake()`. */
function heldTimers() {
  const sleeping = [];
  return { sleep: () => new Promise((resolve) => sleeping.push(resolve)), wake: () => sleeping.splice(0).forEach((r) => r()) };
}

const unavailable = () => new QuiverError(ErrorCode.Unavailable, 'the broker (Redis) is unavailable');
const posted = (seq) => ({ Posted: { room: 'r', seq, duplicate: false } });
const tick = () => new Promise((resolve) => setImmediate(resolve));

test('a late refusal of an earlier send does not put its post back in front of the posts sent before it', async () => {
  const { session, sent } = heldSession();
  const timers = heldTimers();
  const posts = new PostQueue();
  const pacing = { backoff: new Backoff({ initialMs: 1, maxMs: 1 }), tries: 0, paused: false };
  const order = [];
  for (const id of [1n, 2n]) {
    posts.enqueue({ room: 'r', clientMsgId: id, body: new Uint8Array(0), resolve: () => order.push(id), reject: () => {} });
  }
  const again = () => sendPosts(session, posts, pacing, timers, again);
  again();
  assert.deepEqual(sent.map((s) => s.id), [1n, 2n]);
  const [a1, b1] = sent;
  a1.refuse(unavailable()); // A is refused: A and B go again after the pause
  await tick();
  timers.wake();
  await tick();
  assert.deepEqual(sent.map((s) => s.id), [1n, 2n, 1n, 2n], 'both sent again, in order');
  b1.refuse(unavailable()); // the first send's refusal of B, late: not the second send's answer
  await tick();
  sent[2].answer(posted(1n));
  sent[3].answer(posted(2n));
  await tick();
  assert.deepEqual(order, [1n, 2n], 'each resolved by its own send, in order');
  assert.equal(sent.length, 4, 'nothing more sent');
});

test('nothing is sent during a pause after an Unavailable, new posts neither: they go after it, in order', async () => {
  const { session, sent } = heldSession();
  const timers = heldTimers();
  const posts = new PostQueue();
  const pacing = { backoff: new Backoff({ initialMs: 1, maxMs: 1 }), tries: 0, paused: false };
  const job = (id) => ({ room: 'r', clientMsgId: id, body: new Uint8Array(0), resolve: () => {}, reject: () => {} });
  const again = () => sendPosts(session, posts, pacing, timers, again);
  posts.enqueue(job(1n));
  again();
  sent[0].refuse(unavailable());
  await tick();
  posts.enqueue(job(2n)); // a post() during the pause flushes the queue: nothing goes
  again();
  assert.equal(sent.length, 1, 'nothing sent while paused');
  timers.wake();
  await tick();
  assert.deepEqual(sent.map((s) => s.id), [1n, 1n, 2n], 'the refused post first, then the new one');
});
