// One connection to a Quiver server, over WebTransport or the WebSocket fallback shaped like it (client/dial.js
// opens either): the Hello/Welcome handshake, requests and their replies on the control stream, server pushes,
// room streams handed to the client as they arrive, and tick datagrams routed to subscriptions by channel id. A
// Session never reconnects; QuiverClient opens a new one when it is lost.

import { ErrorCode, QuiverDecodeError, QuiverError } from '../wire/errors.js';
import { DEFAULT_MAX_FRAME, FrameReader, MAX_FRAME_CEILING, MAX_ROOMS_CEILING, encodeFrame } from '../wire/frames.js';
import { wire } from '../wire/messages.js';
import { MAX_PORTABLE_DATAGRAM, TICK_HEADER_MAX_LEN, decodeTick, isProbe } from '../wire/ticks.js';
import { decodeCopy, encodePostCopy, isCopy } from '../wire/copies.js';
import { RequestTable } from '../state.js';
import { Unrouted, expectReply, unixUs } from './values.js';
import { within } from './waiting.js';

/** Sent in Hello as the client's software and version. */
export const AGENT = 'quiver-web/0.1';

/**
 * Over the WebSocket: a Ping after this long without receiving anything (option `keepAliveMs`), at most two thirds of
 * the time after which the session is lost.
 */
export const KEEP_ALIVE_MS = 10_000;

/**
 * Over the WebSocket: the connection is lost after this long without receiving anything (`idleTimeoutMs`), requests
 * waiting for replies or not; sooner, after `deadServerAfterMs`, while none waits.
 */
export const IDLE_TIMEOUT_MS = 30_000;

/**
 * The connection is lost after this long without receiving anything (`deadServerAfterMs`; 0: never), a Ping having
 * gone out after two thirds of it: the Rust client's `dead_server_after` (12 s, its keep-alive 8 s), while no
 * request of the session's waits for its reply (over the WebSocket, at most `idleTimeoutMs`). The browser's QUIC
 * keep-alives are invisible to JS, and its idle timeout (30 s) was what noticed a dead node before.
 */
export const DEAD_SERVER_AFTER_MS = 12_000;

/** A transport error that carries the code the connection was closed with (the server closed it before Welcome). */
function withCloseCode(err) {
  if (err instanceof QuiverError || err instanceof QuiverDecodeError || typeof err?.closeCode !== 'number') return err;
  return new QuiverError(err.closeCode, err.message);
}

/** How long a handshake that failed waits for its session's `closed` to give the server's close code. */
const CLOSE_CODE_WAIT_MS = 100;

/**
 * How long a connection whose control stream the server ended (without GoAway) waits for the server's close, with
 * its code, before it closes itself (the Rust client's `CONTROL_GONE_GRACE`): the server finishes the stream first
 * and closes a moment later, with `TokenExpired` at the token's expiry or the refusal's code after a key reload.
 */
const CONTROL_GONE_GRACE_MS = 2000;

/**
 * `err` (a handshake's failure on `wt`) with the code the server closed the session with, if it did. Over
 * WebTransport the stream errors do not carry it (Chromium's WebTransportError has no closeCode): the session's
 * `closed` does, at once or a moment later. Nothing else is waited for.
 */
async function withSessionClose(wt, err) {
  const known = withCloseCode(err);
  if (known !== err || err instanceof QuiverError || err instanceof QuiverDecodeError) return known;
  let timer;
  const info = await Promise.race([
    wt.closed.then((closed) => closed, () => null),
    new Promise((resolve) => { timer = setTimeout(() => resolve(null), CLOSE_CODE_WAIT_MS); }),
  ]);
  clearTimeout(timer);
  if (typeof info?.closeCode !== 'number') return err;
  return new QuiverError(info.closeCode, info.reason || String(err?.message ?? err));
}

