// The wire format of the browser client (quiver/wire/) against quiver-proto: the byte-exact vectors it generates
// (proto/tests/vectors.rs → vectors.json), its stored malformed inputs (proto/tests/malformed/), framing split at
// every byte, and decoders that never throw anything but QuiverDecodeError.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';

import * as quiver from '../quiver/index.js';

import {
  DEFAULT_MAX_FRAME, FrameReader, MAX_FRAME_CEILING, PROTOCOL_VERSION, QuiverDecodeError, QuiverEncodeError, VARINT_MAX,
  decodeCopy, decodeFrame, decodeTick, decodeVarint, decodeWsMessage, encodeFrame, encodePostCopy, encodeTick,
  encodeVarint, errorCodeName, isCopy, isProbe, varintLength, wire,
} from '../quiver/index.js';

const vectorsFile = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const vectors = vectorsFile.vectors;
const frameTypes = { Request: wire.Request, ServerMsg: wire.ServerMsg, RoomFrame: wire.RoomFrame };
/** The vectors of stream frames (the others are tick datagrams and WebSocket messages: ws.test.mjs). */
const frameVectors = vectors.filter((v) => v.kind in frameTypes);

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/** The vectors' JSON form: numbers and BigInts as decimal strings, byte strings as arrays of strings. */
function normalize(value) {
  if (typeof value === 'bigint' || typeof value === 'number') return String(value);
  if (value instanceof Uint8Array) return Array.from(value, String);
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v)]));
  }
  return value;
}

/** The JS value of a vector's JSON form, guided by a decoded value's types (BigInt, Number, Uint8Array). */
function revive(json, like) {
  if (typeof like === 'bigint') return BigInt(json);
  if (typeof like === 'number') return Number(json);
  if (like instanceof Uint8Array) return Uint8Array.from(json, Number);
  if (Array.isArray(like)) return json.map((item, i) => revive(item, like[i]));
  if (like !== null && typeof like === 'object') {
    return Object.fromEntries(Object.entries(json).map(([k, v]) => [k, revive(v, like[k])]));
  }
  return json;
}

/** Asserts `fn` throws a QuiverDecodeError (of `kind`, when given) and nothing else. */
function assertDecodeError(fn, kind, what) {
  let thrown = null;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  assert.ok(thrown instanceof QuiverDecodeError, `${what}: expected a QuiverDecodeError, got ${thrown}`);
  if (kind) assert.equal(thrown.kind, kind, `${what}: ${thrown.message}`);
}

/** Deterministic pseudo-random numbers (mulberry32). */
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('the wire bounds the browser client copies are quiver-proto\'s', () => {
  const constants = vectorsFile.constants;
  assert.ok(Object.keys(constants).length >= 8, 'vectors.json lists the bounds');
  for (const [name, value] of Object.entries(constants)) {
    assert.equal(quiver[name], Number(value), `${name} in quiver/index.js`);
  }
});

test('the vectors were made for this protocol version and frame limit', () => {
  assert.equal(Number(vectorsFile.protocol_version), PROTOCOL_VERSION);
  assert.equal(Number(vectorsFile.max_frame), DEFAULT_MAX_FRAME);
  assert.ok(vectors.length >= 90, `only ${vectors.length} vectors`);
  for (const kind of ['Request', 'ServerMsg', 'RoomFrame', 'Tick', 'RoomCopy', 'WsMessage']) {
    assert.ok(vectors.some((v) => v.kind === kind), `no ${kind} vector`);
  }
});

