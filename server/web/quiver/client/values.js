// Small helpers of the client: the clock, bytes from what the application passes, replies, callbacks.

import { ErrorCode, QuiverError, describe } from '../wire/errors.js';
import { PROTOCOL_VERSION } from '../wire/messages.js';

/** The refusals a rejoin tries again (as the Rust client's `refused_for_now`): the server may take it back later. */
export const REFUSED_FOR_NOW = [ErrorCode.Unavailable, ErrorCode.RateLimited, ErrorCode.ServerFull, ErrorCode.Internal];

/** Channel ids whose tick is held at most while Subscribes are unanswered: a tick for one more is dropped. */
export const UNROUTED_IDS = 256;

/**
 * Ticks that arrive before their subscription's route (as the Rust client's `Unrouted`): the server starts a
 * subscription's ticks as it answers the Subscribe, and a tick datagram can overtake the answer. Dropped, such a tick
 * was neither delivered nor counted lost: a channel published only when it changes showed no value until the next
 * change. While a Subscribe is unanswered, the newest tick of each channel id with no route is held (latest wins, so
 * a busy channel cannot push a quiet one's out), and handed to the route the answer makes before anything after it.
 */
export class Unrouted {
  #subscribing = 0;
  #held = new Map(); // channel id -> { tick, at: unixUs() when it arrived }

  /** A Subscribe is about to be written; call what is returned once it was answered (its route made) or failed. */
  began() {
    this.#subscribing += 1;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#subscribing -= 1;
      if (this.#subscribing === 0) this.#held = new Map();
    };
  }

