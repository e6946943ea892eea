// close() while the client reconnects: the attempt under way is given up at once (no token fetched, no Hello, the
// connection being opened closed; with several URLs, no next one tried), and nothing connects afterwards. And a
// close by the server before Welcome reaches the application with its code; a first connect that times out ends
// Internal, not as a close of the application's own.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, QuiverClient, QuiverError } from '../quiver/index.js';
import { FakeServer, URL_, connect, sleep, until } from './fakes.mjs';

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
