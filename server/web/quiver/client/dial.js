// How a client reaches the server: over WebTransport (QUIC), over the WebSocket fallback (TCP, client/websocket.js),
// or, the default ('auto'), WebTransport first and the WebSocket too when WebTransport fails or is not ready in time,
// the first one ready used and the other closed. Once the WebSocket won, the client's reconnects try both at once
// (no fallback timeout spent on a WebTransport that was blocked, and none kept from one that works again: a blocked
// moment passed, a WebSocket port or proxy gone), as the Rust client's Transport::Auto.

import { WebSocketTransport } from './websocket.js';

/** The values of the `transport` option. */
export const TRANSPORTS = Object.freeze(['auto', 'webtransport', 'websocket']);
/** Datagram copies per post at most (`copies`): the server's own bound on `transport.copies`. */
const MAX_COPIES = 8;

/** The 32 bytes of a SHA-256 given as 64 hex digits (colons and spaces allowed). */
function certHashBytes(hex) {
  const digits = String(hex).replace(/[\s:]/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(digits)) throw new TypeError('certHash must be 64 hex digits (a SHA-256)');
  return Uint8Array.from(digits.match(/../g), (pair) => parseInt(pair, 16));
}

/**
 * The WebSocket URL of a WebTransport URL: the same host, port and path, scheme `wss:` (the server listens for the
 * upgrade on TCP at the QUIC port's number and the WebTransport path).
 */
export function websocketUrlOf(url) {
  const ws = new URL(url);
  ws.protocol = 'wss:';
  ws.hash = '';
  return ws.href;
}

/**
 * The client's options with the transport's checked and filled in: `transport` the mode, `webTransport` and
 * `webSocket` the constructors, `certHashes` the `serverCertificateHashes` of `certHash` (null without one), and
 * `fallbackTimeoutMs` at most half of `connectTimeoutMs` (the WebSocket always gets its try). A function as
 * `transport` is the older form of `webTransport` (WebTransport only).
 */
export function transportOptions(options) {
  const out = { ...options };
  if (typeof out.transport === 'function') {
    out.webTransport = out.transport;
    out.transport = 'webtransport';
  }
  if (!TRANSPORTS.includes(out.transport)) {
    throw new TypeError(`transport must be one of ${TRANSPORTS.join(', ')}, got ${String(out.transport)}`);
  }
  const hasWebTransport = typeof out.webTransport === 'function';
  const hasWebSocket = typeof out.webSocket === 'function';
  if (out.transport === 'webtransport' && !hasWebTransport) throw new Error('this browser has no WebTransport');
  if (out.transport === 'websocket' && !hasWebSocket) throw new Error('this browser has no WebSocket');
  if (!hasWebTransport && !hasWebSocket) throw new Error('this browser has neither WebTransport nor WebSocket');
  const ms = out.fallbackTimeoutMs;
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) {
    throw new TypeError(`fallbackTimeoutMs must be a finite number of ms, at least 0, got ${String(ms)}`);
  }
  const connectMs = out.connectTimeoutMs;
  if (typeof connectMs !== 'number' || Number.isNaN(connectMs) || connectMs < 1) {
    // (0 failed every connect at once: "no Welcome within 0 ms".)
    throw new TypeError(`connectTimeoutMs must be a number of ms, at least 1, got ${String(connectMs)}`);
  }
  // The reconnect's backoff, as the Rust client's: more than zero (0 or NaN reconnected on a 0 ms timer, hundreds of
  // attempts a second against a server that refuses at once).
  for (const key of ['reconnectDelayMs', 'reconnectMaxDelayMs']) {
    const value = out[key];
    if (typeof value !== 'number' || Number.isNaN(value) || value < 1) {
      throw new TypeError(`${key} must be a number of ms, at least 1, got ${String(value)}`);
    }
    out[key] = Math.min(value, 2 ** 31 - 1); // a longer timer fires at once: a reconnect loop without a pause
  }
  const copies = out.copies;
  if (!Number.isInteger(copies) || copies < 0 || copies > MAX_COPIES) {
    throw new TypeError(`copies must be a whole number from 0 to ${MAX_COPIES}, got ${String(copies)}`);
  }
  const spacing = out.copySpacingMs;
  if (typeof spacing !== 'number' || !Number.isFinite(spacing) || spacing < 0) {
    throw new TypeError(`copySpacingMs must be a finite number of ms, at least 0, got ${String(spacing)}`);
  }
  // Infinity (never give up) and anything past what setTimeout takes (2^31 - 1 ms, about 24.8 days) are that: a
  // browser fires a longer timer at once, and every connect failed on the spot.
  out.connectTimeoutMs = Math.min(connectMs, 2 ** 31 - 1);
  const dead = out.deadServerAfterMs;
  if (dead !== undefined && (typeof dead !== 'number' || Number.isNaN(dead) || dead < 0)) {
    throw new TypeError(`deadServerAfterMs must be a number of ms, at least 0 (0: never), got ${String(dead)}`);
  }
  const idle = out.idleTimeoutMs;
  if (idle !== undefined && (typeof idle !== 'number' || Number.isNaN(idle) || idle < 0)) {
    throw new TypeError(`idleTimeoutMs must be a number of ms, at least 0 (0: never), got ${String(idle)}`);
  }
  const ping = out.keepAliveMs;
  if (ping !== undefined && (typeof ping !== 'number' || Number.isNaN(ping) || ping < 1)) {
    throw new TypeError(`keepAliveMs must be a number of ms, at least 1, got ${String(ping)}`);
  }
  const most = out.connectTimeoutMs / 2;
  out.fallbackTimeoutMs = Math.min(ms, most, 2 ** 31 - 1); // setTimeout takes at most 2^31 - 1
  out.certHashes = out.certHash ? [{ algorithm: 'sha-256', value: certHashBytes(out.certHash) }] : null;
  return out;
}

