// Quiver for browsers: the wire format (postcard messages, QUIC-varint stream framing, tick datagrams) and a
// reconnecting client over the WebTransport API. One ES module, no build step, no dependencies.
//
// Layers, bottom up (each usable on its own; the first three do no IO and run in node as well):
//   1. wire       — postcard codecs for exactly the protocol's messages (`wire.Request`, `wire.ServerMsg`,
//                   `wire.RoomFrame`, ...), QUIC varints, `FrameReader`, tick datagram header.
//   2. state      — pure bookkeeping mirrored from the Rust client: `Backoff`, `RequestTable`, `RoomState` (resume
//                   position, dedupe), `PostQueue` (re-send in order), `LatestWins` (tick staleness and loss).
//   3. client     — `QuiverClient` ties them to a WebTransport session: Hello/Welcome, requests and replies, room
//                   streams, datagrams, reconnect with rejoin, re-post, resubscribe and re-claim.
//
// Values mirror serde_json's externally tagged form of the Rust types: structs are objects with the Rust field
// names, enum variants with data are `{Variant: data}`, unit variants are the string "Variant", `None` is null.
// u64 fields are BigInt, u32 fields are Number, byte strings are Uint8Array, error codes are Numbers.
//
// The source of truth is the Rust crate `quiver-proto` (docs/protocol.md is the map); the node tests check this
// module against the byte-exact vectors it generates (client/web/test/vectors.json).

// ───────────────────────────────────────────── constants and errors ─────────────────────────────────────────────

/** The protocol version this module speaks (`quiver_proto::PROTOCOL_VERSION`). */
export const PROTOCOL_VERSION = 2;

/** Sent in Hello as the client's software and version. */
export const AGENT = 'quiver-web/0.1';

/** Default `Limits::max_frame`: the largest frame accepted before the server's Welcome says otherwise. */
export const DEFAULT_MAX_FRAME = 65536;

/** Largest tick datagram header: three 8-byte QUIC varints. */
export const TICK_HEADER_MAX_LEN = 24;

/** Largest value of a QUIC varint: 2^62 - 1. */
export const VARINT_MAX = (1n << 62n) - 1n;

const U64_MAX = (1n << 64n) - 1n;

/** The shared list of error codes (docs/protocol.md), by name. A number not listed is an unknown (newer) code. */
export const ErrorCode = Object.freeze({
  NoError: 0,
  GoingAway: 1,
  ProtocolViolation: 2,
  FrameTooLarge: 3,
  UnsupportedVersion: 4,
  HelloRequired: 5,
  HandshakeTimeout: 6,
  BadRequest: 7,
  Unsupported: 8,
  PermissionDenied: 9,
  TooManyRooms: 10,
  BodyTooLarge: 11,
  TooManySubscriptions: 12,
  TooManyChannels: 13,
  NotJoined: 14,
  AlreadyJoined: 15,
  SlowConsumer: 16,
  DatagramTooLarge: 17,
  RateLimited: 18,
  Internal: 19,
  TokenRequired: 20,
  TokenMalformed: 21,
  TokenInvalid: 22,
  TokenExpired: 23,
  TokenNotYetValid: 24,
  TooManyConnections: 25,
});

const ERROR_NAMES = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));

/** The name of an error code, as Rust's `Debug` spells it ("SlowConsumer"), or "Unknown(n)". */
export function errorCodeName(code) {
  return ERROR_NAMES.get(code) ?? `Unknown(${code})`;
}

/**
 * Bytes that are not a valid frame, message or datagram. The only error the decoders throw.
 * `kind` is one of 'frame-too-large' (length prefix above the limit), 'malformed' (not a message of the expected
 * type: bad tag, bad UTF-8, ends early...), 'trailing-data' (bytes left after the message) or 'truncated' (a
 * frame or datagram header cut short).
 */
export class QuiverDecodeError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = 'QuiverDecodeError';
    this.kind = kind;
  }

  /** The error code to report to the peer that sent the bytes. */
  get code() {
    return this.kind === 'frame-too-large' ? ErrorCode.FrameTooLarge : ErrorCode.ProtocolViolation;
  }
}

/** A value that cannot be encoded as the expected type (wrong JS type, out of range, frame too large). */
export class QuiverEncodeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'QuiverEncodeError';
  }
}

/**
 * A failed request or a lost session: an error code from the shared list and a message for people.
 * `closed` is true when the connection went away (the request may not have been seen); `refused` is true when the
 * server refused the session itself (its answer to Hello).
 */
export class QuiverError extends Error {
  constructor(code, message, { closed = false, refused = false } = {}) {
    super(message);
    this.name = 'QuiverError';
    this.code = code;
    this.closed = closed;
    this.refused = refused;
  }

  /** The code's name ("NotJoined"). */
  get codeName() {
    return errorCodeName(this.code);
  }
}

// ───────────────────────────────────────────────── QUIC varints ─────────────────────────────────────────────────

function toBigInt(value, what) {
  if (typeof value === 'bigint') return value;
  if (Number.isSafeInteger(value)) return BigInt(value);
  throw new QuiverEncodeError(`${what}: expected a BigInt or a safe integer, got ${describe(value)}`);
}

/** Bytes a QUIC varint (RFC 9000 §16) of `value` takes: 1, 2, 4 or 8. */
export function varintLength(value) {
  const v = toBigInt(value, 'varint');
  if (v < 0n || v > VARINT_MAX) throw new QuiverEncodeError(`${v} does not fit a QUIC varint (max 2^62-1)`);
  return v < 0x40n ? 1 : v < 0x4000n ? 2 : v < 0x4000_0000n ? 4 : 8;
}

/** `value` (BigInt or safe integer, 0..2^62-1) as a QUIC varint. */
export function encodeVarint(value) {
  const length = varintLength(value);
  const v = BigInt(value);
  const out = new Uint8Array(length);
  const view = new DataView(out.buffer);
  if (length === 1) out[0] = Number(v);
  else if (length === 2) view.setUint16(0, 0x4000 | Number(v));
  else if (length === 4) view.setUint32(0, (0x8000_0000 | Number(v)) >>> 0);
  else view.setBigUint64(0, 0xc000_0000_0000_0000n | v);
  return out;
}

/**
 * Reads a QUIC varint at `offset`: `{value: BigInt, length}`, or null when `bytes` ends before the encoding its
 * first byte announces. (Like the Rust decoder, a longer-than-needed encoding is accepted.)
 */
export function decodeVarint(bytes, offset = 0) {
  if (offset >= bytes.length) return null;
  const first = bytes[offset];
  const length = 1 << (first >> 6);
  if (offset + length > bytes.length) return null;
  if (length === 8) {
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset, 8);
    return { value: view.getBigUint64(0) & VARINT_MAX, length };
  }
  let value = first & 0x3f;
  for (let i = 1; i < length; i++) value = value * 256 + bytes[offset + i];
  return { value: BigInt(value), length };
}

// ─────────────────────────────────────────────── postcard codec ─────────────────────────────────────────────────

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lossyUtf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });
const utf8Encoder = new TextEncoder();
const LONE_SURROGATE = /\p{Surrogate}/u;

