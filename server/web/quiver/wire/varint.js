// QUIC variable-length integers (RFC 9000 §16): the length prefix of every stream frame and the header fields of
// tick datagrams. (Postcard's LEB128 integers inside messages are another encoding: see postcard.js.)

import { QuiverEncodeError, describe } from './errors.js';

/** Largest value of a QUIC varint: 2^62 - 1. */
export const VARINT_MAX = (1n << 62n) - 1n;

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

/** `parts` (Uint8Arrays) one after the other, in one new Uint8Array. */
export function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