/**
 * One transport being opened by `open()`: `ready` resolves to it once ready and rejects with `failed(err)` (an
 * Error naming the URL); `abandon(reason)` closes it, opened or not (a WebSocket may be closed while connecting).
 */
function attempt(open, failed) {
  let wt;
  try {
    wt = open();
  } catch (err) {
    const ready = Promise.reject(err);
    ready.catch(() => {});
    return { ready, abandon() {} };
  }
  const ready = Promise.resolve(wt.ready).then(() => wt, (err) => {
    throw failed(err);
  });
  ready.catch(() => {}); // the loser of a race may fail unobserved
  const abandon = (reason) => {
    try {
      wt.close({ closeCode: 0, reason: String(reason).slice(0, 100) });
    } catch { /* it failed: nothing to close */ }
  };
  return { ready, abandon };
}

/** Why a dial was given up: the abort signal's reason. */
function abortError(signal) {
  return signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'connecting was given up'));
}

/**
 * Opens connections for a client of `urls` (`options`: as checked by `transportOptions`, with `websocketUrl`, a
 * URL or one per entry of `urls` (null: derived), `fallbackTimeoutMs` and `certHashes`).
 */
export class Dialer {
  #options;
  #websocketUrls = new Map(); // WebTransport URL -> WebSocket URL
  /**
   * Why WebTransport was given up for the WebSocket ('auto'): set when a WebSocket won a race because WebTransport
   * had failed or was not ready yet, and kept until WebTransport wins one again; else null. While set, both are
   * tried at once.
   */
  fallback = null;

  constructor(urls, options) {
    this.#options = options;
    const given = options.websocketUrl;
    urls.forEach((url, i) => {
      const ws = Array.isArray(given) ? given[i] : given;
      this.#websocketUrls.set(url, ws ?? null);
    });
  }

  /**
   * A connection to the node at `url` whose `ready` has resolved: `{wt, transport, fallback}`, `wt` a WebTransport
   * or a WebSocketTransport (the same shape), `transport` 'webtransport' or 'websocket', `fallback` why
   * WebTransport was not used ('auto'), else null. When `signal` (an AbortSignal) aborts first, whatever is being
   * opened is closed and this rejects with the signal's reason.
   */
  dial(url, signal = null) {
    const { transport: mode, webSocket } = this.#options;
    if (mode === 'webtransport' || (mode === 'auto' && typeof webSocket !== 'function')) {
      return this.#one(this.#webTransport(url), 'webtransport', signal);
    }
    if (mode === 'websocket') return this.#one(this.#webSocket(url), 'websocket', signal);
    return this.#race(url, signal);
  }