function describe(value) {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`;
  if (Array.isArray(value)) return `array(${value.length})`;
  return value === null ? 'null' : typeof value === 'object' ? 'object' : String(value);
}

function malformed(message) {
  return new QuiverDecodeError('malformed', message);
}

/** Reads postcard values off a message body; every short read is a `malformed` QuiverDecodeError. */
class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  get remaining() {
    return this.bytes.length - this.pos;
  }

  byte() {
    if (this.pos >= this.bytes.length) throw malformed('the message ends early');
    return this.bytes[this.pos++];
  }

  take(length) {
    if (length > this.remaining) throw malformed(`${length} bytes announced, ${this.remaining} left in the message`);
    const out = this.bytes.slice(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }

  /** A LEB128 u32: at most 5 bytes, the 5th at most 0x0f (as postcard checks). */
  u32() {
    let value = 0;
    for (let i = 0; i < 5; i++) {
      const b = this.byte();
      if (i === 4 && b > 0x0f) throw malformed('u32 varint overflows');
      value += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) return value;
    }
    throw malformed('u32 varint overflows'); // unreachable: the 5th byte is checked above
  }

  /** A LEB128 u64 as a BigInt: at most 10 bytes, the 10th at most 0x01. */
  u64() {
    let low = 0; // exact in a Number for the first 7 bytes (49 bits)
    for (let i = 0; i < 7; i++) {
      const b = this.byte();
      low += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) return BigInt(low);
    }
    let value = BigInt(low);
    for (let i = 7; i < 10; i++) {
      const b = this.byte();
      if (i === 9 && b > 0x01) throw malformed('u64 varint overflows');
      value |= BigInt(b & 0x7f) << BigInt(7 * i);
      if (b < 0x80) return value;
    }
    throw malformed('u64 varint overflows'); // unreachable: the 10th byte is checked above
  }

  /** A length prefix (a usize, u64 on the Rust side) that must not run past the message. */
  length() {
    const length = this.u64();
    if (length > BigInt(this.remaining)) throw malformed(`length ${length} runs past the end of the message`);
    return Number(length);
  }
}

/** Appends postcard values to a growing buffer. */
class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
  }

  reserve(extra) {
    if (this.len + extra <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + extra));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  bytes(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** LEB128 of a Number in 0..2^53. */
  leb(value) {
    while (value >= 0x80) {
      this.byte((value % 0x80) | 0x80);
      value = Math.floor(value / 0x80);
    }
    this.byte(value);
  }

  /** LEB128 of a BigInt. */
  lebBig(value) {
    if (value <= BigInt(Number.MAX_SAFE_INTEGER)) return this.leb(Number(value));
    while (value >= 0x80n) {
      this.byte(Number(value & 0x7fn) | 0x80);
      value >>= 7n;
    }
    this.byte(Number(value));
  }

  finish() {
    return this.buf.slice(0, this.len);
  }
}

/**
 * A wire type: `encode(value) → Uint8Array` (a message body) and `decode(body) → value`, which takes exactly one
 * message (bytes left over are a 'trailing-data' QuiverDecodeError). `write`/`read` are the composable halves.
 */
class WireType {
  constructor(name, write, read) {
    this.name = name;
    this.write = write;
    this.read = read;
  }

  /** The postcard bytes of `value`; throws QuiverEncodeError when `value` is not a `name`. */
  encode(value) {
    const w = new Writer();
    this.write(w, value, this.name);
    return w.finish();
  }

  /** The value in `body`, which must hold exactly one `name`. Throws only QuiverDecodeError. */
  decode(body) {
    if (!(body instanceof Uint8Array)) throw malformed(`expected a Uint8Array, got ${describe(body)}`);
    const r = new Reader(body);
    let value;
    try {
      value = this.read(r);
    } catch (err) {
      if (err instanceof QuiverDecodeError) throw err;
      throw malformed(`cannot decode ${this.name}: ${err}`); // defensive: no other error is expected here
    }
    if (r.remaining > 0) {
      const what = `${r.remaining} trailing bytes after the ${this.name} in a ${body.length}-byte frame`;
      throw new QuiverDecodeError('trailing-data', what);
    }
    return value;
  }
}

function expected(path, what, value) {
  return new QuiverEncodeError(`${path}: expected ${what}, got ${describe(value)}`);
}

const u32 = new WireType(
  'u32',
  (w, v, path) => {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw expected(path, 'a u32 (a Number)', v);
    w.leb(v);
  },
  (r) => r.u32(),
);

const u64 = new WireType(
  'u64',
  (w, v, path) => {
    const big = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : null;
    if (big === null || big < 0n || big > U64_MAX) throw expected(path, 'a u64 (a BigInt)', v);
    w.lebBig(big);
  },
  (r) => r.u64(),
);

const bool = new WireType(
  'bool',
  (w, v, path) => {
    if (typeof v !== 'boolean') throw expected(path, 'a boolean', v);
    w.byte(v ? 1 : 0);
  },
  (r) => {
    const b = r.byte();
    if (b > 1) throw malformed(`bool byte ${b}`);
    return b === 1;
  },
);

const string = new WireType(
  'string',
  (w, v, path) => {
    if (typeof v !== 'string' || LONE_SURROGATE.test(v)) throw expected(path, 'a well-formed string', v);
    const bytes = utf8Encoder.encode(v);
    w.leb(bytes.length);
    w.bytes(bytes);
  },
  (r) => {
    const bytes = r.take(r.length());
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      throw malformed('a string is not valid UTF-8');
    }
  },
);

const bytes = new WireType(
  'bytes',
  (w, v, path) => {
    if (!(v instanceof Uint8Array)) throw expected(path, 'a Uint8Array', v);
    w.leb(v.length);
    w.bytes(v);
  },
  (r) => r.take(r.length()),
);

/** `Option<T>`: null (or undefined, when encoding) for None. */
function option(type) {
  return new WireType(
    `Option<${type.name}>`,
    (w, v, path) => {
      if (v === null || v === undefined) return w.byte(0);
      w.byte(1);
      type.write(w, v, path);
    },
    (r) => {
      const tag = r.byte();
      if (tag > 1) throw malformed(`Option tag ${tag}`);
      return tag === 1 ? type.read(r) : null;
    },
  );
}

/** `Vec<T>` as an Array. */
function vec(type) {
  return new WireType(
    `Vec<${type.name}>`,
    (w, v, path) => {
      if (!Array.isArray(v)) throw expected(path, 'an array', v);
      w.leb(v.length);
      v.forEach((item, i) => type.write(w, item, `${path}[${i}]`));
    },
    (r) => {
      const n = r.length(); // every element takes at least one byte, so n <= bytes left
      const out = [];
      for (let i = 0; i < n; i++) out.push(type.read(r));
      return out;
    },
  );
}

/** A struct: its fields in wire order, as `[name, type]` pairs. */
function struct(name, fields) {
  return new WireType(
    name,
    (w, v, path) => {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw expected(path, `a ${name} object`, v);
      for (const [field, type] of fields) type.write(w, v[field], `${path}.${field}`);
    },
    (r) => {
      const out = {};
      for (const [field, type] of fields) out[field] = type.read(r);
      return out;
    },
  );
}

/**
 * An enum: its variants in wire order as `[name, type]` pairs, `type` null for a unit variant. A newtype variant
 * and a struct variant look the same on the wire and in JSON: `{Variant: data}`.
 */
function enumeration(name, variants) {
  const index = new Map(variants.map(([variant], i) => [variant, i]));
  return new WireType(
    name,
    (w, v, path) => {
      const keys = v !== null && typeof v === 'object' ? Object.keys(v) : [];
      const tag = typeof v === 'string' ? v : keys.length === 1 ? keys[0] : undefined;
      const i = index.get(tag);
      if (i === undefined) throw expected(path, `one of ${name}'s variants (${[...index.keys()].join(', ')})`, v);
      const type = variants[i][1];
      if ((type === null) !== (typeof v === 'string')) {
        throw expected(path, type === null ? `"${tag}" (a unit variant)` : `{${tag}: ...}`, v);
      }
      w.leb(i);
      if (type !== null) type.write(w, v[tag], `${path}.${tag}`);
    },
    (r) => {
      const i = r.u32();
      if (i >= variants.length) throw malformed(`${name} has no variant ${i}`);
      const [tag, type] = variants[i];
      return type === null ? tag : { [tag]: type.read(r) };
    },
  );
}

/**
 * The protocol's message types (quiver-proto's control.rs, room.rs, limits.rs). The three a stream carries are
 * `wire.Request` (client → server, control stream), `wire.ServerMsg` (server → client, control stream) and
 * `wire.RoomFrame` (room streams).
 */
