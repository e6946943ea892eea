// What a reconnect puts back, against the in-memory WebTransport and miniature server of fakes.mjs: requests made
// while reconnecting, publishers sharing a claim, rejoins refused for now (tried again) or for good (the room ends),
// rooms resumed after a room stream broke the protocol.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode } from '../quiver/index.js';
import { FakeServer, connect, joinCollecting, until } from './fakes.mjs';

test('reconnect: a subscribe made while reconnecting is sent once; a second publisher shares the claim; a rejoin refused for now is tried again', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server);
  const room = await joinCollecting(ann, 'r');
  const first = await ann.publisher('p');
  const second = await ann.publisher('p');
  assert.deepEqual([first.send('a'), second.send('b')], [1n, 2n], 'one numbering of the channel');
  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  const subscribing = ann.subscribe('c', { onTick: () => {} });
  server.refusedJoins = 2;
  server.down = false;
  await subscribing;
  const conn = server.live[0];
  assert.equal(server.requestsOf('Subscribe', conn).length, 1, 'subscribed once, by subscribe() itself');
  await until('the room rejoined after two refusals', () => server.rooms.get('r').members.has(conn));
  assert.equal(server.requestsOf('Join', conn).length, 3);
  assert.equal(server.requestsOf('Publish', conn).length, 1, 'one claim to put back');
  assert.deepEqual([first.send('c'), second.send('d')], [3n, 4n], 'both handles publish on the new connection');
  await ann.post('r', 'still here');
  await until('the room delivers', () => room.seqs().length === 1);
});

test('reconnect: a rejoin refused for good ends the room (a kicked event, a notice); it can be joined again', async (t) => {
  const server = new FakeServer();
  const notices = [];
  const ann = await connect(t, server, { onNotice: (n) => notices.push(n) });
  const room = await joinCollecting(ann, 'r');
  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  Object.assign(server, { refusedJoins: 1, refuseJoinsWith: ErrorCode.PermissionDenied, down: false });
  await until('the room ends', () => room.events.some((e) => e.type === 'kicked'));
  const ended = room.events.find((e) => e.type === 'kicked');
  assert.equal(ended.code, ErrorCode.PermissionDenied);
  assert.ok(notices.some((n) => n.room === 'r' && n.code === ErrorCode.PermissionDenied), 'the application is told');
  await ann.join('r'); // not AlreadyJoined: the ended room is forgotten
});

test('a room stream that breaks the protocol ends its session, and the room resumes on the next', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const room = await joinCollecting(ann, 'lobby');
  await bob.post('lobby', 'first');
  await until('ann has the first message', () => room.messages().length === 1);
  const conn = server.connections[0];
  // A one-byte frame whose body names no RoomFrame variant (postcard's variant index 127).
  server.room('lobby').members.get(conn).writeBytes(new Uint8Array([0x01, 0x7f]));
  await until('ann\'s session is closed', () => conn.closedBy);
  await bob.post('lobby', 'second');
  await until('ann has the message after the reconnect', () => room.messages().length === 2);
  assert.deepEqual(room.messages().map((m) => [m.seq, m.text]), [[1n, 'first'], [2n, 'second']]);
  assert.equal(conn.closedBy.closeCode, ErrorCode.ProtocolViolation);
  assert.match(conn.closedBy.reason, /room stream/);
  const joins = server.requests.filter(({ conn: c, req }) => 'Join' in req.body && c !== conn && c.identity === 'ann');
  const rejoin = joins.map(({ req }) => req.body.Join.since);
  assert.deepEqual(rejoin, [{ epoch: server.room('lobby').epoch, seq: 1n }], 'resumed from the last message read');
});