test('every vector decodes to its value and encodes back to its bytes', () => {
  for (const { name, kind, hex, value } of vectors) {
    const bytes = fromHex(hex);
    if (kind === 'Tick') {
      const tick = decodeTick(bytes);
      assert.deepEqual(normalize(tick), value, name);
      assert.equal(toHex(encodeTick(revive(value, tick))), hex, `${name}: re-encoded`);
      continue;
    }
    if (kind === 'RoomCopy') {
      // Made by the Rust server only; decoded here as the client does (streams.js, roomCopy).
      const { slot, first, frames } = decodeCopy(bytes, DEFAULT_MAX_FRAME);
      const decoded = { slot, first, frames: frames.map((body) => wire.RoomFrame.decode(body)) };
      assert.deepEqual(normalize(decoded), value, name);
      continue;
    }
    if (kind === 'WsMessage') continue; // ws.test.mjs
    const type = frameTypes[kind];
    assert.ok(type, `${name}: unknown kind ${kind}`);
    const decoded = decodeFrame(type, bytes);
    assert.deepEqual(normalize(decoded), value, name);
    assert.equal(toHex(encodeFrame(type, decoded)), hex, `${name}: re-encoded from the decoded value`);
    assert.equal(toHex(encodeFrame(type, revive(value, decoded))), hex, `${name}: encoded from the JSON value`);
  }
});

test('decoded values have the documented JS types', () => {
  const hello = decodeFrame(wire.Request, fromHex(vectors.find((v) => v.name === 'hello_web').hex));
  assert.deepEqual(hello, {
    req_id: 0n,
    body: { Hello: { version: PROTOCOL_VERSION, agent: 'quiver-web/0.1', name: null, token: null } },
  });
  const message = decodeFrame(wire.RoomFrame, fromHex(vectors.find((v) => v.name === 'message').hex));
  assert.equal(typeof message.Event.seq, 'bigint');
  assert.ok(message.Event.kind.Message.body instanceof Uint8Array);
  const err = decodeFrame(wire.ServerMsg, fromHex(vectors.find((v) => v.name === 'reply_err_unknown_max').hex));
  assert.equal(err.Reply.result.Err.code, 4294967295);
  assert.equal(errorCodeName(err.Reply.result.Err.code), 'Unknown(4294967295)');
  assert.equal(errorCodeName(16), 'SlowConsumer');
  // A byte order mark at the start of a string is kept (TextDecoder would strip it by default).
  const bom = decodeFrame(wire.Request, fromHex(vectors.find((v) => v.name === 'hello_version_max').hex));
  assert.equal(bom.body.Hello.agent, '\u{feff}a\u{0}b');
});

