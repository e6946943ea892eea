// The protocol's shared list of error codes and the errors this client throws: QuiverDecodeError for bytes that
// are not the protocol, QuiverEncodeError for values that cannot be sent, QuiverError for a failed request or a
// lost session. The helpers at the end build the first two with a message naming the offending value.

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
  ServerFull: 26,
  FrameTimeout: 27,
  ControlStreamClosed: 28,
  Unavailable: 29,
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
 * server refused the session itself (its answer to Hello); `queueFull` is true when the client itself refused a post
 * because `maxQueuedPosts` were waiting already (nothing was sent; code RateLimited).
 */
export class QuiverError extends Error {
  constructor(code, message, { closed = false, refused = false, queueFull = false } = {}) {
    super(message);
    this.name = 'QuiverError';
    this.code = code;
    this.closed = closed;
    this.refused = refused;
    this.queueFull = queueFull;
  }

  /** The error of a request cut off by the loss of its connection (`why`: the loss's `{code, reason}`). */
  static closed({ code, reason }) {
    return new QuiverError(code, reason, { closed: true });
  }

  /** A post refused by the client: `max` posts are queued or awaiting their reply already. */
  static queueFull(max) {
    const message = `${max} posts are queued or awaiting their reply already (maxQueuedPosts); this one was not queued`;
    return new QuiverError(ErrorCode.RateLimited, message, { queueFull: true });
  }

  /** The code's name ("NotJoined"). */
  get codeName() {
    return errorCodeName(this.code);
  }
}

/** A short description of `value` for an error message. */
export function describe(value) {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`;
  if (Array.isArray(value)) return `array(${value.length})`;
  return value === null ? 'null' : typeof value === 'object' ? 'object' : String(value);
}

/** A 'malformed' QuiverDecodeError. */
export function malformed(message) {
  return new QuiverDecodeError('malformed', message);
}

/** A QuiverEncodeError for `value` at `path` (e.g. "Request.body.Join.room") that is not `what`. */
export function expected(path, what, value) {
  return new QuiverEncodeError(`${path}: expected ${what}, got ${describe(value)}`);
}
