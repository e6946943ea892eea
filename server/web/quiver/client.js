// QuiverClient: a Quiver session over WebTransport (or the WebSocket fallback, client/dial.js) that survives connection
// loss like the Rust client. It opens Sessions (client/session.js) and keeps across them what the application asked
// for: rooms (resumed from their position), posts (re-sent until acknowledged), tick subscriptions and claims.

import { ErrorCode, QuiverError } from './wire/errors.js';
import { Backoff, PostQueue, clockOffsetUs, messageEvent } from './state.js';
import { openFirst } from './client/race.js';
import { readRoomStream, roomCopy } from './client/streams.js';
import { Dialer, transportOptions } from './client/dial.js';
import {
  Publisher, claimOn, deliverTick, endHeld, listRoom, listSubscription, numberedOn, sendTick, subscribeOn, unpublish,
} from './client/handles.js';
import { sendPosts } from './client/posts.js';
import { RefusalWindow, Signal, Timers, Turns, acrossReconnects, oneRejoinAtATime, restore } from './client/waiting.js';
import { REFUSED_FOR_NOW, callBack, clientDefaults, expectReply } from './client/values.js';
import { Releases, notifyFailed, toBytes, unixUs } from './client/values.js';

/**
 * A Quiver session over WebTransport (or a WebSocket) that survives connection loss: it reconnects with jittered
 * exponential backoff, rejoins every room from its last position (dropping what was already delivered and
 * announcing `{type: 'resumed', recovered}`), re-sends unacknowledged posts in order with their client_msg_id, and
 * subscribes and claims its channels again.
 */
export class QuiverClient {
  /** The latest Welcome (`{version, session_id, server_time_us, identity, limits}`). */
  welcome = null;
  /** 'connecting' | 'connected' | 'reconnecting' | 'closed'. */
  status = 'connecting';
  /** Why the client ended (`{code, reason}`), once `status` is 'closed'. */
  closeReason = null;
  /** The transport of the current (or last) connection: 'webtransport' or 'websocket'; null before the first. */
  transport = null;

  #urls;
  #nextUrl = 0;
  #unavailable = { backoff: new Backoff({ initialMs: 50, maxMs: 2000 }), tries: 0, paused: false };
  #options;
  #dialer;
  #session = null;
  #sessionChanged = new Signal();
  #timers = new Timers();
  #closing = new AbortController(); // aborted when the client ends: a connect under way gives up
  #backoff;
  #rooms = new Map(); // name -> {state: RoomState, onEvent, handle: Room, joining: Promise, stream, rejoining?}
  #releases = new Releases(); // Leaves, Unsubscribes until answered: a join, subscribe of theirs waits for them
  #roomStreams = 0; // room streams accepted so far, over every session: a later stream is a newer one
  #subscriptions = new Map(); // channel -> {channel, onTick, ticks: LatestWins, latest, handle}
  #publishers = new Map(); // channel -> {channel, maxAgeMs, claim: {session, channelId} | null, nextSeq}
  // Each channel's claims (a publisher's, a reconnect's) and unpublishes, one at a time (a claim until its reply is
  // in, an Unpublish until it is written): an Unpublish never takes back a claim the client counts on, and no claim
  // is left for an entry given up meanwhile.
  #claimTurns = new Turns();
  #posts;
  #nextMsgId;
  #clockOffsetUs = 0;

