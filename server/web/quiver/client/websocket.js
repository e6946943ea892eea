// The WebSocket fallback with the shape of a WebTransport session: exactly what client/session.js uses of
// WebTransport (`ready`, `closed`, `close`, one bidirectional control stream, server-opened room streams, stopped
// when their reader cancels them, datagrams), over one WebSocket that speaks the protocol's WebSocket mapping
// (wire/ws.js). A Session cannot tell the two apart, except that this one says `copies: false` (no datagram copies
// over TCP).
//
// Outgoing ticks stay latest-wins over TCP: while the socket is backed up (`bufferedAmount` above a few KiB), at
// most one tick per channel waits here (a newer one replaces it in place) and the waiting ones go when it drains:
// never a backlog of stale ticks.
//
// The browser answers the server's WebSocket pings without telling JS: `receivedAt` says when anything last
// arrived, for the Session's keep-alive (client/session.js) to notice a connection that died quietly.

import { ErrorCode, QuiverDecodeError } from '../wire/errors.js';
import {
  WS_MAX_CHUNK, WS_MAX_DATAGRAM, WS_MAX_MESSAGE, WS_SUBPROTOCOL, decodeWsMessage, encodeWsMessage, tickChannel,
} from '../wire/ws.js';

/** `bufferedAmount` above which outgoing ticks wait (latest per channel) instead of going to the socket. */
export const TICK_HIGH_WATER = 16 * 1024;

/** Bytes of datagrams that may wait for the socket; beyond it the oldest waiting one is dropped (as Rust's). */
export const DATAGRAM_BUFFER = 4 * 1024;

/**
 * Room streams the server may have open at once (as the Rust client's `MAX_INBOUND_STREAMS`; QUIC: the stream
 * limit); a server opening more is broken or hostile, and the connection is closed with ProtocolViolation. A
 * Session raises it to twice its Welcome's `max_rooms` + 1 when that is more.
 */
export const MAX_INBOUND_STREAMS = 4096;

/**
 * Bytes of datagrams received and not read yet, each counted with 32 bytes more; past it the oldest go (latest wins,
 * as quinn's receive buffer and the Rust lane: `transport/src/ws/datagrams_in.rs`). Until 2026-12-06, 256 datagrams,
 * the newest dropped: a reader behind read stale ticks and never the latest.
 */
export const INBOUND_DATAGRAM_BYTES = 64 * 1024;
const DATAGRAM_OVERHEAD = 32;

/** How often a backed-up socket is looked at again (WebSocket has no "drained" event). */
const DRAIN_POLL_MS = 4;

/** A WebSocket's readyState when open. */
const OPEN = 1;

/**
 * The error a room stream's reader rejects with when the server resets it, or any stream's when the connection
 * ends: shaped like the browser's WebTransportError (`source` 'stream' with `streamErrorCode`, or 'session'), and
 * `closeCode`, the code the connection was closed with (by either end; null when it was lost).
 */
export class WebSocketTransportError extends Error {
  constructor(message, { source = 'session', streamErrorCode = null, closeCode = null } = {}) {
    super(message);
    this.name = 'WebTransportError';
    this.source = source;
    this.streamErrorCode = streamErrorCode;
    this.closeCode = closeCode;
  }
}

/**
 * A ReadableStream and its controller, which ignores calls once the stream ended. `onCancel(reason)`, if given, hears
 * its reader cancel it before it ended (not after a close whose chunks were still unread: the stream had ended).
 */
function feed(strategy, onCancel = null) {
  let controller;
  let ended = false;
  const cancel = (reason) => {
    if (ended) return;
    ended = true;
    onCancel?.(reason);
  };
  const readable = new ReadableStream({ start: (c) => { controller = c; }, cancel }, strategy);
  const once = (fn) => {
    if (ended) return;
    ended = true;
    try { fn(); } catch { /* cancelled by its reader */ }
  };
  return {
    readable,
    get desiredSize() {
      return ended ? 0 : controller.desiredSize;
    },
    enqueue(chunk) {
      if (!ended) try { controller.enqueue(chunk); } catch { /* cancelled by its reader */ }
    },
    close: () => once(() => controller.close()),
    error: (err) => once(() => controller.error(err)),
  };
}

