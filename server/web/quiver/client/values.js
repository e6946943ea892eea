// Small helpers of the client: the clock, bytes from what the application passes, replies, callbacks.

import { ErrorCode, QuiverError, describe } from '../wire/errors.js';
import { PROTOCOL_VERSION } from '../wire/messages.js';

/** The refusals a rejoin tries again (as the Rust client's `refused_for_now`): the server may take it back later. */
export const REFUSED_FOR_NOW = [ErrorCode.Unavailable, ErrorCode.RateLimited, ErrorCode.ServerFull, ErrorCode.Internal];

/** `QuiverClient.connect`'s options when not given (documented there). */
export function clientDefaults() {
  return {
    certHash: null, name: null, token: null, reconnect: true, onStatus: null, onNotice: null, onAttempt: null,
    connectTimeoutMs: 10_000, reconnectDelayMs: 50, reconnectMaxDelayMs: 5000, copies: 2, copySpacingMs: 5,
    transport: 'auto', webTransport: globalThis.WebTransport, webSocket: globalThis.WebSocket, websocketUrl: null,
    fallbackTimeoutMs: 2000, onTransport: null, protocolVersion: PROTOCOL_VERSION, maxQueuedPosts: 10_000,
  };
}

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

/**
 * How long a call refused `Unavailable` waits for its session to end (a server that is shutting down, or whose token
 * expired, refuses what it still holds "retry once reconnected" and closes): the server's frame timeout, as the Rust
 * client's `ENDING_WAIT`.
 */
export const ENDING_WAIT_MS = 5000;

/** Whether `session` ends within `ENDING_WAIT_MS` (at once if it has). */
export async function endsSoon(session) {
  let timer;
  await Promise.race([session.ended, new Promise((resolve) => { timer = setTimeout(resolve, ENDING_WAIT_MS); })]);
  clearTimeout(timer);
  return Boolean(session.closedWhy);
}

/**
 * Awaits a Leave's, Unsubscribe's or Unpublish's reply (`name`, as `expectReply`) on `session`. When the client held
 * the room or channel (`entry`, no longer listed), NotJoined and a lost connection count as done: the server let it
 * go already, or does with the connection, and no reconnect takes it back; so does an `Unavailable` refusal from a
 * session that then ends (`endsSoon`), as in the Rust client.
 */
export async function leftAnyway(request, name, entry, session) {
  try {
    expectReply(await request, name);
  } catch (err) {
    if (!entry) throw err;
    if (err?.code === ErrorCode.NotJoined || err?.closed) return;
    if (err?.code === ErrorCode.Unavailable && session && await endsSoon(session)) return;
    throw err;
  }
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

/**
 * The notice for a request the client made on its own behalf that failed (`where`: its room or channel), or null
 * when its connection went (the next connection makes it again).
 */
export function errorNotice(err, where) {
  if (err?.closed) return null;
  return { type: 'error', code: err?.code ?? ErrorCode.Internal, reason: err?.message ?? String(err), ...where };
}
