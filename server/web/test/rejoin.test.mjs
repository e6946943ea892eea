// A room left and joined again before the first Join's stream arrived (React's StrictMode mounts, unmounts and
// mounts again at once): only the second Join's stream opens. Its Open frame names its Join (`req_id`), so the first
// stream, late, is not taken for the second join's (before: its events, then a spurious 'resumed').

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode } from '../quiver/index.js';
import { FakeServer, connect, joinCollecting, sleep, slowConsumerKick, until } from './fakes.mjs';

test('join, leave, join again: the first Join\'s late stream is not the room\'s', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  await joinCollecting(bob, 'lobby');
  await bob.post('lobby', 'before');
  const conn = server.connections[0];
  conn.heldStreams = []; // ann's room streams are late: both Joins are answered before either stream arrives
  await ann.join('lobby', { onEvent: () => {} });
  await bob.post('lobby', 'while the first join lasted'); // on the first stream only
  await ann.leave('lobby');
  const again = await joinCollecting(ann, 'lobby');
  const [first, second] = conn.heldStreams;
  conn.releaseStreams();
  await bob.post('lobby', 'after');
  await until('ann has the message after her second join', () => again.messages().some((m) => m.text === 'after'));
  assert.ok(first && second, 'two streams were held');
  assert.deepEqual(again.messages().map((m) => [m.seq, m.text]), [[3n, 'after']]);
  // (This fake server does not send a joiner its own MemberJoined.)
  assert.deepEqual(again.events.map((e) => e.type), ['message'], 'no event of the first join, no resumed');
  await until('the first stream is given up', () => conn.roomStreams[0].cancelled);
  assert.deepEqual(server.requestsOf('Join', conn).length, 2);
});

test('a rejoin refused as AlreadyJoined before the Join\'s stream arrived leaves that stream the room\'s', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  await joinCollecting(bob, 'lobby');
  const conn = server.connections[0];
  conn.heldStreams = [];
  const a = await joinCollecting(ann, 'lobby');
  // A Kicked while the stream is on its way (as a Join in flight over a reconnect is joined again): the server
  // still has ann in the room and refuses the rejoin as AlreadyJoined; no second stream comes.
  conn.send(slowConsumerKick('lobby'));
  await until('the rejoin was refused', () => server.requestsOf('Join', conn).length === 2);
  await sleep(20);
  conn.releaseStreams();
  await bob.post('lobby', 'hello');
  await until('ann has the message on the first Join\'s stream', () => a.messages().length === 1);
  assert.equal(conn.roomStreams.length, 1);
  assert.equal(conn.roomStreams[0].cancelled, false);
});

test('an old Room\'s leave, called late, does not leave a newer join of its name', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  await joinCollecting(bob, 'lobby');
  const first = await joinCollecting(ann, 'lobby');
  await first.handle.leave();
  const again = await joinCollecting(ann, 'lobby');
  await first.handle.leave(); // an old cleanup (a React effect's), late: the newer join is not its room
  await bob.post('lobby', 'still here');
  await until('the newer join still gets messages', () => again.messages().length === 1);
  assert.equal(server.requestsOf('Leave', server.connections[0]).length, 1);
});

test('a room left, or a channel unsubscribed, while the client reconnects is done, not a rejection', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const rooms = await Promise.all(['a', 'b'].map((name) => ann.join(name, { onEvent: () => {} })));
  const subs = await Promise.all(['x', 'y'].map((name) => ann.subscribe(name)));
  server.down = true;
  server.dropAll();
  // At once, on the connection being lost (its requests fail as closed): done.
  await rooms[0].leave();
  await subs[0].unsubscribe();
  // While the client waits to reconnect: nothing to write (the new session does not take them back).
  await until('reconnecting', () => ann.status === 'reconnecting');
  await rooms[1].leave();
  await subs[1].unsubscribe();
  server.down = false;
  await until('reconnected', () => ann.status === 'connected');
  const session = server.live.at(-1);
  assert.deepEqual(server.requestsOf('Join', session), [], 'no room was taken back');
  assert.deepEqual(server.requestsOf('Subscribe', session), [], 'no channel was taken back');
  await assert.rejects(ann.leave('a'), (err) => err.code === ErrorCode.NotJoined, 'a name not held: NotJoined');
});