test('every stored malformed input of quiver-proto gives the same outcome here', () => {
  const dir = new URL('../../../proto/tests/malformed/', import.meta.url);
  const files = readdirSync(dir).filter((f) => f.endsWith('.hex'));
  assert.ok(files.length >= 10, `only ${files.length} malformed inputs`);
  const types = { request: wire.Request, server: wire.ServerMsg, room: wire.RoomFrame };
  for (const file of files) {
    const text = readFileSync(new URL(file, dir), 'utf8');
    const header = (key) => text.match(new RegExp(`^# ${key}: (.*)$`, 'm'))?.[1].trim();
    const bytes = fromHex(text.split('\n').filter((l) => !l.startsWith('#')).join('').replace(/\s/g, ''));
    let outcome;
    try {
      const bodies = new FrameReader(DEFAULT_MAX_FRAME).push(bytes);
      outcome = bodies.length === 0 ? 'partial' : (types[header('decode-as')].decode(bodies[0]), 'decoded');
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${file}: ${err}`);
      outcome = err.kind;
    }
    assert.equal(outcome, header('expect'), file);
  }
});

test('every truncation of every message body is a malformed QuiverDecodeError', () => {
  for (const { name, kind, hex } of frameVectors) {
    const type = frameTypes[kind];
    const frame = fromHex(hex);
    const body = frame.subarray(decodeVarint(frame).length);
    for (let cut = 0; cut < body.length; cut++) {
      assertDecodeError(() => type.decode(body.subarray(0, cut)), 'malformed', `${name} cut at ${cut}`);
    }
    // And a truncated frame is not a whole frame.
    assertDecodeError(() => decodeFrame(type, frame.subarray(0, frame.length - 1)), 'truncated', name);
  }
});

test('trailing bytes, bad tags, bad UTF-8, overlong varints and oversize lengths are refused', () => {
  const ping = wire.Request.encode({ req_id: 1n, body: { Ping: { client_time_us: 2n } } });
  assertDecodeError(() => wire.Request.decode(Uint8Array.of(...ping, 0)), 'trailing-data', 'trailing byte');
  const frame = encodeFrame(wire.Request, { req_id: 1n, body: { Ping: { client_time_us: 2n } } });
  assertDecodeError(() => decodeFrame(wire.Request, Uint8Array.of(...frame, 0)), 'trailing-data', 'bytes after the frame');
  // RequestBody has 10 variants; ServerMsg 4; RoomFrame 3; EventKind 3; Result 2; Reply 10. Each index one past the
  // last, with bytes enough after it that a body cut short cannot be why it is refused (the counts said 9, 2 and 9
  // before version 5's Unpublish, Copies and Unpublished: those decoded, or failed only for the missing body).
  const pad = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
  const unknown = (type, ...bytes) => assertDecodeError(() => type.decode(Uint8Array.of(...bytes)), 'malformed', bytes);
  assert.ok(wire.Request.decode(Uint8Array.of(1, 9, 1, 97)).body.Unpublish, 'RequestBody variant 9 is Unpublish');
  unknown(wire.Request, 1, 10, ...pad);
  unknown(wire.ServerMsg, 4, ...pad);
  assert.deepEqual(wire.RoomFrame.decode(Uint8Array.of(2, 1)), { Copies: { slot: 1n } }, 'RoomFrame variant 2');
  unknown(wire.RoomFrame, 3, ...pad);
  assertDecodeError(() => wire.RoomFrame.decode(Uint8Array.of(1, 0, 0, 3)), 'malformed', 'EventKind variant 3');
  assertDecodeError(() => wire.ServerMsg.decode(Uint8Array.of(0, 0, 2)), 'malformed', 'Result variant 2');
  unknown(wire.ServerMsg, 0, 0, 0, 10, ...pad);
  // Variant index as a u32 varint longer than 5 bytes / with a 5th byte above 0x0f.
  assertDecodeError(() => wire.RoomFrame.decode(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x10)), 'malformed', 'u32 overflow');
  // A u32 field (Publish.max_age_ms): 0xffffffff is the largest; one more bit is an overflow, not 2^35 - 1.
  const publish = (...maxAge) => wire.Request.decode(Uint8Array.of(1, 6, 1, 97, 1, ...maxAge));
  assert.equal(publish(0xff, 0xff, 0xff, 0xff, 0x0f).body.Publish.max_age_ms, 0xffff_ffff);
  assertDecodeError(() => publish(0xff, 0xff, 0xff, 0xff, 0x1f), 'malformed', 'u32 field overflow');
  assertDecodeError(() => publish(0xff, 0xff, 0xff, 0xff, 0x8f, 0), 'malformed', 'u32 field of 6 bytes');
  // A u64 with 10 bytes whose last is above 1, and one with 11 bytes.
  const u64Overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
  assertDecodeError(() => wire.Request.decode(Uint8Array.of(...u64Overflow, 7, 0)), 'malformed', 'u64 overflow');
  const elevenBytes = Uint8Array.of(...u64Overflow.slice(0, 9), 0x81, 0, 7, 0);
  assertDecodeError(() => wire.Request.decode(elevenBytes), 'malformed', 'u64 11 bytes');
  // The largest u64 decodes; a non-minimal encoding is accepted as postcard accepts it.
  const max = wire.Request.decode(Uint8Array.of(...u64Overflow.slice(0, 9), 0x01, 7, 0));
  assert.equal(max.req_id, (1n << 64n) - 1n);
  assert.equal(wire.Request.decode(Uint8Array.of(0x85, 0x00, 7, 0)).req_id, 5n);
  // Bool and Option tags other than 0 and 1.
  assertDecodeError(() => wire.ServerMsg.decode(Uint8Array.of(0, 1, 0, 3, 1, 97, 1, 2)), 'malformed', 'bool 2');
  assertDecodeError(() => wire.Request.decode(Uint8Array.of(1, 6, 1, 97, 2)), 'malformed', 'Option tag 2');
  // Strings: invalid UTF-8 (a lone continuation byte, an encoded surrogate, an overlong '/').
  for (const bad of [[0x80], [0xed, 0xa0, 0x80], [0xc0, 0xaf]]) {
    assertDecodeError(() => wire.Request.decode(Uint8Array.of(1, 2, bad.length, ...bad)), 'malformed', `UTF-8 ${bad}`);
  }
  // A length far beyond the message (and beyond 2^53), for a string, bytes and a Vec.
  const huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
  assertDecodeError(() => wire.Request.decode(Uint8Array.of(1, 2, ...huge)), 'malformed', 'string length 2^64-1');
  assertDecodeError(() => wire.Request.decode(Uint8Array.of(1, 3, 1, 97, 0, ...huge)), 'malformed', 'bytes length');
  assertDecodeError(() => wire.ServerMsg.decode(Uint8Array.of(0, 1, 0, 1, 0, 0, 0, 0, 0, ...huge)), 'malformed', 'Vec length');
  // The frame limit is checked on the prefix alone.
  assertDecodeError(() => new FrameReader(100).push(encodeVarint(101)), 'frame-too-large', 'prefix 101 > 100');
  assertDecodeError(() => decodeFrame(wire.Request, fromHex('c000000000010001')), 'frame-too-large', '8-byte prefix');
  assertDecodeError(() => decodeFrame(wire.Request, Uint8Array.of(0)), 'malformed', 'empty frame');
  assertDecodeError(() => wire.Request.decode('not bytes'), 'malformed', 'not a Uint8Array');
});

test('random bytes and mutated vectors never throw anything but QuiverDecodeError', () => {
  const random = prng(7);
  const types = Object.values(wire);
  const check = (bytes, what) => {
    for (const type of types) {
      try {
        type.decode(bytes);
      } catch (err) {
        assert.ok(err instanceof QuiverDecodeError, `${what} as ${type.name}: ${err}`);
      }
    }
    try {
      decodeTick(bytes);
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${what} as a tick: ${err}`);
    }
    try {
      decodeWsMessage(bytes);
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${what} as a WebSocket message: ${err}`);
    }
    try {
      decodeCopy(bytes, 300);
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${what} as a copy datagram: ${err}`);
    }
    try {
      new FrameReader(300).push(bytes);
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${what} as frames: ${err}`);
    }
  };
  for (let i = 0; i < 3000; i++) {
    check(Uint8Array.from({ length: Math.floor(random() * 40) }, () => Math.floor(random() * 256)), `random #${i}`);
  }
  for (const { name, hex } of vectors) {
    const bytes = fromHex(hex);
    for (let i = 0; i < 20; i++) {
      const mutated = bytes.slice(0, 200);
      mutated[Math.floor(random() * mutated.length)] ^= 1 << Math.floor(random() * 8);
      check(mutated, `${name} mutated`);
    }
  }
});

