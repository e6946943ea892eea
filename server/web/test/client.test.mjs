// QuiverClient's IO layer (Hello/Welcome, requests and replies, room streams, datagrams, connection loss and
// everything a reconnect restores), against the in-memory stand-ins for the browser's WebTransport and a miniature
// Quiver server of fakes.mjs. The WebSocket fallback's: websocket-client.test.mjs; a cluster's nodes and a dead
// server: failover.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { DEFAULT_MAX_FRAME, ErrorCode, PROTOCOL_VERSION, QuiverClient, QuiverError, wire } from '../quiver/index.js';
import {
  FakeServer, URL_, connect, joinCollecting, presence, slowConsumerKick, sleep, text, until,
} from './fakes.mjs';

test('connect: Hello with version, agent, name and token; certHash as serverCertificateHashes; Welcome', async (t) => {
  const server = new FakeServer();
  const statuses = [];
  const onStatus = (s) => statuses.push(s);
  const client = await connect(t, server, { name: 'ann', token: 'tok', certHash: 'AB'.repeat(32), onStatus });
  const [conn] = server.connections;
  assert.equal(conn.url, URL_);
  assert.equal(conn.options.serverCertificateHashes.length, 1);
  assert.equal(conn.options.serverCertificateHashes[0].algorithm, 'sha-256');
  assert.deepEqual(conn.options.serverCertificateHashes[0].value, new Uint8Array(32).fill(0xab));
  const first = server.requests[0].req;
  const hello = { version: PROTOCOL_VERSION, agent: 'quiver-web/0.1', name: 'ann', token: 'tok' };
  assert.deepEqual(first, { req_id: 0n, body: { Hello: hello } });
  assert.equal(server.requestsOf('Ping').length, 5, 'five pings estimate the clock offset');
  assert.deepEqual(server.requests.slice(1).map((r) => r.req.req_id), [1n, 2n, 3n, 4n, 5n], 'request ids follow Hello\'s 0');
  assert.equal(client.status, 'connected');
  assert.deepEqual(statuses, ['connected']);
  assert.equal(client.welcome.identity, 'ann');
  assert.equal(client.welcome.limits.max_frame, DEFAULT_MAX_FRAME);
  assert.ok(Math.abs(client.serverClockUs() - Date.now() * 1000) < 2_000_000, 'the server clock is estimated');
  const rtt = await client.ping();
  assert.ok(typeof rtt === 'number' && rtt >= 0);

  const anonymous = await connect(t, server);
  assert.equal(server.connections[1].options, undefined, 'no certificate hash: no options');
  assert.match(anonymous.welcome.identity, /^guest-/);
  client.close();
  assert.equal(client.status, 'closed');
  assert.deepEqual(conn.closedBy, { closeCode: 0, reason: 'closed by the application' });
  await assert.rejects(client.ping(), (err) => err instanceof QuiverError && err.closed);
});

test('connect: a refused Hello or an unreachable server rejects and closes', async () => {
  const server = new FakeServer();
  server.refuse = { code: ErrorCode.UnsupportedVersion, message: 'this server speaks 2 only' };
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: server.transport }),
    (err) => err instanceof QuiverError && err.refused && err.code === ErrorCode.UnsupportedVersion,
  );
  server.refuse = null;
  server.down = true;
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport }), /connection refused/);
  assert.throws(() => new QuiverClient(URL_, { transport: 'webtransport', webTransport: null }), /no WebTransport/);
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport, certHash: 'abc' }), /64 hex digits/);
});

test('posts refused as Unavailable are sent again, in order, and resolve once the broker is back', async (t) => {
  const server = new FakeServer();
  const client = await connect(t, server);
  server.unavailablePosts = 3;
  const seqs = await Promise.all(['a', 'b', 'c'].map((s) => client.post('lobby', text(s))));
  assert.deepEqual(seqs, [1n, 2n, 3n]);
  assert.deepEqual(server.room('lobby').messages.map((m) => new TextDecoder().decode(m.kind.Message.body)), ['a', 'b', 'c']);
  const ids = server.requestsOf('Post').map((p) => p.client_msg_id);
  assert.ok(ids.length > 3, 'refused posts were sent again');
  assert.deepEqual([...new Set(ids)].length, 3, 'with the same client_msg_id');
});

