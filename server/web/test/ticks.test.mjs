// QuiverClient's tick channels (subscriptions and publish claims: refused for now or for good, unpublish, max age,
// latest wins with loss and staleness counted, restored after a reconnect), against the fakes of fakes.mjs. The rest
// of the client: client.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, QuiverEncodeError } from '../quiver/index.js';
import { FakeServer, connect, sleep, text, until } from './fakes.mjs';
import { UNROUTED_IDS, Unrouted } from '../quiver/client/values.js';

test('ticks: a resubscribe or claim refused for now is retried; refused for good, it ends', async (t) => {
  const server = new FakeServer();
  const notices = [];
  const ann = await connect(t, server, { onNotice: (n) => notices.push(n) });
  const ended = [];
  const sub = await ann.subscribe('a', { onEnd: (why) => ended.push(['a', why.code]) });
  const kept = await ann.subscribe('b');
  const publisher = await ann.publisher('a', { onEnd: (why) => ended.push(['claim', why.code]) });
  const { PermissionDenied, RateLimited, Unavailable } = ErrorCode;
  // After the reconnect: 'a' refused for good; 'b' refused for now twice, then taken; the claim refused for good.
  server.refusedTicks.Subscribe = [PermissionDenied, RateLimited, Unavailable];
  server.refusedTicks.Publish = [PermissionDenied];
  server.dropAll();
  await until('b resubscribed', () => server.live[0]?.channels.has('b'));
  await until('both ended', () => ended.length === 2);
  assert.deepEqual(ended.sort(), [['a', PermissionDenied], ['claim', PermissionDenied]]);
  assert.deepEqual(sub.ended?.code, PermissionDenied);
  assert.equal(kept.ended, null);
  assert.equal(publisher.ended?.code, PermissionDenied);
  assert.equal(publisher.send('x'), null, 'no claim: the tick is dropped');
  assert.equal(notices.filter((n) => n.type === 'error' && n.channel === 'a').length, 2, 'each refusal noticed');
  // Ended, the channel can be subscribed anew; the ended handle's unsubscribe leaves the new one alone.
  const again = await ann.subscribe('a');
  await sub.unsubscribe();
  assert.ok(server.live[0].channels.has('a'));
  assert.equal(again.ended, null);
  assert.equal(server.requestsOf('Subscribe').length, 2 + 4 + 1);
});

test('a version-4 session has no Unpublish: unpublish ends the publishers and leaves the claim, as the Rust client', async (t) => {
  const server = new FakeServer();
  server.welcomeVersion = 4;
  const ann = await connect(t, server, { protocolVersion: 4 });
  const publisher = await ann.publisher('match.1');
  await publisher.unpublish(); // the server would refuse it Unsupported: not sent, nothing thrown
  assert.deepEqual(server.requestsOf('Unpublish'), []);
  assert.deepEqual(publisher.ended, { code: ErrorCode.NoError, reason: 'unpublished' });
  assert.equal(publisher.send('late'), null);
  // The server keeps the claim and the newest tick number it took: a new publisher numbers on (from 1 again, its
  // ticks were dropped there as reordered).
  const again = await ann.publisher('match.1');
  assert.equal(again.send('x'), 1n, 'nothing sent before the unpublish: numbered from 1');
  assert.equal(again.send('y'), 2n);
  await again.unpublish();
  const third = await ann.publisher('match.1');
  assert.equal(third.send('z'), 3n, 'numbered on from the unpublished claim');
});

