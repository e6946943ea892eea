// The WebSocket fallback's WebTransport-shaped adapter (quiver/client/websocket.js) against a scripted in-memory
// WebSocket: the control stream both ways, room streams opened, fed, finished and reset by id (and stopped when their
// reader cancels them), datagrams both ways (latest wins while the reader is behind), the close (ours, the server's, a
// lost connection), refusals of bytes that are not the protocol, and latest-wins ticks while the socket is backed up.
// The codec: ws.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ErrorCode, MAX_INBOUND_STREAMS, WS_MAX_CHUNK, WS_MAX_MESSAGE, WebSocketTransport, WsKind, decodeWsMessage, encodeTick,
  encodeWsMessage, tickChannel,
} from '../quiver/index.js';
import { INBOUND_DATAGRAM_BYTES } from '../quiver/client/websocket.js';

const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** An in-memory WebSocket, driven by the test: `accept()`, `receive(message)`, `drop()`; `sent` what the client sent. */
class ScriptedSocket extends EventTarget {
  static last = null;

  constructor(url, protocols) {
    super();
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = '';
    this.binaryType = 'blob';
    this.bufferedAmount = 0;
    this.raw = []; // every message the client sent, as bytes
    this.closedWith = null;
    ScriptedSocket.last = this;
  }

  /** The messages the client sent, decoded. */
  get sent() {
    return this.raw.map((bytes) => decodeWsMessage(bytes));
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('InvalidStateError: the socket is not open');
    this.raw.push(new Uint8Array(data)); // a copy
  }

  close(code, reason) {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.closedWith = { code, reason };
    setTimeout(() => this.#closeEvent(code ?? 1005));
  }

  // ── the server's side ──

  accept(protocol = 'quiver') {
    this.readyState = 1;
    this.protocol = protocol;
    this.dispatchEvent(new Event('open'));
  }

  /** Delivers a message: a WsMessage value, raw bytes, or a string (a text message). */
  receive(message) {
    let data = message;
    if (!(message instanceof Uint8Array) && typeof message !== 'string') data = encodeWsMessage(message);
    if (data instanceof Uint8Array) data = data.slice().buffer;
    this.dispatchEvent(Object.assign(new Event('message'), { data }));
  }

  /** The TCP connection is gone: a close event without a Quiver close (after an error event, as browsers do). */
  drop(code = 1006) {
    this.readyState = 2;
    this.#closeEvent(code);
  }

  /** Only an error event, no close after it (not what browsers do; the adapter copes). */
  error() {
    this.dispatchEvent(new Event('error'));
  }

  #closeEvent(code) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    if (code === 1006) this.dispatchEvent(new Event('error'));
    this.dispatchEvent(Object.assign(new Event('close'), { code, reason: '', wasClean: code !== 1006 }));
  }
}

/** An open adapter over a ScriptedSocket. */
async function open(options = {}) {
  const wt = new WebSocketTransport('wss://quiver.test:4433/quiver', { webSocket: ScriptedSocket, ...options });
  const socket = ScriptedSocket.last;
  socket.accept();
  await wt.ready;
  return { wt, socket };
}

/** Every chunk of `readable` until it ends: `{chunks, error}`. */
async function readAll(readable) {
  const reader = readable.getReader();
  const chunks = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { chunks, error: null };
      chunks.push(value);
    }
  } catch (error) {
    return { chunks, error };
  }
}

test('adapter: opens the socket with the subprotocol, binary as ArrayBuffers; ready once open', async () => {
  const wt = new WebSocketTransport('wss://quiver.test:4433/quiver', { webSocket: ScriptedSocket });
  const socket = ScriptedSocket.last;
  assert.equal(socket.url, 'wss://quiver.test:4433/quiver');
  assert.equal(socket.protocols, 'quiver');
  assert.equal(socket.binaryType, 'arraybuffer');
  assert.equal(wt.datagrams.maxDatagramSize, 1200);
  assert.equal(wt.copies, false);
  let ready = false;
  wt.ready.then(() => { ready = true; });
  await sleep(1);
  assert.equal(ready, false);
  socket.accept();
  await wt.ready;
  assert.throws(() => new WebSocketTransport('wss://x/quiver', { webSocket: undefined }), /no WebSocket/);
});

