// close() while the client reconnects: the attempt under way is given up at once (no token fetched, no Hello, the
// connection being opened closed; with several URLs, no next one tried), and nothing connects afterwards. And a
// close by the server before Welcome (or before the first connect's clock Pings are done) reaches the application
// with its code; a first connect that times out ends Internal, not as a close of the application's own. A client
// that ends ends the rooms, subscriptions and publishers it holds with its reason.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, QuiverClient, QuiverError } from '../quiver/index.js';
import { FakeServer, URL_, connect, joinCollecting, sleep, until } from './fakes.mjs';

test('close() while reconnecting gives the connect under way up: no token, no Hello, no further dial', async (t) => {
  const server = new FakeServer();
  let tokens = 0;
  const ann = await connect(t, server, { name: 'ann', token: () => { tokens += 1; return 'tok'; } });
  assert.equal(tokens, 1);
  server.webTransportDelayMs = 100; // the next connection is ready only after the client closed
  server.dropAll();
  await until('reconnecting', () => ann.status === 'reconnecting' && server.connections.length === 2);
  ann.close();
  await sleep(300);
  assert.equal(tokens, 1, 'no token fetched for a connect given up');
  assert.equal(server.connections.length, 2, 'nothing dialed after the close');
  assert.equal(server.requestsOf('Hello').length, 1, 'no Hello on the connection opened after the close');
  assert.equal(server.connections[1].alive, false, 'the connection being opened was closed');
  assert.equal(ann.status, 'closed');
});

test('a server that closes the WebTransport session before Welcome: its code is the error\'s, though the stream error carries none', async () => {
  const server = new FakeServer();
  // The control stream ends (an error without a code, as Chromium's); the session's `closed` says why.
  server.closeAtHello = { closeCode: ErrorCode.TooManyConnections, reason: 'too many connections from your address' };
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: 'webtransport', webTransport: server.transport }),
    (err) => err instanceof QuiverError && err.code === ErrorCode.TooManyConnections && /too many/.test(err.message),
  );
});

test('a server that finishes the control stream and then closes with a code: the client reports that code, not NoError', async (t) => {
  const server = new FakeServer();
  const client = await connect(t, server, { reconnect: false });
  // The fake finishes every stream before the session's `closed` settles, as a server's close after its FIN does.
  server.connections[0].close({ closeCode: ErrorCode.TokenExpired, reason: 'the access token expired' });
  await until('closed', () => client.status === 'closed');
  assert.equal(client.closeReason.code, ErrorCode.TokenExpired);
  assert.match(client.closeReason.reason, /token expired/);
});

test('a connect timeout of Infinity (never give up) connects, and one that is not a number is refused', async (t) => {
  const server = new FakeServer();
  server.webTransportDelayMs = 20; // a timer of Infinity fires at once (Node: after 1 ms): the Welcome comes later
  const client = await connect(t, server, { connectTimeoutMs: Infinity });
  assert.equal(client.status, 'connected');
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: server.transport, connectTimeoutMs: 'soon' }),
    (err) => err instanceof TypeError && /connectTimeoutMs/.test(err.message),
  );
});

test('a Welcome in another protocol version: the client closes with ProtocolViolation, not NoError', async () => {
  const server = new FakeServer();
  server.welcomeVersion = 99;
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: 'webtransport', webTransport: server.transport, reconnect: false }),
    (err) => err instanceof QuiverError && err.code === ErrorCode.ProtocolViolation,
  );
  await until('closed', () => server.connections[0]?.closedBy);
  assert.equal(server.connections[0].closedBy.closeCode, ErrorCode.ProtocolViolation);
});

test('a first connect that times out, or fails without a code, ends Internal, not NoError (close()\'s)', async () => {
  const server = new FakeServer();
  const ends = [];
  const onStatus = (status, why) => status === 'closed' && ends.push(why);
  // No Welcome within the connect timeout (WebTransport never ready): the close reason and the error say Internal.
  server.webTransportHangs = true;
  const options = { transport: server.transport, connectTimeoutMs: 50, onStatus };
  const err = await QuiverClient.connect(URL_, options).then(() => assert.fail('connected'), (caught) => caught);
  assert.equal(ends.length, 1);
  assert.equal(ends[0].code, ErrorCode.Internal, `${ends[0].code}: ${ends[0].reason}`);
  assert.match(ends[0].reason, /^cannot connect: no Welcome from .* within 50 ms$/);
  assert.ok(err instanceof QuiverError && err.code === ErrorCode.Internal, `${err.code}: ${err}`);
  assert.match(err.message, /no Welcome from .* within 50 ms/);
  // A connection refused (an error without a code of the server's): Internal too, as a reconnect's failed attempt.
  server.webTransportHangs = false;
  server.down = true;
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport, onStatus }), /connection refused/);
  assert.equal(ends.length, 2);
  assert.equal(ends[1].code, ErrorCode.Internal, `${ends[1].code}: ${ends[1].reason}`);
});