test('encoding refuses values that are not of the type', () => {
  const bad = [
    { req_id: 1, body: { Ping: { client_time_us: -1n } } },
    { req_id: 1n, body: { Ping: { client_time_us: 1n << 64n } } },
    { req_id: 1.5, body: { Ping: { client_time_us: 0n } } },
    { req_id: 1n, body: { Publish: { channel: 'c', max_age_ms: 2 ** 32 } } },
    { req_id: 1n, body: { Publish: { channel: 'c', max_age_ms: 1n } } },
    { req_id: 1n, body: { Leave: { room: 7 } } },
    { req_id: 1n, body: { Leave: { room: 'lone \ud800 surrogate' } } },
    { req_id: 1n, body: { Post: { room: 'r', client_msg_id: 0n, body: [1, 2] } } },
    { req_id: 1n, body: { Nope: {} } },
    { req_id: 1n, body: { Leave: { room: 'a' }, Ping: { client_time_us: 0n } } },
    { req_id: 1n, body: 'Leave' },
    { req_id: 1n, body: null },
    null,
  ];
  for (const value of bad) {
    const shown = JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
    assert.throws(() => wire.Request.encode(value), QuiverEncodeError, shown);
  }
  const post = { req_id: 1n, body: { Post: { room: 'r', client_msg_id: 1n, body: new Uint8Array(100) } } };
  assert.throws(() => encodeFrame(wire.Request, post, 50), /above the frame limit of 50/);
  // Numbers are accepted for u64 fields when they are safe integers; undefined is None.
  const lenient = wire.Request.encode({ req_id: 3, body: { History: { room: 'r', limit: 1 } } });
  assert.deepEqual(wire.Request.decode(lenient), { req_id: 3n, body: { History: { room: 'r', since: null, limit: 1 } } });
});

