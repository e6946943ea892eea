// The WebSocket fallback's message codec (quiver/wire/ws.js) against quiver-proto's `ws_*` vectors and hostile
// bytes. Its WebTransport-shaped adapter: ws-adapter.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  ErrorCode, QuiverDecodeError, QuiverEncodeError, WS_MAX_REASON, WsKind, decodeWsMessage, encodeTick, encodeWsMessage,
  tickChannel, websocketUrlOf,
} from '../quiver/index.js';

const vectorsFile = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const wsVectors = vectorsFile.vectors.filter((v) => v.kind === 'WsMessage');

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

/** A message's JS value from its JSON form: ids BigInt, codes numbers, bytes Uint8Array. */
function revive(json) {
  const bytes = (list) => Uint8Array.from(list, Number);
  const [name, value] = Object.entries(json)[0];
  switch (name) {
    case 'Control':
    case 'Datagram':
      return { [name]: bytes(value) };
    case 'Stream':
      return { Stream: { id: BigInt(value.id), bytes: bytes(value.bytes) } };
    case 'Finish':
      return { Finish: { id: BigInt(value.id) } };
    case 'Reset':
    case 'Stop':
      return { [name]: { id: BigInt(value.id), code: Number(value.code) } };
    default:
      return { Close: { code: Number(value.code), reason: value.reason } };
  }
}

/** Asserts `fn` throws a QuiverDecodeError with the ProtocolViolation code (of `kind`, when given), nothing else. */
function assertViolation(fn, kind, what) {
  let thrown = null;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  assert.ok(thrown instanceof QuiverDecodeError, `${what}: expected a QuiverDecodeError, got ${thrown}`);
  assert.equal(thrown.code, ErrorCode.ProtocolViolation, `${what}: ${thrown.message}`);
  if (kind) assert.equal(thrown.kind, kind, `${what}: ${thrown.message}`);
}

// ───────────────────────────────────────────────── the codec ─────────────────────────────────────────────────

test('ws: every WsMessage vector decodes to its value and encodes back to its bytes', () => {
  assert.ok(wsVectors.length >= 9, `only ${wsVectors.length} WsMessage vectors`);
  const kinds = new Set();
  for (const { name, hex, value } of wsVectors) {
    const decoded = decodeWsMessage(fromHex(hex));
    kinds.add(Object.keys(decoded)[0]);
    assert.deepEqual(normalize(decoded), value, name);
    assert.equal(toHex(encodeWsMessage(decoded)), hex, `${name}: re-encoded from the decoded value`);
    assert.equal(toHex(encodeWsMessage(revive(value))), hex, `${name}: encoded from the JSON value`);
    // As an ArrayBuffer (what a WebSocket with binaryType 'arraybuffer' hands over).
    assert.deepEqual(normalize(decodeWsMessage(fromHex(hex).buffer)), value, `${name} from an ArrayBuffer`);
  }
  assert.deepEqual([...kinds].sort(), Object.keys(WsKind).sort(), 'every kind has a vector');
});

test('ws: decoded values have the documented JS types; payloads are views of the message', () => {
  const reset = decodeWsMessage(fromHex(wsVectors.find((v) => v.name === 'ws_reset_slow_consumer').hex));
  assert.deepEqual(reset, { Reset: { id: 16384n, code: ErrorCode.SlowConsumer } });
  const close = decodeWsMessage(fromHex(wsVectors.find((v) => v.name === 'ws_close_non_ascii').hex));
  assert.equal(close.Close.code, 1000);
  assert.equal(close.Close.reason, 'Zoë 名前 🚀');
  const bytes = fromHex('010103000102');
  const stream = decodeWsMessage(bytes).Stream;
  assert.equal(stream.bytes.buffer, bytes.buffer);
  assert.deepEqual(stream.bytes, Uint8Array.of(3, 0, 1, 2));
  // A byte order mark in a reason is kept (as Rust's from_utf8 keeps it).
  assert.equal(decodeWsMessage(Uint8Array.of(5, 0, 0xef, 0xbb, 0xbf, 0x61)).Close.reason, '\u{feff}a');
});

