// Opening a session to one of a cluster's nodes: happy eyeballs over the URLs a QuiverClient was given.

import { ErrorCode } from '../wire/errors.js';
import { Session } from './session.js';

/**
 * How long an address of several gets before the next one is tried alongside it (`openFirst`; the Rust
 * client's `NEXT_ADDRESS_DELAY`).
 */
export const NEXT_ADDRESS_DELAY_MS = 250;

/**
 * Opens a session to the first of `urls` that answers, starting from index `from` (happy eyeballs, as the Rust
 * client's `Target::race`): the next address is tried alongside NEXT_ADDRESS_DELAY_MS later, or at once when one
 * fails; the first session to reach Welcome is used and the attempts still running are given up (a dead node that
 * never answers costs its successors NEXT_ADDRESS_DELAY_MS, not the whole `connectTimeoutMs`). A node that refuses
 * the session (a token it does not take, a version it does not speak: a cluster midway through a rolling change)
 * is passed over for the others, as the Rust client does; with none answering, the refusal of the earliest
 * address in turn is thrown, with `othersLeft` set when some address failed otherwise (down: it may come back and
 * take the session), else the earliest address's error. Resolves to `{session, index}`.
 */
export function openFirst(urls, from, options, hooks) {
  return new Promise((resolve, reject) => {
    const order = urls.map((_, i) => (from + i) % urls.length);
    const running = new Map(); // place in `order` -> the attempt's AbortController
    const errors = []; // by place in `order`
    let started = 0;
    let failed = 0;
    let settled = false;
    let timer = null;
    const settle = (then) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      hooks.closing?.removeEventListener('abort', onClosing);
      then();
    };
    const onClosing = () => settle(() => reject(hooks.closing.reason)); // the client closed: no next address
    const giveUpOthers = (winner) => {
      for (const [place, attempt] of running) {
        if (place !== winner) attempt.abort(new Error('another address answered first'));
      }
    };
    const end = () => settle(() => {
      const refusal = errors.find((err) => err?.refused);
      if (!refusal) return reject(errors.find((err) => err !== undefined));
      refusal.othersLeft = errors.some((err) => err !== undefined && !err.refused);
      reject(refusal);
    });
    const next = () => {
      clearTimeout(timer);
      if (settled || started === order.length) return;
      const place = started++;
      const index = order[place];
      const attempt = new AbortController();
      running.set(place, attempt);
      Session.open(urls[index], options, hooks, attempt.signal).then(
        (session) => {
          running.delete(place);
          if (settled) return session.close(ErrorCode.NoError, 'another address answered first');
          settle(() => {
            giveUpOthers(place);
            resolve({ session, index });
          });
        },
        (err) => {
          running.delete(place);
          errors[place] = err;
          if (++failed === order.length) end();
          else next(); // a failure starts the next address at once
        },
      );
      if (started < order.length) timer = setTimeout(next, NEXT_ADDRESS_DELAY_MS);
    };
    if (hooks.closing?.aborted) return onClosing();
    hooks.closing?.addEventListener('abort', onClosing, { once: true });
    next();
  });
}