test('unpublish gives the claim up for every publisher sharing it; a later publisher claims the channel anew', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server);
  const first = await ann.publisher('match.1');
  const sharing = await ann.publisher('match.1');
  assert.equal(server.live[0].claims.size, 1);
  await first.unpublish();
  assert.equal(server.live[0].claims.size, 0, 'the server let the claim go');
  assert.deepEqual(server.requestsOf('Unpublish'), [{ channel: 'match.1' }]);
  assert.deepEqual(sharing.ended, { code: ErrorCode.NoError, reason: 'unpublished' });
  assert.equal(sharing.send('late'), null, 'ended for both');
  await sharing.unpublish(); // ended already: nothing written
  assert.equal(server.requestsOf('Unpublish').length, 1);
  // An unpublish asked while a second publisher's claim of the channel waits for its reply: it waits its turn, so
  // it gives up the claim the second publisher shares instead of taking back one that publisher then counts on.
  const held = await ann.publisher('match.1');
  server.heldClaims = [];
  const sharing2 = ann.publisher('match.1');
  await until('the claim written', () => server.heldClaims.length === 1);
  const unpublished = held.unpublish();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.requestsOf('Unpublish').length, 1, 'not written while the claim waits for its reply');
  server.heldClaims.shift()();
  server.heldClaims = null;
  const second = await sharing2;
  await unpublished;
  assert.equal(server.requestsOf('Unpublish').length, 2);
  assert.equal(server.live[0].claims.size, 0);
  assert.equal(second.ended?.reason, 'unpublished', 'it shared the claim given up: told so, not left believing');
  const fourth = await ann.publisher('match.1');
  assert.equal(fourth.ended, null);
  assert.equal(server.live[0].claims.size, 1, 'claimed once, after the unpublish');
  assert.equal(fourth.send('kick-off'), 1n, 'a new claim numbers from 1');
  // Dropped connections do not put an unpublished claim back.
  server.dropAll();
  await until('reconnected', () => server.live.length === 1 && ann.status === 'connected');
  await until('claimed again', () => server.live[0].claims.size === 1);
  assert.deepEqual([...server.live[0].claims.values()], ['match.1']);
});

test('an unpublish refused Unavailable waits for the session to end outside the claim turn', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server);
  const old = await ann.publisher('match.2');
  // A server shutting down refuses the Unpublish `Unavailable` and closes a moment later (here: when the test says).
  server.refusedTicks.Unpublish = [ErrorCode.Unavailable];
  let settled = null;
  const unpublished = old.unpublish().then(() => { settled = 'resolved'; }, (err) => { settled = err; });
  await until('the Unpublish refused', () => server.requestsOf('Unpublish').length === 1);
  // The unpublish now waits (up to 5 s) for the session to end; a new publisher of the channel is not held by it.
  const next = await ann.publisher('match.2');
  assert.equal(settled, null, 'claimed while the unpublish still waits');
  assert.equal(next.ended, null);
  assert.equal(old.ended?.reason, 'unpublished');
  server.dropAll(); // the session ends: the refused unpublish counts as done
  await unpublished;
  assert.equal(settled, 'resolved', `${settled}`);
  await until('claimed again on the next session', () => server.live.length === 1 && server.live[0].claims.size === 1);
  assert.equal(next.ended, null);
});

test('a max age below a millisecond asks for one (the server refuses 0)', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server);
  await ann.publisher('fast', { maxAgeMs: 0.4 });
  await ann.publisher('zero', { maxAgeMs: 0 });
  assert.deepEqual(server.requestsOf('Publish'), [
    { channel: 'fast', max_age_ms: 1 },
    { channel: 'zero', max_age_ms: 1 },
  ]);
});

