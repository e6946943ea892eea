// The client's bookkeeping without IO, as the Rust client keeps it: reconnect delays (`Backoff`), requests awaiting
// replies (`RequestTable`), a room's resume position and dedupe (`RoomState`), posts re-sent in order
// (`PostQueue`) no faster than the server takes them (`Pacer`), a redundant room stream's merge with its datagram copies (`Merge`), latest-wins tick acceptance
// (`LatestWins`) and the server clock offset (`clockOffsetUs`). Plain
// values in, decisions out, so the node tests drive each one directly.

import { QuiverError } from './wire/errors.js';

const lossyUtf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/** The seq before `replayFrom` (a u64: never below 0, whatever a server sends). */
const before = (replayFrom) => (replayFrom > 0n ? replayFrom - 1n : 0n);

/**
 * Reconnect delays: attempt 0 waits up to `initialMs`, each later attempt up to twice as long, capped at `maxMs`;
 * each delay is drawn from the upper half of its ceiling (as the Rust client does).
 */
/** A session lost after lasting this long starts the reconnect delays over; one lost sooner goes on from them. */
export const STABLE_CONNECTION_MS = 10_000;

export class Backoff {
  constructor({ initialMs = 50, maxMs = 5000, random = Math.random } = {}) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.random = random;
    this.connectedAt = -Infinity;
    this.attempts = 0; // made since the last session that lasted
  }

  /** A session began at `nowMs`. */
  connected(nowMs) {
    this.connectedAt = nowMs;
  }

  /**
   * The session was lost at `nowMs`: the number of the first reconnect attempt. The delays start over only after a
   * session that lasted `STABLE_CONNECTION_MS`: a server that accepts and then fails (a crash loop) would otherwise
   * have every client back at the first delay for as long as it does.
   */
  lost(nowMs) {
    if (nowMs - this.connectedAt >= STABLE_CONNECTION_MS) this.attempts = 0;
    return this.attempts;
  }

  /** The ceiling of attempt `attempt` (0-based). */
  ceiling(attempt) {
    return Math.min(this.initialMs * 2 ** Math.min(attempt, 16), this.maxMs);
  }

  /** The delay before attempt `attempt`, in ms: in [ceiling / 2, ceiling] (a later loss goes on after it). */
  delay(attempt) {
    this.attempts = attempt + 1;
    return this.ceiling(attempt) * (0.5 + this.random() / 2);
  }
}

/** How far ahead of the next position a copy is kept (quiver_client's `merge::AHEAD`). */
export const MERGE_AHEAD = 256n;

/**
 * One redundant room stream's frames from the stream (in order, complete) and from datagram copies (any order,
 * maybe twice, maybe never), merged by position (the number of frames before one on the stream): each position is
 * handed out once, in order, from whichever path brought it first.
 */
export class Merge {
  /** `next`: the next position to hand out (BigInt). */
  constructor(next) {
    this.next = next;
    this.ahead = new Map();
  }

  /** The frame at `position` read from the stream: returned to hand out now, or null when a copy brought it. */
  stream(position, frame) {
    if (position < this.next) return null;
    this.next = position + 1n;
    for (const key of this.ahead.keys()) if (key < this.next) this.ahead.delete(key);
    return frame;
  }

  /** A copy of the frame at `position`: kept if not handed out yet (see `ready`). */
  copy(position, frame) {
    if (frame !== undefined && frame !== null && position >= this.next && position - this.next < MERGE_AHEAD && !this.ahead.has(position)) {
      this.ahead.set(position, frame);
    }
  }

  /** The next position's frame if a copy brought it (handed out), else null. */
  ready() {
    const frame = this.ahead.get(this.next);
    if (frame === undefined) return null;
    this.ahead.delete(this.next);
    this.next += 1n;
    return frame;
  }
}

/** Outstanding requests of one control stream: ids handed out in order, each reply completes one waiter. */
export class RequestTable {
  /** Ids start at `firstId` (Hello uses 0). */
  constructor(firstId = 1n) {
    this.nextId = firstId;
    this.waiting = new Map();
    this.closedWhy = null;
  }