/**
 * A readable of datagrams that keeps at most `limit` bytes waiting for its reader, dropping the oldest past it (a
 * ReadableStream's own queue can only refuse the newest). `enqueue`, `close` and `error` as `feed`'s.
 */
function latestFeed(limit) {
  const waiting = [];
  let bytes = 0;
  let controller;
  let wake = null; // a read waiting for the next datagram
  let ended = false;
  const cost = (datagram) => datagram.length + DATAGRAM_OVERHEAD;
  const give = () => {
    if (ended || waiting.length === 0) return;
    const datagram = waiting.shift();
    bytes -= cost(datagram);
    try { controller.enqueue(datagram); } catch { /* cancelled by its reader */ }
  };
  const readable = new ReadableStream({
    start: (c) => { controller = c; },
    // Asked for one when a read waits (no queue of the stream's own: highWaterMark 0).
    pull: () => (waiting.length > 0 ? give() : new Promise((resolve) => { wake = resolve; }).then(give)),
  }, { highWaterMark: 0 });
  const end = (fn) => {
    if (ended) return;
    ended = true;
    waiting.length = 0;
    try { fn(); } catch { /* cancelled by its reader */ }
    wake?.();
  };
  return {
    readable,
    enqueue(datagram) {
      if (ended) return;
      waiting.push(datagram);
      bytes += cost(datagram);
      while (bytes > limit && waiting.length > 1) bytes -= cost(waiting.shift());
      const woken = wake;
      wake = null;
      woken?.();
    },
    close: () => end(() => controller.close()),
    error: (err) => end(() => controller.error(err)),
  };
}

/** A Quiver connection over one WebSocket, shaped like a WebTransport session (see the top of this file). */
export class WebSocketTransport {
  /** Over WebSockets the server sends no datagram copies and takes none: a Session sends no post copies. */
  copies = false;
  /** When a message last arrived, or the socket opened (`performance.now()`, ms). */
  receivedAt = performance.now();
  /** Room streams the server may have open at once (MAX_INBOUND_STREAMS unless a Session raised it). */
  maxInboundStreams = MAX_INBOUND_STREAMS;

  #url;
  #ws;
  #control = feed();
  #controlTaken = false;
  #streams = new Map(); // open room streams by id (BigInt) -> feed
  #lastStream = 0n;
  #incoming = feed();
  #datagramsIn = latestFeed(INBOUND_DATAGRAM_BYTES);
  #waiting = new Map(); // datagrams waiting for the socket: channel (BigInt) or a unique key -> bytes
  #waitingBytes = 0;
  #drainTimer = null;
  #errorTimer = null; // after an error event, in case no close event follows
  #opened = false;
  #ended = null; // why the connection ended: {closeCode, reason} (closed cleanly) or an Error (lost)
  #settle;
  #highWater;