test('ws: hostile bytes throw a ProtocolViolation QuiverDecodeError, never anything else', () => {
  assertViolation(() => decodeWsMessage(new Uint8Array(0)), 'malformed', 'empty');
  for (const kind of [7, 9, 0x80, 0xff]) assertViolation(() => decodeWsMessage(Uint8Array.of(kind)), 'malformed', `kind ${kind}`);
  assertViolation(() => decodeWsMessage(Uint8Array.of(1)), 'truncated', 'stream without an id');
  assertViolation(() => decodeWsMessage(Uint8Array.of(1, 0x40)), 'truncated', 'stream id cut short');
  assertViolation(() => decodeWsMessage(Uint8Array.of(2)), 'truncated', 'finish without an id');
  assertViolation(() => decodeWsMessage(Uint8Array.of(2, 0x40)), 'truncated', 'finish id cut short');
  assertViolation(() => decodeWsMessage(Uint8Array.of(3, 1)), 'truncated', 'reset without a code');
  assertViolation(() => decodeWsMessage(Uint8Array.of(3, 1, 0x80, 0)), 'truncated', 'reset code cut short');
  assertViolation(() => decodeWsMessage(Uint8Array.of(5)), 'truncated', 'close without a code');
  assertViolation(() => decodeWsMessage(Uint8Array.of(5, 0xc0, 0, 0)), 'truncated', 'close code cut short');
  assertViolation(() => decodeWsMessage(Uint8Array.of(2, 1, 0)), 'trailing-data', 'a byte after a finish');
  assertViolation(() => decodeWsMessage(Uint8Array.of(3, 1, 16, 0, 0)), 'trailing-data', 'bytes after a reset');
  // Codes are u32: 2^32 - 1 is the largest, 2^32 is out of range (as a reset's and as a close's code).
  const u32max = [0xc0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
  const over = [0xc0, 0, 0, 1, 0, 0, 0, 0];
  assert.equal(decodeWsMessage(Uint8Array.of(3, 1, ...u32max)).Reset.code, 0xffff_ffff);
  assert.equal(decodeWsMessage(Uint8Array.of(5, ...u32max)).Close.code, 0xffff_ffff);
  assertViolation(() => decodeWsMessage(Uint8Array.of(3, 1, ...over)), 'malformed', 'reset code 2^32');
  assertViolation(() => decodeWsMessage(Uint8Array.of(5, ...over)), 'malformed', 'close code 2^32');
  // Reasons: not UTF-8 (a lone continuation byte, a surrogate, an overlong '/', cut inside a character), too long.
  for (const bad of [[0xff], [0x80], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xe5, 0x90]]) {
    assertViolation(() => decodeWsMessage(Uint8Array.of(5, 0, ...bad)), 'malformed', `reason ${bad}`);
  }
  const reason = (n) => Uint8Array.of(5, 0, ...new Uint8Array(n).fill(0x78));
  assert.equal(decodeWsMessage(reason(WS_MAX_REASON)).Close.reason.length, WS_MAX_REASON);
  assertViolation(() => decodeWsMessage(reason(WS_MAX_REASON + 1)), 'malformed', 'reason of 513 bytes');
  assertViolation(() => decodeWsMessage('text'), 'malformed', 'not bytes');
  // Random bytes and mutated vectors: a message or a QuiverDecodeError, nothing else.
  let seed = 11;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const check = (bytes, what) => {
    try {
      const message = decodeWsMessage(bytes);
      assert.equal(toHex(encodeWsMessage(message)).length > 0, true, what);
    } catch (err) {
      assert.ok(err instanceof QuiverDecodeError, `${what}: ${err}`);
    }
  };
  for (let i = 0; i < 3000; i++) {
    const bytes = Uint8Array.from({ length: Math.floor(random() * 24) }, () => Math.floor(random() * 256));
    if (bytes.length > 0) bytes[0] %= 7; // mostly known kinds
    check(bytes, `random #${i}`);
  }
  for (const { name, hex } of wsVectors) {
    const bytes = fromHex(hex);
    for (let cut = 0; cut < bytes.length; cut++) check(bytes.subarray(0, cut), `${name} cut at ${cut}`);
    for (let i = 0; i < 50; i++) {
      const mutated = bytes.slice();
      mutated[Math.floor(random() * mutated.length)] ^= 1 << Math.floor(random() * 8);
      check(mutated, `${name} mutated`);
    }
  }
});

test('ws: encoding refuses values that are not messages; a long reason is cut on a character boundary', () => {
  const bad = [
    null, 'Control', {}, { Nope: new Uint8Array() }, { Control: [1, 2] }, { Datagram: 'x' },
    { Control: new Uint8Array(), Datagram: new Uint8Array() }, { Stream: { id: -1n, bytes: new Uint8Array() } },
    { Stream: { id: 1n, bytes: null } }, { Finish: {} }, { Finish: { id: 1n << 62n } },
    { Reset: { id: 1n, code: 2 ** 32 } }, { Reset: { id: 1n, code: -1 } }, { Reset: { id: 1n, code: 1.5 } },
    { Close: { code: 0 } }, { Close: { code: '1', reason: '' } },
  ];
  for (const value of bad) {
    const shown = JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
    assert.throws(() => encodeWsMessage(value), QuiverEncodeError, shown);
  }
  assert.equal(toHex(encodeWsMessage({ Finish: { id: 64 } })), '024040', 'a safe integer id');
  assert.equal(toHex(encodeWsMessage({ Reset: { id: 1n, code: 16n } })), '030110', 'a BigInt code');
  const long = encodeWsMessage({ Close: { code: ErrorCode.Internal, reason: 'é'.repeat(300) } });
  const { reason } = decodeWsMessage(long).Close;
  assert.equal(reason, 'é'.repeat(256), '512 bytes: 256 two-byte characters');
  const odd = decodeWsMessage(encodeWsMessage({ Close: { code: 0, reason: `x${'é'.repeat(300)}` } })).Close.reason;
  assert.equal(odd, `x${'é'.repeat(255)}`, 'cut before a character that would not fit whole');
});

test('ws: tick channels (channel 0 is not a tick) and WebSocket URLs', () => {
  assert.equal(tickChannel(encodeTick({ channel_id: 5, seq: 1, sent_time_us: 2, payload: new Uint8Array() })), 5n);
  assert.equal(tickChannel(Uint8Array.of(0x40, 0x40, 1, 2)), 64n);
  assert.equal(tickChannel(Uint8Array.of(0, 1, 2)), null, 'a copy datagram');
  assert.equal(tickChannel(Uint8Array.of(0)), null, 'the probe');
  assert.equal(tickChannel(Uint8Array.of(0x40)), null, 'no whole varint');
  assert.equal(websocketUrlOf('https://127.0.0.1:4433/quiver'), 'wss://127.0.0.1:4433/quiver');
  assert.equal(websocketUrlOf('https://example.com/rt?x=1#top'), 'wss://example.com/rt?x=1');
  assert.equal(websocketUrlOf('https://[::1]:4433/quiver'), 'wss://[::1]:4433/quiver');
});
