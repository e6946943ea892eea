// Postcard, the serde format quiver-proto uses, for the shapes the protocol needs: integers as LEB128, strings
// and byte strings with a length prefix, Option, Vec, structs (fields in order) and enums (variant index, then
// data). `WireType` pairs an encoder with a decoder; messages.js builds the protocol's message types from these.
// Decoding treats every input as hostile: lengths are checked against what is left before anything is taken.

import { QuiverDecodeError, describe, expected, malformed } from './errors.js';

const U64_MAX = (1n << 64n) - 1n;

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();
const LONE_SURROGATE = /\p{Surrogate}/u;

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

export const u32 = new WireType(
  'u32',
  (w, v, path) => {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw expected(path, 'a u32 (a Number)', v);
    w.leb(v);
  },
  (r) => r.u32(),
);

export const u64 = new WireType(
  'u64',
  (w, v, path) => {
    const big = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : null;
    if (big === null || big < 0n || big > U64_MAX) throw expected(path, 'a u64 (a BigInt)', v);
    w.lebBig(big);
  },
  (r) => r.u64(),
);

export const bool = new WireType(
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

export const string = new WireType(
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

export const bytes = new WireType(
  'bytes',
  (w, v, path) => {
    if (!(v instanceof Uint8Array)) throw expected(path, 'a Uint8Array', v);
    w.leb(v.length);
    w.bytes(v);
  },
  (r) => r.take(r.length()),
);

/** `Option<T>`: null (or undefined, when encoding) for None. */
export function option(type) {
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
export function vec(type) {
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
export function struct(name, fields) {
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
export function enumeration(name, variants) {
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