  /**
   * Connects to `url` (e.g. "https://127.0.0.1:4433/quiver"; an array of URLs: the nodes of a cluster, raced: the next
   * 250 ms after the one before or once it fails, the node after a lost one first) and opens the session. Options:
   * `certHash` (64 hex digits of the server certificate's SHA-256, for `serverCertificateHashes`; null to rely on the
   * browser's trust), `name` and `token` (sent in Hello; without a name the client picks `guest-` and 16 random hex
   * digits, kept across reconnects), `reconnect` (default true), `onStatus(status, detail)`, `onNotice(notice)` (server
   * pushes: `{type: 'goaway'|'kicked'|'error', code, reason, room?}`, and rooms that could not be rejoined),
   * `onAttempt({attempt, lastError, nextTryMs})` (while reconnecting, before each attempt: which one, why the link is
   * down or the last attempt failed, and when the next starts; the same object is `client.reconnecting`),
   * `connectTimeoutMs` (10000), `reconnectDelayMs` (50), `reconnectMaxDelayMs` (5000), `copies` (2) and `copySpacingMs`
   * (5) (redundant rooms: datagram copies per post and the time between them; QUIC only), `transport` ('auto':
   * WebTransport, joined by the WebSocket when it fails or is not ready within `fallbackTimeoutMs` (2000, at most half
   * of connectTimeoutMs), the first one ready used; once the WebSocket won, reconnects try both at once;
   * 'webtransport'; 'websocket'), `websocketUrl` (default: the URL with `wss:`; an array: one per URL),
   * `onTransport(transport, fallback)` (at the first connection and on a change: 'webtransport' or 'websocket', and why
   * WebTransport was not used, else null), `keepAliveMs` (10000) and `idleTimeoutMs` (30000) (over the WebSocket: a
   * Ping after that long without receiving anything, at most two thirds of the shorter timeout, at least 1; lost after
   * idleTimeoutMs without receiving anything, requests waiting or not; 0: never), `deadServerAfterMs` (12000; 0: never)
   * (lost after this long without receiving anything while no request waits, a Ping sent at two thirds of it; over the
   * WebSocket at most idleTimeoutMs), `webTransport` and `webSocket` (the constructors; replaceable for tests; a
   * function as `transport` is taken as `webTransport`, WebTransport only), `maxQueuedPosts` (10000; 0: none; see
   * `post`). The first connection must succeed.
   */
  static async connect(url, options = {}) {
    const client = new QuiverClient(url, options);
    await client.#start();
    return client;
  }

