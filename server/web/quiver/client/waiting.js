// Waiting that ends with the client: `Timers`, whose sleeps all resolve at once when the client closes (so no
// reconnect loop or request is left sleeping), `Signal`, which wakes whoever waits for a change, `restore`, which
// retries what a reconnect restores while the server refuses it for now, `acrossReconnects`, which makes a call
// again on the next session when its own is lost before the answer, and `within`, a promise waited for until a time
// or an abort.

import { ErrorCode, QuiverError } from '../wire/errors.js';
import { endsSoon } from './values.js';

/** Sleeps that all end when the client ends. */
export class Timers {
  constructor() {
    this.sleeping = new Map(); // setTimeout handle -> resolve
    this.stopped = false;
  }

  /** Resolves after `ms`, or at `stop`, whichever comes first. */
  sleep(ms) {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const handle = setTimeout(() => {
        this.sleeping.delete(handle);
        resolve();
      }, ms);
      this.sleeping.set(handle, resolve);
    });
  }

  /** Ends every sleep now and every later one at once. */
  stop() {
    this.stopped = true;
    for (const [handle, resolve] of this.sleeping) {
      clearTimeout(handle);
      resolve();
    }
    this.sleeping.clear();
  }
}

/** Attempts from a refusal (while other addresses were down) before the client ends with it. */
const OTHERS_TRIES = 3;

/**
 * A reconnect's refusals: a node that refused the session while other addresses were down may be passed over until
 * they come back (another node restarting during a rolling change), so the client ends with the refusal only once
 * `windowMs` (its `connectTimeoutMs`) has passed since the first one and OTHERS_TRIES attempts (the refusal's own
 * included) found none taking the session, as the Rust client does; at once when every address refused.
 */
export class RefusalWindow {
  constructor(windowMs) {
    this.windowMs = windowMs;
    this.refusal = null;
    this.since = 0;
    this.tries = 0;
  }

  /** A failed attempt (`err`, thrown by client/race.js' openFirst) at `now`: the refusal to end with, or null. */
  failed(err, now) {
    if (err?.refused && !err.othersLeft) return err;
    if (err?.refused && !this.refusal) [this.refusal, this.since] = [err, now];
    if (!this.refusal) return null;
    this.tries++;
    return now - this.since >= this.windowMs && this.tries >= OTHERS_TRIES ? this.refusal : null;
  }
}

/** Wakes whoever waits for something to change (the client's session, when one opens or is lost). */
export class Signal {
  constructor() {
    this.waiters = [];
  }

