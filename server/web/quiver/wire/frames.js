// Stream framing: `QUIC varint length ‖ postcard body`, on the control stream and on room streams. The length is
// checked against the frame limit as soon as the prefix is complete, before any of the body is buffered.

import { QuiverDecodeError, QuiverEncodeError } from './errors.js';
import { decodeVarint, encodeVarint } from './varint.js';

/** Default `Limits::max_frame`: the largest frame accepted before the server's Welcome says otherwise. */
export const DEFAULT_MAX_FRAME = 65536;

/**
 * `Limits::MAX_FRAME_CEILING`: the most of a Welcome's `max_frame` a client believes (16 MiB). A server announcing
 * more (hostile, or misconfigured) would otherwise have the client buffer that much per stream.
 */
export const MAX_FRAME_CEILING = 16 * 1024 * 1024;

/** `Limits::MAX_ROOMS_CEILING`: the most of a Welcome's `max_rooms` a client believes (4,096 rooms). */
export const MAX_ROOMS_CEILING = 4096;

/**
 * Bytes a frame's buffer holds at first (then it doubles as its bytes arrive): a length prefix alone never allocates
 * the whole frame (from 64 KiB, 4 bytes had a default-size frame allocated whole).
 */
const GROW_FROM = 4096;

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
 * it is complete, before anything of the body is buffered; at most one frame (`maxFrame` bytes) is buffered, in a
 * buffer that grows as its bytes arrive (from 4 KiB, doubling): a prefix alone does not allocate the frame.
 * After an error the stream is unusable (framing is lost) and every later `push` throws it again.
 */
export class FrameReader {
  /** `maxFrame` may be raised or lowered between frames (e.g. to the limit in Welcome). */
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.prefix = new Uint8Array(8);
    this.prefixLength = 0;
    this.body = null; // the frame being filled, once its length is known
    this.length = 0; // its length
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
        this.length = Number(length.value);
        this.body = new Uint8Array(Math.min(this.length, GROW_FROM));
        this.filled = 0;
      } else {
        if (this.filled === this.body.length) {
          const grown = new Uint8Array(Math.min(this.length, 2 * this.body.length));
          grown.set(this.body);
          this.body = grown;
        }
        const take = Math.min(this.body.length - this.filled, chunk.length - at);
        this.body.set(chunk.subarray(at, at + take), this.filled);
        this.filled += take;
        at += take;
      }
      if (this.body !== null && this.filled === this.length) {
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