export const wire = (() => {
  const errorCode = u32; // ErrorCode serializes as its number; unknown numbers are kept as they are
  const Position = struct('Position', [['epoch', u64], ['seq', u64]]);
  const Hello = struct('Hello', [
    ['version', u32], ['agent', string], ['name', option(string)], ['token', option(string)],
  ]);
  const Join = struct('Join', [['room', string], ['since', option(Position)]]);
  const Post = struct('Post', [['room', string], ['client_msg_id', u64], ['body', bytes]]);
  const RequestBody = enumeration('RequestBody', [
    ['Hello', Hello],
    ['Join', Join],
    ['Leave', struct('Leave', [['room', string]])],
    ['Post', Post],
    ['Subscribe', struct('Subscribe', [['channel', string]])],
    ['Unsubscribe', struct('Unsubscribe', [['channel', string]])],
    ['Publish', struct('Publish', [['channel', string], ['max_age_ms', option(u32)]])],
    ['Ping', struct('Ping', [['client_time_us', u64]])],
    ['History', struct('History', [['room', string], ['since', option(u64)], ['limit', u32]])],
  ]);
  const Request = struct('Request', [['req_id', u64], ['body', RequestBody]]);
  const Limits = struct('Limits', [
    'max_frame', 'max_body', 'max_name', 'max_rooms', 'max_subscriptions', 'max_publish_channels', 'room_queue_bytes',
    'handshake_timeout_ms', 'history_max_messages', 'history_max_age_s', 'gap_replay', 'dedupe_window_s',
    'dedupe_max_entries', 'max_connections', 'max_connections_per_ip', 'new_connections_per_s_per_ip',
    'requests_per_s', 'posts_per_s', 'ticks_per_s',
  ].map((field) => [field, u32]));
  const Welcome = struct('Welcome', [
    ['version', u32], ['session_id', u64], ['server_time_us', u64], ['identity', string], ['limits', Limits],
  ]);
  const Joined = struct('Joined', [
    ['room', string], ['epoch', u64], ['recovered', bool], ['replay_from', u64], ['last_seq', u64],
    ['members', vec(string)],
  ]);
  const EventKind = enumeration('EventKind', [
    ['Message', struct('Message', [['sender', string], ['client_msg_id', u64], ['body', bytes]])],
    ['MemberJoined', struct('MemberJoined', [['member', string]])],
    ['MemberLeft', struct('MemberLeft', [['member', string]])],
  ]);
  const RoomEvent = struct('RoomEvent', [['seq', u64], ['time_us', u64], ['kind', EventKind]]);
  const HistoryPage = struct('HistoryPage', [
    ['room', string], ['epoch', u64], ['messages', vec(RoomEvent)], ['more', bool],
  ]);
  const Failure = struct('Failure', [['code', errorCode], ['message', string]]);
  const Reply = enumeration('Reply', [
    ['Welcome', Welcome],
    ['Joined', Joined],
    ['Left', struct('Left', [['room', string]])],
    ['Posted', struct('Posted', [['room', string], ['seq', u64], ['duplicate', bool]])],
    ['Subscribed', struct('Subscribed', [['channel', string], ['channel_id', u64]])],
    ['Unsubscribed', struct('Unsubscribed', [['channel', string]])],
    ['Publishing', struct('Publishing', [['channel', string], ['channel_id', u64]])],
    ['Pong', struct('Pong', [['client_time_us', u64], ['server_time_us', u64]])],
    ['History', HistoryPage],
  ]);
  const ReplyResult = enumeration('Result<Reply, Failure>', [['Ok', Reply], ['Err', Failure]]);
  const ServerMsg = enumeration('ServerMsg', [
    ['Reply', struct('Reply', [['req_id', u64], ['result', ReplyResult]])],
    ['GoAway', struct('GoAway', [['code', errorCode], ['reason', string]])],
    ['Kicked', struct('Kicked', [['room', option(string)], ['code', errorCode], ['reason', string]])],
    ['Error', Failure],
  ]);
  const RoomFrame = enumeration('RoomFrame', [
    ['Open', Joined],
    ['Event', RoomEvent],
  ]);
  return Object.freeze({
    Request, RequestBody, Hello, Join, Post, Position,
    ServerMsg, Reply, Failure, Welcome, Limits, Joined, HistoryPage,
    RoomFrame, RoomEvent, EventKind,
  });
})();

// ───────────────────────────────────────────────── stream frames ────────────────────────────────────────────────

/** `value` as one stream frame of `type`: QUIC varint length ‖ postcard body. Throws QuiverEncodeError. */
export function encodeFrame(type, value, maxFrame = DEFAULT_MAX_FRAME) {
  const body = type.encode(value);
  if (body.length > maxFrame) {
    throw new QuiverEncodeError(`${type.name} encodes to ${body.length} bytes, above the frame limit of ${maxFrame}`);
  }
  const prefix = encodeVarint(body.length);
  const frame = new Uint8Array(prefix.length + body.length);
  frame.set(prefix);
  frame.set(body, prefix.length);
  return frame;
}

/** Decodes `bytes`, which must be exactly one whole frame of `type`. Throws only QuiverDecodeError. */
export function decodeFrame(type, bytes, maxFrame = DEFAULT_MAX_FRAME) {
  const reader = new FrameReader(maxFrame);
  const bodies = reader.push(bytes); // throws 'frame-too-large' on the prefix alone
  if (bodies.length === 0) throw new QuiverDecodeError('truncated', `the frame is incomplete (${bytes.length} bytes)`);
  if (bodies.length > 1 || reader.pending > 0) {
    throw new QuiverDecodeError('trailing-data', 'bytes follow the frame');
  }
  return type.decode(bodies[0]);
}

/**
 * Splits a stream into frame bodies as chunks arrive. The length prefix is checked against `maxFrame` as soon as
 * it is complete, before anything of the body is buffered; at most one frame (`maxFrame` bytes) is buffered.
 * After an error the stream is unusable (framing is lost) and every later `push` throws it again.
 */
export class FrameReader {
  /** `maxFrame` may be raised or lowered between frames (e.g. to the limit in Welcome). */
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.prefix = new Uint8Array(8);
    this.prefixLength = 0;
    this.body = null; // the frame being filled, once its length is known
    this.filled = 0;
    this.error = null;
  }

  /** Bytes held of a frame not complete yet (0 between frames). */
  get pending() {
    return this.body ? this.prefixLength + this.filled : this.prefixLength;
  }

  /** Takes the next chunk; returns the bodies of the frames it completed, in order. Throws QuiverDecodeError. */
  push(chunk) {
    if (this.error) throw this.error;
    const out = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.body === null) {
        this.prefix[this.prefixLength++] = chunk[at++];
        const length = decodeVarint(this.prefix.subarray(0, this.prefixLength));
        if (length === null) continue;
        if (length.value > BigInt(this.maxFrame)) {
          const what = `frame of ${length.value} bytes exceeds the limit of ${this.maxFrame}`;
          this.error = new QuiverDecodeError('frame-too-large', what);
          throw this.error;
        }
        this.body = new Uint8Array(Number(length.value));
        this.filled = 0;
      } else {
        const take = Math.min(this.body.length - this.filled, chunk.length - at);
        this.body.set(chunk.subarray(at, at + take), this.filled);
        this.filled += take;
        at += take;
      }
      if (this.body !== null && this.filled === this.body.length) {
        out.push(this.body);
        this.body = null;
        this.prefixLength = 0;
      }
    }
    return out;
  }

  /** The stream ended: throws a 'truncated' QuiverDecodeError if it ended inside a frame. */
  finish() {
    if (this.error) throw this.error;
    if (this.pending > 0) throw new QuiverDecodeError('truncated', 'the stream ended inside a frame');
  }
}

// ──────────────────────────────────────────────── tick datagrams ────────────────────────────────────────────────