test('ticks: latest wins with loss and staleness counted; resubscribed and re-claimed after a reconnect', async (t) => {
  const server = new FakeServer();
  server.channelIdBase = 5n;
  const ann = await connect(t, server);
  const ticks = [];
  const sub = await ann.subscribe('demo.ticks', { onTick: (tick) => ticks.push(tick) });
  assert.equal(sub.channel, 'demo.ticks');
  for (const seq of [1n, 2n, 2n, 5n, 3n, 6n]) server.tick('demo.ticks', seq, text(`${seq}`), BigInt(Date.now() - 3) * 1000n);
  server.tick('other', 9n); // a channel id this client does not know: dropped
  await until('4 ticks', () => ticks.length === 4);
  assert.deepEqual(ticks.map((k) => k.seq), [1n, 2n, 5n, 6n]);
  // lost: 4 (3 and 4 skipped when 5 came, then 3 arrived after all: stale, no longer lost)
  assert.deepEqual(sub.stats, { received: 4, lost: 1, stale: 2 });
  assert.equal(new TextDecoder().decode(sub.latest.payload), '6');
  assert.ok(ticks[0].latencyMs >= 2 && ticks[0].latencyMs < 1000, `latency ${ticks[0].latencyMs}`);
  assert.equal(typeof ticks[0].sentTimeUs, 'bigint');

  const publisher = await ann.publisher('demo.ticks', { maxAgeMs: 100 });
  assert.deepEqual(server.requestsOf('Publish'), [{ channel: 'demo.ticks', max_age_ms: 100 }]);
  assert.equal(publisher.send('0.5'), 1n);
  assert.equal(publisher.send(Uint8Array.of(1, 2)), 2n);
  await until('2 datagrams', () => server.datagrams.length === 2);
  const sent = server.datagrams.map((d) => [d.channel_id, d.seq, d.payload]);
  assert.deepEqual(sent, [[6n, 1n, text('0.5')], [6n, 2n, Uint8Array.of(1, 2)]]);
  assert.ok(Math.abs(Number(server.datagrams[0].sent_time_us) - Date.now() * 1000) < 2_000_000);
  // The path's datagrams (1,200 B here) are larger than every subscriber's path carries: the portable bound wins.
  assert.throws(
    () => publisher.send(new Uint8Array(1148 - 24 + 1)),
    (err) => err.code === ErrorCode.DatagramTooLarge && /maximum payload is 1124 bytes/.test(err.message),
  );

  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  assert.equal(publisher.send('lost'), null, 'no connection: the tick is dropped, not queued');
  server.down = false;
  const restored = () => server.live[0]?.channels.has('demo.ticks') && server.live[0].claims.size === 1;
  await until('resubscribed and claimed again', restored);
  server.tick('demo.ticks', 1n); // the channel's seqs started over on the new connection
  await until('a 5th tick', () => ticks.length === 5);
  assert.deepEqual(sub.stats, { received: 5, lost: 1, stale: 2 });
  assert.equal(publisher.send('again'), 3n);
  await until('a 3rd datagram', () => server.datagrams.length === 3);
  assert.equal(server.datagrams[2].conn, server.live[0]);

  await sub.unsubscribe();
  assert.equal(server.live[0].channels.has('demo.ticks'), false);
  server.tick('demo.ticks', 2n);
  await sleep(20);
  assert.equal(ticks.length, 5, 'nothing after unsubscribing');
  await assert.rejects(ann.subscribe('x').then(() => ann.subscribe('x')), (err) => err.code === ErrorCode.AlreadyJoined);
});

test('ticks: an unsubscribe or unpublish refused for its rate goes again; the channel\'s next one waits', async (t) => {
  // Before, each rejected with the channel already forgotten, while the server kept the subscription or claim
  // (counted against the connection's limits) until the connection ended.
  const server = new FakeServer();
  const ann = await connect(t, server);
  const kinds = (...tags) => server.requests.map((r) => Object.keys(r.req.body)[0]).filter((k) => tags.includes(k));
  const sub = await ann.subscribe('a');
  server.refusedTicks.Unsubscribe.push(ErrorCode.RateLimited);
  const unsubscribing = sub.unsubscribe();
  const again = ann.subscribe('a'); // written once the unsubscribe is answered
  await unsubscribing;
  await again;
  assert.deepEqual(kinds('Subscribe', 'Unsubscribe'), ['Subscribe', 'Unsubscribe', 'Unsubscribe', 'Subscribe']);
  const publisher = await ann.publisher('p');
  server.refusedTicks.Unpublish.push(ErrorCode.RateLimited);
  const unpublishing = publisher.unpublish();
  const claim = ann.publisher('p'); // in the channel's turn, after the unpublish's
  await unpublishing;
  await claim;
  assert.deepEqual(kinds('Publish', 'Unpublish'), ['Publish', 'Unpublish', 'Unpublish', 'Publish']);
});

test('ticks: an unsubscribe by name while one is sent again shares its outcome; a subscribe waits', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server);
  await ann.subscribe('a');
  server.refusedTicks.Unsubscribe.push(ErrorCode.RateLimited, ErrorCode.RateLimited);
  const first = ann.unsubscribe('a');
  await until('refused once', () => server.requestsOf('Unsubscribe').length === 1);
  const second = ann.unsubscribe('a'); // a name no longer held: nothing more is sent
  const again = ann.subscribe('a');
  await Promise.all([first, second, again]);
  const kinds = server.requests.map((r) => Object.keys(r.req.body)[0]).filter((k) => /^(Uns|S)ubscribe$/.test(k));
  assert.deepEqual(kinds, ['Subscribe', 'Unsubscribe', 'Unsubscribe', 'Unsubscribe', 'Subscribe']);
  assert.ok(server.live[0].channels.has('a'), 'subscribed after the unsubscribe was taken');
});