test('QUIC varints: RFC 9000 examples, every boundary, and short input', () => {
  const examples = [
    ['c2197c5eff14e88c', 151288809941952652n],
    ['9d7f3e7d', 494878333n],
    ['7bbd', 15293n],
    ['25', 37n],
  ];
  for (const [hex, value] of examples) {
    assert.deepEqual(decodeVarint(fromHex(hex)), { value, length: hex.length / 2 });
    assert.equal(toHex(encodeVarint(value)), hex);
  }
  const boundaries = [
    [0n, 1], [63n, 1], [64n, 2], [16383n, 2], [16384n, 4], [(1n << 30n) - 1n, 4], [1n << 30n, 8], [VARINT_MAX, 8],
  ];
  for (const [value, length] of boundaries) {
    assert.equal(varintLength(value), length, String(value));
    const bytes = encodeVarint(value);
    assert.equal(bytes.length, length);
    assert.deepEqual(decodeVarint(bytes), { value, length });
    assert.equal(decodeVarint(bytes.subarray(0, length - 1)), null);
  }
  assert.equal(decodeVarint(new Uint8Array(0)), null);
  assert.deepEqual(decodeVarint(Uint8Array.of(0, 0x40, 0x25), 1), { value: 37n, length: 2 });
  assert.throws(() => encodeVarint(VARINT_MAX + 1n), QuiverEncodeError);
  assert.throws(() => encodeVarint(-1), QuiverEncodeError);
});

test('FrameReader: every vector fed in chunks split at every byte', () => {
  const requests = vectors.filter((v) => v.kind === 'Request' && v.hex.length < 2000); // the 16 KiB one below
  const stream = Uint8Array.from(requests.flatMap((v) => [...fromHex(v.hex)]));
  const expected = requests.map((v) => v.value);
  const decodeAll = (chunks) => {
    const reader = new FrameReader();
    const bodies = chunks.flatMap((chunk) => reader.push(chunk));
    reader.finish();
    return bodies.map((body) => normalize(wire.Request.decode(body)));
  };
  // One byte at a time.
  assert.deepEqual(decodeAll(Array.from(stream, (b) => Uint8Array.of(b))), expected);
  // Two chunks, split at every byte of every frame.
  for (let cut = 0; cut <= stream.length; cut++) {
    assert.deepEqual(decodeAll([stream.subarray(0, cut), stream.subarray(cut)]), expected, `split at ${cut}`);
  }
  // Each vector alone: every split into two and three chunks.
  for (const { name, kind, hex, value } of frameVectors) {
    const frame = fromHex(hex);
    const step = Math.max(1, Math.floor(frame.length / 40)); // every byte of small frames, a sample of the 16 KiB one
    for (let a = 0; a <= frame.length; a += step) {
      for (let b = a; b <= frame.length; b += step * 7) {
        const reader = new FrameReader();
        const bodies = [frame.subarray(0, a), frame.subarray(a, b), frame.subarray(b)].flatMap((c) => reader.push(c));
        assert.equal(bodies.length, 1, `${name} split at ${a}, ${b}`);
        assert.deepEqual(normalize(frameTypes[kind].decode(bodies[0])), value, name);
        assert.equal(reader.pending, 0);
      }
    }
  }
});

test('FrameReader: partial input waits, an ended stream inside a frame is truncated, errors stick', () => {
  const open = { room: 'lobby', epoch: 1n, recovered: true, replay_from: 1n, last_seq: 0n, members: [], req_id: 1n };
  const frame = encodeFrame(wire.RoomFrame, { Open: open });
  const reader = new FrameReader();
  assert.deepEqual(reader.push(frame.subarray(0, 3)), []);
  assert.equal(reader.pending, 3);
  assertDecodeError(() => reader.finish(), 'truncated', 'finish inside a frame');
  assert.equal(reader.push(frame.subarray(3)).length, 1);
  reader.finish();
  // An empty frame is a body of 0 bytes (which no message type accepts).
  assert.deepEqual(new FrameReader().push(Uint8Array.of(0, 0)).map((b) => b.length), [0, 0]);
  // The limit can change between frames (the client raises it to Welcome's max_frame).
  const small = new FrameReader(4);
  assertDecodeError(() => small.push(frame), 'frame-too-large', 'limit 4');
  assertDecodeError(() => small.push(Uint8Array.of(0)), 'frame-too-large', 'the error sticks');
  // A 4-byte prefix announcing 1 GiB is refused before anything of the body is buffered.
  const huge = new FrameReader();
  assertDecodeError(() => huge.push(fromHex('bfffffff')), 'frame-too-large', '1 GiB');
});