test('a join (or subscribe) still waiting for a session, then left, is given up: nothing reaches the server', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  server.down = true;
  server.dropAll();
  await until('reconnecting', () => ann.status === 'reconnecting');
  const joined = ann.join('c', { onEvent: () => {} });
  const subscribed = ann.subscribe('z');
  const left = [ann.leave('c'), ann.unsubscribe('z')];
  await Promise.all(left); // at once: no session holds either
  server.down = false;
  await assert.rejects(joined, (err) => err.closed);
  await assert.rejects(subscribed, (err) => err.closed);
  await until('connected again', () => ann.status === 'connected');
  await sleep(20);
  const session = server.live.at(-1);
  for (const kind of ['Join', 'Leave', 'Subscribe', 'Unsubscribe']) {
    assert.deepEqual(server.requestsOf(kind, session), [], `no ${kind} on the new session`);
  }
  assert.equal(server.rooms.get('c')?.members.size ?? 0, 0, 'the server does not hold the room');
});

test('a join, subscribe or history whose connection is lost before the answer goes again on the next one', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  await bob.post('lobby', 'before');
  server.dropOnFirst = new Set(['Join', 'Subscribe', 'History']);
  const joined = await joinCollecting(ann, 'lobby');
  await bob.post('lobby', 'after');
  await until('ann has the message after her join', () => joined.messages().some((m) => m.text === 'after'));
  const subscription = await ann.subscribe('ticks');
  assert.ok(subscription);
  const page = await ann.history('lobby');
  assert.deepEqual(page.messages.map((m) => m.text), ['before', 'after']);
  assert.equal(server.dropOnFirst.size, 0, 'each went out once on a connection that was lost');
  for (const kind of ['Join', 'Subscribe', 'History']) {
    const on = server.requests.filter((r) => kind in r.req.body && r.conn.identity === 'ann').map((r) => r.conn);
    assert.ok(on.length >= 2 && on[0] !== on[1] && !on[0].alive, `${kind}: again on another connection`);
  }
});

test('calls a closing server refuses Unavailable go again on the next connection; leaves so refused are done',
  async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  // Refused "retry once reconnected", then the connection closes: as the Rust client, the call goes again (it
  // failed with Unavailable).
  for (const kind of ['Join', 'Subscribe', 'History', 'Publish']) server.drainOnFirst.add(kind);
  await ann.join('lobby', { onEvent: () => {} });
  await ann.subscribe('ticks');
  await ann.history('lobby');
  await ann.publisher('prices');
  assert.equal(server.drainOnFirst.size, 0, 'each was refused once');
  for (const kind of ['Join', 'Subscribe', 'History', 'Publish']) {
    const on = server.requests.filter((r) => kind in r.req.body).map((r) => r.conn);
    // (Rooms are rejoined at each reconnect too: the later drains add Joins.)
    assert.ok(on.length >= 2 && on[0] !== on[1] && !on[0].alive, `${kind}: again on another connection`);
  }
  // A Leave or Unsubscribe so refused counts as done: the server lets the room go with the connection.
  // (Each on a live connection: one given up while the client reconnects writes nothing, as nothing is held.)
  await until('connected again', () => ann.status === 'connected');
  server.drainOnFirst.add('Leave');
  await ann.leave('lobby');
  await until('connected again', () => ann.status === 'connected');
  server.drainOnFirst.add('Unsubscribe');
  await ann.unsubscribe('ticks');
  assert.equal(server.drainOnFirst.size, 0, 'each was refused');
});

test('a publisher whose claim lost its connection before the answer claims on the next one', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  server.dropOnFirst = new Set(['Publish']);
  const publisher = await ann.publisher('prices');
  assert.equal(server.dropOnFirst.size, 0, 'the first claim went out on a connection that was lost');
  const on = server.requests.filter((r) => 'Publish' in r.req.body).map((r) => r.conn);
  assert.ok(on.length === 2 && on[0] !== on[1] && !on[0].alive, 'claimed again on another connection');
  assert.equal(publisher.send('tick'), 1n, 'the publisher holds the claim of the new connection');
  await until('the tick reached the server', () => server.datagrams.length === 1);
  assert.equal(server.datagrams[0].conn, on[1], 'on the connection that holds the claim');
});

test('a shared claim whose connection was lost, unpublished meanwhile, is not claimed again on the next one', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const held = await ann.publisher('c');
  server.heldClaims = []; // the second publisher's claim waits for its reply (never sent)
  const sharing = ann.publisher('c');
  await until('the second claim written', () => server.heldClaims.length === 1);
  const unpublished = held.unpublish(); // in its turn, behind the second claim
  server.heldClaims = null;
  server.dropAll(); // the second claim fails as closed; the unpublish runs (nothing to write on no session)
  await unpublished;
  const second = await sharing;
  assert.equal(second.ended?.reason, 'unpublished', 'ended as it would have without the reconnect');
  await until('connected again', () => ann.status === 'connected');
  await sleep(20);
  assert.deepEqual(server.requestsOf('Publish', server.live.at(-1)), [], 'no claim on the new connection');
});