test('maxQueuedPosts: a post past the bound rejects at once and is never sent; the queued ones go on', { timeout: 10_000 }, async (t) => {
  const server = new FakeServer();
  const client = await connect(t, server, { name: 'ann', maxQueuedPosts: 2 });
  server.holdPostReplies = true; // taken but never answered: both stay awaiting their reply
  const queued = [client.post('lobby', 'a'), client.post('lobby', 'b')];
  const refused = client.post('lobby', 'c');
  const outcome = refused.then(() => 'resolved', () => 'rejected');
  const settled = await Promise.race([outcome, sleep(0).then(() => 'pending')]);
  assert.equal(settled, 'rejected', 'at once, not after a reply');
  await assert.rejects(refused, (err) => {
    assert.ok(err instanceof QuiverError && err.queueFull, `${err}`);
    assert.equal(err.code, ErrorCode.RateLimited);
    assert.match(err.message, /2 posts are queued or awaiting their reply/);
    return true;
  });
  await until('the server has a and b', () => server.room('lobby').messages.length === 2);
  server.holdPostReplies = false;
  server.dropAll(); // their answers are lost with the connection: sent again after the reconnect, deduplicated
  assert.deepEqual(await Promise.all(queued), [1n, 2n]);
  assert.equal(await client.post('lobby', 'd'), 3n, 'room again once they are acknowledged');
  const bodies = server.room('lobby').messages.map((m) => new TextDecoder().decode(m.kind.Message.body));
  assert.deepEqual(bodies, ['a', 'b', 'd'], 'c was never sent');
});

test('rooms: join, live events in order, members, posts resolve to their seq, history, leave', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  assert.deepEqual(a.handle.members, ['ann']);
  server.openBeforeReply = false; // the reply first this time: both orders must work
  const b = await joinCollecting(bob, 'lobby');
  assert.deepEqual(b.handle.members, ['ann', 'bob']);
  await until('ann sees bob join', () => a.events.some((e) => e.type === 'joined' && e.member === 'bob'));
  assert.deepEqual(a.handle.members, ['ann', 'bob']);

  const seqs = await Promise.all([bob.post('lobby', 'one'), bob.post(b.handle, text('two')), b.handle.post('three')]);
  assert.deepEqual(seqs, [1n, 2n, 3n], 'posts keep the order of the calls');
  await until('ann gets 3 messages', () => a.messages().length === 3);
  const [first] = a.messages();
  assert.equal(first.text, 'one');
  assert.equal(first.sender, 'bob');
  assert.equal(first.seq, 1n);
  assert.equal(typeof first.timeUs, 'bigint');
  assert.equal(typeof first.clientMsgId, 'bigint');
  assert.deepEqual(first.body, text('one'));
  assert.deepEqual(a.handle.position, { epoch: 7n, seq: 3n });
  const ids = server.requestsOf('Post').map((p) => p.client_msg_id);
  assert.deepEqual(ids, [ids[0], ids[0] + 1n, ids[0] + 2n], 'client_msg_ids count up');

  const page = await ann.history('lobby', 1, 10);
  assert.deepEqual(page.messages.map((m) => m.text), ['two', 'three']);
  assert.equal(page.epoch, 7n);
  assert.equal(page.more, false);

  await assert.rejects(ann.join('lobby'), (err) => err.code === ErrorCode.AlreadyJoined);
  await bob.leave('lobby');
  await until('ann sees bob leave', () => a.events.some((e) => e.type === 'left' && e.member === 'bob'));
  const notJoined = (err) => err instanceof QuiverError && err.code === ErrorCode.NotJoined && !err.closed;
  await assert.rejects(bob.leave('lobby'), notJoined);
  await assert.rejects(bob.request({ Nope: {} }), /RequestBody's variants/);
});

