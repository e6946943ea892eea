// Small helpers of the client: the clock, bytes from what the application passes, replies, callbacks.

import { ErrorCode, QuiverError, describe } from '../wire/errors.js';

const utf8Encoder = new TextEncoder();

/** This machine's clock, µs since the Unix epoch (fractional). */
export function unixUs() {
  return (performance.timeOrigin + performance.now()) * 1000;
}

/** Bytes of a post body or tick payload: a string is UTF-8 encoded. */
export function toBytes(data) {
  if (typeof data === 'string') return utf8Encoder.encode(data);
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError(`expected a string or bytes, got ${describe(data)}`);
}

/** The reply variant `name`'s data, or a ProtocolViolation QuiverError for any other reply. */
export function expectReply(reply, name) {
  if (reply !== null && typeof reply === 'object' && name in reply) return reply[name];
  const got = typeof reply === 'string' ? reply : Object.keys(reply ?? {})[0];
  throw new QuiverError(ErrorCode.ProtocolViolation, `expected a ${name} reply, got ${got}`);
}

/** Calls an application callback; an exception in it is reported, not allowed to break the client. */
export function callBack(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}