  /** Registers `waiter` and returns its req_id; throws a closed QuiverError once the connection is gone. */
  start(waiter) {
    if (this.closedWhy) throw QuiverError.closed(this.closedWhy);
    const id = this.nextId++;
    this.waiting.set(id, waiter);
    return id;
  }

  /** Whether a request of the application's waits for its reply (not a probe: the session's own Pings). */
  waitingForReplies() {
    for (const waiter of this.waiting.values()) if (!waiter.probe) return true;
    return false;
  }

  /** The waiter of `reqId`, now no longer outstanding; undefined for an id not outstanding. */
  complete(reqId) {
    const waiter = this.waiting.get(reqId);
    this.waiting.delete(reqId);
    return waiter;
  }

  /** Marks the connection gone (`why` = {code, reason}; the first reason sticks); returns every waiter. */
  close(why) {
    this.closedWhy ??= why;
    const waiters = [...this.waiting.values()];
    this.waiting.clear();
    return waiters;
  }

  /** Requests awaiting a reply. */
  get size() {
    return this.waiting.size;
  }
}

/** A room message as the application sees it (from a room event or a history page). */
export function messageEvent(room, epoch, { seq, time_us, kind }) {
  const { sender, client_msg_id, body } = kind.Message;
  return {
    type: 'message', room, epoch, seq, timeUs: time_us, sender, clientMsgId: client_msg_id, body,
    text: lossyUtf8Decoder.decode(body),
  };
}

/**
 * One joined room's client state: the position to resume from (epoch and the last delivered message's seq) and the
 * members. A room stream's Open frame (`open`) says everything a resume needs, so no Join reply is needed to read
 * it; `replied` only fills in a brand-new room whose Join reply came before its stream.
 */
export class RoomState {
  constructor(name) {
    this.name = name;
    /** The room's epoch, null until the first Join reply or Open frame. */
    this.epoch = null;
    /** Seq of the last message delivered (or, before the first, of the message before the first to deliver). */
    this.lastSeq = 0n;
    this.members = new Set();
    /** Whether a room stream has opened: every later Open is a rejoin. */
    this.opened = false;
    /** `{session, reqId}` of the room's first Join on the session of its latest Join: see `ours`. */
    this.join = null;
  }

  /**
   * A Join of the room is about to be written on `session` as request `reqId`. On a new session only streams of it
   * and of later Joins are the room's from now on; on the same session nothing changes (a rejoin refused as
   * AlreadyJoined opens no stream, and the earlier Join's stream, maybe still on its way, stays the room's).
   */
  joining(session, reqId) {
    if (this.join?.session !== session) this.join = { session, reqId };
  }

  /**
   * Whether a stream of `session` whose Open answers request `reqId` is the room's: not one of a Join written before
   * the room's first on the session (a Join of the name, left since: its stream may come after the new Join).
   */
  ours(session, reqId) {
    return this.join?.session === session && reqId >= this.join.reqId;
  }

  /** Where to resume from: `{epoch, seq}` of the last message delivered, or null before the first join. */
  position() {
    return this.epoch === null ? null : { epoch: this.epoch, seq: this.lastSeq };
  }

  /** The first Join's reply (a Joined object): live events follow the room's head, as `open` would set them. */
  replied(joined) {
    if (this.epoch !== null) return;
    this.epoch = joined.epoch;
    this.lastSeq = before(joined.replay_from);
    this.members = new Set(joined.members);
  }

  /**
   * A room stream opened with `joined` (its Open frame); returns the events to deliver before the stream's replay:
   * `{type: 'resumed', recovered, epoch}` on a rejoin. With the same epoch the position stays and the replay's
   * overlap is dropped by seq; a new epoch means the old seqs mean nothing, and the resume is not recovered.
   * The first stream is announced only when it cannot continue from the position a Join reply gave (its stream
   * was lost and the room joined again meanwhile): a gap is never silent.
   */
  open(joined) {
    const known = this.epoch !== null;
    const sameEpoch = this.epoch === joined.epoch;
    if (!sameEpoch) {
      this.epoch = joined.epoch;
      this.lastSeq = before(joined.replay_from);
    } else if (!joined.recovered && joined.last_seq < this.lastSeq && before(joined.replay_from) < this.lastSeq) {
      // A position the room cannot resume from in its own epoch, ahead of what it holds (a store that lost its
      // tail): the seqs from `replay_from` on are new messages, and they are delivered. Only then: a rejoin not
      // recovered because messages after its position were trimmed, while the replaced stream handed out some after
      // it (read on after a slow reader's reset), replays messages delivered already (they went out twice).
      this.lastSeq = before(joined.replay_from);
    }
    this.members = new Set(joined.members);
    const recovered = sameEpoch && joined.recovered;
    const announce = this.opened || (known && !recovered);
    this.opened = true;
    return announce ? [{ type: 'resumed', room: this.name, recovered, epoch: joined.epoch }] : [];
  }