  /** Resolves at the next `notify`. */
  next() {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /**
   * Resolves at the next `notify` or once `timeout` (a promise) settles, whichever comes first, and leaves no waiter
   * behind: a caller that timed out each time (a request waiting for a connection through a long outage) left one
   * each, kept until the next connect.
   */
  async nextWithin(timeout) {
    let wake;
    const notified = new Promise((resolve) => {
      wake = resolve;
      this.waiters.push(resolve);
    });
    try {
      await Promise.race([notified, timeout]);
    } finally {
      const at = this.waiters.indexOf(wake);
      if (at >= 0) this.waiters.splice(at, 1);
    }
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** Tries a request refused for now (`REFUSED_FOR_NOW`: the broker unreachable, a rate, a full server) this often. */
export const RESTORE_TRIES = 40;

/**
 * Restores something the server held for the application after a reconnect (a room, a subscription, a claim):
 * runs `request()` until it succeeds, is refused for good, or `still()` turns false (left meanwhile, or the
 * connection went: the next one restores it). A refusal for now is tried again, `RESTORE_TRIES` times, `delay(n)`
 * apart. Resolves to the QuiverError that refused it for good (after the last try, with the last refusal's code), or
 * to null.
 * `done(err)`: a refusal that means there is nothing to restore (e.g. AlreadyJoined).
 */
export async function restore(request, { still, sleep, delay, refusedForNow, done = () => false, what }) {
  let last = null; // the last refusal for now: its code is what the tries end with
  for (let attempt = 0; attempt < RESTORE_TRIES; attempt++) {
    if (!still()) return null;
    try {
      await request();
      return null;
    } catch (err) {
      if (err?.closed || done(err)) return null;
      if (!refusedForNow.includes(err?.code)) {
        return new QuiverError(err?.code ?? ErrorCode.Internal, err?.message ?? String(err));
      }
      last = err;
      if (attempt + 1 < RESTORE_TRIES) await sleep(delay(attempt));
    }
  }
  const why = `the server refused to take ${what} back ${RESTORE_TRIES} times, the last: ${last?.message ?? ''}`;
  return still() ? new QuiverError(last?.code ?? ErrorCode.Unavailable, why) : null;
}

/** Runs tasks one at a time per key, in the order they were asked for; a key nobody waits on is forgotten. */
export class Turns {
  #tails = new Map(); // key -> the end of its tasks so far

  /** Runs `fn` once every task asked for before under `key` has settled; its result (or rejection). */
  run(key, fn) {
    const run = (this.#tails.get(key) ?? Promise.resolve()).then(fn);
    const tail = run.then(() => {}, () => {});
    this.#tails.set(key, tail);
    tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return run;
  }

  /** Keys with a task running or waiting. */
  get size() {
    return this.#tails.size;
  }
}

/** Sessions a call that survives reconnects is made on, at most (`acrossReconnects`). */
export const RECONNECT_TRIES = 3;

/**
 * Runs `attempt(session)` on the session `live()` resolves to; if that session is lost before the attempt is answered
 * (its request failed as closed), runs it again on the next one, `RECONNECT_TRIES` sessions in all, unless the
 * client `ended()` or `givenUp()`: a Join, Subscribe, claim or History is not failed by a reconnect of a moment.
 * (What a lost session held went with it.)
 */
export async function acrossReconnects(live, attempt, givenUp, ended) {
  let session = await live();
  // (Given up while it waited for a session: nothing was written, and nothing is.)
  if (givenUp()) throw QuiverError.closed({ code: ErrorCode.NoError, reason: 'given up before it was sent' });
  for (let tries = 1; ; tries++) {
    try {
      return await attempt(session);
    } catch (err) {
      let lost = err instanceof QuiverError && err.closed && Boolean(session.closedWhy);
      // Refused "retry once reconnected" by a server about to close (shutting down, a token expired): tried again on
      // the next session if this one ends soon, as the Rust client does (the call failed with Unavailable).
      const refused = err instanceof QuiverError && err.code === ErrorCode.Unavailable && !err.closed;
      if (refused && tries < RECONNECT_TRIES && !ended() && !givenUp()) lost = await endsSoon(session);
      if (!lost || tries >= RECONNECT_TRIES || ended() || givenUp()) throw err;
      try {
        session = await live();
      } catch {
        throw err;
      }
      if (givenUp()) throw err; // (left, or unsubscribed, while the client reconnected)
    }
  }
}

/**
 * Rejoins `entry`'s room for a Kicked (it fell behind) on `session`, one at a time per room and session: a kick while
 * one runs is noted, and one more rejoin follows it while `still()` (answered AlreadyJoined when the kicks were for
 * the membership it replaced; a kick of the new membership comes after its Joined, maybe in the same read). A server
 * repeating the kick made a Join, and a retry loop, each.
 */
export async function oneRejoinAtATime(entry, session, rejoin, still) {
  if (entry.rejoining === session) {
    entry.kickedAgain = true;
    return;
  }
  entry.rejoining = session;
  try {
    do {
      entry.kickedAgain = false;
      await rejoin();
    } while (entry.kickedAgain && still());
  } finally {
    if (entry.rejoining === session) entry.rejoining = null;
  }
}

/** `promise`'s outcome, or `undefined` once `ms` passed or `signal` aborted (whichever comes first). */
export function within(promise, ms, signal) {
  if (signal?.aborted || ms <= 0) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    // (Timers past 2^31 - 1 ms fire at once: longer is never.)
    const timer = ms < 2 ** 31 - 1 ? setTimeout(() => finish(undefined), ms) : null;
    const aborted = () => finish(undefined);
    function finish(value, err) {
      clearTimeout(timer);
      signal?.removeEventListener('abort', aborted);
      if (err === undefined) resolve(value);
      else reject(err);
    }
    signal?.addEventListener('abort', aborted, { once: true });
    promise.then((value) => finish(value), (err) => finish(undefined, err ?? new Error('request failed')));
  });
}
