// Tick datagrams: `QUIC varint channel_id ‖ varint seq ‖ varint sent_time_us ‖ payload`, no length prefix (the
// datagram is the frame), and the one-byte probe datagram that is not a tick.

import { QuiverDecodeError, describe, expected, malformed } from './errors.js';
import { decodeVarint, encodeVarint } from './varint.js';

/** Largest tick datagram header: three 8-byte QUIC varints. */
export const TICK_HEADER_MAX_LEN = 24;

/**
 * The largest datagram every path carries (quiver_proto::MAX_PORTABLE_DATAGRAM): a DATAGRAM frame in a QUIC packet
 * of 1,200 bytes on the worst path (20-byte connection ID, 4-byte packet number, 16-byte tag, 9 bytes of frame
 * header), less 2 for WebTransport's session prefix. No tick published is larger, on any path: a larger one (which
 * the WebSocket lane would carry) is dropped by the server for every QUIC and WebTransport subscriber.
 */
export const MAX_PORTABLE_DATAGRAM = 1200 - 1 - 20 - 4 - 16 - 9 - 2;

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
