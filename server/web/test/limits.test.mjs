// What the browser client believes of the limits a server's Welcome announces.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode, MAX_FRAME_CEILING, QuiverEncodeError, encodeVarint } from '../quiver/index.js';
import { FakeServer, connect, until } from './fakes.mjs';

const name = 'a Welcome\'s max_frame is believed up to MAX_FRAME_CEILING only: a larger frame is refused, not sent';
test(name, { timeout: 10_000 }, async (t) => {
  const server = new FakeServer();
  server.limits = { ...server.limits, max_frame: 0xffff_ffff }; // a hostile or broken server
  const client = await connect(t, server);
  assert.equal(client.welcome.limits.max_frame, 0xffff_ffff, 'announced as is');
  const posted = server.requestsOf('Post').length;
  const huge = new Uint8Array(MAX_FRAME_CEILING + 1);
  await assert.rejects(client.post('r', huge), (err) => {
    assert.ok(err instanceof QuiverEncodeError, `${err}`);
    assert.match(err.message, new RegExp(`above the frame limit of ${MAX_FRAME_CEILING}\\b`));
    return true;
  });
  await new Promise((resolve) => setTimeout(resolve, 50)); // what was written would have arrived meanwhile
  assert.equal(server.requestsOf('Post').length, posted, 'nothing of it reached the server');
  // Within the ceiling, it goes.
  const seq = await client.post('r', new Uint8Array(1024));
  assert.equal(typeof seq, 'bigint');
  client.close();
});

test('a Welcome in another protocol version than the Hello asked for is refused, for good', { timeout: 10_000 }, async (t) => {
  const server = new FakeServer(); // answers in PROTOCOL_VERSION
  await assert.rejects(connect(t, server, { protocolVersion: 4 }), (err) => {
    assert.equal(err.code, ErrorCode.ProtocolViolation, `${err}`);
    assert.match(err.message, /speaks protocol version 5, this client's Hello asked for 4/);
    assert.equal(err.refused, true, 'trying again cannot help');
    return true;
  });
});

const unfinished = 'room streams left inside large frames are bounded together: past 64 MiB the session ends as a protocol violation';
test(unfinished, { timeout: 20_000 }, async (t) => {
  const server = new FakeServer();
  const frame = 4 * 1024 * 1024; // the bound is then 64 MiB (four frames would be 16)
  server.limits = { ...server.limits, max_frame: frame };
  const client = await connect(t, server);
  const conn = server.connections.at(-1);
  const prefix = encodeVarint(BigInt(frame - 16));
  const part = new Uint8Array(7 * 512 * 1024); // 3.5 MiB of each frame, never the rest
  const streams = [];
  for (let i = 0; i < 18; i++) {
    const stream = conn.openRoomStream();
    stream.writeBytes(prefix);
    stream.writeBytes(part);
    streams.push(stream);
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(conn.closedBy, undefined, '63 MiB of 18 streams: within the bound');
  // Streams that end give their bytes back: ten reset, ten more opened, still within it.
  streams.splice(0, 10).forEach((stream) => stream.reset(3));
  for (let i = 0; i < 10; i++) {
    const stream = conn.openRoomStream();
    stream.writeBytes(prefix);
    stream.writeBytes(part);
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(conn.closedBy, undefined, 'the reset streams\' bytes were given back');
  const last = conn.openRoomStream();
  last.writeBytes(prefix);
  last.writeBytes(part);
  await until('the session is closed', () => conn.closedBy);
  assert.equal(conn.closedBy.closeCode, ErrorCode.ProtocolViolation);
  assert.match(conn.closedBy.reason, /unfinished frames/);
  client.close();
});
