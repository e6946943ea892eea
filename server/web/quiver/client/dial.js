// How a client reaches the server: over WebTransport (QUIC), over the WebSocket fallback (TCP, client/websocket.js),
// or, the default ('auto'), WebTransport first and the WebSocket when WebTransport fails or is not ready in time.
// Once a client needed the WebSocket, its reconnects go straight to it (as the Rust client's Transport::Auto).

import { WebSocketTransport } from './websocket.js';

/** The values of the `transport` option. */
export const TRANSPORTS = Object.freeze(['auto', 'webtransport', 'websocket']);

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
 * `webSocket` the constructors. A function as `transport` is the older form of `webTransport` (WebTransport only).
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
  return out;
}

/**
 * Opens connections for a client of `urls` (`options`: as checked by `transportOptions`, with `websocketUrl`, a
 * URL or one per entry of `urls` (null: derived), `fallbackTimeoutMs` and `certHash`).
 */
export class Dialer {
  #options;
  #websocketUrls = new Map(); // WebTransport URL -> WebSocket URL
  /** Why WebTransport was given up for the WebSocket ('auto'), for the rest of the client's life; else null. */
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
   * WebTransport was not used ('auto'), else null.
   */
  async dial(url) {
    const { transport: mode, fallbackTimeoutMs } = this.#options;
    if (mode === 'webtransport') return this.#link(await this.#webTransport(url, null), 'webtransport');
    if (mode === 'websocket') return this.#link(await this.#webSocket(url), 'websocket');
    if (this.fallback === null) {
      try {
        return this.#link(await this.#webTransport(url, fallbackTimeoutMs), 'webtransport');
      } catch (err) {
        if (err.certHash || typeof this.#options.webSocket !== 'function') throw err;
        const why = err?.message ?? String(err);
        let wt;
        try {
          wt = await this.#webSocket(url);
        } catch (wsErr) { // neither got through: WebTransport first again next time
          throw new Error(`${why}; the WebSocket fallback failed too: ${wsErr?.message ?? wsErr}`);
        }
        this.fallback = why;
        return this.#link(wt, 'websocket');
      }
    }
    return this.#link(await this.#webSocket(url), 'websocket');
  }

  #link(wt, transport) {
    return { wt, transport, fallback: transport === 'websocket' ? this.fallback : null };
  }

  /** A WebTransport session to `url` once ready; within `ms` (or it is closed), when given. */
  async #webTransport(url, ms) {
    const { webTransport, certHash } = this.#options;
    if (typeof webTransport !== 'function') throw new Error('this browser has no WebTransport');
    let hashes;
    try {
      hashes = certHash ? [{ algorithm: 'sha-256', value: certHashBytes(certHash) }] : null;
    } catch (err) {
      throw Object.assign(err, { certHash: true }); // a mistake in the options, not a network to fall back from
    }
    let wt;
    try {
      wt = new webTransport(url, hashes ? { serverCertificateHashes: hashes } : undefined);
    } catch (err) {
      throw new Error(`WebTransport to ${url}: ${err?.message ?? err}`);
    }
    if (ms === null) {
      await wt.ready;
      return wt;
    }
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`WebTransport to ${url} was not ready within ${ms} ms`)), ms);
    });
    const ready = Promise.resolve(wt.ready).catch((err) => {
      throw new Error(`WebTransport to ${url} failed: ${err?.message ?? err}`);
    });
    ready.catch(() => {}); // it may fail after the race is lost
    try {
      await Promise.race([ready, late]);
      return wt;
    } catch (err) {
      try {
        wt.close({ closeCode: 0, reason: 'falling back to the WebSocket' });
      } catch { /* it failed: nothing to close */ }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The WebSocket fallback to the node at `url` (WebTransport URL), once open. */
  async #webSocket(url) {
    const wsUrl = this.#websocketUrls.get(url) ?? websocketUrlOf(url);
    const wt = new WebSocketTransport(wsUrl, { webSocket: this.#options.webSocket });
    await wt.ready;
    return wt;
  }
}
