// Room streams and their datagram copies, as QuiverClient reads them into its rooms (`rooms`: room name → entry,
// the client's own map): which stream of a room delivers, the merge with copies, and what a stream that breaks the
// protocol costs (its session: the reconnect resumes every room from its position).

import { ErrorCode, QuiverDecodeError } from '../wire/errors.js';
import { FrameReader } from '../wire/frames.js';
import { wire } from '../wire/messages.js';
import { Merge } from '../state.js';
import { callBack } from './values.js';

/**
 * Reads one room stream; its Open frame says which room and Join (`RoomState.ours`) it is of and where it resumes.
 * A room's newest stream (`order`: streams in arrival order) is the one that delivers: once a rejoin's stream
 * opens, an older stream of the room stops, so its late events are neither repeated nor delivered out of order.
 * A stream that breaks the protocol (an undecodable frame, no Open first, a second Open) ends its session with the
 * reason: the room could not go on from it, and would otherwise wait for good.
 */
export async function readRoomStream(rooms, session, stream, order) {
  const frames = roomFrames(stream, session.maxFrame, session.unfinished, () => session.heard?.());
  const broken = (code, reason) => {
    frames.cancel();
    session.lost({ code, reason });
  };
  try {
    const first = await frames.next();
    if (first === null) return;
    const joined = first.Open;
    if (!joined) return broken(ErrorCode.ProtocolViolation, `a room stream began with ${Object.keys(first)[0]}, not Open`);
    const entry = rooms.get(joined.room);
    if (!entry?.state.ours(session, joined.req_id) || order < entry.stream) return frames.cancel(); // see above
    entry.stream = order;
    entry.copies = null;
    for (const event of entry.state.open(joined)) callBack(entry.onEvent, event);
    for (let position = 1n; ; position++) {
      const frame = await frames.next();
      if (frame === null) return; // finished: the room was left
      const current = rooms.get(joined.room) === entry && entry.stream === order;
      if (!current) return frames.cancel(); // left, or rejoined on a newer stream
      if (frame.Copies) {
        // A redundant stream: its events also come as copies with this slot, merged by position.
        entry.copies = { session, slot: frame.Copies.slot, merge: new Merge(position + 1n) };
        session.copyRooms.add(joined.room);
        continue;
      }
      if (!frame.Event) return broken(ErrorCode.ProtocolViolation, `a second Open on room ${joined.room}'s stream`);
      const event = entry.copies ? entry.copies.merge.stream(position, frame.Event) : frame.Event;
      if (event) deliver(rooms, entry, event);
    }
  } catch (err) {
    // Reset, or the connection is gone. A slow consumer's reset comes with a Kicked naming the room, which
    // rejoins it: the reset alone cannot, when it comes before the Open frame.
    if (err instanceof QuiverDecodeError) broken(err.code, `a room stream: ${err.message}`);
    else frames.cancel(); // (its unfinished bytes given back, the stream let go)
  }
}

/** Hands `event` (a RoomEvent value) to the room, then whatever copies brought next. */
function deliver(rooms, entry, event) {
  for (let next = event; next; next = entry.copies?.merge.ready()) {
    const out = entry.state.event(next);
    if (out) callBack(entry.onEvent, out);
    if (rooms.get(entry.state.name) !== entry) return; // left (or ended) from inside onEvent
  }
}

/** A room copy datagram: its events go through the merge of the stream with that slot, if it is current. */
export function roomCopy(rooms, session, { slot, first, frames }) {
  const entry = [...rooms.values()].find((e) => e.copies?.session === session && e.copies.slot === slot);
  try {
    frames.forEach((body, i) => entry && entry.copies.merge.copy(first + BigInt(i), wire.RoomFrame.decode(body).Event));
  } catch { /* an undecodable copy: the stream brings the frame */ }
  const next = entry?.copies.merge.ready();
  if (next) deliver(rooms, entry, next);
}

/**
 * Bytes of unfinished frames the room streams of one session hold together at most: 64 MiB, four frames at
 * MAX_FRAME_CEILING (as the Rust client). Each stream alone is bounded by `maxFrame`, but a server may open as
 * many room streams as the client takes (thousands), and one announcing large limits (hostile, or misconfigured)
 * could otherwise have the tab buffer a frame's worth on each. Past it the session ends as a protocol violation and
 * the reconnect resumes every room.
 */
export const UNFINISHED_FRAME_BYTES = 64 * 1024 * 1024;

/**
 * Reads one room stream frame by frame: `next()` resolves to a RoomFrame value, or null at the stream's end.
 * `unfinished` (`{ held }`, one per session) counts the bytes of unfinished frames its room streams hold together;
 * `next()` throws a QuiverDecodeError past UNFINISHED_FRAME_BYTES. `heard()`, if given, is told of every chunk (the
 * session's dead-server watchdog).
 */
export function roomFrames(stream, maxFrame, unfinished = { held: 0 }, heard = null) {
  const reader = stream.getReader();
  const frames = new FrameReader(maxFrame);
  const queue = [];
  const limit = UNFINISHED_FRAME_BYTES;
  let mine = 0; // this stream's part of `unfinished.held`
  const hold = (bytes) => {
    unfinished.held += bytes - mine;
    mine = bytes;
  };
  return {
    async next() {
      try {
        while (queue.length === 0) {
          const { done, value } = await reader.read();
          if (done) {
            frames.finish();
            hold(0);
            return null;
          }
          heard?.();
          // (Not `push(...frames)`: a chunk of many tiny frames would pass more arguments than a call takes.)
          for (const body of frames.push(value)) queue.push(body);
          hold(frames.pending);
          if (unfinished.held > limit) {
            const what = `the room streams hold over ${limit} bytes of unfinished frames together (the server opened many and left each inside a large frame)`;
            throw new QuiverDecodeError('unfinished', what);
          }
        }
      } catch (err) {
        hold(0); // the stream ends with it
        throw err;
      }
      return wire.RoomFrame.decode(queue.shift());
    },
    cancel() {
      hold(0);
      reader.cancel().catch(() => {});
    },
  };
}
