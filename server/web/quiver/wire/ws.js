// The WebSocket mapping (quiver_proto::ws; docs/protocol.md, "WebSocket mapping"): where UDP or WebTransport
// cannot go, one WebSocket carries what a QUIC connection carries, each binary message a kind byte and the kind's
// fields. Values are shaped like the Rust enum (and the `ws_*` vectors):
//   {Control: bytes}             0: bytes of the control stream (either direction)
//   {Stream: {id, bytes}}        1: bytes of room stream `id` (server → client; a new id opens the stream)
//   {Finish: {id}}               2: room stream `id` ended (QUIC: FIN)
//   {Reset: {id, code}}          3: room stream `id` was cut off with an error code (QUIC: RESET_STREAM)
//   {Datagram: bytes}            4: a datagram (a tick), exactly its bytes
//   {Close: {code, reason}}      5: the sender closes the connection (QUIC: CONNECTION_CLOSE)
//   {Stop: {id, code}}           6: stop sending room stream `id` (client → server; QUIC: STOP_SENDING)
// Ids are BigInts (safe integers are taken too), codes numbers (u32), bytes Uint8Arrays. No IO: runs in node.

import { QuiverDecodeError, describe, expected, malformed } from './errors.js';
import { concatBytes, decodeVarint, encodeVarint } from './varint.js';

/** The WebSocket subprotocol (`Sec-WebSocket-Protocol`) both ends name. */
export const WS_SUBPROTOCOL = 'quiver';

/** Longest close reason, in UTF-8 bytes (as on QUIC). */
export const WS_MAX_REASON = 512;

/** Largest chunk of one stream in one message (a longer write is cut into chunks this size). */
export const WS_MAX_CHUNK = 16 * 1024;

/** Largest datagram (tick) over a WebSocket: QUIC's smallest datagram size. */
export const WS_MAX_DATAGRAM = 1200;

/** Largest message either end accepts: a chunk and its header (a peer closes with FrameTooLarge above it). */
export const WS_MAX_MESSAGE = WS_MAX_CHUNK + 16;

/** The kind byte of each message, by the variant's name. */
export const WsKind = Object.freeze({ Control: 0, Stream: 1, Finish: 2, Reset: 3, Datagram: 4, Close: 5, Stop: 6 });

const KIND_NAMES = Object.keys(WsKind);
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** The UTF-8 of `text`, cut to at most `max` bytes on a character boundary. */
export function truncateUtf8(text, max) {
  const bytes = utf8Encoder.encode(text);
  if (bytes.length <= max) return bytes;
  let end = max;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // not inside a character
  return bytes.subarray(0, end);
}

function bytesOf(path, value) {
  if (!(value instanceof Uint8Array)) throw expected(path, 'a Uint8Array', value);
  return value;
}

function codeOf(path, value) {
  const code = typeof value === 'bigint' && value >= 0n && value <= 0xffff_ffffn ? Number(value) : value;
  if (!Number.isInteger(code) || code < 0 || code > 0xffff_ffff) throw expected(path, 'an error code (u32)', value);
  return code;
}

/**
 * The bytes of one message (a value shaped as at the top of this file). A reason longer than 512 bytes is cut, as
 * the Rust encoder cuts it. Throws QuiverEncodeError for a value that is not a message.
 */
export function encodeWsMessage(message) {
  const entries = message !== null && typeof message === 'object' ? Object.entries(message) : [];
  if (entries.length !== 1 || !(entries[0][0] in WsKind)) {
    throw expected('WsMessage', `one of ${KIND_NAMES.join(', ')}`, message);
  }
  const [name, value] = entries[0];
  const kind = Uint8Array.of(WsKind[name]);
  const path = `WsMessage.${name}`;
  const fields = value !== null && typeof value === 'object' ? value : {};
  switch (name) {
    case 'Control':
    case 'Datagram':
      return concatBytes([kind, bytesOf(path, value)]);
    case 'Stream':
      return concatBytes([kind, encodeVarint(fields.id), bytesOf(`${path}.bytes`, fields.bytes)]);
    case 'Finish':
      return concatBytes([kind, encodeVarint(fields.id)]);
    case 'Reset':
    case 'Stop':
      return concatBytes([kind, encodeVarint(fields.id), encodeVarint(codeOf(`${path}.code`, fields.code))]);
    default: {
      if (typeof fields.reason !== 'string') throw expected(`${path}.reason`, 'a string', fields.reason);
      const code = encodeVarint(codeOf(`${path}.code`, fields.code));
      return concatBytes([kind, code, truncateUtf8(fields.reason, WS_MAX_REASON)]);
    }
  }
}

/**
 * Reads one message. Throws only QuiverDecodeError (its `code` is ProtocolViolation): an empty message, an
 * unknown kind, a truncated varint ('truncated'), bytes after a finish or reset ('trailing-data'), a code above
 * 2^32-1, a reason that is not UTF-8 or longer than 512 bytes. (A server never sends Stop: the adapter treats it as
 * a protocol violation.) Payloads are views of `bytes`, not copies.
 */
export function decodeWsMessage(bytes) {
  if (bytes instanceof ArrayBuffer) bytes = new Uint8Array(bytes);
  if (!(bytes instanceof Uint8Array)) throw malformed(`expected a Uint8Array, got ${describe(bytes)}`);
  if (bytes.length === 0) throw malformed('empty WebSocket message');
  const kind = bytes[0];
  let at = 1;
  const varint = (what) => {
    const v = decodeVarint(bytes, at);
    if (v === null) throw new QuiverDecodeError('truncated', `WebSocket message of kind ${kind} ends inside ${what}`);
    at += v.length;
    return v.value;
  };
  const code = () => {
    const value = varint('the error code');
    if (value > 0xffff_ffffn) throw malformed(`error code ${value} out of range`);
    return Number(value);
  };
  let message;
  switch (kind) {
    case WsKind.Control:
      return { Control: bytes.subarray(1) };
    case WsKind.Datagram:
      return { Datagram: bytes.subarray(1) };
    case WsKind.Stream: {
      const id = varint('the stream id');
      return { Stream: { id, bytes: bytes.subarray(at) } };
    }
    case WsKind.Finish:
      message = { Finish: { id: varint('the stream id') } };
      break;
    case WsKind.Reset: {
      const id = varint('the stream id');
      message = { Reset: { id, code: code() } };
      break;
    }
    case WsKind.Stop: {
      const id = varint('the stream id');
      message = { Stop: { id, code: code() } };
      break;
    }
    case WsKind.Close: {
      const closeCode = code();
      const reason = bytes.subarray(at);
      if (reason.length > WS_MAX_REASON) throw malformed('close reason: longer than 512 bytes');
      let text;
      try {
        text = utf8Decoder.decode(reason);
      } catch {
        throw malformed('close reason: not UTF-8');
      }
      return { Close: { code: closeCode, reason: text } };
    }
    default:
      throw malformed(`unknown WebSocket message kind ${kind}`);
  }
  if (at < bytes.length) {
    const left = bytes.length - at;
    throw new QuiverDecodeError('trailing-data', `${left} bytes left over after a WebSocket message of kind ${kind}`);
  }
  return message;
}

/** The tick channel of a datagram (its first varint), or null for channel 0 (copies, the probe) or no varint. */
export function tickChannel(datagram) {
  const id = decodeVarint(datagram)?.value;
  return id === undefined || id === 0n ? null : id;
}