test('adapter: the control stream both ways; long writes are cut into 16 KiB chunks; one control stream', async () => {
  const { wt, socket } = await open();
  const { readable, writable } = await wt.createBidirectionalStream();
  await assert.rejects(wt.createBidirectionalStream(), /one control stream/);
  const writer = writable.getWriter();
  await writer.write(Uint8Array.of(1, 2, 3));
  assert.deepEqual(socket.sent, [{ Control: Uint8Array.of(1, 2, 3) }]);
  const long = Uint8Array.from({ length: 40_000 }, (_, i) => i % 251);
  await writer.write(long);
  const chunks = socket.raw.slice(1);
  assert.deepEqual(chunks.map((c) => c.length), [WS_MAX_CHUNK + 1, WS_MAX_CHUNK + 1, 40_000 - 2 * WS_MAX_CHUNK + 1]);
  assert.ok(chunks.every((c) => c[0] === WsKind.Control && c.length <= WS_MAX_MESSAGE));
  assert.deepEqual(Uint8Array.from(chunks.flatMap((c) => [...c.subarray(1)])), long);

  socket.receive({ Control: Uint8Array.of(9, 8) });
  socket.receive({ Control: new Uint8Array(0) }); // nothing: no empty chunk for the reader
  socket.receive({ Control: Uint8Array.of(7) });
  const reader = readable.getReader();
  assert.deepEqual((await reader.read()).value, Uint8Array.of(9, 8));
  assert.deepEqual((await reader.read()).value, Uint8Array.of(7));
});

test('adapter: room streams open at a new id, carry their bytes, finish, and reset with the code', async () => {
  const { wt, socket } = await open();
  const streams = wt.incomingUnidirectionalStreams.getReader();
  socket.receive({ Stream: { id: 1n, bytes: Uint8Array.of(1, 2) } });
  socket.receive({ Stream: { id: 2n, bytes: Uint8Array.of(9) } });
  socket.receive({ Stream: { id: 1n, bytes: Uint8Array.of(3) } });
  socket.receive({ Finish: { id: 1n } });
  socket.receive({ Stream: { id: 1n, bytes: Uint8Array.of(4) } }); // after its end: dropped, opens nothing
  socket.receive({ Reset: { id: 2n, code: ErrorCode.SlowConsumer } });
  socket.receive({ Finish: { id: 4n } }); // a new id that ends at once: an empty stream
  socket.receive({ Stream: { id: 3n, bytes: Uint8Array.of(5) } }); // below the last id, never seen: dropped
  socket.receive({ Stream: { id: 64n, bytes: new Uint8Array(0) } }); // opened, no bytes yet
  socket.receive({ Stream: { id: 64n, bytes: Uint8Array.of(6) } });

  const one = await readAll((await streams.read()).value);
  assert.deepEqual(one, { chunks: [Uint8Array.of(1, 2), Uint8Array.of(3)], error: null });
  const two = await readAll((await streams.read()).value);
  assert.deepEqual(two.chunks, [], 'bytes not read yet go with the reset (as with QUIC\'s RESET_STREAM)');
  assert.equal(two.error.streamErrorCode, ErrorCode.SlowConsumer, 'the code, as WebTransportError has it');
  assert.equal(two.error.source, 'stream');
  assert.deepEqual(await readAll((await streams.read()).value), { chunks: [], error: null });
  const last = (await streams.read()).value.getReader();
  assert.deepEqual((await last.read()).value, Uint8Array.of(6));

  // The connection ends: an open stream fails, and so does waiting for the next one.
  socket.drop();
  await assert.rejects(last.read(), (err) => err.source === 'session' && err.closeCode === null);
  await assert.rejects(streams.read());
});