/** A tick datagram: QUIC varints `channel_id`, `seq`, `sent_time_us` (BigInt or safe integers), then `payload`. */
export function encodeTick({ channel_id, seq, sent_time_us, payload }) {
  if (!(payload instanceof Uint8Array)) throw expected('payload', 'a Uint8Array', payload);
  const header = [channel_id, seq, sent_time_us].map((v) => encodeVarint(v));
  const length = header.reduce((n, part) => n + part.length, 0);
  const out = new Uint8Array(length + payload.length);
  let at = 0;
  for (const part of [...header, payload]) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * The probe datagram, one zero byte: too short to be a tick, sent after reliable data so that the peer's ACK
 * exposes a lost tail packet early. Receivers ignore it (quiver_proto::PROBE).
 */
export const PROBE = Uint8Array.of(0);

/** True for the probe datagram. */
export function isProbe(datagram) {
  return datagram instanceof Uint8Array && datagram.length === 1 && datagram[0] === 0;
}

/** Splits a tick datagram into `{channel_id, seq, sent_time_us}` (BigInts) and `payload`. Throws QuiverDecodeError. */
export function decodeTick(datagram) {
  if (!(datagram instanceof Uint8Array)) throw malformed(`expected a Uint8Array, got ${describe(datagram)}`);
  const tick = {};
  let at = 0;
  for (const field of ['channel_id', 'seq', 'sent_time_us']) {
    const v = decodeVarint(datagram, at);
    if (v === null) throw new QuiverDecodeError('truncated', `datagram ends inside the tick header (${field})`);
    tick[field] = v.value;
    at += v.length;
  }
  tick.payload = datagram.slice(at);
  return tick;
}

// ──────────────────────────────────────────── pure client state (no IO) ─────────────────────────────────────────

/**
 * Reconnect delays: attempt 0 waits up to `initialMs`, each later attempt up to twice as long, capped at `maxMs`;
 * each delay is drawn from the upper half of its ceiling (as the Rust client does).
 */
export class Backoff {
  constructor({ initialMs = 50, maxMs = 5000, random = Math.random } = {}) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.random = random;
  }

  /** The ceiling of attempt `attempt` (0-based). */
  ceiling(attempt) {
    return Math.min(this.initialMs * 2 ** Math.min(attempt, 16), this.maxMs);
  }

  /** The delay before attempt `attempt`, in ms: in [ceiling / 2, ceiling]. */
  delay(attempt) {
    return this.ceiling(attempt) * (0.5 + this.random() / 2);
  }
}

/** Outstanding requests of one control stream: ids handed out in order, each reply completes one waiter. */
export class RequestTable {
  /** Ids start at `firstId` (Hello uses 0). */
  constructor(firstId = 1n) {
    this.nextId = firstId;
    this.waiting = new Map();
    this.closedWhy = null;
  }

  /** Registers `waiter` and returns its req_id; throws a closed QuiverError once the connection is gone. */
  start(waiter) {
    if (this.closedWhy) throw closedError(this.closedWhy);
    const id = this.nextId++;
    this.waiting.set(id, waiter);
    return id;
  }

  /** The waiter of `reqId`, now no longer outstanding; undefined for an id not outstanding. */
  complete(reqId) {
    const waiter = this.waiting.get(reqId);
    this.waiting.delete(reqId);
    return waiter;
  }

  /** Marks the connection gone (`why` = {code, reason}; the first reason sticks); returns every waiter. */
  close(why) {
    this.closedWhy ??= why;
    const waiters = [...this.waiting.values()];
    this.waiting.clear();
    return waiters;
  }

  /** Requests awaiting a reply. */
  get size() {
    return this.waiting.size;
  }
}

function closedError({ code, reason }) {
  return new QuiverError(code, reason, { closed: true });
}

/** A room message as the application sees it (from a room event or a history page). */
function messageEvent(room, epoch, { seq, time_us, kind }) {
  const { sender, client_msg_id, body } = kind.Message;
  return {
    type: 'message', room, epoch, seq, timeUs: time_us, sender, clientMsgId: client_msg_id, body,
    text: lossyUtf8Decoder.decode(body),
  };
}

/**
 * One joined room's client state, as in the Rust client's `RoomShared`: the position to resume from (epoch and
 * the last delivered message's seq), members, and the Join replies waiting for the room stream they opened.
 */
export class RoomState {
  constructor(name) {
    this.name = name;
    /** The room's epoch, null before the first Join reply. */
    this.epoch = null;
    /** Seq of the last message delivered (0n: none). */
    this.lastSeq = 0n;
    this.members = new Set();
    this.replies = []; // {number, rejoin, joined}
    this.joins = 0;
  }

  /** Where to resume from: `{epoch, seq}` of the last message delivered, or null before the first join. */
  position() {
    return this.epoch === null ? null : { epoch: this.epoch, seq: this.lastSeq };
  }

  /**
   * Records a Join reply (`joined`: the Joined object) for the stream it opens; returns the join's number for
   * `orphaned`. On the first join live events follow the room's current head.
   */
  joined(rejoin, joined) {
    if (this.epoch === null) {
      this.epoch = joined.epoch;
      this.lastSeq = joined.last_seq;
      this.members = new Set(joined.members);
    }
    const number = ++this.joins;
    this.replies.push({ number, rejoin, joined });
    return number;
  }

  /** The oldest Join reply not matched with a stream yet, or null. */
  takeReply() {
    return this.replies.shift() ?? null;
  }

  /** True (and the reply forgotten) when join `number`'s stream never opened: the room must be joined again. */
  orphaned(number) {
    const before = this.replies.length;
    this.replies = this.replies.filter((r) => r.number !== number);
    return this.replies.length !== before;
  }

  /** The connection was lost: replies still waiting for their streams will never see them. */
  connectionLost() {
    this.replies = [];
  }

  /**
   * A room stream opened with `epoch`, matched with `reply` (from `takeReply`); returns the events to deliver
   * first: `{type: 'resumed', recovered, epoch}` after a rejoin. A new epoch means the old seqs mean nothing:
   * the resume is announced as not recovered.
   */
  open(epoch, { rejoin, joined }) {
    const sameEpoch = this.epoch === epoch;
    if (!sameEpoch) {
      this.epoch = epoch;
      this.lastSeq = 0n;
    }
    this.members = new Set(joined.members);
    return rejoin ? [{ type: 'resumed', room: this.name, recovered: joined.recovered && sameEpoch, epoch }] : [];
  }

  /**
   * A room event (`RoomEvent` object) off the stream; returns the application event, or null for a message
   * already delivered (seq at or below the last one: a resume's overlap).
   */
  event({ seq, time_us, kind }) {
    if (kind.Message) {
      if (seq <= this.lastSeq) return null;
      this.lastSeq = seq;
      return messageEvent(this.name, this.epoch, { seq, time_us, kind });
    }
    if (kind.MemberJoined) {
      this.members.add(kind.MemberJoined.member);
      return { type: 'joined', room: this.name, seq, timeUs: time_us, member: kind.MemberJoined.member };
    }
    this.members.delete(kind.MemberLeft.member);
    return { type: 'left', room: this.name, seq, timeUs: time_us, member: kind.MemberLeft.member };
  }
}

/**
 * Posts in the order they were made: pending (not sent on the current connection) and in flight (sent on
 * connection `token`, reply awaited). When a connection is lost every in-flight post goes back in front of the
 * pending ones, in order, to be sent again with the same client_msg_id (the server deduplicates).
 */
export class PostQueue {
  constructor() {
    this.pending = [];
    this.inflight = []; // {job, token}
  }

  /** Queues a post (any object; the client uses `{room, clientMsgId, body, resolve, reject}`). */
  enqueue(job) {
    this.pending.push(job);
  }

  /** Every pending post, now in flight on connection `token`, in order. */
  startSending(token) {
    const jobs = this.pending;
    this.pending = [];
    for (const job of jobs) this.inflight.push({ job, token });
    return jobs;
  }

  /** True (and the post forgotten) when `job` is in flight on `token`: its reply is the one that counts. */
  settle(job, token) {
    const i = this.inflight.findIndex((entry) => entry.job === job && entry.token === token);
    if (i < 0) return false;
    this.inflight.splice(i, 1);
    return true;
  }

  /** The connection is gone: in-flight posts go back in front of the pending ones, in their order. */
  connectionLost() {
    this.pending = [...this.inflight.map((entry) => entry.job), ...this.pending];
    this.inflight = [];
  }

  /** Removes and returns every post (to fail them when the client ends). */
  drain() {
    const jobs = [...this.inflight.map((entry) => entry.job), ...this.pending];
    this.pending = [];
    this.inflight = [];
    return jobs;
  }

  /** Posts not acknowledged yet. */
  get size() {
    return this.pending.length + this.inflight.length;
  }
}

