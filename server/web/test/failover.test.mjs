// QuiverClient across a cluster's nodes and dead servers, against the in-memory stand-ins of fakes.mjs: several URLs
// raced (a node that never answers costs the next one 250 ms), a node that refuses the session passed over, a server
// gone quiet over WebTransport noticed after deadServerAfterMs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, NEXT_ADDRESS_DELAY_MS, QuiverClient } from '../quiver/index.js';
import { FakeServer, URL_, connect, sleep, text, until } from './fakes.mjs';

test('cluster: several URLs, the first that answers is used, and a lost connection moves to the next node', async (t) => {
  const server = new FakeServer();
  const urls = ['https://node-a.test/quiver', 'https://node-b.test/quiver', 'https://node-c.test/quiver'];
  server.downUrls.add(urls[0]);
  const client = await QuiverClient.connect(urls, {
    transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20,
  });
  t.after(() => client.close());
  assert.deepEqual(server.connections.map((c) => c.url), [urls[0], urls[1]]);
  const before = server.connections.length;
  server.downUrls = new Set();
  server.live[0].kill();
  await until('reconnected', () => client.status === 'connected' && server.live.length === 1);
  assert.equal(server.connections[before].url, urls[2], 'the next node is tried first after a loss');
  assert.throws(() => new QuiverClient([], { transport: server.transport }), /no server URL/);
});

test('cluster: a node that refuses the session is passed over for the others; refused by every node, the client ends', async (t) => {
  const server = new FakeServer();
  const urls = ['https://node-a.test/quiver', 'https://node-b.test/quiver', 'https://node-c.test/quiver'];
  const refusal = { code: ErrorCode.TokenInvalid, message: 'signed with a key this node does not know' };
  server.refuseUrls.set(urls[1], refusal);
  const client = await QuiverClient.connect(urls, {
    transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20, connectTimeoutMs: 1000,
  });
  t.after(() => client.close());
  // Node a is lost: b, next in turn, refuses; c takes the session. Before, b's refusal ended the client.
  server.downUrls.add(urls[0]);
  server.live[0].kill();
  await until('reconnected to node c', () => client.status === 'connected' && server.live[0]?.url === urls[2]);
  // b refuses, a and c are down (restarting): the client keeps trying while they may come back ...
  server.downUrls.add(urls[2]);
  server.live[0].kill();
  await until('reconnecting', () => client.status === 'reconnecting');
  await sleep(50);
  assert.equal(client.status, 'reconnecting', 'not ended while other nodes may come back');
  server.downUrls = new Set([urls[2]]);
  await until('back on node a', () => client.status === 'connected' && server.live[0]?.url === urls[0]);
  // ... and ends with the refusal once the one left refuses too and the other stays down past connectTimeoutMs.
  server.refuseUrls.set(urls[0], refusal);
  const lost = performance.now();
  server.live[0].kill();
  await until('the client ends', () => client.status === 'closed', 5000);
  assert.ok(performance.now() - lost >= 900, 'not before connectTimeoutMs from the first refusal');
  assert.equal(client.closeReason.code, ErrorCode.TokenInvalid);
});

test('cluster: a node that never answers costs the next one NEXT_ADDRESS_DELAY_MS, not the connect timeout', async (t) => {
  const server = new FakeServer();
  const urls = ['https://node-a.test/quiver', 'https://node-b.test/quiver', 'https://node-c.test/quiver'];
  // a has gone quiet; c is down (dialled only if b took longer than the delay on a slow machine: it fails at once).
  server.silentUrls.add(urls[0]);
  server.downUrls.add(urls[2]);
  const options = { transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20, connectTimeoutMs: 60_000 };
  const started = performance.now();
  const client = await Promise.race([QuiverClient.connect(urls, options), sleep(3000).then(() => null)]);
  assert.ok(client, 'connected through node b, not after node a\'s 60 s connect timeout');
  t.after(() => client.close());
  assert.ok(performance.now() - started >= NEXT_ADDRESS_DELAY_MS - 20, 'node a had its head start');
  const [silent, live] = server.connections;
  assert.deepEqual([silent.url, live.url, server.live.map((c) => c.url)], [urls[0], urls[1], [urls[1]]]);
  assert.equal(silent.alive, false, 'the attempt still waiting on node a is given up once b answered');
  // Node b is lost (and down now); c, next in turn, has gone quiet and a is back: the reconnect moves on to a
  // without waiting c out.
  server.silentUrls = new Set([urls[2]]);
  server.downUrls = new Set([urls[1]]);
  const before = server.connections.length;
  live.kill();
  await until('reconnected to node a', () => client.status === 'connected' && server.live[0]?.url === urls[0]);
  const tried = server.connections.slice(before);
  assert.equal(tried[0].url, urls[2], 'c first, in turn');
  assert.ok(tried.filter((c) => c.url === urls[2]).every((c) => !c.alive), 'the attempt waiting on node c is given up');
  assert.deepEqual(server.live.map((c) => c.url), [urls[0]]);
});

test('over WebTransport a server gone quiet is noticed after deadServerAfterMs, a Ping sent first; traffic puts it off', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann', deadServerAfterMs: 600, connectTimeoutMs: 1000 });
  const [first] = server.live;
  // Anything arriving puts the Ping off: ticks on a channel, every 100 ms for 1.2 s, and no Ping goes out.
  await ann.subscribe('prices');
  const pings = server.requestsOf('Ping').length;
  for (let i = 1; i <= 12; i++) {
    server.tick('prices', BigInt(i), text('t'));
    await sleep(100);
  }
  assert.equal(server.requestsOf('Ping').length, pings, 'no Ping while ticks arrive');
  assert.equal(ann.status, 'connected');
  // While a request waits for its reply (a post behind a slow room store: replies come in request order, the
  // Pong behind it), the session is not given up: QUIC's own idle timeout ends it if the server is gone.
  // (Held on this connection only: a post sent again on a reconnect would be answered.)
  first.holdPostReplies = true;
  const posted = ann.post('lobby', 'held').catch(() => {});
  first.ignorePings = true;
  await sleep(1500);
  assert.ok(first.alive, 'kept while a post waits for its reply');
  assert.ok(server.requestsOf('Ping').length > pings, 'a Ping went out');
  // Quiet with nothing outstanding (its QUIC still up, so the browser would notice nothing for 30 s): lost.
  first.kill('the held post is lost with it');
  await until('reconnected', () => ann.status === 'connected' && server.live.length === 1, 3000);
  await posted;
  const [second] = server.live;
  second.ignorePings = true;
  await until('the quiet connection is given up', () => !second.alive, 3000);
  assert.match(second.closedBy.reason, /nothing received for 600 ms/);
  await until('reconnected again', () => ann.status === 'connected' && server.live.length === 1, 3000);
  // A server answering no Ping at all (its QUIC up): the clock estimate gives its Pings up at connectTimeoutMs and
  // leaves them unanswered; they are the session's own, not requests waiting, so it is still given up.
  server.ignorePings = true;
  const third = server.live[0];
  third.kill();
  const later = () => server.connections.slice(server.connections.indexOf(third) + 1);
  const givenUp = () => later().find((c) => /nothing received for 600 ms/.test(c.closedBy?.reason ?? ''));
  await until('a session whose clock Pings went unanswered is given up too', givenUp, 5000);
  server.ignorePings = false;
  await until('reconnected a third time', () => ann.status === 'connected' && server.live.length === 1, 5000);
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: server.transport, deadServerAfterMs: -1 }),
    /deadServerAfterMs must be a number/,
  );
});