  /**
   * Opens `new WebSocket(url, 'quiver')`. Options: `webSocket` (the WebSocket constructor; replaceable for tests)
   * and `highWater` (`bufferedAmount` above which ticks wait, TICK_HIGH_WATER).
   */
  constructor(url, { webSocket = globalThis.WebSocket, highWater = TICK_HIGH_WATER } = {}) {
    if (typeof webSocket !== 'function') throw new Error('this browser has no WebSocket');
    this.#url = url;
    this.#highWater = highWater;
    this.ready = new Promise((resolve, reject) => {
      this.closed = new Promise((resolveClosed, rejectClosed) => {
        this.#settle = { resolve, reject, resolveClosed, rejectClosed };
      });
    });
    // Like WebTransport's, these two never count as unhandled rejections.
    this.ready.catch(() => {});
    this.closed.catch(() => {});
    this.incomingUnidirectionalStreams = this.#incoming.readable;
    this.datagrams = {
      readable: this.#datagramsIn.readable,
      writable: new WritableStream({ write: (datagram) => this.#queueDatagram(datagram) }),
      maxDatagramSize: WS_MAX_DATAGRAM,
    };
    const ws = new webSocket(url, WS_SUBPROTOCOL); // throws on a bad URL
    this.#ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('open', () => this.#onOpen());
    ws.addEventListener('message', (event) => this.#onMessage(event.data));
    ws.addEventListener('close', (event) => this.#onSocketClosed(event));
    // Browsers follow an error event with a close event (with the code) in the same task; not every implementation
    // does, so an error ends things too if no close came by the next task.
    ws.addEventListener('error', () => {
      this.#errorTimer ??= setTimeout(() => this.#onSocketClosed(null), 0);
    });
  }

  /** The control stream (once): `{readable, writable}`, the bytes of kind-0 messages each way. */
  async createBidirectionalStream() {
    if (this.#ended) throw this.#endError();
    if (this.#controlTaken) throw new Error('a WebSocket connection has one control stream');
    this.#controlTaken = true;
    const writable = new WritableStream({ write: (chunk) => this.#writeControl(chunk) });
    return { readable: this.#control.readable, writable };
  }

  /** Closes the connection with `closeCode` and `reason` (both sent to the server first), as WebTransport's close. */
  close({ closeCode = ErrorCode.NoError, reason = '' } = {}) {
    if (this.#ended) return;
    if (this.#opened && this.#ws.readyState === OPEN) {
      try {
        this.#ws.send(encodeWsMessage({ Close: { code: closeCode, reason: String(reason) } }));
      } catch { /* the socket is going anyway */ }
    }
    this.#end({ closeCode, reason: String(reason) });
    try {
      this.#ws.close(1000);
    } catch { /* already closing */ }
  }

  // ── receiving ──

  #onOpen() {
    if (this.#ended) return;
    const protocol = this.#ws.protocol;
    if (protocol && protocol !== WS_SUBPROTOCOL) {
      this.#fail(ErrorCode.ProtocolViolation, `the server chose subprotocol ${protocol}, not ${WS_SUBPROTOCOL}`);
      return;
    }
    this.#opened = true;
    this.receivedAt = performance.now();
    this.#settle.resolve();
  }

  #onMessage(data) {
    if (this.#ended) return;
    this.receivedAt = performance.now();
    if (typeof data === 'string') {
      this.#fail(ErrorCode.ProtocolViolation, 'text WebSocket message (Quiver sends binary only)');
      return;
    }
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    if (bytes?.byteLength > WS_MAX_MESSAGE) {
      this.#fail(ErrorCode.FrameTooLarge, `WebSocket message of ${bytes.byteLength} bytes (at most ${WS_MAX_MESSAGE})`);
      return;
    }
    let message;
    try {
      message = decodeWsMessage(bytes);
    } catch (err) {
      if (!(err instanceof QuiverDecodeError)) throw err;
      this.#fail(err.code, err.message);
      return;
    }
    this.#dispatch(message);
  }

  #dispatch(message) {
    if (message.Control) {
      if (message.Control.length > 0) this.#control.enqueue(message.Control);
    } else if (message.Datagram) {
      if (message.Datagram.length > WS_MAX_DATAGRAM) {
        // As the Rust lane closes (either end): a datagram QUIC's path could not have carried.
        const what = `a datagram of ${message.Datagram.length} bytes (at most ${WS_MAX_DATAGRAM})`;
        this.#fail(ErrorCode.DatagramTooLarge, what);
        return;
      }
      // The oldest dropped when the reader is far behind (as QUIC's receive buffer drops datagrams).
      this.#datagramsIn.enqueue(message.Datagram);
    } else if (message.Stream) {
      const stream = this.#stream(message.Stream.id);
      if (stream && message.Stream.bytes.length > 0) stream.enqueue(message.Stream.bytes);
    } else if (message.Finish) {
      this.#stream(message.Finish.id)?.close();
      this.#streams.delete(message.Finish.id);
    } else if (message.Reset) {
      const { id, code } = message.Reset;
      const err = new WebSocketTransportError(`stream reset (${code})`, { source: 'stream', streamErrorCode: code });
      this.#stream(id)?.error(err);
      this.#streams.delete(id);
    } else if (message.Stop) {
      this.#fail(ErrorCode.ProtocolViolation, 'the server sent a stop (kind 6): only clients stop streams');
    } else if (message.Close) {
      // The server closes: its code and reason are the connection's (QUIC: CONNECTION_CLOSE). The close frame
      // follows; the socket is closed from this end too, in case it does not.
      this.#end({ closeCode: message.Close.code, reason: message.Close.reason });
      try {
        this.#ws.close(1000);
      } catch { /* already closing */ }
    }
  }

  /** Room stream `id`: a new id (above every earlier one) opens it; an id that ended before is null. */
  #stream(id) {
    const open = this.#streams.get(id);
    if (open) return open;
    if (id <= this.#lastStream) return null; // ended or stopped before: its late bytes are dropped
    if (this.#streams.size >= this.maxInboundStreams) {
      this.#fail(ErrorCode.ProtocolViolation, `the server opened more than ${this.maxInboundStreams} room streams at once`);
      return null;
    }
    this.#lastStream = id;
    const stream = feed(undefined, (reason) => this.#stop(id, reason));
    this.#streams.set(id, stream);
    this.#incoming.enqueue(stream.readable);
    return stream;
  }

  /**
   * Room stream `id`'s reader cancelled it (its room left, or a rejoin's stream took over): the server is told to stop
   * sending it (kind 6), as WebTransport's cancel sends STOP_SENDING, with the reason's `streamErrorCode` or else
   * NoError, as a browser's: else the server would go on sending it, over the socket every room shares, for nobody.
   * The stream no longer counts as open. Nothing is sent once the stream or the connection ended.
   */
  #stop(id, reason) {
    if (!this.#streams.delete(id) || this.#ended || this.#ws.readyState !== OPEN) return;
    const given = reason?.streamErrorCode;
    const code = Number.isInteger(given) && given >= 0 && given <= 0xffff_ffff ? given : ErrorCode.NoError;
    try {
      this.#ws.send(encodeWsMessage({ Stop: { id, code } }));
    } catch { /* the socket is going: the stream goes with the connection */ }
  }

  /** The socket closed (`event`), or failed (null): without a Close message first, the connection is lost. */
  #onSocketClosed(event) {
    if (this.#ended) return;
    const how = event ? `code ${event.code ?? 1006}${event.reason ? `: ${event.reason}` : ''}` : 'a WebSocket error';
    if (!this.#opened) {
      this.#end(new Error(`the WebSocket to ${this.#url} did not open (${how})`));
    } else {
      // As a QUIC connection that timed out, not one closed with a code.
      this.#end(new Error(`the WebSocket closed without a Quiver close (${how})`));
    }
    if (!event) {
      try {
        this.#ws.close();
      } catch { /* closed already */ }
    }
  }

  // ── sending ──

  #writeControl(chunk) {
    if (!(chunk instanceof Uint8Array)) throw new TypeError('the control stream takes Uint8Array chunks');
    this.#checkOpen();
    // The control stream's bytes go in chunks of at most 16 KiB (the receiver takes them as a byte stream).
    for (let at = 0; at < chunk.length; at += WS_MAX_CHUNK) {
      this.#ws.send(encodeWsMessage({ Control: chunk.subarray(at, at + WS_MAX_CHUNK) }));
    }
  }

  /**
   * Sends a datagram, or (the socket backed up) keeps it waiting: a tick replaces the waiting tick of its channel;
   * a datagram larger than 1,200 bytes is dropped, as WebTransport drops one above `maxDatagramSize`. Once the
   * socket has drained, what waits goes first, then this one, at once (not at the next poll: a background tab's
   * timers may be slowed to a second or more).
   */
  #queueDatagram(datagram) {
    if (!(datagram instanceof Uint8Array)) throw new TypeError('datagrams are Uint8Arrays');
    this.#checkOpen();
    if (datagram.length > WS_MAX_DATAGRAM) return;
    if (this.#ws.bufferedAmount <= this.#highWater) {
      if (this.#waiting.size > 0) this.#drain();
      this.#ws.send(encodeWsMessage({ Datagram: datagram }));
      return;
    }
    const channel = tickChannel(datagram);
    const key = channel ?? Symbol('datagram'); // channel 0 (not a tick) and the like are never conflated
    const old = this.#waiting.get(key);
    if (old) {
      this.#waitingBytes -= old.length;
    } else {
      for (const [oldest, bytes] of this.#waiting) {
        if (this.#waitingBytes + datagram.length <= DATAGRAM_BUFFER) break;
        this.#waiting.delete(oldest);
        this.#waitingBytes -= bytes.length;
      }
    }
    this.#waiting.set(key, datagram.slice()); // an existing key keeps its place: replaced in place
    this.#waitingBytes += datagram.length;
    this.#drainTimer ??= setTimeout(() => this.#drain(), DRAIN_POLL_MS);
  }

  /** Sends the waiting datagrams, in order, once the socket has drained; else looks again shortly. */
  #drain() {
    clearTimeout(this.#drainTimer);
    this.#drainTimer = null;
    if (this.#ended || this.#waiting.size === 0) return;
    if (this.#ws.bufferedAmount > this.#highWater) {
      this.#drainTimer = setTimeout(() => this.#drain(), DRAIN_POLL_MS);
      return;
    }
    const waiting = [...this.#waiting.values()];
    this.#waiting.clear();
    this.#waitingBytes = 0;
    try {
      for (const datagram of waiting) this.#ws.send(encodeWsMessage({ Datagram: datagram }));
    } catch { /* the socket is going; ticks are not retried */ }
  }

  /** What waits for the socket: `{datagrams, bytes, polling}` (polling: a look at the socket is scheduled). */
  get waiting() {
    return { datagrams: this.#waiting.size, bytes: this.#waitingBytes, polling: this.#drainTimer !== null };
  }

  #checkOpen() {
    if (this.#ended) throw this.#endError();
    if (!this.#opened) throw new Error('the WebSocket is not open yet');
  }

  // ── the end ──

  /** This end closes the connection for a reason of its own (the server broke the protocol): told to the server. */
  #fail(code, reason) {
    this.close({ closeCode: code, reason });
  }

  /**
   * The connection ended, `why` `{closeCode, reason}` (closed by either end) or an Error (lost). `closed` settles
   * first, so that whoever waits on it learns the code before the streams fail; then every stream fails.
   */
  #end(why) {
    if (this.#ended) return;
    this.#ended = why;
    clearTimeout(this.#drainTimer);
    clearTimeout(this.#errorTimer);
    this.#drainTimer = null;
    this.#waiting.clear();
    this.#waitingBytes = 0;
    const lost = why instanceof Error;
    if (!this.#opened) this.#settle.reject(lost ? why : new Error(`closed before the WebSocket opened: ${why.reason}`));
    if (lost) this.#settle.rejectClosed(why);
    else this.#settle.resolveClosed(why);
    const err = this.#endError();
    for (const stream of [this.#control, this.#incoming, this.#datagramsIn, ...this.#streams.values()]) {
      stream.error(err);
    }
    this.#streams.clear();
  }

  #endError() {
    const why = this.#ended;
    if (why instanceof Error) return new WebSocketTransportError(why.message);
    const text = `connection closed (${why.closeCode}): ${why.reason}`;
    return new WebSocketTransportError(text, { closeCode: why.closeCode });
  }
}