test('reconnect: rejoin from the last message, no duplicates, posts re-sent in order and delivered once', async (t) => {
  const server = new FakeServer();
  const statuses = [];
  const ann = await connect(t, server, { name: 'ann', onStatus: (s) => statuses.push(s) });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  await joinCollecting(bob, 'lobby');
  for (const m of ['m1', 'm2', 'm3']) await bob.post('lobby', m);
  await until('ann has m1..m3', () => a.messages().length === 3);

  // Ann posts twice; the server takes both (everyone sees them) but the answers are lost with the connection.
  server.holdPostReplies = true;
  const p1 = ann.post('lobby', 'p1');
  const p2 = ann.post('lobby', 'p2');
  await until('the server has p1 and p2', () => server.rooms.get('lobby').messages.length === 5);
  await until('ann sees her posts', () => a.messages().length === 5);
  server.holdPostReplies = false;
  server.replayOverlap = 2n; // the resume replays two messages ann has already seen
  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  const p3 = ann.post('lobby', 'p3'); // made while reconnecting: queued behind p1 and p2
  server.down = false;

  assert.deepEqual(await Promise.all([p1, p2, p3]), [4n, 5n, 6n], 'the original seqs; p3 after them');
  await until('bob is back', () => bob.status === 'connected');
  await bob.post('lobby', 'm7');
  await until('ann has 7 messages', () => a.messages().length === 7);
  assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5, 6, 7], 'every message once, in order');
  assert.deepEqual(a.messages().map((m) => m.text), ['m1', 'm2', 'm3', 'p1', 'p2', 'p3', 'm7']);
  const resumed = a.events.filter((e) => e.type === 'resumed');
  assert.deepEqual(resumed, [{ type: 'resumed', room: 'lobby', recovered: true, epoch: 7n }]);
  assert.ok(a.events.indexOf(resumed[0]) < a.events.findIndex((e) => e.text === 'p3'), 'resumed comes before the replay');

  const conn2 = server.connections.filter((c) => c.identity === 'ann')[1];
  assert.deepEqual(server.requestsOf('Join', conn2), [{ room: 'lobby', since: { epoch: 7n, seq: 5n }, redundant: false }]);
  const posts = server.requestsOf('Post').filter((p) => ['p1', 'p2', 'p3'].includes(new TextDecoder().decode(p.body)));
  const [id1, id2] = posts.slice(0, 2).map((p) => p.client_msg_id);
  assert.deepEqual(posts.map((p) => p.client_msg_id), [id1, id2, id1, id2, id2 + 1n], 're-sent with the same ids, in order');
  assert.deepEqual(server.rooms.get('lobby').messages.map((m) => Number(m.seq)), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(statuses, ['connected', 'reconnecting', 'connected']);
});

test('reconnect: a lost room history (new epoch) is announced as not recovered', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const a = await joinCollecting(ann, 'lobby');
  await ann.post('lobby', 'old');
  await until('ann has her message', () => a.messages().length === 1);
  server.rooms.set('lobby', { epoch: 8n, messages: [], members: new Map() }); // the server restarted
  server.dropAll();
  await until('ann is back', () => a.events.some((e) => e.type === 'resumed'));
  assert.deepEqual(a.events.find((e) => e.type === 'resumed'), { type: 'resumed', room: 'lobby', recovered: false, epoch: 8n });
  assert.equal(await ann.post('lobby', 'new'), 1n);
  await until('the new epoch\'s seq 1 is delivered', () => a.messages().length === 2);
  assert.deepEqual(a.messages().map((m) => [m.epoch, m.seq, m.text]), [[7n, 1n, 'old'], [8n, 1n, 'new']]);
});