test('adapter: a room stream its reader cancels is stopped once, by id; not after it or the socket ended', async () => {
  const { wt, socket } = await open();
  const streams = wt.incomingUnidirectionalStreams.getReader();
  const next = async () => (await streams.read()).value;
  socket.receive({ Stream: { id: 1n, bytes: Uint8Array.of(1) } });
  socket.receive({ Stream: { id: 2n, bytes: Uint8Array.of(2) } });
  const one = (await next()).getReader();
  const two = await next();
  assert.deepEqual((await one.read()).value, Uint8Array.of(1));
  // Cancelled without a reason, as the client cancels a room stream: NoError, as a browser's STOP_SENDING.
  await one.cancel();
  await one.cancel(); // (the stream ended with the first: nothing more to tell)
  assert.deepEqual(socket.sent, [{ Stop: { id: 1n, code: ErrorCode.NoError } }]);
  // What the server sent before it read the stop, and its answer (a reset with the code), open nothing again.
  socket.receive({ Stream: { id: 1n, bytes: Uint8Array.of(3) } });
  socket.receive({ Reset: { id: 1n, code: ErrorCode.NoError } });
  // A reason with a stream error code (as a WebTransportError has) is the stop's code.
  await two.cancel(Object.assign(new Error('too slow'), { streamErrorCode: ErrorCode.SlowConsumer }));
  assert.deepEqual(socket.sent.slice(1), [{ Stop: { id: 2n, code: ErrorCode.SlowConsumer } }]);

  // A stream the server finished, its bytes not all read: it ended, no stop.
  socket.receive({ Stream: { id: 3n, bytes: Uint8Array.of(4) } });
  socket.receive({ Finish: { id: 3n } });
  await (await next()).cancel();
  // A socket closed under the adapter (its close event not in yet): nothing sent, nothing thrown.
  socket.receive({ Stream: { id: 4n, bytes: Uint8Array.of(5) } });
  const four = await next();
  socket.readyState = 3;
  await four.cancel();
  assert.equal(socket.raw.length, 2, 'a stop each, for streams 1 and 2 only');
  // The connection ended: its streams failed with it, and cancelling one sends nothing.
  socket.readyState = 1;
  socket.receive({ Stream: { id: 5n, bytes: Uint8Array.of(6) } });
  const five = await next();
  socket.drop();
  await assert.rejects(five.cancel(), (err) => err.source === 'session');
  assert.equal(socket.raw.length, 2);
});

test('adapter: a server with more than MAX_INBOUND_STREAMS room streams open at once is closed', async () => {
  const { wt, socket } = await open();
  const one = Uint8Array.of(1);
  for (let id = 1n; id <= BigInt(MAX_INBOUND_STREAMS); id++) socket.receive({ Stream: { id, bytes: one } });
  socket.receive({ Finish: { id: 1n } }); // an ended stream frees its place
  socket.receive({ Stream: { id: BigInt(MAX_INBOUND_STREAMS) + 1n, bytes: one } });
  assert.equal(socket.sent.length, 0, 'at the limit: nothing said');
  socket.receive({ Stream: { id: BigInt(MAX_INBOUND_STREAMS) + 2n, bytes: one } });
  const closed = await wt.closed;
  assert.equal(closed.closeCode, ErrorCode.ProtocolViolation);
  assert.match(closed.reason, /more than 4096 room streams/);
  assert.equal(socket.sent[0].Close.code, ErrorCode.ProtocolViolation, 'the server is told');
});

test('adapter: datagrams both ways; too large ones are dropped as WebTransport drops them', async () => {
  const { wt, socket } = await open();
  const tick = encodeTick({ channel_id: 3, seq: 1, sent_time_us: 2, payload: Uint8Array.of(7) });
  socket.receive({ Datagram: tick });
  const reader = wt.datagrams.readable.getReader();
  assert.deepEqual((await reader.read()).value, tick);
  const writer = wt.datagrams.writable.getWriter();
  await writer.write(tick);
  await writer.write(new Uint8Array(1201));
  await writer.write(new Uint8Array(1200));
  assert.deepEqual(socket.sent.map((m) => m.Datagram.length), [tick.length, 1200]);
  assert.deepEqual(socket.sent[0], { Datagram: tick });
});

test('adapter: datagrams nobody reads yet keep the newest: past INBOUND_DATAGRAM_BYTES the oldest go', async () => {
  const { wt, socket } = await open();
  const datagram = (n) => Uint8Array.of(n >> 8, n & 0xff, ...new Uint8Array(998));
  for (let n = 1; n <= 200; n++) socket.receive({ Datagram: datagram(n) });
  const reader = wt.datagrams.readable.getReader();
  const read = [];
  while (read.at(-1) !== 200) {
    const { value } = await reader.read();
    read.push((value[0] << 8) | value[1]);
  }
  assert.ok(read[0] > 1, `the oldest were dropped: ${read}`);
  assert.ok(read.every((n, i) => i === 0 || n === read[i - 1] + 1), `the newest kept, in order: ${read}`);
  assert.ok(read.length * 1032 <= INBOUND_DATAGRAM_BYTES, `${read.length} waited`);
  // Read as they come once the reader keeps up; the connection's end ends the reads.
  socket.receive({ Datagram: datagram(201) });
  assert.equal((await reader.read()).value[1], 201);
  const next = reader.read();
  socket.receive({ Datagram: datagram(202) });
  assert.equal((await next).value[1], 202);
  const ending = reader.read();
  wt.close({ closeCode: 0, reason: 'done' });
  await assert.rejects(ending);
});