/** One connection (see the top of this file). */
export class Session {
  /**
   * Connects (`hooks.dial(url, signal)`: a ready `{wt, transport, fallback}`, see client/dial.js; `signal` aborts
   * when this gives up) and says Hello; resolves once Welcome arrived, within `options.connectTimeoutMs`. `hooks`:
   * dial, onPush, onRoomStream, onTick, onRoomCopy, onLost, and `closing` (an AbortSignal: the client closed, which
   * gives the attempt up at once). `cancel` (an AbortSignal, optional) gives this attempt alone up (another address
   * answered first). A server that closes the connection before Welcome rejects it with a QuiverError of its close
   * code.
   */
  static async open(url, options, hooks, cancel = null) {
    const giveUp = new AbortController();
    const dialing = hooks.dial(url, giveUp.signal);
    let timer;
    let onClosing;
    let onCancel;
    const timeout = new Promise((_, reject) => {
      const ms = options.connectTimeoutMs;
      // Internal, as the client's other ways of finding a server gone (a reconnect's failed attempt, a silent
      // connection): a timeout must not read as the application's own close (NoError).
      const late = () => new QuiverError(ErrorCode.Internal, `no Welcome from ${url} within ${ms} ms`);
      timer = setTimeout(() => reject(late()), ms);
      onClosing = () => reject(hooks.closing.reason);
      onCancel = () => reject(cancel.reason);
      if (hooks.closing?.aborted) onClosing();
      else hooks.closing?.addEventListener('abort', onClosing, { once: true });
      if (cancel?.aborted) onCancel();
      else cancel?.addEventListener('abort', onCancel, { once: true });
    });
    const handshake = async () => {
      const link = await dialing;
      try {
        return await greet(link);
      } catch (err) {
        throw giveUp.signal.aborted ? err : await withSessionClose(link.wt, err);
      }
    };
    const greet = async (link) => {
      const { wt } = link;
      const stream = await wt.createBidirectionalStream();
      const writer = stream.writable.getWriter();
      const reader = stream.readable.getReader();
      const { protocolVersion: version, name = null } = options;
      if (giveUp.signal.aborted) throw giveUp.signal.reason; // given up (timed out, the client closed): no token
      // A function is asked at every connect, so an expired token is replaced by a fresh one on reconnect.
      const token = typeof options.token === 'function' ? await options.token() : (options.token ?? null);
      if (giveUp.signal.aborted) throw giveUp.signal.reason;
      const hello = { Hello: { version, agent: AGENT, name, token } };
      await writer.write(encodeFrame(wire.Request, { req_id: 0n, body: hello }));
      const frames = new FrameReader(DEFAULT_MAX_FRAME);
      for (;;) {
        const { done, value } = await reader.read();
        if (done) throw new Error('the server finished the control stream before Welcome');
        const [first, ...rest] = frames.push(value);
        if (first === undefined) continue;
        const msg = wire.ServerMsg.decode(first);
        const reply = msg.Reply;
        if (reply?.req_id === 0n && reply.result.Err) {
          const { code, message } = reply.result.Err;
          throw new QuiverError(code, message, { refused: true });
        }
        if (msg.GoAway || msg.Error) {
          // A push before Welcome (a server draining as the Hello came): the server's code and reason, as the Rust
          // client's `ConnectError::Closed`; it was taken for a protocol violation, and the server blamed for it.
          const { code, reason, message } = msg.GoAway ?? msg.Error;
          throw new QuiverError(code, reason ?? message, { closed: true });
        }
        if (reply?.req_id !== 0n || !reply.result.Ok?.Welcome) {
          throw new QuiverError(ErrorCode.ProtocolViolation, `expected Welcome, got ${Object.keys(msg)[0]}`);
        }
        const spoken = reply.result.Ok.Welcome.version;
        if (spoken !== version) {
          // The two ends would not understand each other; trying again cannot help.
          throw new QuiverError(
            ErrorCode.ProtocolViolation,
            `the server's Welcome speaks protocol version ${spoken}, this client's Hello asked for ${version}`,
            { refused: true },
          );
        }
        // (Past what setTimeout takes, 2^31 - 1 ms, is never: a longer timer fires at once.)
        const dead = options.deadServerAfterMs ?? DEAD_SERVER_AFTER_MS;
        const watched = dead > 0 && dead < 2 ** 31 - 1;
        let keepAlive = watched && { pingMs: (dead * 2) / 3, timeoutMs: dead, busyTimeoutMs: Infinity };
        if (typeof link.wt.receivedAt === 'number') {
          // Over the WebSocket no transport timeout JS can see ends a session whose server is gone (TCP may wait
          // for minutes): `idleTimeoutMs` does, requests waiting or not; `deadServerAfterMs` sooner while none waits.
          // (0, or past what setTimeout takes, is never.)
          const idleMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
          const idle = idleMs > 0 && idleMs < 2 ** 31 - 1 ? idleMs : Infinity;
          const quiet = watched ? Math.min(dead, idle) : idle;
          const pingMs = Math.min(options.keepAliveMs ?? KEEP_ALIVE_MS, (quiet * 2) / 3);
          keepAlive = quiet !== Infinity && { pingMs, timeoutMs: quiet, busyTimeoutMs: idle };
        }
        return new Session(link, writer, reader, frames, rest, reply.result.Ok.Welcome, hooks, keepAlive);
      }
    };
    try {
      return await Promise.race([handshake(), timeout]);
    } catch (caught) {
      const err = withCloseCode(caught);
      const broke = err instanceof QuiverDecodeError || (err.code === ErrorCode.ProtocolViolation && !err.closed);
      const code = broke ? err.code : ErrorCode.NoError; // (a server that broke the protocol is told so)
      const reason = err.refused ? 'refused' : String(err.message ?? err).slice(0, 100);
      // A connection still being opened is closed by the dial (a fallback it started forgotten); an open one here.
      giveUp.abort(err);
      dialing.then(({ wt }) => {
        try {
          wt.close({ closeCode: code, reason });
        } catch { /* already closed */ }
      }, () => {});
      throw err;
    } finally {
      clearTimeout(timer);
      hooks.closing?.removeEventListener('abort', onClosing);
      cancel?.removeEventListener('abort', onCancel);
    }
  }