test('a first connect closed by the server with a code during its clock Pings ends with that code', async () => {
  // Before, the connect rejected with a plain Error and the client ended Internal, whatever the server had said.
  for (const [code, reason] of [[ErrorCode.GoingAway, 'shutting down'], [ErrorCode.TokenExpired, 'token expired']]) {
    const server = new FakeServer();
    server.ignorePings = true; // the connect waits in its clock Pings
    const ends = [];
    const onStatus = (status, why) => status === 'closed' && ends.push(why);
    const connecting = QuiverClient.connect(URL_, { transport: server.transport, onStatus });
    await until('a clock Ping', () => server.requestsOf('Ping').length === 1);
    server.connections[0].close({ closeCode: code, reason });
    const err = await connecting.then(() => assert.fail('connected'), (caught) => caught);
    assert.ok(err instanceof QuiverError && err.code === code, `${err.code}: ${err}`);
    assert.equal(err.message, reason);
    assert.deepEqual(ends, [{ code, reason: `cannot connect: ${reason}` }]);
  }
});

test('a GoAway or Error pushed before Welcome ends the connect with its code, not as a protocol violation',
  async () => {
  // Before, it was "expected Welcome, got GoAway": the client closed with ProtocolViolation, blaming the server.
  for (const push of [{ GoAway: { code: ErrorCode.GoingAway, reason: 'draining' } },
    { Error: { code: ErrorCode.Internal, message: 'draining' } }]) {
    const server = new FakeServer();
    const handle = server.handle.bind(server);
    server.handle = (conn, req) => {
      if (!('Hello' in req.body)) return handle(conn, req);
      conn.send(push);
      setTimeout(() => conn.close({ closeCode: ErrorCode.GoingAway, reason: 'draining' }), 20);
    };
    const connecting = QuiverClient.connect(URL_, { transport: server.transport, reconnect: false });
    const err = await connecting.then(() => assert.fail('connected'), (caught) => caught);
    const code = (push.GoAway ?? push.Error).code;
    assert.ok(err instanceof QuiverError && err.code === code, `${err.code}: ${err}`);
    assert.equal(err.message, 'draining');
    assert.notEqual(server.connections[0].closedBy?.closeCode, ErrorCode.ProtocolViolation);
  }
});

test('a client that ends ends its rooms, subscriptions and publishers with its reason; later calls reject closed',
  async (t) => {
  // Before, they stayed as if live (`ended` null, no `onEnd`, no last event) and a join of a room joined before the
  // close was refused AlreadyJoined.
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const held = async (client) => {
    const ends = [];
    const room = await joinCollecting(client, 'lobby');
    const sub = await client.subscribe('prices', { onEnd: (why) => ends.push(['sub', why]) });
    const pub = await client.publisher('quotes', { onEnd: (why) => ends.push(['pub', why]) });
    const kicked = () => room.events.filter((e) => e.type === 'kicked');
    return { ends, room, sub, pub, kicked };
  };
  const closed = await held(ann);
  const refused = await held(bob);
  ann.close();
  const why = { code: ErrorCode.NoError, reason: 'closed by the application' };
  assert.deepEqual(closed.kicked(), [{ type: 'kicked', room: 'lobby', ...why }], 'the room\'s last event');
  assert.deepEqual([closed.sub.ended, closed.pub.ended], [why, why]);
  assert.deepEqual(closed.ends, [['sub', why], ['pub', why]]);
  assert.equal(closed.pub.send('tick'), null);
  const calls = [() => ann.join('lobby'), () => ann.subscribe('prices'), () => ann.publisher('quotes')];
  for (const call of calls) await assert.rejects(call(), (err) => err.closed && err.code === ErrorCode.NoError);
  await Promise.all([closed.room.handle.leave(), closed.sub.unsubscribe(), closed.pub.unpublish()]); // nothing to do
  assert.equal(closed.ends.length, 2, 'each ended once');
  // A reconnect refused for good ends the client, and what it holds, with the refusal.
  server.refuse = { code: ErrorCode.PermissionDenied, message: 'no longer allowed' };
  server.dropAll();
  await until('bob ended', () => bob.status === 'closed');
  const { code, reason } = bob.closeReason;
  assert.equal(code, ErrorCode.PermissionDenied);
  assert.deepEqual(refused.kicked(), [{ type: 'kicked', room: 'lobby', code, reason }]);
  assert.deepEqual([refused.sub.ended, refused.pub.ended], [{ code, reason }, { code, reason }]);
  assert.deepEqual(refused.ends.map(([what, end]) => [what, end.code]), [['sub', code], ['pub', code]]);
});