test('adapter: a datagram from the server over 1,200 bytes closes with DatagramTooLarge, as the Rust lane does', async () => {
  const { wt, socket } = await open();
  socket.receive({ Datagram: new Uint8Array(1200) }); // at the bound: taken
  socket.receive({ Datagram: new Uint8Array(1201) });
  const closed = await wt.closed;
  assert.equal(closed.closeCode, ErrorCode.DatagramTooLarge);
  assert.match(closed.reason, /1201 bytes \(at most 1200\)/);
});

test('adapter: backed up, at most one tick per channel waits, replaced in place; the newest go on drain', async () => {
  const { wt, socket } = await open();
  const writer = wt.datagrams.writable.getWriter();
  const tick = (channel, seq) => encodeTick({ channel_id: channel, seq, sent_time_us: 0, payload: Uint8Array.of(seq) });
  const copy = (n) => Uint8Array.of(0, 1, n, 1, 0); // channel 0: not a tick, never conflated
  await writer.write(tick(1, 1));
  assert.equal(socket.raw.length, 1, 'not backed up: at once');
  socket.bufferedAmount = 100_000;
  for (const datagram of [tick(1, 2), tick(2, 1), tick(1, 3), copy(1), copy(2), tick(2, 2), tick(1, 4)]) {
    await writer.write(datagram);
  }
  await sleep(20);
  assert.equal(socket.raw.length, 1, 'nothing goes while the socket is backed up');
  socket.bufferedAmount = 0;
  await writer.write(tick(3, 1)); // behind the waiting ones, not ahead of them; all at once (no timer to wait for)
  assert.deepEqual(wt.waiting, { datagrams: 0, bytes: 0, polling: false });
  const sent = socket.sent.slice(1).map((m) => toHex(m.Datagram));
  assert.deepEqual(sent, [tick(1, 4), tick(2, 2), copy(1), copy(2), tick(3, 1)].map(toHex));
  // Then straight to the socket again.
  await writer.write(tick(1, 5));
  assert.equal(socket.raw.length, 7);
  // A flood of distinct channels is bounded (4 KiB waiting, the oldest dropped); a close discards what waits.
  socket.bufferedAmount = 100_000;
  for (let channel = 10; channel < 30; channel++) {
    await writer.write(encodeTick({ channel_id: channel, seq: 1, sent_time_us: 0, payload: new Uint8Array(500) }));
  }
  socket.bufferedAmount = 0;
  await sleep(20);
  const flood = socket.sent.slice(7).map((m) => Number(tickChannel(m.Datagram)));
  assert.ok(flood.length <= 8 && flood.length >= 7, `${flood.length} waited`);
  assert.equal(flood.at(-1), 29, 'the newest kept');
  socket.bufferedAmount = 100_000;
  await writer.write(tick(1, 6));
  await writer.write(tick(2, 6));
  assert.deepEqual(wt.waiting, { datagrams: 2, bytes: 2 * tick(1, 6).length, polling: true });
  wt.close({ closeCode: 0, reason: '' });
  assert.deepEqual(wt.waiting, { datagrams: 0, bytes: 0, polling: false }, 'nothing waits, no timer left');
  assert.ok(socket.sent.every((m) => !m.Datagram || toHex(m.Datagram) !== toHex(tick(1, 6))));
});