test('a Pong whose server time no clock shows is left out of the clock: publishers\' sends do not throw', async (t) => {
  // Before, a server time of 2^63 put the client's clock past the QUIC varint range, and every send threw.
  const server = new FakeServer();
  const handle = server.handle.bind(server);
  server.handle = (conn, req) => {
    if (!('Ping' in req.body)) return handle(conn, req);
    const pong = { client_time_us: req.body.Ping.client_time_us, server_time_us: 2n ** 63n };
    return conn.send({ Reply: { req_id: req.req_id, result: { Ok: { Pong: pong } } } });
  };
  const ann = await connect(t, server);
  const publisher = await ann.publisher('p');
  assert.equal(publisher.send('tick'), 1n);
  await until('the tick reached the server', () => server.datagrams.length === 1);
  const offsetS = (ann.serverClockUs() - Date.now() * 1000) / 1e6;
  assert.ok(Math.abs(offsetS) < 60, `the server's clock is ${offsetS} s off this one's`);
});

test('a tick that cannot be encoded takes no seq: the next one sent is numbered as if it had not been', async (t) => {
  // A hostile server's channel id past the QUIC varint range: the send throws. Before, it took a seq even so.
  const server = new FakeServer();
  const handle = server.handle.bind(server);
  let hostile = true;
  server.handle = (conn, req) => {
    if (!('Publish' in req.body) || !hostile) return handle(conn, req);
    hostile = false;
    const publishing = { channel: req.body.Publish.channel, channel_id: 2n ** 62n };
    return conn.send({ Reply: { req_id: req.req_id, result: { Ok: { Publishing: publishing } } } });
  };
  const ann = await connect(t, server);
  const publisher = await ann.publisher('p');
  assert.throws(() => publisher.send('tick'), QuiverEncodeError);
  server.dropAll(); // claimed again on the next connection, with an id that fits
  await until('claimed again', () => server.live[0]?.claims.size === 1);
  await until('sent', () => publisher.send('tick') !== null);
  await until('the tick reached the server', () => server.datagrams.length === 1);
  assert.equal(server.datagrams[0].seq, 1n);
});

test('ticks that overtake their Subscribe\'s answer are the subscription\'s first, not dropped', async (t) => {
  // A live channel's fan-out starts as the server answers: a datagram may come before the answer. Before, the
  // client found no route for its channel id and dropped it, counted nowhere.
  const server = new FakeServer();
  server.ticksBeforeSubscribed = new Map([['prices', [text('first'), text('second')]]]);
  const ann = await connect(t, server);
  const sub = await ann.subscribe('prices');
  await until('the early tick delivered', () => sub.stats.received === 1);
  assert.deepEqual(sub.stats, { received: 1, lost: 0, stale: 0 }, 'the newest held (latest wins)');
  assert.equal(sub.latest.seq, 8n);
  assert.equal(new TextDecoder().decode(sub.latest.payload), 'second');
});

test('Unrouted holds the newest tick of each channel while a Subscribe is unanswered, at most UNROUTED_IDS', () => {
  const unrouted = new Unrouted();
  assert.equal(unrouted.hold({ channel_id: 1n, seq: 1n }), false, 'no Subscribe unanswered: dropped');
  const answered = unrouted.began();
  assert.ok(unrouted.hold({ channel_id: 0n, seq: 1n }), 'a quiet channel');
  for (let seq = 1n; seq <= 1000n; seq++) assert.ok(unrouted.hold({ channel_id: 1n, seq }), 'a busy one');
  assert.equal(unrouted.hold({ channel_id: 1n, seq: 5n }), false, 'older than the one held');
  for (let id = 2n; id < BigInt(UNROUTED_IDS); id++) assert.ok(unrouted.hold({ channel_id: id, seq: 1n }));
  assert.equal(unrouted.hold({ channel_id: 9999n, seq: 1n }), false, 'one channel more: dropped');
  assert.equal(unrouted.take(0n).tick.seq, 1n, 'the quiet one kept');
  assert.equal(unrouted.take(1n).tick.seq, 1000n);
  assert.equal(unrouted.take(1n), null, 'taken once');
  answered();
  answered(); // (twice is once)
  assert.equal(unrouted.take(2n), null, 'none held once no Subscribe is unanswered');
  assert.equal(unrouted.hold({ channel_id: 2n, seq: 10n }), false);
});