for (const openBeforeReply of [true, false]) {
  const order = openBeforeReply ? 'Open before the reply' : 'reply before the Open';
  test(`slow consumer: the Kicked naming the room rejoins it from the last message, no gap or duplicate (${order})`, async (t) => {
    const server = new FakeServer();
    server.openBeforeReply = openBeforeReply;
    const notices = [];
    const ann = await connect(t, server, { name: 'ann', onNotice: (n) => notices.push(n) });
    const bob = await connect(t, server, { name: 'bob' });
    const a = await joinCollecting(ann, 'lobby');
    await joinCollecting(bob, 'lobby');
    await bob.post('lobby', 'm1');
    await until('ann has m1', () => a.messages().length === 1);

    // Ann's stream falls behind: m2 and m3 wait for her and are lost with the reset.
    const [conn] = server.connections;
    server.rooms.get('lobby').members.get(conn).stall();
    await bob.post('lobby', 'm2');
    await bob.post('lobby', 'm3');
    server.replayOverlap = 1n; // the replay repeats m1: dropped
    const kicked = server.fallBehind(conn, 'lobby');
    await sleep(20);
    assert.equal(server.requestsOf('Join', conn).length, 1, 'a reset alone does not rejoin');
    conn.send(kicked);
    await until('rejoined', () => a.events.some((e) => e.type === 'resumed'));
    await bob.post('lobby', 'm4');
    await until('ann has 4 messages', () => a.messages().length === 4);
    assert.deepEqual(a.seqs(), [1, 2, 3, 4], 'the missed messages replayed, each once, in order');
    assert.deepEqual(server.requestsOf('Join', conn)[1], { room: 'lobby', since: { epoch: 7n, seq: 1n }, redundant: false });
    const resumed = a.events.filter((e) => e.type === 'resumed');
    assert.deepEqual(resumed, [{ type: 'resumed', room: 'lobby', recovered: true, epoch: 7n }]);
    assert.ok(a.events.indexOf(resumed[0]) < a.events.findIndex((e) => e.text === 'm2'), 'resumed comes before the replay');
    assert.deepEqual(a.handle.members, ['ann', 'bob'], 'members from the new stream\'s Open');

    // A Kicked for a room the server still has on this connection: the rejoin's AlreadyJoined is ignored.
    conn.send(kicked);
    await until('joined a third time', () => server.requestsOf('Join', conn).length === 3);
    await bob.post('lobby', 'm5');
    await until('ann has m5', () => a.messages().length === 5);
    assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5]);
    assert.deepEqual(notices.map((n) => [n.type, n.code]), [['kicked', ErrorCode.SlowConsumer], ['kicked', ErrorCode.SlowConsumer]]);
    assert.equal(a.events.some((e) => e.type === 'kicked'), false, 'falling behind does not end the room');
    assert.equal(ann.status, 'connected', 'the connection was not touched');
  });
}

test('after a rejoin an older stream of the room delivers nothing more: no event twice, none out of order', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  await joinCollecting(bob, 'lobby');
  await bob.post('lobby', 'm1');
  await until('ann has m1', () => a.messages().length === 1);

  // The server drops ann's subscription as a slow consumer; frames of the old stream are still on the way.
  const [conn] = server.connections;
  const room = server.rooms.get('lobby');
  const old = room.members.get(conn);
  room.members.delete(conn);
  await bob.post('lobby', 'm2');
  conn.send(slowConsumerKick('lobby'));
  await until('m2 from the replay', () => a.messages().length === 2);
  old.write({ Event: room.messages[1] }); // m2 again
  old.write({ Event: presence(1n, 'MemberJoined', 'cy') }); // older than the new stream's Open
  await until('the old stream is given up', () => old.cancelled);
  await bob.post('lobby', 'm3');
  await until('ann has m3', () => a.messages().length === 3);
  assert.deepEqual(a.seqs(), [1, 2, 3]);
  assert.deepEqual(a.events.map((e) => e.type), ['joined', 'message', 'resumed', 'message', 'message']);
  assert.deepEqual(a.handle.members, ['ann', 'bob'], 'no stale presence from the old stream');
});