/**
 * Latest-wins acceptance of a subscription's ticks: a tick whose seq is not newer than the last accepted one is
 * stale (reordered on the way) and dropped; a jump forward counts the skipped seqs as lost.
 */
export class LatestWins {
  constructor() {
    /** Seq of the newest accepted tick, null until the first (and again after a resubscribe). */
    this.lastSeq = null;
    this.received = 0;
    this.lost = 0;
    this.stale = 0;
  }

  /** True when the tick with `seq` (BigInt) is newer than every tick before it and is to be delivered. */
  accept(seq) {
    if (this.lastSeq !== null) {
      if (seq <= this.lastSeq) {
        this.stale += 1;
        return false;
      }
      this.lost += Number(seq - this.lastSeq - 1n);
    }
    this.lastSeq = seq;
    this.received += 1;
    return true;
  }

  /** Subscribed again on a new connection: the channel's seqs may start over. */
  resync() {
    this.lastSeq = null;
  }

  /** `{received, lost, stale}`. */
  get stats() {
    return { received: this.received, lost: this.lost, stale: this.stale };
  }
}

/**
 * The clock offset (server minus local, µs) from Ping samples `{rttUs, clientTimeUs, serverTimeUs}`: the fastest
 * round trip's midpoint is the best guess of when the server read its clock. Null without samples.
 */
export function clockOffsetUs(samples) {
  let best = null;
  for (const s of samples) if (best === null || s.rttUs < best.rttUs) best = s;
  return best === null ? null : best.serverTimeUs - (best.clientTimeUs + best.rttUs / 2);
}

// ───────────────────────────────────────────────── the client ───────────────────────────────────────────────────

/** This machine's clock, µs since the Unix epoch (fractional). */
function unixUs() {
  return (performance.timeOrigin + performance.now()) * 1000;
}

/** Bytes of a post body or tick payload: a string is UTF-8 encoded. */
function toBytes(data) {
  if (typeof data === 'string') return utf8Encoder.encode(data);
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError(`expected a string or bytes, got ${describe(data)}`);
}

/** The 32 bytes of a SHA-256 given as 64 hex digits (colons and spaces allowed). */
function certHashBytes(hex) {
  const digits = String(hex).replace(/[\s:]/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(digits)) throw new TypeError('certHash must be 64 hex digits (a SHA-256)');
  return Uint8Array.from(digits.match(/../g), (pair) => parseInt(pair, 16));
}

/** The reply variant `name`'s data, or a ProtocolViolation QuiverError for any other reply. */
function expectReply(reply, name) {
  if (reply !== null && typeof reply === 'object' && name in reply) return reply[name];
  const got = typeof reply === 'string' ? reply : Object.keys(reply ?? {})[0];
  throw new QuiverError(ErrorCode.ProtocolViolation, `expected a ${name} reply, got ${got}`);
}

/** Calls an application callback; an exception in it is reported, not allowed to break the client. */
function callBack(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

/** Timers that all stop when the client ends: pending sleeps resolve at once. */
class Timers {
  constructor() {
    this.handles = new Map(); // handle -> resolve of a sleep, or null
    this.stopped = false;
  }

  sleep(ms) {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const handle = setTimeout(() => {
        this.handles.delete(handle);
        resolve();
      }, ms);
      this.handles.set(handle, resolve);
    });
  }

  after(ms, fn) {
    if (this.stopped) return;
    const handle = setTimeout(() => {
      this.handles.delete(handle);
      fn();
    }, ms);
    this.handles.set(handle, null);
  }

  stop() {
    this.stopped = true;
    for (const [handle, resolve] of this.handles) {
      clearTimeout(handle);
      resolve?.();
    }
    this.handles.clear();
  }
}

/** Wakes whoever waits for something to change (a Join reply to arrive, a session to open). */
class Signal {
  constructor() {
    this.waiters = [];
  }