  constructor({ wt, transport, fallback }, writer, reader, frames, leftover, welcome, hooks, keepAlive) {
    this.wt = wt;
    /** 'webtransport' or 'websocket'; `fallback`: why WebTransport was not used, else null. */
    this.transport = transport;
    this.fallback = fallback;
    this.writer = writer;
    this.welcome = welcome;
    this.hooks = hooks;
    this.maxFrame = Math.min(welcome.limits.max_frame, MAX_FRAME_CEILING);
    /** Bytes of unfinished frames this session's room streams hold together (`roomFrames`). */
    this.unfinished = { held: 0 };
    if ('maxInboundStreams' in wt) {
      // No stream credit on the WebSocket: a rejoined room's stream may open before the left one's finish arrives.
      // (At most MAX_ROOMS_CEILING of the Welcome's: a hostile server announcing billions would have the client
      // take a stream and a buffer for every few bytes it sends.)
      const rooms = Math.min(Number(welcome.limits.max_rooms), MAX_ROOMS_CEILING);
      wt.maxInboundStreams = Math.max(wt.maxInboundStreams, 2 * (rooms + 1));
    }
    this.requests = new RequestTable(1n);
    /** Subscriptions by their channel id (BigInt keys); `unrouted`: ticks that overtook their Subscribe's answer. */
    this.channels = new Map();
    this.unrouted = new Unrouted();
    /** Channel -> the next tick number of a claim unpublished on this version-4 session (`unclaimOn`). */
    this.unpublished = new Map();
    this.datagramWriter = null;
    /** Requests written after Hello so far: a post copy names its post by this number (the server counts alike). */
    this.written = 0n;
    /** Rooms whose posts also go as datagram copies (their stream on this session has copies). */
    this.copyRooms = new Set();
    this.copyRounds = hooks.copies ?? { copies: 2, spacingMs: 5 };
    this.goAway = null;
    this.closedWhy = null;
    this.ended = new Promise((resolve) => { this.markEnded = resolve; }); // resolved at `lost`
    this.keepAliveTimer = null;
    frames.maxFrame = this.maxFrame;
    this.readControl(reader, frames, leftover);
    this.acceptRoomStreams();
    this.readDatagrams();
    /** When anything last arrived (`heard`): the control stream, a room stream, a datagram. */
    this.heardAt = performance.now();
    if (keepAlive) this.#keepAlive(keepAlive);
    wt.closed.then(
      (info) => this.lost({ code: info?.closeCode ?? ErrorCode.NoError, reason: info?.reason || 'connection closed' }),
      (err) => this.lost({ code: ErrorCode.Internal, reason: `connection lost: ${err?.message ?? err}` }),
    );
  }