test('adapter: a Close from the server is the connection\'s code and reason; streams fail after closed settles', async () => {
  const { wt, socket } = await open();
  const { readable } = await wt.createBidirectionalStream();
  const order = [];
  wt.closed.then((info) => order.push(['closed', info]));
  const control = readAll(readable).then((r) => order.push(['control', r.error?.source, r.error?.closeCode]));
  socket.receive({ Close: { code: ErrorCode.GoingAway, reason: 'server shutting down' } });
  await control;
  assert.deepEqual(order, [
    ['closed', { closeCode: ErrorCode.GoingAway, reason: 'server shutting down' }],
    ['control', 'session', ErrorCode.GoingAway], // the code on the streams' error too (before Welcome: the client's)
  ]);
  assert.equal(socket.closedWith.code, 1000, 'the socket is closed from this end too');
  await assert.rejects(wt.createBidirectionalStream(), /connection closed \(1\): server shutting down/);
  wt.close({ closeCode: 0, reason: 'late' }); // nothing more
  assert.equal(socket.raw.length, 0);
});

test('adapter: close() sends the code and reason, then closes the socket; closed resolves with them', async () => {
  const { wt, socket } = await open();
  const { writable } = await wt.createBidirectionalStream();
  wt.close({ closeCode: ErrorCode.BadRequest, reason: 'bye' });
  assert.deepEqual(socket.sent, [{ Close: { code: ErrorCode.BadRequest, reason: 'bye' } }]);
  assert.equal(socket.closedWith.code, 1000);
  assert.deepEqual(await wt.closed, { closeCode: ErrorCode.BadRequest, reason: 'bye' });
  await assert.rejects(writable.getWriter().write(Uint8Array.of(1)), /connection closed/);
  await assert.rejects(wt.datagrams.writable.getWriter().write(Uint8Array.of(1)));
});

test('adapter: a socket that closes without a Close is a lost connection; one that never opens fails ready', async () => {
  const { wt, socket } = await open();
  socket.drop(1006);
  await assert.rejects(wt.closed, /closed without a Quiver close \(code 1006\)/);

  // An error event comes first (as in browsers): the message has the close event's code all the same.
  const failed = new WebSocketTransport('wss://quiver.test:4433/quiver', { webSocket: ScriptedSocket });
  ScriptedSocket.last.drop(1006);
  await assert.rejects(failed.ready, /^Error: the WebSocket to wss:\/\/quiver.test:4433\/quiver did not open \(code 1006\)$/);
  await assert.rejects(failed.closed, /did not open \(code 1006\)/);
  // An error without a close event after it: the connection ends by the next task all the same.
  const { wt: erred, socket: erring } = await open();
  erring.error();
  await assert.rejects(erred.closed, /the WebSocket closed without a Quiver close \(a WebSocket error\)/);
  assert.ok(erring.closedWith, 'the socket is closed from this end');

  const abandoned = new WebSocketTransport('wss://quiver.test:4433/quiver', { webSocket: ScriptedSocket });
  abandoned.close({ closeCode: 0, reason: 'timed out' });
  await assert.rejects(abandoned.ready, /closed before the WebSocket opened/);
  assert.deepEqual(await abandoned.closed, { closeCode: 0, reason: 'timed out' });
  assert.equal(ScriptedSocket.last.closedWith.code, 1000);
});

test('adapter: what is not the protocol closes the connection with ProtocolViolation or FrameTooLarge', async () => {
  const cases = [
    ['text', 'a text message', ErrorCode.ProtocolViolation, /text WebSocket message/],
    ['unknown kind', Uint8Array.of(9), ErrorCode.ProtocolViolation, /unknown WebSocket message kind 9/],
    ['empty', new Uint8Array(0), ErrorCode.ProtocolViolation, /empty/],
    ['trailing', Uint8Array.of(2, 1, 0), ErrorCode.ProtocolViolation, /left over/],
    ['bad reason', Uint8Array.of(5, 0, 0xff), ErrorCode.ProtocolViolation, /not UTF-8/],
    ['too large', new Uint8Array(WS_MAX_MESSAGE + 1), ErrorCode.FrameTooLarge, /at most/],
  ];
  for (const [what, message, code, reason] of cases) {
    const { wt, socket } = await open();
    socket.receive(message);
    const closed = await wt.closed;
    assert.equal(closed.closeCode, code, what);
    assert.match(closed.reason, reason, what);
    const [told] = socket.sent;
    assert.equal(told.Close.code, code, `${what}: the server is told`);
  }
  // A server that chose another subprotocol.
  const wt = new WebSocketTransport('wss://quiver.test:4433/quiver', { webSocket: ScriptedSocket });
  ScriptedSocket.last.accept('chat');
  await assert.rejects(wt.ready);
  assert.equal((await wt.closed).closeCode, ErrorCode.ProtocolViolation);
});