  #link(wt, transport) {
    return { wt, transport, fallback: transport === 'websocket' ? this.fallback : null };
  }

  /** One attempt's link once ready; closed when `signal` aborts first. */
  #one(opening, transport, signal) {
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const err = abortError(signal);
        opening.abandon(err.message);
        reject(err);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      opening.ready.then((wt) => resolve(this.#link(wt, transport)), reject)
        .finally(() => signal?.removeEventListener('abort', onAbort));
    });
  }

  /**
   * 'auto': WebTransport; after `fallbackTimeoutMs` (at once after a fallback, or when it fails) the WebSocket as
   * well, WebTransport still running. The first one ready is used and the other closed; this fails only when both
   * failed (or at `signal`). The fallback is remembered when the WebSocket won, forgotten when WebTransport did.
   */
  #race(url, signal) {
    return new Promise((resolve, reject) => {
      const ms = this.fallback !== null ? 0 : this.#options.fallbackTimeoutMs;
      const webTransport = this.#webTransport(url);
      let webSocket = null;
      let wtError = null;
      let wsError = null;
      let timer = null;
      let done = false;
      const finish = (then) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        then();
      };
      const bothFailed = () => finish(() => {
        reject(new Error(`${wtError.message}; the WebSocket fallback failed too: ${wsError.message}`));
      });
      const startWebSocket = (why) => {
        if (webSocket || done) return;
        webSocket = this.#webSocket(url);
        webSocket.ready.then(
          (wt) => finish(() => {
            webTransport.abandon('the WebSocket fallback was ready first');
            this.fallback = wtError?.message ?? why; // WebTransport failed, or was not ready yet
            resolve(this.#link(wt, 'websocket'));
          }),
          (err) => {
            wsError = err;
            if (wtError) bothFailed(); // else WebTransport may still get through
          },
        );
      };
      const onAbort = () => finish(() => {
        const err = abortError(signal);
        webTransport.abandon(err.message);
        webSocket?.abandon(err.message);
        reject(err);
      });
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      webTransport.ready.then(
        (wt) => finish(() => {
          webSocket?.abandon('WebTransport was ready first');
          this.fallback = null;
          resolve(this.#link(wt, 'webtransport'));
        }),
        (err) => {
          wtError = err;
          if (!webSocket) startWebSocket(err.message);
          else if (wsError) bothFailed();
        },
      );
      const late = ms === 0
        ? 'the WebSocket was ready first (both tried at once since an earlier fallback)'
        : `WebTransport to ${url} was not ready within ${ms} ms`;
      timer = setTimeout(() => startWebSocket(late), ms);
    });
  }

  /** A WebTransport session to `url` being opened. */
  #webTransport(url) {
    const { webTransport, certHashes } = this.#options;
    const open = () => {
      if (typeof webTransport !== 'function') throw new Error('this browser has no WebTransport');
      try {
        return new webTransport(url, certHashes ? { serverCertificateHashes: certHashes } : undefined);
      } catch (err) {
        throw new Error(`WebTransport to ${url}: ${err?.message ?? err}`);
      }
    };
    return attempt(open, (err) => new Error(`WebTransport to ${url} failed: ${err?.message ?? err}`));
  }

  /** The WebSocket fallback to the node at `url` (WebTransport URL) being opened. */
  #webSocket(url) {
    let wsUrl = null;
    const open = () => {
      wsUrl = String(this.#websocketUrls.get(url) ?? websocketUrlOf(url));
      return new WebSocketTransport(wsUrl, { webSocket: this.#options.webSocket });
    };
    const failed = (err) => {
      // A certificate hash pins WebTransport's certificate only: a browser's WebSocket cannot take one.
      const pinned = this.#options.certHashes && wsUrl.startsWith('wss:');
      const why = `${err?.message ?? err}`;
      if (!pinned) return new Error(why);
      return new Error(`${why} (certHash applies to WebTransport only: wss: needs a certificate the browser trusts)`);
    };
    return attempt(open, failed);
  }
}