  /**
   * A room event (`RoomEvent` object) off the stream; returns the application event, or null for a message
   * already delivered (seq at or below the last one: a resume's overlap).
   */
  event({ seq, time_us, kind }) {
    if (kind.Message) {
      if (seq <= this.lastSeq) return null;
      this.lastSeq = seq;
      return messageEvent(this.name, this.epoch, { seq, time_us, kind });
    }
    if (kind.MemberJoined) {
      this.members.add(kind.MemberJoined.member);
      return { type: 'joined', room: this.name, seq, timeUs: time_us, member: kind.MemberJoined.member };
    }
    this.members.delete(kind.MemberLeft.member);
    return { type: 'left', room: this.name, seq, timeUs: time_us, member: kind.MemberLeft.member };
  }
}

/** The seconds of its rate a server's token bucket holds (`Limits::BURST_SECONDS`). */
export const BURST_SECONDS = 2;

/**
 * Posts paced to the rate the server allows, as the Rust client's `Pacer`: the server counts a connection's posts
 * in a bucket of `posts_per_s` (and `requests_per_s`) holding `BURST_SECONDS` of them and refuses what is over
 * (`RateLimited`; a burst of refusals closes the connection). This bucket, one per session, started full as the
 * server's is, holds half of that and refills at 95 % of the rate, so queued posts leave as fast as the server takes
 * them and no faster. Times in ms.
 */
export class Pacer {
  constructor(limits, nowMs) {
    const serverRate = Math.max(1, Math.min(Number(limits.posts_per_s), Number(limits.requests_per_s)) || 1);
    this.perMs = Math.max(1, Math.floor((serverRate * 95) / 100)) / 1000;
    this.burst = Math.max(1, Math.floor((serverRate * BURST_SECONDS) / 2));
    this.tokens = this.burst;
    this.last = nowMs;
  }

  #refill(nowMs) {
    if (nowMs > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + (nowMs - this.last) * this.perMs);
      this.last = nowMs;
    }
  }

  /** Posts that may go now. */
  allowed(nowMs) {
    this.#refill(nowMs);
    return Math.floor(this.tokens);
  }

  /** `count` posts go now. */
  take(nowMs, count = 1) {
    this.#refill(nowMs);
    this.tokens = Math.max(0, this.tokens - count);
  }

  /** Ms until the next post may go (0: now). */
  wait(nowMs) {
    this.#refill(nowMs);
    return this.tokens >= 1 ? 0 : Math.ceil((1 - this.tokens) / this.perMs);
  }

  /** The server refused a post as over its rate anyway: start from empty. */
  empty(nowMs) {
    this.#refill(nowMs);
    this.tokens = 0;
  }
}

/**
 * Posts in the order they were made: pending (not sent on the current connection) and in flight (sent, with
 * `token`, the send's own: a reply to an earlier send of the same post is not taken for this one's; reply awaited). When a connection is lost every in-flight post goes back in front of the
 * pending ones, in order, to be sent again with the same client_msg_id (the server deduplicates).
 */