test('a join whose connection was lost, then left while the client reconnects, is not sent again', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  server.dropOnFirst = new Set(['Join']);
  server.down = true; // the reconnect waits until the test lets it through
  const joining = ann.join('c', { onEvent: () => {} });
  await until('reconnecting', () => ann.status === 'reconnecting');
  await ann.leave('c');
  server.down = false;
  await assert.rejects(joining, (err) => err.closed);
  await until('connected again', () => ann.status === 'connected');
  await sleep(20);
  assert.equal(server.requestsOf('Join').length, 1, 'only the Join of the lost connection');
  assert.equal(server.rooms.get('c')?.members.size ?? 0, 0, 'the server does not hold the room');
});

test('at max_rooms, a join right after a leave that was not awaited is not refused TooManyRooms', async (t) => {
  const server = new FakeServer();
  server.limits = { ...server.limits, max_rooms: 2 };
  const ann = await connect(t, server, { name: 'ann' });
  const a = await ann.join('a', { onEvent: () => {} });
  await ann.join('b', { onEvent: () => {} });
  const left = [ann.leave('b'), a.leave()]; // neither awaited before the joins
  const joined = await Promise.all([ann.join('c', { onEvent: () => {} }), ann.join('d', { onEvent: () => {} })]);
  await Promise.all(left);
  assert.deepEqual(joined.map((room) => room.name), ['c', 'd']);
  const conn = server.connections[0];
  const held = [...server.rooms.entries()].filter(([, room]) => room.members.has(conn)).map(([name]) => name);
  assert.deepEqual(held.sort(), ['c', 'd']);
});

test('the same Kicked pushed again and again while a rejoin runs makes one rejoin more, not one each', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const lobby = await joinCollecting(ann, 'lobby');
  const conn = server.connections[0];
  server.refusedJoins = 5;
  server.refuseJoinsWith = ErrorCode.Unavailable; // refused for now: the rejoin tries again
  const kick = server.fallBehind(conn, 'lobby');
  for (let i = 0; i < 1000; i++) conn.send(kick); // each in reads of its own
  await until('rejoined', () => server.rooms.get('lobby').members.has(conn));
  await sleep(200);
  const joins = server.requestsOf('Join', conn).length - 1; // (the first join's)
  // Six for the rejoin (five refused), and one after it for the kicks that came meanwhile (AlreadyJoined).
  assert.ok(joins >= 6 && joins <= 8, `${joins} Joins for 1,000 kicks`);
  assert.ok(lobby.events.every((e) => e.type !== 'kicked'), 'the room did not end');
  await ann.post('lobby', 'after');
  await until('the rejoined room delivers', () => lobby.messages().some((m) => m.text === 'after'));
});

test('a room stream read of a million empty frames ends the session as a protocol violation, and the room resumes', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const lobby = await joinCollecting(ann, 'lobby');
  const conn = server.connections[0];
  // Each zero byte is a frame of no body (never a RoomFrame): one read brings 500,000 of them (the fake splits the
  // write in two). Spread into one call's arguments, they overflowed it, and the error left the room silent.
  server.rooms.get('lobby').members.get(conn).writeBytes(new Uint8Array(1_000_000));
  await until('the session is lost and a new one made', () => server.connections.length === 2);
  await until('the room is joined again', () => server.requestsOf('Join', server.connections[1]).length === 1);
  const bob = await connect(t, server, { name: 'bob' });
  await bob.post('lobby', 'after');
  await until('the room delivers again', () => lobby.messages().some((m) => m.text === 'after'));
});

test('a leave refused for its rate goes again, and a join of the room waits for it', async (t) => {
  // Before, leave() rejected with the room already forgotten, the server kept the membership (presence listed the
  // member) until the connection ended, and the next join of the room was refused AlreadyJoined.
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  await ann.join('lobby', { onEvent: () => {} });
  server.refusedLeaves = 2;
  const leaving = ann.leave('lobby');
  const again = ann.join('lobby', { onEvent: () => {} }); // written only once the leave is answered
  await leaving;
  assert.equal(server.leaves, 3, 'refused twice, then taken');
  await again;
  const room = server.rooms.get('lobby');
  assert.equal(room.members.size, 1, 'one membership: the join after the leave');
});