  /**
   * Sends one request; resolves with the reply's Ok value, rejects with a QuiverError (or QuiverEncodeError).
   * `noted(reqId)`, if given, hears the request's id before it is written (a Join's stream names it).
   * `answered(ok, err)`, if given, hears the reply instead, synchronously as its frame is read (the promise then
   * settles only if the request fails otherwise: not written, or the session lost). `probe`: one of the session's
   * own Pings, not a request the dead-server watchdog waits for.
   */
  request(body, noted = null, answered = null, probe = false) {
    return new Promise((resolve, reject) => {
      let reqId;
      let frame;
      try {
        reqId = this.requests.start({ resolve, reject, answered, probe });
        frame = encodeFrame(wire.Request, { req_id: reqId, body }, this.maxFrame);
        noted?.(reqId);
      } catch (err) {
        if (reqId !== undefined) this.requests.complete(reqId);
        reject(err);
        return;
      }
      this.writer.write(frame).catch((err) => {
        this.lost({ code: ErrorCode.Internal, reason: `control stream: ${err?.message ?? err}` });
      });
      this.written += 1n;
      if (body.Post && this.copyRooms.has(body.Post.room)) this.#copyPost(this.written, frame);
    });
  }

  /** Post `number`'s copies: one datagram a millisecond after the request, the next ones `spacingMs` apart. */
  #copyPost(number, frame) {
    const { copies, spacingMs } = this.copyRounds;
    if (this.wt.copies === false) return; // the WebSocket: no copies (TCP retransmits; the server takes none)
    const datagram = encodePostCopy(number, [frame]);
    const max = this.maxDatagramSize;
    if (max !== null && datagram.length > max) return; // the control stream carries it alone
    for (let round = 0; round < copies; round++) {
      setTimeout(() => {
        if (!this.closedWhy) this.sendDatagram(datagram);
      }, 1 + round * spacingMs);
    }
  }

  /** Something arrived from the server now. */
  heard() {
    this.heardAt = performance.now();
  }

  /** When anything last arrived: the WebSocket's own `receivedAt` (its pings and pongs too), else `heardAt`. */
  #lastHeard() {
    return typeof this.wt.receivedAt === 'number' ? this.wt.receivedAt : this.heardAt;
  }

  /**
   * The browser answers the server's WebSocket pings and QUIC's keep-alives without telling JS, so a connection
   * that died quietly (a network change, a NAT timeout, sleep, a node gone) would look idle until the transport's
   * own timeout, if any. After `pingMs` without receiving anything a Ping goes on the control stream; once nothing
   * has arrived for `timeoutMs`, the Ping included, the connection is lost (and the client reconnects). Whatever
   * arrives puts both off. A Ping always gets `timeoutMs - pingMs` to be answered: a timer that fired late (a
   * background tab's may wait a minute) is not taken for a dead connection. While other requests wait for their
   * replies the limit is `busyTimeoutMs` instead, since the server answers in request order and a live server whose
   * room store is behind holds the Pong behind the posts it has not stored yet: Infinity over WebTransport (QUIC's
   * own idle timeout, 30 s, still ends a session whose server is gone), `idleTimeoutMs` over the WebSocket.
   */
  #keepAlive({ pingMs, timeoutMs, busyTimeoutMs }) {
    let pingAt = null; // when the keep-alive Ping now unanswered went out
    const check = () => {
      clearTimeout(this.keepAliveTimer);
      this.keepAliveTimer = null;
      if (this.closedWhy) return;
      const now = performance.now();
      const heardAt = this.#lastHeard();
      if (pingAt !== null && heardAt >= pingAt) pingAt = null; // something came since
      const idle = now - heardAt;
      if (idle < pingMs) {
        this.keepAliveTimer = setTimeout(check, pingMs - idle);
        return;
      }
      if (pingAt === null) {
        pingAt = now;
        const ping = { Ping: { client_time_us: BigInt(Math.round(unixUs())) } };
        this.request(ping, null, null, true).then(check, () => {});
      }
      const grace = timeoutMs - pingMs;
      // (Not the session's own Pings: this one, one given up by the clock estimate, one an answer overtook.)
      const busy = this.requests.waitingForReplies();
      const limit = busy ? busyTimeoutMs : timeoutMs;
      if (idle >= limit && now - pingAt >= grace) {
        this.lost({ code: ErrorCode.Internal, reason: `connection lost: nothing received for ${limit} ms` });
        return;
      }
      const due = Math.max(limit - idle, grace - (now - pingAt));
      // (Busy: looked at again a grace later at most, as its requests may end meanwhile; not spun on.)
      this.keepAliveTimer = setTimeout(check, busy ? Math.min(due, grace) : due);
    };
    this.keepAliveTimer = setTimeout(check, pingMs);
  }

  /**
   * `count` Ping/Pong round trips: `{rttUs, clientTimeUs, serverTimeUs}` samples; fewer when one fails, when
   * `timeoutMs` passed in all (a server that answers no Ping must not hold a connect or a reconnect), or when
   * `signal` aborts (the client closed): the samples so far.
   */
  async clockSamples(count, { timeoutMs = Infinity, signal = undefined } = {}) {
    const samples = [];
    const deadline = performance.now() + timeoutMs;
    for (let i = 0; i < count && !this.closedWhy && !signal?.aborted; i++) {
      const clientTimeUs = unixUs();
      const started = performance.now();
      try {
        const ping = this.request({ Ping: { client_time_us: BigInt(Math.round(clientTimeUs)) } }, null, null, true);
        const reply = await within(ping, deadline - performance.now(), signal);
        if (reply === undefined) break; // out of time, or the client closed
        const serverTimeUs = Number(expectReply(reply, 'Pong').server_time_us);
        samples.push({ rttUs: (performance.now() - started) * 1000, clientTimeUs, serverTimeUs });
      } catch {
        break;
      }
    }
    return samples;
  }

  /**
   * Throws a DatagramTooLarge QuiverError for a tick payload that does not fit a datagram on this path, or on every
   * subscriber's (MAX_PORTABLE_DATAGRAM).
   */
  checkTickPayload(payload) {
    const max = Math.min(this.maxDatagramSize ?? MAX_PORTABLE_DATAGRAM, MAX_PORTABLE_DATAGRAM);
    if (payload.length > max - TICK_HEADER_MAX_LEN) {
      const maxPayload = Math.max(0, max - TICK_HEADER_MAX_LEN);
      const what = `tick payload of ${payload.length} bytes does not fit a datagram on this path`;
      throw new QuiverError(ErrorCode.DatagramTooLarge, `${what}: the maximum payload is ${maxPayload} bytes`);
    }
  }

  /** Sends a datagram without waiting (ticks are never queued behind each other here). */
  sendDatagram(datagram) {
    try {
      this.datagramWriter ??= this.wt.datagrams.writable.getWriter();
      this.datagramWriter.write(datagram).catch(() => {});
    } catch { /* the connection is going; ticks are not retried */ }
  }

  /** The largest datagram the path takes now, or null when unknown. */
  get maxDatagramSize() {
    return this.wt.datagrams?.maxDatagramSize ?? null;
  }

  /** Ends the connection (once) and fails what is outstanding with `why`. */
  lost(why) {
    if (this.closedWhy) return;
    clearTimeout(this.keepAliveTimer);
    this.keepAliveTimer = null;
    this.closedWhy = this.goAway && why.code === ErrorCode.NoError ? this.goAway : why;
    for (const waiter of this.requests.close(this.closedWhy)) waiter.reject(QuiverError.closed(this.closedWhy));
    this.markEnded();
    this.close(why.code, why.reason);
    this.hooks.onLost(this, this.closedWhy);
  }

  close(code, reason) {
    clearTimeout(this.keepAliveTimer);
    this.keepAliveTimer = null;
    try {
      this.wt.close({ closeCode: code, reason: String(reason).slice(0, 100) });
    } catch { /* already closed */ }
  }

  async readControl(reader, frames, leftover) {
    try {
      for (const body of leftover) this.dispatch(wire.ServerMsg.decode(body));
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          frames.finish();
          if (this.goAway) return this.lost(this.goAway);
          // The server's close follows, with its code: the session's `closed` reports it (`lost` then). Closed here
          // at once, the close said NoError, and a token's expiry looked like a normal end.
          const ended = { code: ErrorCode.NoError, reason: 'the server ended the control stream' };
          const grace = setTimeout(() => this.lost(ended), CONTROL_GONE_GRACE_MS);
          this.wt.closed.then(() => clearTimeout(grace), () => clearTimeout(grace));
          return undefined;
        }
        this.heard();
        for (const body of frames.push(value)) this.dispatch(wire.ServerMsg.decode(body));
      }
    } catch (err) {
      if (err instanceof QuiverDecodeError) {
        this.lost({ code: err.code, reason: `the server sent an undecodable frame: ${err.message}` });
      } else {
        this.lost({ code: ErrorCode.Internal, reason: `control stream: ${err?.message ?? err}` });
      }
    }
  }

  dispatch(msg) {
    if (msg.Reply) {
      const waiter = this.requests.complete(msg.Reply.req_id);
      const { Ok: ok, Err: failure } = msg.Reply.result;
      if (!waiter) return;
      // Told at once, before the next frame of the chunk (a push that closes the client, say) is dispatched: the
      // promise's callbacks would run a microtask later.
      if (waiter.answered) return waiter.answered(ok, failure ? new QuiverError(failure.code, failure.message) : null);
      if (failure) waiter.reject(new QuiverError(failure.code, failure.message));
      else waiter.resolve(ok);
    } else if (msg.GoAway) {
      this.goAway = { code: msg.GoAway.code, reason: msg.GoAway.reason };
      this.hooks.onPush({ type: 'goaway', ...this.goAway });
    } else if (msg.Kicked) {
      this.hooks.onPush({ type: 'kicked', room: msg.Kicked.room, code: msg.Kicked.code, reason: msg.Kicked.reason });
    } else if (msg.Error) {
      this.hooks.onPush({ type: 'error', code: msg.Error.code, reason: msg.Error.message });
    }
  }

  async acceptRoomStreams() {
    try {
      const streams = this.wt.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const { done, value } = await streams.read();
        if (done) return;
        this.hooks.onRoomStream(this, value);
      }
    } catch { /* the connection is gone */ }
  }

  async readDatagrams() {
    try {
      const datagrams = this.wt.datagrams.readable.getReader();
      for (;;) {
        const { done, value } = await datagrams.read();
        if (done) return;
        this.heard();
        if (isProbe(value)) continue; // a tail-loss probe: it only elicits an ACK
        if (isCopy(value)) {
          let copy;
          try {
            copy = decodeCopy(value, this.maxFrame);
          } catch {
            continue;
          }
          if (copy.kind === 'room') this.hooks.onRoomCopy?.(this, copy);
          continue;
        }
        let tick;
        try {
          tick = decodeTick(value);
        } catch {
          continue; // undecodable datagrams are dropped, as in the Rust client
        }
        const subscription = this.channels.get(tick.channel_id);
        if (subscription) this.hooks.onTick(subscription, tick);
        else this.unrouted.hold(tick); // its Subscribe's answer may be behind it: held for the route it makes
      }
    } catch { /* the connection is gone */ }
  }
}