  constructor(url, options = {}) { // use `QuiverClient.connect`
    this.#urls = Array.isArray(url) ? [...url] : [url];
    if (this.#urls.length === 0) throw new Error('no server URL given');
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    this.#options = transportOptions({ ...clientDefaults(), ...given });
    // Without a name, one of its own for its life: an anonymous server dedupes re-sent posts by identity.
    const guest = () => `guest-${crypto.getRandomValues(new BigUint64Array(1))[0].toString(16).padStart(16, '0')}`;
    this.#options.name ??= guest();
    this.#dialer = new Dialer(this.#urls, this.#options);
    this.#posts = new PostQueue(this.#options.maxQueuedPosts);
    const { reconnectDelayMs: initialMs, reconnectMaxDelayMs: maxMs } = this.#options;
    this.#backoff = new Backoff({ initialMs, maxMs });
    // A random 62-bit start plus a counter: two clients with the same identity do not collide.
    const random = crypto.getRandomValues(new BigUint64Array(1))[0];
    this.#nextMsgId = random >> 2n;
  }

  /** Now on the server's clock (this machine's clock plus the offset estimated from pings), µs. */
  serverClockUs() {
    return unixUs() + this.#clockOffsetUs;
  }

  /**
   * Joins `room`; `onEvent` receives its events in order: `{type: 'message', seq, timeUs, sender, clientMsgId,
   * body, text}`, `{type: 'joined' | 'left', member}`, `{type: 'resumed', recovered, epoch}` (the room was joined
   * again after a reconnect or after its stream fell behind; recovered false: messages were missed) and
   * `{type: 'kicked', code, reason}` (the server dropped this client from the room, or refused to take it back after
   * a reconnect: the room ends). `redundant`: the room's events also come as datagram copies and posts to it go up
   * as copies too, so that a lost packet costs milliseconds, not a retransmission (about twice the bytes; the events
   * are the same, each once and in order). A Join whose session is lost before the answer is sent again on the next
   * session (three in all), as are a Subscribe and a History.
   */
  async join(room, { onEvent, redundant = false } = {}) {
    const list = () => listRoom(this, this.#rooms, room, { onEvent, redundant });
    // After a Leave of the room under way (given up if the room is left by name meanwhile).
    const entry = this.#releases.has(`room ${room}`) ? await this.#releases.after(`room ${room}`, list) : list();
    // Sent again on the next session if the session is lost before the reply (its membership went with it): from
    // what a stream of the lost session delivered, if one opened, as a rejoin.
    const joining = this.#acrossReconnects(async (session) => {
      const noted = (reqId) => entry.state.joining(session, reqId);
      const join = { Join: { room, since: entry.state.position(), redundant } };
      entry.state.replied(expectReply(await session.request(join, noted), 'Joined'));
      const left = entry.ended ?? this.closeReason ?? { code: ErrorCode.NoError, reason: 'left' }; // (or kicked)
      if (this.#rooms.get(room) !== entry) throw new QuiverError(left.code, left.reason, { closed: !entry.ended });
    }, () => this.#rooms.get(room) !== entry);
    entry.joining = joining.catch(() => {});
    try {
      await joining;
      // The client's end tells the rooms joined by then (`#end`); one that ended since the answer rejects instead.
      if (this.status === 'closed') throw QuiverError.closed(this.closeReason);
      entry.joined = true;
      return entry.handle;
    } catch (err) {
      if (this.#rooms.get(room) === entry) this.#rooms.delete(room);
      throw err;
    }
  }

  /**
   * Leaves `room` (a name, or a Room: nothing to do if that Room's room ended or was left already). A joined room
   * the server no longer holds (left over a reconnect: not rejoined) counts as left; a name never joined rejects
   * with NotJoined. A Leave refused for its rate goes again after a pause; a join of the room waits for it, and a
   * leave by name meanwhile gives that join up (it rejects as closed).
   */
  async leave(room) {
    const name = typeof room === 'string' ? room : room.name;
    const entry = this.#rooms.get(name);
    if (typeof room !== 'string' && entry?.handle !== room) return; // not a newer join of the name
    this.#rooms.delete(name);
    // By name, the application's last word on the room: a join of it waiting for a Leave under way is given up.
    if (typeof room === 'string' && this.#releases.giveUp(`room ${name}`) && !entry) return; // (it was all there was)
    // No session now: no server holds the room (a Join written went with its session; a join waiting for a session
    // gives up once it has one). A name never held is NotJoined at once, as from a server (not Internal, later).
    if (entry && !this.#isLive()) return;
    const unheld = !this.#isLive() && this.status !== 'closed' && !this.#releases.has(`room ${name}`);
    if (unheld) throw new QuiverError(ErrorCode.NotJoined, `not in room ${name} (the client holds no such room)`);
    const [body, prepare] = [{ Leave: { room: name } }, (session) => session.copyRooms.delete(name)];
    await this.#releases.release(`room ${name}`, () => this.#live(), { body, name: 'Left', entry, prepare });
  }

  /**
   * Posts `textOrBytes` to `room` (a name or a Room; joined or not); resolves to its seq (BigInt). Posts go out in
   * call order, pipelined, re-sent after a reconnect until acknowledged (delivered once: the server deduplicates by
   * client_msg_id). Past `maxQueuedPosts` queued or unanswered, rejects at once (QuiverError, `queueFull` true).
   */
  post(room, textOrBytes) {
    const name = typeof room === 'string' ? room : room.name;
    return new Promise((resolve, reject) => {
      if (this.status === 'closed') return reject(QuiverError.closed(this.closeReason));
      if (this.#posts.full) return reject(QuiverError.queueFull(this.#posts.max));
      const job = { room: name, clientMsgId: this.#nextMsgId++, body: toBytes(textOrBytes), resolve, reject };
      this.#posts.enqueue(job);
      this.#flushPosts();
    });
  }

  /**
   * Subscribes to tick channel `channel`; `onTick` receives `{seq, sentTimeUs, payload, latencyMs}` for every
   * tick newer than the last one delivered (older ones are dropped and counted as stale). Resubscribed after a
   * reconnect; refused that for good (e.g. PermissionDenied under a renewed token), it ends: `onEnd({code,
   * reason})` is called and the Subscription's `ended` set (a refusal for now is retried like a rejoin).
   */
  async subscribe(channel, { onTick, onEnd } = {}) {
    const list = () => listSubscription(this, this.#subscriptions, channel, { onTick, onEnd });
    const key = `channel ${channel}`; // (after an Unsubscribe under way, as a join after a Leave)
    const entry = this.#releases.has(key) ? await this.#releases.after(key, list) : list();
    try {
      const givenUp = () => this.#subscriptions.get(channel) !== entry;
      await this.#acrossReconnects((session) => subscribeOn(session, entry, this.#subscriptions), givenUp);
      if (this.status === 'closed') throw QuiverError.closed(this.closeReason); // (as in `join`)
      // Unsubscribed by name before the answer, as a join's (until 2026-12-08 it resolved, to get no tick).
      if (givenUp()) throw QuiverError.closed({ code: ErrorCode.NoError, reason: 'unsubscribed' });
      entry.confirmed = true;
      return entry.handle;
    } catch (err) {
      if (this.#subscriptions.get(channel) === entry) this.#subscriptions.delete(channel);
      throw err;
    }
  }

  /** Stops receiving `channel` (a subscribe not answered yet rejects as closed); one never held: NotJoined, at once. */
  async unsubscribe(channel, handle = undefined) {
    const entry = this.#subscriptions.get(channel);
    if (handle && entry !== handle) return; // that handle's subscription ended, or was unsubscribed, already
    this.#subscriptions.delete(channel);
    if (!handle && this.#releases.giveUp(`channel ${channel}`) && !entry) return; // as in `leave`
    if (entry && !this.#isLive()) return;
    const unheld = !entry && !this.#isLive() && this.status !== 'closed' && !this.#releases.has(`channel ${channel}`);
    if (unheld) throw new QuiverError(ErrorCode.NotJoined, `not subscribed to ${channel} (held nowhere: reconnecting)`);
    const body = { Unsubscribe: { channel } };
    const prepare = ({ channels }) => [...channels].forEach(([id, sub]) => sub === entry && channels.delete(id));
    const release = { body, name: 'Unsubscribed', entry, prepare };
    await this.#releases.release(`channel ${channel}`, () => this.#live(), release);
  }

  /**
   * Claims the right to publish on `channel` (`maxAgeMs`: the server drops older ticks rather than send them late);
   * claimed again after a reconnect, or ended like a subscription (`onEnd`, `ended`) if refused that for good. A
   * second publisher of a channel shares the first's claim, `maxAgeMs` and tick numbering (two numberings of one
   * channel would make its subscribers drop one's ticks as stale). A claim whose session is lost before the answer
   * is made again on the next session (three in all), like a Join. */
  async publisher(channel, { maxAgeMs = null, onEnd } = {}) {
    const made = { channel, maxAgeMs, claim: null, nextSeq: 1n, onEnd: [], ended: null };
    // The entry a first attempt joined: unpublished before an attempt on a later session, it ends this call as it
    // would have without the reconnect, not claimed anew after the application gave it up.
    let attached = null;
    // The session is awaited outside the turn: an unpublish needs no connection, and need not wait for one.
    const entry = await this.#acrossReconnects((session) => this.#claimTurns.run(channel, async () => {
      if (attached?.ended) return attached;
      let entry = attached ?? this.#publishers.get(channel) ?? numberedOn(session, made);
      attached = entry;
      await claimOn(session, entry);
      if (entry.ended) entry = { ...entry, onEnd: [], ended: null }; // ended while this claim was on its way
      entry = this.#publishers.get(channel) ?? entry; // one made meanwhile is the one
      this.#publishers.set(channel, entry);
      return entry;
    }));
    if (this.status === 'closed') throw QuiverError.closed(this.closeReason); // (as in `join`)
    entry.onEnd.push(onEnd);
    const send = (payload) => sendTick(this.#session, entry, toBytes(payload), this.serverClockUs());
    const held = { turns: this.#claimTurns, publishers: this.#publishers, session: () => this.#session };
    return new Publisher(channel, send, () => entry.ended, () => unpublish(entry, held));
  }

  /** One Ping/Pong round trip on the control stream; resolves to the round-trip time in ms. */
  async ping() {
    const session = await this.#live();
    const started = performance.now();
    expectReply(await session.request({ Ping: { client_time_us: BigInt(Math.round(unixUs())) } }), 'Pong');
    return performance.now() - started;
  }

  /** A room's retained messages after seq `since` (null: from the oldest), at most `limit`: `{room, epoch, more,
   *  messages}`, messages shaped like `onEvent`'s. */
  async history(room, since = null, limit = 100) {
    const request = { History: { room, since: since === null ? null : BigInt(since), limit } };
    const page = await this.#acrossReconnects(async (session) => expectReply(await session.request(request), 'History'));
    const messages = page.messages.filter((e) => e.kind.Message).map((e) => messageEvent(page.room, page.epoch, e));
    return { room: page.room, epoch: page.epoch, more: page.more, messages };
  }

  /** Sends one raw request (a RequestBody value) on the current connection; resolves to the Reply value. */
  async request(body) {
    return (await this.#live()).request(body);
  }

  /** Closes the connection with NoError and ends the client; unacknowledged posts fail. */
  close() {
    this.#end({ code: ErrorCode.NoError, reason: 'closed by the application' });
  }

  // ── connection lifecycle ──

  async #start() {
    try {
      const session = await this.#open();
      if (!(await this.#connected(session))) {
        // Closed by the server before the clock Pings were done (GoingAway, TokenExpired, ServerFull...): its code.
        const { code = ErrorCode.NoError, reason = 'the connection was lost' } = session.closedWhy ?? {};
        throw code === ErrorCode.NoError ? new Error(reason) : new QuiverError(code, reason);
      }
    } catch (err) {
      this.#end({ code: err.code ?? ErrorCode.Internal, reason: `cannot connect: ${err.message ?? err}` });
      throw err;
    }
  }

  #open() {
    const hooks = {
      dial: (url, signal) => this.#dialer.dial(url, signal),
      onLost: (session, why) => this.#lost(session, why),
      onPush: (push) => this.#push(push),
      onRoomStream: (session, stream) => readRoomStream(this.#rooms, session, stream, ++this.#roomStreams),
      onTick: (entry, tick, agoUs = 0) => deliverTick(entry, tick, this.serverClockUs() - agoUs),
      onRoomCopy: (session, copy) => roomCopy(this.#rooms, session, copy),
      closing: this.#closing.signal,
      copies: { copies: this.#options.copies, spacingMs: this.#options.copySpacingMs }, // for post copies
    };
    const opening = openFirst(this.#urls, this.#nextUrl, this.#options, hooks);
    // Next time (after this session is lost) the node after it goes first.
    return opening.then(({ session, index }) => {
      this.#nextUrl = (index + 1) % this.#urls.length;
      return session;
    });
  }

  /**
   * A new session is up: estimate the clock offset, then make it the current one and restore rooms, channels and
   * posts on it. False when it was lost (or the client closed) before that.
   */
  async #connected(session) {
    if (this.status !== 'closed') {
      // Within the connect timeout, and not past a close (`#closing`): the connection is closed below then.
      const bounds = { timeoutMs: this.#options.connectTimeoutMs, signal: this.#closing.signal };
      this.#clockOffsetUs = clockOffsetUs(await session.clockSamples(5, bounds)) ?? this.#clockOffsetUs;
    }
    if (this.status === 'closed') session.close(ErrorCode.NoError, 'client closed');
    if (this.status === 'closed' || session.closedWhy) return false;
    this.#session = session;
    this.#backoff.connected(performance.now());
    this.welcome = session.welcome;
    this.reconnecting = null;
    if (session.transport !== this.transport) {
      this.transport = session.transport;
      callBack(this.#options.onTransport, session.transport, session.fallback);
    }
    this.#setStatus('connected', null);
    this.#sessionChanged.notify();
    for (const entry of this.#rooms.values()) this.#rejoin(entry);
    for (const entry of this.#subscriptions.values()) {
      if (!entry.confirmed) continue;
      entry.ticks.resync();
      this.#restoreTicks(session, entry, this.#subscriptions, () => subscribeOn(session, entry, this.#subscriptions));
    }
    for (const entry of this.#publishers.values()) {
      const claim = () => this.#claimTurns.run(entry.channel, () => (entry.ended ? null : claimOn(session, entry)));
      this.#restoreTicks(session, entry, this.#publishers, claim);
    }
    this.#flushPosts();
    return true;
  }

  #lost(session, why) {
    if (session !== this.#session) return; // a session that never became current (or an old one)
    this.#session = null;
    this.#posts.connectionLost();
    if (this.status === 'closed') return;
    if (!this.#options.reconnect) return this.#end(why);
    this.#setStatus('reconnecting', why);
    this.#reconnect(why);
  }

  async #reconnect(why) {
    let lastError = why;
    const refusals = new RefusalWindow(this.#options.connectTimeoutMs);
    for (let attempt = this.#backoff.lost(performance.now()); this.status !== 'closed'; attempt++) {
      const nextTryMs = this.#backoff.delay(attempt);
      this.reconnecting = { attempt, lastError, nextTryMs };
      callBack(this.#options.onAttempt, this.reconnecting);
      await this.#timers.sleep(nextTryMs);
      if (this.status === 'closed') return;
      let session;
      try {
        session = await this.#open();
      } catch (err) {
        const refusal = refusals.failed(err, performance.now());
        if (refusal) return this.#end({ code: refusal.code, reason: refusal.message });
        lastError = { code: err.code ?? ErrorCode.Internal, reason: err.message };
        continue;
      }
      if (await this.#connected(session)) return;
    }
  }

  #end(why) {
    if (this.status === 'closed') return;
    this.closeReason = why;
    this.reconnecting = null;
    this.#setStatus('closed', why);
    this.#timers.stop();
    this.#closing.abort(QuiverError.closed(why));
    const session = this.#session;
    this.#session = null;
    session?.close(why.code, why.reason);
    session?.lost(why);
    this.#sessionChanged.notify();
    for (const job of this.#posts.drain()) job.reject(QuiverError.closed(why));
    // What the application holds ends with the client, with its reason (as the Rust client's handles).
    endHeld(this.#rooms, this.#subscriptions, this.#publishers, why, (entry) => this.#endRoom(entry, why));
  }

  #setStatus(status, detail) {
    this.status = status;
    callBack(this.#options.onStatus, status, detail);
  }

  /** Whether a session is up now (`#live` would not wait). */
  #isLive = () => Boolean(this.#session) && !this.#session.closedWhy;

  /**
   * Runs `attempt(session)` on the current session; if that session is lost before the attempt is answered (its
   * request failed as closed), runs it again on the next one, three sessions in all, unless the client closed or
   * `givenUp()`: a Join, Subscribe or History is not failed by a reconnect of a moment. (What a lost session held
   * went with it.)
   */
  #acrossReconnects(attempt, givenUp = () => false) {
    return acrossReconnects(() => this.#live(), attempt, givenUp, () => this.status === 'closed');
  }

  /** The current session; while reconnecting, waits for the next one (up to the connect timeout). */
  async #live() {
    const deadline = performance.now() + this.#options.connectTimeoutMs;
    for (;;) {
      if (this.status === 'closed') throw QuiverError.closed(this.closeReason);
      if (this.#isLive()) return this.#session;
      const left = deadline - performance.now();
      if (left <= 0) throw new QuiverError(ErrorCode.Internal, 'not connected (reconnecting)', { closed: true });
      await this.#sessionChanged.nextWithin(this.#timers.sleep(left));
    }
  }

  #push(push) {
    const entry = push.type === 'kicked' && push.room !== null ? this.#rooms.get(push.room) : undefined;
    if (entry && push.code === ErrorCode.SlowConsumer) {
      // The room's stream fell behind and was reset; the rest of the session is fine.
      const session = this.#session;
      const still = () => this.#session === session && this.#rooms.get(entry.state.name) === entry;
      oneRejoinAtATime(entry, session, () => this.#rejoin(entry), still).catch(() => {}); // (a failure ends the room)
    } else if (entry) {
      this.#endRoom(entry, push);
    }
    callBack(this.#options.onNotice, push);
  }

  /** `entry`'s room ends (kicked, or its rejoin refused for good): `{type: 'kicked', code, reason}` is its last event. */
  #endRoom(entry, { code, reason }) {
    const room = entry.state.name;
    if (this.#rooms.get(room) !== entry) return; // left, or ended already
    this.#rooms.delete(room);
    entry.ended = { code, reason };
    callBack(entry.onEvent, { type: 'kicked', room, code, reason });
  }

  // ── rooms ──

  /** Joins a room again from its last position (after a reconnect, or a Kicked for falling behind). */
  async #rejoin(entry) {
    await entry.joining; // a Kicked may come before join() took its reply, which can be what set the position
    const room = entry.state.name;
    const session = this.#session;
    const join = () => ({ Join: { room, since: entry.state.position(), redundant: entry.redundant } });
    // AlreadyJoined: the server still has (or already restored) the room on this connection; nothing to do.
    const noted = (reqId) => entry.state.joining(session, reqId);
    const refused = await restore(async () => expectReply(await session.request(join(), noted), 'Joined'), {
      ...this.#restoring(session, () => this.#rooms.get(room) === entry, `room ${room}`),
      done: (err) => err?.code === ErrorCode.AlreadyJoined,
    });
    // Refused for good: the room ends, as a kicked one.
    if (!refused || this.#session !== session || this.#rooms.get(room) !== entry) return;
    notifyFailed(this.#options.onNotice, refused, { room });
    this.#endRoom(entry, { code: refused.code, reason: refused.message });
  }

  /** What `restore` needs on `session` for something that is still the application's while `held()`. */
  #restoring(session, held, what) {
    const still = () => Boolean(session) && session === this.#session && !session.closedWhy && held();
    const delay = (attempt) => this.#unavailable.backoff.delay(attempt);
    return { still, sleep: (ms) => this.#timers.sleep(ms), delay, refusedForNow: REFUSED_FOR_NOW, what };
  }

  // ── posts ──

  #flushPosts() {
    const session = this.#session;
    if (!session || session.closedWhy) return;
    sendPosts(session, this.#posts, this.#unavailable, this.#timers, () => this.#flushPosts());
  }

  // ── ticks ──

  /**
   * Subscribes or claims `entry` (of `map`) again on a new `session`, retrying refusals for now like a rejoin;
   * refused for good (e.g. PermissionDenied under a renewed token), it ends: `ended` is set and `onEnd` called.
   */
  async #restoreTicks(session, entry, map, request) {
    const held = () => map.get(entry.channel) === entry;
    const refused = await restore(request, this.#restoring(session, held, `channel ${entry.channel}`));
    // Not if claimed meanwhile on this session (a publisher() call for the channel).
    if (!refused || !held() || session !== this.#session || entry.claim?.session === session) return;
    map.delete(entry.channel);
    entry.ended = { code: refused.code, reason: refused.message };
    notifyFailed(this.#options.onNotice, refused, { channel: entry.channel });
    for (const onEnd of entry.onEnd) callBack(onEnd, entry.ended);
  }
}