test('a leave (unsubscribe) of a name never held, while reconnecting, rejects NotJoined at once', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann', connectTimeoutMs: 3000 });
  server.down = true;
  server.dropAll();
  await until('reconnecting', () => ann.status === 'reconnecting');
  for (const release of [() => ann.leave('never'), () => ann.unsubscribe('never')]) {
    const started = Date.now();
    await assert.rejects(release(), (err) => err.code === ErrorCode.NotJoined && !err.closed);
    assert.ok(Date.now() - started < 1000, 'not a wait for the next session');
  }
});

test('a leave sharing one under way when the client closes leaves no unhandled rejection behind', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  server.heldReplies.set('Leave', []); // never answered
  const first = ann.leave('x');
  await until('the Leave was sent', () => server.requestsOf('Leave').length === 1);
  const unhandled = [];
  const note = (err) => unhandled.push(err);
  process.on('unhandledRejection', note);
  t.after(() => process.off('unhandledRejection', note));
  ann.close();
  const second = ann.leave('x'); // shares the first's outcome
  await Promise.allSettled([first, second]);
  await sleep(50);
  assert.deepEqual(unhandled, []);
});

test('a join (subscribe) left (unsubscribed) before its answer rejects as closed: no handle of it', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const kinds = [
    ['Join', 'Leave', () => ann.join('r', { onEvent: () => {} }), () => ann.leave('r')],
    ['Subscribe', 'Unsubscribe', () => ann.subscribe('x'), () => ann.unsubscribe('x')],
  ];
  for (const [take, release, taken, let_] of kinds) {
    server.heldReplies.set(take, []);
    const joined = taken();
    await until(`the ${take} was sent`, () => server.requestsOf(take).length === 1);
    await let_();
    server.heldReplies.get(take).forEach((send) => send());
    await assert.rejects(joined, (err) => err.closed && err.code === ErrorCode.NoError, take);
    assert.deepEqual(server.requestsOf(release).length, 1);
  }
});

test('a leave (unsubscribe) by name gives up a join (subscribe) waiting for an earlier one: it ends out', async (t) => {
  // Before, the second leave found no room (the join had none listed yet), shared the first's outcome, and the
  // join went on once the Leave was answered: the application's last call was the leave, and it ended in the room.
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const kinds = [
    ['Leave', 'Join', (n) => ann.join(n, { onEvent: () => {} }), (n) => ann.leave(n)],
    ['Unsubscribe', 'Subscribe', (n) => ann.subscribe(n), (n) => ann.unsubscribe(n)],
  ];
  for (const [release, take, taken, let_] of kinds) {
    await taken('x');
    server.heldReplies.set(release, []);
    const first = let_('x');
    await until(`the ${release} was sent`, () => server.requestsOf(release).length === 1);
    const again = taken('x'); // waits for the first's answer
    const second = let_('x'); // the application's last word
    server.heldReplies.get(release).forEach((send) => send());
    server.heldReplies.delete(release);
    await Promise.all([first, second]);
    await assert.rejects(again, (err) => err.closed && err.code === ErrorCode.NoError, `${take}: given up`);
    await sleep(20);
    assert.equal(server.requestsOf(take).length, 1, `no second ${take}`);
    assert.equal(server.requestsOf(release).length, 1, `one ${release}`);
  }
  const conn = server.connections[0];
  assert.equal(server.rooms.get('x').members.has(conn), false, 'out of the room');
  assert.equal(conn.channels.has('x'), false, 'not subscribed');
  await ann.join('x', { onEvent: () => {} }); // later, neither is refused AlreadyJoined
  await ann.subscribe('x');
});

test('a join whose room is kicked in the read of its answer rejects with the kick\'s code, not as left', async (t) => {
  // Before, the kick ended the room before join() took its answer, and the join rejected "closed: left" (NoError):
  // a retry loop took the permission refusal for a leave of its own.
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const events = [];
  server.heldReplies.set('Join', []);
  const joined = ann.join('lobby', { onEvent: (e) => events.push(e) });
  await until('the Join was sent', () => server.requestsOf('Join').length === 1);
  const [conn] = server.connections;
  // The answer and the kick in one chunk (one read).
  const chunks = [];
  const push = conn.control.push;
  conn.control.push = (bytes) => chunks.push(bytes);
  server.heldReplies.get('Join').forEach((send) => send());
  conn.send({ Kicked: { room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'banned' } });
  conn.control.push = push;
  push(Uint8Array.from(chunks.flatMap((bytes) => [...bytes])));
  const banned = { code: ErrorCode.PermissionDenied, reason: 'banned' };
  await assert.rejects(joined, (err) => !err.closed && err.code === banned.code && err.message === banned.reason);
  assert.deepEqual(events.at(-1), { type: 'kicked', room: 'lobby', ...banned });
});
