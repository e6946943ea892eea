// Posts refused as Unavailable (the server's broker unreachable), and paced to the server's post rate: sendPosts (client/posts.js) driven with a session
// whose replies the test gives, in the order it chooses, and a pause the test ends; and a reply read in one chunk
// with a push that closes the client.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, QuiverError, encodeFrame, wire } from '../quiver/index.js';
import { Backoff, Pacer, PostQueue } from '../quiver/state.js';
import { sendPosts } from '../quiver/client/posts.js';
import { concatBytes } from '../quiver/wire/varint.js';
import { FakeServer, connect, until } from './fakes.mjs';

/**
 * A session whose requests wait for the test: `sent` lists `{id, answer(result), refuse(err)}` in order. As the real
 * one, a reply (an answer, or a refusal that is not the connection's loss) goes to the request's `answered`.
 */
function heldSession() {
  const sent = [];
  const session = {
    request(body, noted = null, answered = null) {
      return new Promise((resolve, reject) => {
        const answer = (result) => (answered ? answered(result, null) : resolve(result));
        const refuse = (err) => (answered && !err?.closed ? answered(null, err) : reject(err));
        sent.push({ id: body.Post.client_msg_id, answer, refuse });
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

test('posts beyond the server\'s rate wait for the pacer and go in order as it allows, never refused', async () => {
  const { session, sent } = heldSession();
  // The server's bucket: 10 posts a second, 20 held. The pacer sends 10 at once, then 9.5 a second.
  session.welcome = { limits: { posts_per_s: 10, requests_per_s: 5000 } };
  const timers = heldTimers();
  const posts = new PostQueue();
  const pacing = { backoff: new Backoff({ initialMs: 1, maxMs: 1 }), tries: 0, paused: false };
  let nowMs = 0;
  const again = () => sendPosts(session, posts, pacing, timers, again, () => nowMs);
  for (let id = 1n; id <= 25n; id++) {
    posts.enqueue({ room: 'r', clientMsgId: id, body: new Uint8Array(0), resolve: () => {}, reject: () => {} });
  }
  again();
  assert.equal(sent.length, 10, 'half the server\'s burst at once');
  again(); // a post() meanwhile: nothing more goes, and no second timer
  assert.equal(sent.length, 10);
  nowMs = 1000;
  timers.wake();
  await tick();
  assert.equal(sent.length, 19, 'then 9.5 a second');
  nowMs = 2000;
  timers.wake();
  await tick();
  assert.deepEqual(sent.map((s) => s.id), Array.from({ length: 25 }, (_, i) => BigInt(i + 1)), 'all, in order');
});

test('the pacer: half the burst, 95 % of the rate, the lower of the post and request rates, waits to the next token', () => {
  const pacer = new Pacer({ posts_per_s: 100, requests_per_s: 5000 }, 0);
  assert.equal(pacer.allowed(0), 100);
  pacer.take(0, 100);
  assert.equal(pacer.allowed(0), 0);
  assert.equal(pacer.wait(0), 11, '95 a second: a token every 10.53 ms');
  assert.equal(pacer.allowed(1000), 95);
  pacer.empty(1000);
  assert.equal(pacer.allowed(1000), 0);
  assert.equal(new Pacer({ posts_per_s: 1000, requests_per_s: 10 }, 0).allowed(0), 10);
  assert.equal(new Pacer({ posts_per_s: 0, requests_per_s: 0 }, 0).allowed(0), 1, 'never zero');
});

test('a post answered in the same chunk as a push that closes the client resolves to its seq', async (t) => {
  const server = new FakeServer();
  let client = null;
  client = await connect(t, server, {
    name: 'ann',
    onNotice: (notice) => {
      if (notice.type === 'goaway') client.close();
    },
  });
  server.connections[0].holdPostReplies = true; // stored, answered below by the test (on this connection only)
  const post = client.post('lobby', 'hi');
  await until('the post reached the server', () => server.requestsOf('Post').length === 1);
  const reqId = server.requests.find((r) => 'Post' in r.req.body).req.req_id;
  const reply = { Reply: { req_id: reqId, result: { Ok: { Posted: { room: 'lobby', seq: 1n, duplicate: false } } } } };
  const goAway = { GoAway: { code: ErrorCode.GoingAway, reason: 'restarting' } };
  const chunk = concatBytes([encodeFrame(wire.ServerMsg, reply), encodeFrame(wire.ServerMsg, goAway)]);
  server.connections[0].control.enqueue(chunk); // one read: the reply, then the push
  assert.equal(await post, 1n, 'stored and answered: resolved, not rejected as closed');
});

test('a post keeps its bytes as posted: a resend carries them, not what the caller wrote since', async (t) => {
  const server = new FakeServer();
  const client = await connect(t, server);
  await client.join('lobby');
  server.dropOnFirst.add('Post'); // the first Post loses its connection: the post is sent again on the next
  const buf = new Uint8Array([1, 2, 3]);
  const posted = client.post('lobby', buf);
  buf.fill(0x42); // the caller's buffer, reused for its next input
  await posted;
  const bodies = server.requestsOf('Post').map((p) => [...p.body]);
  assert.equal(bodies.length, 2, 'sent, and sent again');
  for (const body of bodies) assert.deepEqual(body, [1, 2, 3]);
  // A view into a larger buffer, and an ArrayBuffer, the same.
  const backing = new Uint8Array([9, 4, 5, 6, 9]);
  const view = new DataView(backing.buffer, 1, 3);
  const whole = new Uint8Array([7, 8]).buffer;
  server.dropOnFirst.add('Post');
  const both = Promise.all([client.post('lobby', view), client.post('lobby', whole)]);
  backing.fill(0);
  new Uint8Array(whole).fill(0);
  await both;
  const later = server.requestsOf('Post').slice(2).map((p) => [...p.body]);
  assert.deepEqual(later.filter((b) => b.length === 3), later.filter((b) => b.length === 3).map(() => [4, 5, 6]));
  assert.deepEqual(later.filter((b) => b.length === 2), later.filter((b) => b.length === 2).map(() => [7, 8]));
  assert.ok(later.length >= 3, `${later.length} Posts`);
});