test('FrameReader: a length prefix alone does not allocate the frame; the buffer grows as its bytes arrive', () => {
  const reader = new FrameReader(MAX_FRAME_CEILING);
  const length = 10 * 1024 * 1024;
  assert.deepEqual(reader.push(encodeVarint(length)), []);
  assert.ok(reader.body.length <= 4096, `allocated ${reader.body.length} bytes for a prefix`);
  const body = new Uint8Array(length).map((_, i) => i % 251);
  let bodies = [];
  for (let at = 0; at < length; at += 100000) {
    bodies = bodies.concat(reader.push(body.subarray(at, at + 100000)));
    if (at + 100000 < length) assert.ok(reader.body.length <= 2 * (at + 100000) + 4096, 'grows with what arrived');
  }
  assert.equal(bodies.length, 1);
  assert.deepEqual(bodies[0], body);
  assert.equal(reader.pending, 0);
});

test('ticks: header fields, truncation names the field, payload copied out', () => {
  assertDecodeError(() => decodeTick(new Uint8Array(0)), 'truncated', 'empty');
  assert.throws(() => decodeTick(Uint8Array.of(1, 2)), /sent_time_us/);
  assert.throws(() => decodeTick(Uint8Array.of(1, 0x80)), /seq/);
  const datagram = encodeTick({ channel_id: 5, seq: 1n << 40n, sent_time_us: 0n, payload: Uint8Array.of(9) });
  const tick = decodeTick(datagram);
  assert.deepEqual(tick, { channel_id: 5n, seq: 1n << 40n, sent_time_us: 0n, payload: Uint8Array.of(9) });
  datagram[datagram.length - 1] = 0;
  assert.equal(tick.payload[0], 9, 'the payload does not alias the datagram');
  const tooLarge = { channel_id: 0, seq: VARINT_MAX + 1n, sent_time_us: 0, payload: new Uint8Array() };
  assert.throws(() => encodeTick(tooLarge), QuiverEncodeError);
});

test('copy datagrams: a post copy round-trips; malformed copies are QuiverDecodeErrors, never anything else', () => {
  const frame = encodeFrame(wire.Request, { req_id: 3n, body: { Post: { room: 'r', client_msg_id: 9n, body: new Uint8Array(2) } } });
  const datagram = encodePostCopy(4n, [frame, frame]);
  assert.ok(isCopy(datagram) && !isProbe(datagram));
  const copy = decodeCopy(datagram, DEFAULT_MAX_FRAME);
  assert.equal(copy.kind, 'posts');
  assert.equal(copy.first, 4n);
  assert.deepEqual(copy.frames.map((f) => toHex(f)), [toHex(frame.slice(1)), toHex(frame.slice(1))]);
  assert.ok(!isCopy(Uint8Array.of(0)), 'the probe');
  assert.ok(!isCopy(Uint8Array.of(5, 0, 0)), 'a tick');
  for (const bad of [[5, 0, 0, 1], [0, 2, 1], [0, 0, 1], [0, 1, 1], [0, 1, 1, 3, 1], [0, 1, 1, 0x7f]]) {
    assert.throws(() => decodeCopy(Uint8Array.from(bad), 16), QuiverDecodeError, `${bad}`);
  }
});

test('decodeCopy has a default frame limit', () => {
  // Before, decodeCopy without a limit threw a TypeError (BigInt(undefined)), not a QuiverDecodeError.
  const copy = decodeCopy(Uint8Array.of(0, 0, 1, 0, 1, 7));
  assert.deepEqual([copy.kind, copy.frames.length], ['room', 1]);
});
