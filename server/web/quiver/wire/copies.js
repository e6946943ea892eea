// Copy datagrams (redundant delivery; quiver_proto::copies): the varint 0 (never a tick channel id), the kind, then
// whole stream frames. Room copy (server → client): `0 ‖ 0 ‖ varint slot ‖ varint first_position ‖ frame+`; post
// copy (client → server): `0 ‖ 1 ‖ varint first_request ‖ frame+`, frame = `varint length ‖ postcard body`.

import { QuiverDecodeError, malformed } from './errors.js';
import { concatBytes, decodeVarint, encodeVarint } from './varint.js';
import { DEFAULT_MAX_FRAME } from './frames.js';

/** Most frames one copy datagram carries. */
export const MAX_COPY_FRAMES = 16;

/** True for a copy datagram (channel id 0, longer than the probe). */
export function isCopy(datagram) {
  return datagram instanceof Uint8Array && datagram.length > 1 && decodeVarint(datagram)?.value === 0n;
}

/** A post copy of whole Post-request frames, the first being the connection's `first`-th request after Hello (every request counts). */
export function encodePostCopy(first, frames) {
  return concatBytes([encodeVarint(0n), encodeVarint(1n), encodeVarint(first), ...frames]);
}

/**
 * Decodes a copy datagram: `{kind: 'room', slot, first, frames}` or `{kind: 'posts', first, frames}`, frames their
 * bodies (BigInt slot and positions). Throws QuiverDecodeError on anything malformed.
 */
export function decodeCopy(datagram, maxFrame = DEFAULT_MAX_FRAME) {
  let at = 0;
  const field = (what) => {
    const v = decodeVarint(datagram, at);
    if (v === null) throw new QuiverDecodeError('truncated', `copy datagram ends inside ${what}`);
    at += v.length;
    return v.value;
  };
  if (field('the channel id') !== 0n) throw malformed('not a copy datagram');
  const kind = field('the kind');
  let copy;
  if (kind === 0n) copy = { kind: 'room', slot: field('the slot'), first: field('the first position') };
  else if (kind === 1n) copy = { kind: 'posts', first: field('the first request') };
  else throw malformed(`unknown copy kind ${kind}`);
  copy.frames = [];
  while (at < datagram.length) {
    const length = field("a frame's length");
    if (length > BigInt(maxFrame)) throw new QuiverDecodeError('frame-too-large', `copied frame of ${length} bytes`);
    const end = at + Number(length);
    if (end > datagram.length) throw new QuiverDecodeError('truncated', 'copy datagram ends inside a frame');
    if (copy.frames.length === MAX_COPY_FRAMES) throw malformed(`more than ${MAX_COPY_FRAMES} frames in a copy`);
    copy.frames.push(datagram.slice(at, end));
    at = end;
  }
  if (copy.frames.length === 0) throw malformed('a copy without frames');
  return copy;
}