  /** Resolves at the next `notify`. */
  next() {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/**
 * One WebTransport connection: the control stream (Hello/Welcome, requests and replies, pushes), room streams
 * handed to the client, and datagrams routed to subscriptions by channel id.
 */
class Session {
  /** Connects and says Hello; resolves once Welcome arrived. `hooks`: onPush, onRoomStream, onTick, onLost. */
  static async open(url, options, hooks) {
    const transportOptions = options.certHash
      ? { serverCertificateHashes: [{ algorithm: 'sha-256', value: certHashBytes(options.certHash) }] }
      : undefined;
    const wt = new options.transport(url, transportOptions);
    let timer;
    const timeout = new Promise((_, reject) => {
      const ms = options.connectTimeoutMs;
      timer = setTimeout(() => reject(new Error(`no Welcome from ${url} within ${ms} ms`)), ms);
    });
    const handshake = async () => {
      await wt.ready;
      const stream = await wt.createBidirectionalStream();
      const writer = stream.writable.getWriter();
      const reader = stream.readable.getReader();
      const { protocolVersion: version, name = null } = options;
      // A function is asked at every connect, so an expired token is replaced by a fresh one on reconnect.
      const token = typeof options.token === 'function' ? await options.token() : (options.token ?? null);
      const hello = { Hello: { version, agent: AGENT, name, token } };
      await writer.write(encodeFrame(wire.Request, { req_id: 0n, body: hello }));
      const frames = new FrameReader(DEFAULT_MAX_FRAME);
      for (;;) {
        const { done, value } = await reader.read();
        if (done) throw new Error('the server finished the control stream before Welcome');
        const [first, ...rest] = frames.push(value);
        if (first === undefined) continue;
        const msg = wire.ServerMsg.decode(first);
        const reply = msg.Reply;
        if (reply?.req_id === 0n && reply.result.Err) {
          const { code, message } = reply.result.Err;
          throw new QuiverError(code, message, { refused: true });
        }
        if (reply?.req_id !== 0n || !reply.result.Ok?.Welcome) {
          throw new QuiverError(ErrorCode.ProtocolViolation, `expected Welcome, got ${Object.keys(msg)[0]}`);
        }
        return new Session(wt, writer, reader, frames, rest, reply.result.Ok.Welcome, hooks);
      }
    };
    try {
      return await Promise.race([handshake(), timeout]);
    } catch (err) {
      const code = err instanceof QuiverDecodeError ? err.code : ErrorCode.NoError;
      try {
        wt.close({ closeCode: code, reason: err.refused ? 'refused' : String(err.message ?? err).slice(0, 100) });
      } catch { /* already closed */ }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  constructor(wt, writer, reader, frames, leftover, welcome, hooks) {
    this.wt = wt;
    this.writer = writer;
    this.welcome = welcome;
    this.hooks = hooks;
    this.maxFrame = welcome.limits.max_frame;
    this.requests = new RequestTable(1n);
    /** Subscriptions by their channel id on this connection (BigInt keys). */
    this.channels = new Map();
    this.datagramWriter = null;
    this.goAway = null;
    this.closedWhy = null;
    frames.maxFrame = this.maxFrame;
    this.readControl(reader, frames, leftover);
    this.acceptRoomStreams();
    this.readDatagrams();
    wt.closed.then(
      (info) => this.lost({ code: info?.closeCode ?? ErrorCode.NoError, reason: info?.reason || 'connection closed' }),
      (err) => this.lost({ code: ErrorCode.Internal, reason: `connection lost: ${err?.message ?? err}` }),
    );
  }

  /** Sends one request; resolves with the reply's Ok value, rejects with a QuiverError (or QuiverEncodeError). */
  request(body) {
    return new Promise((resolve, reject) => {
      let reqId;
      let frame;
      try {
        reqId = this.requests.start({ resolve, reject });
        frame = encodeFrame(wire.Request, { req_id: reqId, body }, this.maxFrame);
      } catch (err) {
        if (reqId !== undefined) this.requests.complete(reqId);
        reject(err);
        return;
      }
      this.writer.write(frame).catch((err) => {
        this.lost({ code: ErrorCode.Internal, reason: `control stream: ${err?.message ?? err}` });
      });
    });
  }

  /** Sends a datagram without waiting (ticks are never queued behind each other here). */
  sendDatagram(datagram) {
    try {
      this.datagramWriter ??= this.wt.datagrams.writable.getWriter();
      this.datagramWriter.write(datagram).catch(() => {});
    } catch { /* the connection is going; ticks are not retried */ }
  }

  /** The largest datagram the path takes now, or null when unknown. */
  get maxDatagramSize() {
    return this.wt.datagrams?.maxDatagramSize ?? null;
  }

  /** Ends the connection (once) and fails what is outstanding with `why`. */
  lost(why) {
    if (this.closedWhy) return;
    this.closedWhy = this.goAway && why.code === ErrorCode.NoError ? this.goAway : why;
    for (const waiter of this.requests.close(this.closedWhy)) waiter.reject(closedError(this.closedWhy));
    this.close(why.code, why.reason);
    this.hooks.onLost(this, this.closedWhy);
  }

  close(code, reason) {
    try {
      this.wt.close({ closeCode: code, reason: String(reason).slice(0, 100) });
    } catch { /* already closed */ }
  }

  async readControl(reader, frames, leftover) {
    try {
      for (const body of leftover) this.dispatch(wire.ServerMsg.decode(body));
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          frames.finish();
          return this.lost(this.goAway ?? { code: ErrorCode.NoError, reason: 'the server ended the control stream' });
        }
        for (const body of frames.push(value)) this.dispatch(wire.ServerMsg.decode(body));
      }
    } catch (err) {
      if (err instanceof QuiverDecodeError) {
        this.lost({ code: err.code, reason: `the server sent an undecodable frame: ${err.message}` });
      } else {
        this.lost({ code: ErrorCode.Internal, reason: `control stream: ${err?.message ?? err}` });
      }
    }
  }

  dispatch(msg) {
    if (msg.Reply) {
      const waiter = this.requests.complete(msg.Reply.req_id);
      const { Ok: ok, Err: failure } = msg.Reply.result;
      if (!waiter) return;
      if (failure) waiter.reject(new QuiverError(failure.code, failure.message));
      else waiter.resolve(ok);
    } else if (msg.GoAway) {
      this.goAway = { code: msg.GoAway.code, reason: msg.GoAway.reason };
      this.hooks.onPush({ type: 'goaway', ...this.goAway });
    } else if (msg.Kicked) {
      this.hooks.onPush({ type: 'kicked', room: msg.Kicked.room, code: msg.Kicked.code, reason: msg.Kicked.reason });
    } else if (msg.Error) {
      this.hooks.onPush({ type: 'error', code: msg.Error.code, reason: msg.Error.message });
    }
  }

  async acceptRoomStreams() {
    try {
      const streams = this.wt.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const { done, value } = await streams.read();
        if (done) return;
        this.hooks.onRoomStream(this, value);
      }
    } catch { /* the connection is gone */ }
  }

  async readDatagrams() {
    try {
      const datagrams = this.wt.datagrams.readable.getReader();
      for (;;) {
        const { done, value } = await datagrams.read();
        if (done) return;
        if (isProbe(value)) continue; // a tail-loss probe: it only elicits an ACK
        let tick;
        try {
          tick = decodeTick(value);
        } catch {
          continue; // undecodable datagrams are dropped, as in the Rust client
        }
        const subscription = this.channels.get(tick.channel_id);
        if (subscription) deliver(() => this.hooks.onTick(subscription, tick));
      }
    } catch { /* the connection is gone */ }
  }
}

/**
 * Runs an application callback; an exception in it is reported as an uncaught error (window 'error' event,
 * console) instead of ending the reader that called it.
 */
function deliver(callback) {
  try {
    callback();
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

/** Reads one room stream frame by frame: `next()` resolves to a RoomFrame value, or null at the stream's end. */
function roomFrames(stream, maxFrame) {
  const reader = stream.getReader();
  const frames = new FrameReader(maxFrame);
  const queue = [];
  return {
    async next() {
      while (queue.length === 0) {
        const { done, value } = await reader.read();
        if (done) {
          frames.finish();
          return null;
        }
        queue.push(...frames.push(value));
      }
      return wire.RoomFrame.decode(queue.shift());
    },
    cancel() {
      reader.cancel().catch(() => {});
    },
  };
}

/** A joined room: its name, members and position; post to it or leave it. Made by `QuiverClient.join`. */
export class Room {
  #state;
  #client;

  constructor(client, state) {
    this.#client = client;
    this.#state = state;
  }

  /** The room's name. */
  get name() {
    return this.#state.name;
  }

  /** Members present, as of the events delivered so far (sorted). */
  get members() {
    return [...this.#state.members].sort();
  }

  /** `{epoch, seq}` of the last message delivered, or null. */
  get position() {
    return this.#state.position();
  }

  /** Posts `textOrBytes`; resolves to the seq (BigInt) it got. See `QuiverClient.post`. */
  post(textOrBytes) {
    return this.#client.post(this.name, textOrBytes);
  }

  /** Leaves the room. */
  leave() {
    return this.#client.leave(this.name);
  }
}

/** A subscription to a tick channel. Made by `QuiverClient.subscribe`. */
export class Subscription {
  #entry;
  #client;

  constructor(client, entry) {
    this.#client = client;
    this.#entry = entry;
  }

  /** The channel's name. */
  get channel() {
    return this.#entry.channel;
  }

  /** `{received, lost, stale}`: accepted ticks, seqs skipped, ticks dropped for arriving after a newer one. */
  get stats() {
    return this.#entry.ticks.stats;
  }

  /** The newest tick delivered (`{seq, sentTimeUs, payload, latencyMs}`), or null. */
  get latest() {
    return this.#entry.latest;
  }

  /** Stops the subscription. */
  unsubscribe() {
    return this.#client.unsubscribe(this.channel);
  }
}

/** The right to publish ticks on a channel. Made by `QuiverClient.publisher`. */
export class Publisher {
  #send;

  constructor(channel, send) {
    this.channel = channel;
    this.#send = send;
  }

  /**
   * Sends one tick (string: UTF-8; or bytes) as a datagram; returns the publisher's seq for it (BigInt), or null
   * when there is no connection to send on (ticks are dropped, never queued: the next one is newer anyway).
   * Throws a DatagramTooLarge QuiverError for a payload that cannot fit a datagram on this path.
   */
  send(payload) {
    return this.#send(toBytes(payload));
  }
}

/**
 * A Quiver session over WebTransport that survives connection loss: it reconnects with jittered exponential
 * backoff, rejoins every room from its last position (dropping what was already delivered and announcing
 * `{type: 'resumed', recovered}`), re-sends unacknowledged posts in order with their client_msg_id, and
 * subscribes and claims its channels again.
 */
export class QuiverClient {
  /** The latest Welcome (`{version, session_id, server_time_us, identity, limits}`). */
  welcome = null;
  /** 'connecting' | 'connected' | 'reconnecting' | 'closed'. */
  status = 'connecting';
  /** Why the client ended (`{code, reason}`), once `status` is 'closed'. */
  closeReason = null;

  #url;
  #options;
  #session = null;
  #sessionChanged = new Signal();
  #timers = new Timers();
  #backoff;
  #rooms = new Map(); // name -> {state: RoomState, onEvent, replied: Signal, handle: Room}
  #subscriptions = new Map(); // channel -> {channel, onTick, ticks: LatestWins, latest, handle}
  #publishers = new Map(); // channel -> {channel, maxAgeMs, claim: {session, channelId} | null, nextSeq}
  #posts = new PostQueue();
  #nextMsgId;
  #clockOffsetUs = 0;

  /**
   * Connects to `url` (e.g. "https://127.0.0.1:4433/quiver") and opens the session. Options:
   * `certHash` (64 hex digits of the server certificate's SHA-256, for `serverCertificateHashes`; null to rely on
   * the browser's trust), `name` and `token` (sent in Hello), `reconnect` (default true), `onStatus(status,
   * detail)`, `onNotice(notice)` (server pushes: `{type: 'goaway'|'kicked'|'error', code, reason, room?}`, and
   * rooms that could not be rejoined), `connectTimeoutMs` (10000), `reconnectDelayMs` (50),
   * `reconnectMaxDelayMs` (5000), `replyWaitMs` (5000: how long a room stream waits for its Join reply, and a
   * Join reply for its stream before the room is joined again), `transport` (the WebTransport constructor;
   * replaceable for tests).
   * The first connection must succeed: this rejects otherwise.
   */
  static async connect(url, options = {}) {
    const client = new QuiverClient(url, options);
    await client.#start();
    return client;
  }

  /** Use `QuiverClient.connect`. */
  constructor(url, options = {}) {
    this.#url = url;
    this.#options = {
      certHash: null, name: null, token: null, reconnect: true, onStatus: null, onNotice: null,
      connectTimeoutMs: 10_000, reconnectDelayMs: 50, reconnectMaxDelayMs: 5000, replyWaitMs: 5000,
      transport: globalThis.WebTransport, protocolVersion: PROTOCOL_VERSION,
      ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
    };
    if (typeof this.#options.transport !== 'function') throw new Error('this browser has no WebTransport');
    const { reconnectDelayMs: initialMs, reconnectMaxDelayMs: maxMs } = this.#options;
    this.#backoff = new Backoff({ initialMs, maxMs });
    // A random 62-bit start plus a counter: two clients with the same identity do not collide.
    const random = crypto.getRandomValues(new BigUint64Array(1))[0];
    this.#nextMsgId = random >> 2n;
  }

  /** Now on the server's clock (this machine's clock plus the offset estimated from pings), µs. */
  serverClockUs() {
    return unixUs() + this.#clockOffsetUs;
  }

  /**
   * Joins `room`; `onEvent` receives its events in order: `{type: 'message', seq, timeUs, sender, clientMsgId,
   * body, text}`, `{type: 'joined' | 'left', member}`, `{type: 'resumed', recovered, epoch}` (recovered false:
   * messages were missed) and `{type: 'kicked', code, reason}` (the server dropped this client from the room).
   */
  async join(room, { onEvent } = {}) {
    if (this.#rooms.has(room)) throw new QuiverError(ErrorCode.AlreadyJoined, `already in room ${room}`);
    const entry = { state: new RoomState(room), onEvent, replied: new Signal(), handle: null };
    entry.handle = new Room(this, entry.state);
    this.#rooms.set(room, entry);
    try {
      const session = await this.#live();
      const joined = expectReply(await session.request({ Join: { room, since: null } }), 'Joined');
      this.#joined(session, entry, false, joined);
      return entry.handle;
    } catch (err) {
      if (this.#rooms.get(room) === entry) this.#rooms.delete(room);
      throw err;
    }
  }

  /** Leaves `room` (a name or a Room). */
  async leave(room) {
    const name = typeof room === 'string' ? room : room.name;
    this.#rooms.delete(name);
    const session = await this.#live();
    expectReply(await session.request({ Leave: { room: name } }), 'Left');
  }

  /**
   * Posts `textOrBytes` to `room` (a name or a Room; joined or not); resolves to the seq (BigInt) it got. Posts
   * go out in the order of the calls, pipelined, and are re-sent after a reconnect until acknowledged (delivered
   * once: the server deduplicates by client_msg_id).
   */
  post(room, textOrBytes) {
    const name = typeof room === 'string' ? room : room.name;
    return new Promise((resolve, reject) => {
      if (this.status === 'closed') return reject(closedError(this.closeReason));
      const job = { room: name, clientMsgId: this.#nextMsgId++, body: toBytes(textOrBytes), resolve, reject };
      this.#posts.enqueue(job);
      this.#flushPosts();
    });
  }

  /**
   * Subscribes to tick channel `channel`; `onTick` receives `{seq, sentTimeUs, payload, latencyMs}` for every
   * tick newer than the last one delivered (older ones are dropped and counted as stale). Resubscribed after a
   * reconnect.
   */
  async subscribe(channel, { onTick } = {}) {
    if (this.#subscriptions.has(channel)) {
      throw new QuiverError(ErrorCode.AlreadyJoined, `already subscribed to ${channel}`);
    }
    const entry = { channel, onTick, ticks: new LatestWins(), latest: null, handle: null };
    entry.handle = new Subscription(this, entry);
    this.#subscriptions.set(channel, entry);
    try {
      await this.#subscribeOn(await this.#live(), entry);
      return entry.handle;
    } catch (err) {
      if (this.#subscriptions.get(channel) === entry) this.#subscriptions.delete(channel);
      throw err;
    }
  }

  /** Stops receiving `channel`. */
  async unsubscribe(channel) {
    const entry = this.#subscriptions.get(channel);
    this.#subscriptions.delete(channel);
    const session = await this.#live();
    for (const [id, sub] of session.channels) if (sub === entry) session.channels.delete(id);
    expectReply(await session.request({ Unsubscribe: { channel } }), 'Unsubscribed');
  }

  /**
   * Claims the right to publish on `channel` (`maxAgeMs`: ask the server to drop ticks older than that rather
   * than send them late). Claimed again after a reconnect.
   */
  async publisher(channel, { maxAgeMs = null } = {}) {
    const entry = { channel, maxAgeMs, claim: null, nextSeq: 1n };
    await this.#claimOn(await this.#live(), entry);
    this.#publishers.set(channel, entry);
    return new Publisher(channel, (payload) => this.#sendTick(entry, payload));
  }

  /** One Ping/Pong round trip on the control stream; resolves to the round-trip time in ms. */
  async ping() {
    const session = await this.#live();
    const started = performance.now();
    expectReply(await session.request({ Ping: { client_time_us: BigInt(Math.round(unixUs())) } }), 'Pong');
    return performance.now() - started;
  }

  /**
   * A room's retained messages after seq `since` (null: from the oldest), at most `limit`:
   * `{room, epoch, more, messages}` with messages shaped like `onEvent`'s.
   */
  async history(room, since = null, limit = 100) {
    const session = await this.#live();
    const request = { History: { room, since: since === null ? null : BigInt(since), limit } };
    const page = expectReply(await session.request(request), 'History');
    const messages = page.messages.filter((e) => e.kind.Message).map((e) => messageEvent(page.room, page.epoch, e));
    return { room: page.room, epoch: page.epoch, more: page.more, messages };
  }

  /** Sends one raw request (a RequestBody value) on the current connection; resolves to the Reply value. */
  async request(body) {
    return (await this.#live()).request(body);
  }

  /** Closes the connection with NoError and ends the client; unacknowledged posts fail. */
  close() {
    this.#end({ code: ErrorCode.NoError, reason: 'closed by the application' });
  }

  // ── connection lifecycle ──

  async #start() {
    try {
      const session = await this.#open();
      if (!(await this.#connected(session))) throw new Error(session.closedWhy?.reason ?? 'the connection was lost');
    } catch (err) {
      this.#end({ code: err.code ?? ErrorCode.NoError, reason: `cannot connect: ${err.message ?? err}` });
      throw err;
    }
  }

  #open() {
    const hooks = {
      onLost: (session, why) => this.#lost(session, why),
      onPush: (push) => this.#push(push),
      onRoomStream: (session, stream) => this.#readRoomStream(session, stream),
      onTick: (entry, tick) => this.#deliverTick(entry, tick),
    };
    return Session.open(this.#url, this.#options, hooks);
  }

  /**
   * A new session is up: estimate the clock offset, then make it the current one and restore rooms, channels and
   * posts on it. False when it was lost (or the client closed) before that.
   */
  async #connected(session) {
    const samples = [];
    for (let i = 0; i < 5 && !session.closedWhy; i++) {
      const clientTimeUs = unixUs();
      const started = performance.now();
      try {
        const reply = await session.request({ Ping: { client_time_us: BigInt(Math.round(clientTimeUs)) } });
        const serverTimeUs = Number(expectReply(reply, 'Pong').server_time_us);
        samples.push({ rttUs: (performance.now() - started) * 1000, clientTimeUs, serverTimeUs });
      } catch {
        break;
      }
    }
    this.#clockOffsetUs = clockOffsetUs(samples) ?? this.#clockOffsetUs;
    if (this.status === 'closed') session.close(ErrorCode.NoError, 'client closed');
    if (this.status === 'closed' || session.closedWhy) return false;
    this.#session = session;
    this.welcome = session.welcome;
    this.#setStatus('connected', null);
    this.#sessionChanged.notify();
    for (const entry of this.#rooms.values()) this.#rejoin(entry);
    for (const entry of this.#subscriptions.values()) {
      entry.ticks.resync();
      this.#subscribeOn(session, entry).catch((err) => this.#failed(err, { channel: entry.channel }));
    }
    for (const entry of this.#publishers.values()) {
      this.#claimOn(session, entry).catch((err) => this.#failed(err, { channel: entry.channel }));
    }
    this.#flushPosts();
    return true;
  }

  #lost(session, why) {
    if (session !== this.#session) return; // a session that never became current (or an old one)
    this.#session = null;
    this.#posts.connectionLost();
    for (const entry of this.#rooms.values()) entry.state.connectionLost();
    if (this.status === 'closed') return;
    if (!this.#options.reconnect) return this.#end(why);
    this.#setStatus('reconnecting', why);
    this.#reconnect();
  }

  async #reconnect() {
    for (let attempt = 0; this.status !== 'closed'; attempt++) {
      await this.#timers.sleep(this.#backoff.delay(attempt));
      if (this.status === 'closed') return;
      let session;
      try {
        session = await this.#open();
      } catch (err) {
        if (err.refused) return this.#end({ code: err.code, reason: err.message });
        continue;
      }
      if (await this.#connected(session)) return;
    }
  }

  #end(why) {
    if (this.status === 'closed') return;
    this.closeReason = why;
    this.#setStatus('closed', why);
    this.#timers.stop();
    const session = this.#session;
    this.#session = null;
    session?.close(why.code, why.reason);
    session?.lost(why);
    this.#sessionChanged.notify();
    for (const job of this.#posts.drain()) job.reject(closedError(why));
  }

  #setStatus(status, detail) {
    this.status = status;
    callBack(this.#options.onStatus, status, detail);
  }

  /** The current session; while reconnecting, waits for the next one (up to the connect timeout). */
  async #live() {
    const deadline = performance.now() + this.#options.connectTimeoutMs;
    for (;;) {
      if (this.status === 'closed') throw closedError(this.closeReason);
      if (this.#session && !this.#session.closedWhy) return this.#session;
      const left = deadline - performance.now();
      if (left <= 0) throw new QuiverError(ErrorCode.Internal, 'not connected (reconnecting)', { closed: true });
      await Promise.race([this.#sessionChanged.next(), this.#timers.sleep(left)]);
    }
  }

  #push(push) {
    if (push.type === 'kicked' && push.room !== null) {
      const entry = this.#rooms.get(push.room);
      if (entry) {
        this.#rooms.delete(push.room);
        callBack(entry.onEvent, { type: 'kicked', room: push.room, code: push.code, reason: push.reason });
      }
    }
    callBack(this.#options.onNotice, push);
  }

  /** A request made on the client's own behalf failed: tell the application, unless the connection went. */
  #failed(err, where) {
    if (err?.closed) return; // the next connection retries
    const notice = { type: 'error', code: err?.code ?? ErrorCode.Internal, reason: err?.message ?? String(err) };
    callBack(this.#options.onNotice, { ...notice, ...where });
  }

  // ── rooms ──

  #joined(session, entry, rejoin, joined) {
    const number = entry.state.joined(rejoin, joined);
    entry.replied.notify();
    // The room stream should follow its reply; if it never shows up (reset before its Open frame), join again.
    this.#timers.after(this.#options.replyWaitMs, () => {
      const current = this.#rooms.get(entry.state.name) === entry && this.#session === session;
      if (current && entry.state.orphaned(number)) this.#rejoin(entry);
    });
  }

  /** Joins a room again from its last position (after a reconnect, a slow-consumer reset or a lost stream). */
  async #rejoin(entry) {
    const session = this.#session;
    if (!session) return;
    const room = entry.state.name;
    try {
      const joined = expectReply(await session.request({ Join: { room, since: entry.state.position() } }), 'Joined');
      if (this.#rooms.get(room) === entry) this.#joined(session, entry, true, joined);
    } catch (err) {
      this.#failed(err, { room });
    }
  }

  async #readRoomStream(session, stream) {
    const frames = roomFrames(stream, session.maxFrame);
    let entry;
    try {
      const open = (await frames.next())?.Open;
      if (!open) return frames.cancel();
      entry = this.#rooms.get(open.room);
      if (!entry) return frames.cancel(); // left meanwhile
      const reply = await this.#takeReply(entry);
      if (!reply) return frames.cancel();
      for (const event of entry.state.open(open.epoch, reply)) callBack(entry.onEvent, event);
      for (;;) {
        const frame = await frames.next();
        if (frame === null) return; // finished: the room was left
        if (this.#rooms.get(open.room) !== entry || !frame.Event) return frames.cancel(); // left here, or a 2nd Open
        const event = entry.state.event(frame.Event);
        if (event) callBack(entry.onEvent, event);
      }
    } catch (err) {
      if (err instanceof QuiverDecodeError) return frames.cancel();
      // Reset by the server: a slow consumer resumes from its last message; anything else ends the stream.
      const current = entry && this.#rooms.get(entry.state.name) === entry && this.#session === session;
      if (current && err?.streamErrorCode === ErrorCode.SlowConsumer) this.#rejoin(entry);
    }
  }

  async #takeReply(entry) {
    const deadline = performance.now() + this.#options.replyWaitMs;
    for (;;) {
      const reply = entry.state.takeReply();
      const left = deadline - performance.now();
      if (reply || left <= 0 || this.status === 'closed') return reply;
      await Promise.race([entry.replied.next(), this.#timers.sleep(left)]);
    }
  }

  // ── posts ──

  #flushPosts() {
    const session = this.#session;
    if (!session || session.closedWhy) return;
    for (const job of this.#posts.startSending(session)) {
      const body = { Post: { room: job.room, client_msg_id: job.clientMsgId, body: job.body } };
      session.request(body).then(
        (reply) => {
          if (!this.#posts.settle(job, session)) return;
          try {
            job.resolve(expectReply(reply, 'Posted').seq);
          } catch (err) {
            job.reject(err);
          }
        },
        (err) => {
          if (err?.closed) return; // sent again on the next connection (see PostQueue.connectionLost)
          if (this.#posts.settle(job, session)) job.reject(err);
        },
      );
    }
  }

  // ── ticks ──

  async #subscribeOn(session, entry) {
    const { channel_id } = expectReply(await session.request({ Subscribe: { channel: entry.channel } }), 'Subscribed');
    if (this.#subscriptions.get(entry.channel) === entry) session.channels.set(channel_id, entry);
  }

  async #claimOn(session, entry) {
    const body = { Publish: { channel: entry.channel, max_age_ms: entry.maxAgeMs } };
    const { channel_id } = expectReply(await session.request(body), 'Publishing');
    entry.claim = { session, channelId: channel_id };
  }

  #deliverTick(entry, tick) {
    if (!entry.ticks.accept(tick.seq)) return;
    const latencyMs = (this.serverClockUs() - Number(tick.sent_time_us)) / 1000;
    entry.latest = { seq: tick.seq, sentTimeUs: tick.sent_time_us, payload: tick.payload, latencyMs };
    callBack(entry.onTick, entry.latest);
  }

  #sendTick(entry, payload) {
    const session = this.#session;
    if (!session || session.closedWhy || entry.claim?.session !== session) return null;
    const max = session.maxDatagramSize;
    if (max !== null && payload.length > max - TICK_HEADER_MAX_LEN) {
      const maxPayload = Math.max(0, max - TICK_HEADER_MAX_LEN);
      const what = `tick payload of ${payload.length} bytes does not fit a datagram on this path`;
      throw new QuiverError(ErrorCode.DatagramTooLarge, `${what}: the maximum payload is ${maxPayload} bytes`);
    }
    const seq = entry.nextSeq++;
    const sentTimeUs = BigInt(Math.round(this.serverClockUs()));
    session.sendDatagram(encodeTick({ channel_id: entry.claim.channelId, seq, sent_time_us: sentTimeUs, payload }));
    return seq;
  }
}