test('pushes are surfaced; a kick from a room ends that room; a refusal on reconnect ends the client', async (t) => {
  const server = new FakeServer();
  const notices = [];
  const statuses = [];
  const ann = await connect(t, server, {
    name: 'ann', onNotice: (n) => notices.push(n), onStatus: (s, why) => statuses.push([s, why?.code]),
  });
  const a = await joinCollecting(ann, 'lobby');
  const [conn] = server.connections;
  conn.send({ Kicked: { room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' } });
  conn.send({ Error: { code: ErrorCode.RateLimited, message: 'slow down' } });
  conn.send({ GoAway: { code: ErrorCode.GoingAway, reason: 'restarting' } });
  await until('3 notices', () => notices.length === 3);
  assert.deepEqual(notices, [
    { type: 'kicked', room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' },
    { type: 'error', code: ErrorCode.RateLimited, reason: 'slow down' },
    { type: 'goaway', code: ErrorCode.GoingAway, reason: 'restarting' },
  ]);
  assert.deepEqual(a.events.at(-1), { type: 'kicked', room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' });
  // Falling behind in a room this client is not in (any more): a notice, no rejoin.
  conn.send(slowConsumerKick('lobby'));
  await until('4 notices', () => notices.length === 4);
  await sleep(20);
  assert.equal(server.requestsOf('Join').length, 1);

  // The server goes away and refuses the next session: the client ends with the refusal, pending posts fail.
  server.refuse = { code: ErrorCode.PermissionDenied, message: 'token expired' };
  server.holdPostReplies = true;
  const post = ann.post('lobby', 'never acknowledged');
  await until('the post reached the server', () => server.requestsOf('Post').length === 1);
  conn.close({ closeCode: ErrorCode.GoingAway, reason: 'restarting' });
  await assert.rejects(post, (err) => err instanceof QuiverError && err.closed && err.code === ErrorCode.PermissionDenied);
  assert.equal(ann.status, 'closed');
  assert.deepEqual(ann.closeReason, { code: ErrorCode.PermissionDenied, reason: 'token expired' });
  assert.deepEqual(statuses.map(([s]) => s), ['connected', 'reconnecting', 'closed']);
  assert.equal(statuses[1][1], ErrorCode.GoingAway);
  await assert.rejects(ann.post('lobby', 'after the end'), (err) => err.closed);
});

test('reconnect keeps trying while the server is down, and reconnect: false ends at the first loss', async (t) => {
  const server = new FakeServer();
  const attempts = [];
  const ann = await connect(t, server, {
    reconnectDelayMs: 2, reconnectMaxDelayMs: 10, onAttempt: (a) => attempts.push(a),
  });
  server.down = true;
  server.dropAll();
  await until('several failed attempts', () => server.connections.length >= 5);
  assert.equal(ann.status, 'reconnecting');
  // Each attempt is announced: its number, why the link is down (then why the last attempt failed), the delay.
  assert.deepEqual(attempts.slice(0, 3).map((a) => a.attempt), [0, 1, 2]);
  assert.ok(attempts.every((a) => a.nextTryMs >= 0 && a.nextTryMs <= 10), JSON.stringify(attempts));
  assert.match(attempts[1].lastError.reason, /connection refused/);
  assert.deepEqual(ann.reconnecting, attempts.at(-1));
  const ping = ann.ping(); // waits for the next connection
  server.down = false;
  assert.ok((await ping) >= 0);
  assert.equal(ann.status, 'connected');
  assert.equal(ann.reconnecting, null);

  const once = await connect(t, server, { reconnect: false });
  server.dropAll();
  await until('ended', () => once.status === 'closed');
  assert.equal(once.closeReason.code, ErrorCode.Internal);
  assert.match(once.closeReason.reason, /network unreachable/);
});

test('a server that drops each session soon after it opens gets growing reconnect delays, not the first every time', async (t) => {
  const server = new FakeServer();
  const attempts = [];
  const ann = await connect(t, server, {
    reconnectDelayMs: 2, reconnectMaxDelayMs: 50, onAttempt: (a) => attempts.push(a),
  });
  for (let loss = 1; loss <= 4; loss++) {
    await until('connected', () => ann.status === 'connected');
    server.dropAll(); // a crash loop: each session ends within moments (less than STABLE_CONNECTION_MS)
    await until('a new attempt', () => attempts.length >= loss);
  }
  // One attempt per loss, each going on from the last: the delays grow instead of starting over.
  assert.deepEqual(attempts.map((a) => a.attempt), [0, 1, 2, 3]);
});

test('a room stream reset before its Open frame is joined again on the Kicked; a loss during setup fails connect', async (t) => {
  const server = new FakeServer();
  const bob = await connect(t, server, { name: 'bob' });
  await joinCollecting(bob, 'lobby');
  await bob.post('lobby', 'm1');
  server.loseRoomStreams = 1;
  const ann = await connect(t, server, { name: 'ann' });
  const a = await joinCollecting(ann, 'lobby');
  assert.deepEqual(a.handle.members, ['ann', 'bob'], 'members from the Join reply');
  assert.deepEqual(a.handle.position, { epoch: 7n, seq: 1n }, 'the position from the Join reply');
  await bob.post('lobby', 'm2'); // ann has no stream: she gets m2 from the replay
  const annConn = server.connections.find((c) => c.identity === 'ann');
  annConn.send(slowConsumerKick('lobby'));
  await until('joined again', () => server.requestsOf('Join', annConn).length === 2);
  await bob.post('lobby', 'm3');
  await until('m2 and m3 delivered on the second stream', () => a.messages().length === 2);
  assert.deepEqual(a.seqs(), [2, 3]);
  assert.deepEqual(server.requestsOf('Join', annConn)[1], { room: 'lobby', since: { epoch: 7n, seq: 1n }, redundant: false });
  assert.equal(a.events.some((e) => e.type === 'resumed'), false, 'nothing was missed: nothing to announce');

  // A join whose stream never opened before its connection was lost: the next connection resumes from the reply.
  server.loseRoomStreams = 1;
  const cy = await connect(t, server, { name: 'cy' });
  const c = await joinCollecting(cy, 'lobby');
  server.dropAll();
  const cyConn = () => server.connections.filter((conn) => conn.identity === 'cy')[1];
  await until('cy joined again', () => cyConn() && server.requestsOf('Join', cyConn()).length === 1);
  assert.deepEqual(server.requestsOf('Join', cyConn()), [{ room: 'lobby', since: { epoch: 7n, seq: 3n }, redundant: false }]);
  await until('bob is back', () => bob.status === 'connected');
  await bob.post('lobby', 'm4');
  await until('cy has m4', () => c.messages().length === 1);
  assert.deepEqual(c.seqs(), [4]);
  assert.ok(c.handle.members.includes('cy'), 'members from the new stream\'s Open');

  server.dropOnPing = true;
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport }), /lost during setup/);
});

test('a server that answers no clock Ping holds neither a reconnect past the connect timeout nor a close', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann', connectTimeoutMs: 1500 });
  const bob = await connect(t, server, { name: 'bob', connectTimeoutMs: 60_000 });
  server.ignorePings = true;
  const dropped = performance.now();
  server.dropAll();
  await until('both welcomed again, waiting for Pongs', () => server.live.length === 2 && server.live.every((c) => c.identity));
  await until('ann goes on without the Pongs once her connect timeout passed', () => ann.status === 'connected', 6000);
  assert.ok(performance.now() - dropped >= 1400, 'not before her connect timeout');
  assert.equal(bob.status, 'reconnecting', 'bob waits for his (60 s)');
  bob.close();
  await until('bob\'s new connection closed at once', () => server.live.length === 1, 1000);
  assert.equal(bob.status, 'closed');
});

test('redundant rooms: stream and copies merge into one order, each event once; posts also go up as copies', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann', copies: 2, copySpacingMs: 2 });
  const events = [];
  await ann.join('fast', { onEvent: (e) => events.push(e), redundant: true });
  assert.deepEqual(server.requestsOf('Join').at(-1), { room: 'fast', since: null, redundant: true });
  const [conn] = server.connections;
  const stream = server.rooms.get('fast').members.get(conn); // Open at position 0, Copies at 1
  const message = (seq, id) => ({ seq, time_us: 1n, kind: { Message: { sender: 'bob', client_msg_id: id, body: text(`m${seq}`) } } });
  const [m1, bobJoined, m2, m3] = [message(1n, 10n), presence(1n, 'MemberJoined', 'bob'), message(2n, 11n), message(3n, 12n)];
  const seen = () => events.map((e) => (e.type === 'message' ? `m${e.seq}` : `${e.type}:${e.member}`));
  await until('the Copies frame is read', () => server.requestsOf('Join').length === 1 && conn.roomStreams.length === 1);
  await new Promise((resolve) => setTimeout(resolve, 10));
  conn.sendRoomCopy(1n, 3n, [bobJoined]); // ahead of position 2: waits
  conn.sendRoomCopy(1n, 2n, [m1, bobJoined]); // 2 and 3, 3 again
  await until('copies delivered in order', () => events.length === 2);
  stream.write({ Event: m1 }); // position 2, from the stream: already delivered
  stream.write({ Event: bobJoined }); // 3
  stream.write({ Event: m2 }); // 4: its copies were lost
  await until('the stream fills the gap', () => events.length === 3);
  conn.sendRoomCopy(1n, 4n, [m2, m3]); // 4 late, 5 new
  conn.sendRoomCopy(7n, 5n, [m3]); // another slot: not this stream's
  await until('m3 from its copy', () => events.length === 4);
  stream.write({ Event: m3 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(seen(), ['m1', 'joined:bob', 'm2', 'm3'], 'each once, in order');

  await ann.post('fast', 'up');
  await until('two post copies', () => server.copies.length === 2);
  for (const copy of server.copies) {
    assert.equal(copy.kind, 'posts');
    // Requests after Hello are numbered in the order written: five Pings, the Join, then this post.
    assert.equal(copy.first, 7n);
    const { body } = wire.Request.decode(copy.frames[0]);
    assert.equal(new TextDecoder().decode(body.Post.body), 'up');
  }
  await ann.post('elsewhere', 'plain');
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.copies.length, 2, 'a room not joined redundant: no copies');
});