export class PostQueue {
  /** `max`: posts queued or in flight at most (0: no bound); see `full`. */
  constructor(max = 0) {
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new RangeError(`maxQueuedPosts must be a count (0: none), not ${max}`);
    }
    this.pending = [];
    this.inflight = []; // {job, token}
    this.max = max;
  }

  /** True when `max` posts are queued or in flight: the caller refuses the next one instead of queueing it. */
  get full() {
    return this.max > 0 && this.size >= this.max;
  }

  /** Queues a post (any object; the client uses `{room, clientMsgId, body, resolve, reject}`). */
  enqueue(job) {
    this.pending.push(job);
  }

  /** The first `count` pending posts (all by default), now in flight with `token` (this send's), in order. */
  startSending(token, count = Infinity) {
    const jobs = this.pending.splice(0, Math.min(count, this.pending.length));
    for (const job of jobs) this.inflight.push({ job, token });
    return jobs;
  }

  /** True (and the post forgotten) when `job` is in flight on `token`: its reply is the one that counts. */
  settle(job, token) {
    const i = this.inflight.findIndex((entry) => entry.job === job && entry.token === token);
    if (i < 0) return false;
    this.inflight.splice(i, 1);
    return true;
  }

  /** The connection is gone: in-flight posts go back in front of the pending ones, in their order. */
  connectionLost() {
    this.pending = [...this.inflight.map((entry) => entry.job), ...this.pending];
    this.inflight = [];
  }

  /**
   * `job` (settled already) was refused as retryable: it goes back first, then every post still in flight, then
   * the pending ones, in their order.
   */
  retryFrom(job) {
    this.pending = [job, ...this.inflight.map((entry) => entry.job), ...this.pending];
    this.inflight = [];
  }

  /** Removes and returns every post (to fail them when the client ends). */
  drain() {
    const jobs = [...this.inflight.map((entry) => entry.job), ...this.pending];
    this.pending = [];
    this.inflight = [];
    return jobs;
  }

  /** Posts not acknowledged yet. */
  get size() {
    return this.pending.length + this.inflight.length;
  }
}

const MASK64 = (1n << 64n) - 1n;

/**
 * Latest-wins acceptance of a subscription's ticks: a tick whose seq is not newer than the last accepted one is
 * stale (reordered on the way) and dropped; a jump forward counts the skipped seqs as lost, until one of them
 * arrives after all (among the 64 before the newest): then it is stale, not lost as well (as the Rust client's).
 */
export class LatestWins {
  constructor() {
    /** Seq of the newest accepted tick, null until the first (and again after a resubscribe). */
    this.lastSeq = null;
    /** The seqs before lastSeq counted lost, as bits: bit i for seq lastSeq - 1 - i (64 of them). */
    this.missing = 0n;
    this.received = 0;
    this.lost = 0;
    this.stale = 0;
  }

  /** True when the tick with `seq` (BigInt) is newer than every tick before it and is to be delivered. */
  accept(seq) {
    if (this.lastSeq !== null) {
      if (seq <= this.lastSeq) {
        this.stale += 1;
        const bit = this.lastSeq - seq - 1n;
        if (bit >= 0n && bit < 64n && ((this.missing >> bit) & 1n) === 1n) {
          this.missing &= ~(1n << bit);
          this.lost -= 1;
        }
        return false;
      }
      const skipped = seq - this.lastSeq - 1n;
      this.lost += Number(skipped);
      const shifted = skipped + 1n >= 64n ? 0n : (this.missing << (skipped + 1n)) & MASK64;
      this.missing = shifted | (skipped >= 64n ? MASK64 : (1n << skipped) - 1n);
    }
    this.lastSeq = seq;
    this.received += 1;
    return true;
  }

  /** Subscribed again on a new connection: the channel's seqs may start over. */
  resync() {
    this.lastSeq = null;
    this.missing = 0n;
  }

  /** `{received, lost, stale}`. */
  get stats() {
    return { received: this.received, lost: this.lost, stale: this.stale };
  }
}

/**
 * The clock offset (server minus local, µs) from Ping samples `{rttUs, clientTimeUs, serverTimeUs}`: the fastest
 * round trip's midpoint is the best guess of when the server read its clock. Null without samples. A sample whose
 * server time is no clock's (negative, or past 2^53 µs, the year 2255: more than a Number holds exactly) is left
 * out: a hostile Pong's 2^63 put the client's clock past the QUIC varint range ticks are stamped in, and every
 * `send` of a publisher threw.
 */
export function clockOffsetUs(samples) {
  let best = null;
  for (const s of samples) {
    if (!Number.isSafeInteger(s.serverTimeUs) || s.serverTimeUs < 0) continue;
    if (best === null || s.rttUs < best.rttUs) best = s;
  }
  return best === null ? null : best.serverTimeUs - (best.clientTimeUs + best.rttUs / 2);
}