  /** Holds `tick` while a Subscribe is unanswered, in place of an older one of its channel id; false (dropped) when
   *  none is, when it is older than the one held, or when UNROUTED_IDS other ids are held. */
  hold(tick) {
    if (this.#subscribing === 0) return false;
    const held = this.#held.get(tick.channel_id);
    if (held ? held.tick.seq >= tick.seq : this.#held.size >= UNROUTED_IDS) return false;
    this.#held.set(tick.channel_id, { tick, at: unixUs() });
    return true;
  }

  /** Takes the tick held for `channelId` and when it arrived (`{ tick, at }`), or null. */
  take(channelId) {
    const held = this.#held.get(channelId) ?? null;
    this.#held.delete(channelId);
    return held;
  }
}

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

/**
 * Bytes of a post body or tick payload, the client's own: a string is UTF-8 encoded, bytes are copied. A post may be
 * encoded later than it was made (paced, paused, made while reconnecting) and again after a lost connection, and a
 * tick waits in its channel's slot: the caller's buffer, reused for its next input, changed what went (until
 * 2026-12-08; the Rust client takes `Bytes`, which cannot change, and `WebSocket.send` copies too).
 */
export function toBytes(data) {
  if (typeof data === 'string') return utf8Encoder.encode(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
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

/**
 * `session.request(body)`, sent again after a pause (100 ms doubling to 2 s) while the server refuses it RateLimited
 * (over a rate: nothing done) and the session stays; rejects as closed if the session ends meanwhile. For the
 * requests that let go (Leave, Unsubscribe, Unpublish), which the client acts on before their reply: given up, the
 * server kept what the client had forgotten until the connection ended (a membership: presence listed the member,
 * and the next join of the room was refused AlreadyJoined; a subscription or a claim: counted against the
 * connection's limits); as the Rust client (`until_taken`).
 */
export async function untilTaken(session, body) {
  for (let pauseMs = 100; ; pauseMs = Math.min(pauseMs * 2, 2000)) {
    try {
      return await session.request(body);
    } catch (err) {
      if (err?.code !== ErrorCode.RateLimited) throw err;
      if (!session.closedWhy) {
        let timer;
        await Promise.race([session.ended, new Promise((resolve) => { timer = setTimeout(resolve, pauseMs); })]);
        clearTimeout(timer);
      }
      if (session.closedWhy) throw QuiverError.closed(session.closedWhy); // what it let go went with the session
    }
  }
}

/**
 * Leaves and Unsubscribes under way (by a key: the room's, the channel's), until answered ([`untilTaken`]): a join
 * of the room, a subscribe of the channel, waits for them; a leave or unsubscribe by name meanwhile gives it up.
 */
export class Releases {
  #pending = new Map(); // key -> the promise of its release
  #waiting = new Map(); // key -> the joins, subscribes waiting in `after` for its release: {given, giveUp}

  /**
   * Sends `body` on the session `session()` (a function returning a promise) resolves to, `prepare(session)` first,
   * and waits for its reply `name` (`leftAnyway`; `entry`: the client held it). Listed at once: a join or subscribe
   * made right after waits. (No step more than before between the session and the write: a join of another room made
   * right after, at `max_rooms`, is written after it.) `session` is called only when this release goes: a promise
   * made for a release that joined another one's would reject (the client closed) with nobody to handle it.
   */
  release(key, session, { body, name, entry, prepare }) {
    // One at a time per key: a second release of a name no longer held (a leave by name while one is sent again)
    // shares the first's outcome, and sends nothing after it that a join waiting for the first would not wait for.
    if (this.#pending.has(key)) return this.#pending.get(key);
    const releasing = (async () => {
      const live = await session();
      prepare(live);
      return leftAnyway(untilTaken(live, body), name, entry, live);
    })().finally(() => {
      if (this.#pending.get(key) === releasing) this.#pending.delete(key);
    });
    this.#pending.set(key, releasing);
    return releasing;
  }

  /** True while a release of `key` is under way ([`Releases.before`] waits for it). */
  has(key) {
    return this.#pending.has(key);
  }

  /**
   * For a join or subscribe of `key` made while a release of it is under way: once none is, `list()` (which lists the
   * caller's entry, so that a leave from then on finds it) in the same turn, and its result. Until then a leave or
   * unsubscribe by name (`giveUp`) gives it up: it rejects as closed, nothing listed or written. (Before, that leave
   * found no entry and shared the release under way, and the join went on once it was answered: the application's
   * last call was the leave, and the client ended in the room.)
   */
  async after(key, list) {
    const waiter = { given: null };
    const givenUp = new Promise((_, reject) => {
      waiter.giveUp = (why) => {
        waiter.given = why;
        reject(why);
      };
    });
    givenUp.catch(() => {}); // (raced below while it waits; given up later, no one hears it)
    if (!this.#waiting.has(key)) this.#waiting.set(key, new Set());
    this.#waiting.get(key).add(waiter);
    try {
      while (this.#pending.has(key) && !waiter.given) {
        await Promise.race([this.#pending.get(key).catch(() => {}), givenUp]);
      }
      if (waiter.given) throw waiter.given; // (given up as the release's end woke it)
      return list();
    } finally {
      const waiting = this.#waiting.get(key);
      if (waiting?.delete(waiter) && waiting.size === 0) this.#waiting.delete(key);
    }
  }

  /**
   * Gives up the joins or subscribes of `key` waiting in `after` (each rejects as closed). True when there were any
   * and no release of `key` is under way (woken by its end, they had not looked yet): the leave giving them up has
   * nothing else to do (without a release to share, it would write one for a name the server does not hold).
   */
  giveUp(key) {
    const waiting = this.#waiting.get(key);
    this.#waiting.delete(key);
    for (const waiter of waiting ?? []) {
      waiter.giveUp(QuiverError.closed({ code: ErrorCode.NoError, reason: 'given up before it was sent' }));
    }
    return Boolean(waiting) && !this.#pending.has(key);
  }
}

/** Tells the application (`onNotice`) that a request made on its behalf failed, unless its connection went. */
export function notifyFailed(onNotice, err, where) {
  const notice = errorNotice(err, where); // (none when the connection went: the next one retries)
  if (notice) callBack(onNotice, notice);
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
