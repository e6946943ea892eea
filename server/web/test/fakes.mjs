// The tests' in-memory stand-ins for the browser's WebTransport and WebSocket (the fallback, speaking the
// protocol's WebSocket mapping: fake-websocket.mjs) and a miniature Quiver server: rooms with an epoch and contiguous
// seqs, room streams that open with the Join's outcome, resume from a position, slow consumers (stream reset, then
// Kicked), post deduplication by (identity, client_msg_id), tick channel ids per connection. Not a test: the helpers
// of client.test.mjs and websocket-client.test.mjs.

import {
  DEFAULT_MAX_FRAME, ErrorCode, FrameReader, PROTOCOL_VERSION, QuiverClient, decodeCopy, decodeTick, encodeFrame,
  encodeTick, encodeVarint, isCopy, wire,
} from '../quiver/index.js';
import { FakeWebSocketConnection } from './fake-websocket.mjs';

const LIMITS = {
  max_frame: DEFAULT_MAX_FRAME, max_body: 16384, max_name: 128, max_rooms: 64, max_subscriptions: 256,
  max_publish_channels: 64, room_queue_bytes: 262144, handshake_timeout_ms: 10000, history_max_messages: 1000,
  history_max_age_s: 86400, gap_replay: 100, dedupe_window_s: 600, dedupe_max_entries: 10000,
  max_connections: 10000, max_connections_per_ip: 256, new_connections_per_s_per_ip: 100, requests_per_s: 5000,
  posts_per_s: 2000, ticks_per_s: 10000,
};

/** A readable stream and the function that feeds it; `cancelled` once the reader gave it up. */
function pipe() {
  let controller;
  const safe = (fn) => { try { fn(); } catch { /* already closed or errored */ } };
  const handle = {
    cancelled: false,
    // Each chunk is split in two, so the client's framing is exercised across reads.
    push: (bytes) => safe(() => {
      const cut = bytes.length >> 1;
      if (cut > 0) controller.enqueue(bytes.slice(0, cut));
      controller.enqueue(bytes.slice(cut));
    }),
    enqueue: (item) => safe(() => controller.enqueue(item)),
    finish: () => safe(() => controller.close()),
    fail: (err) => safe(() => controller.error(err)),
  };
  handle.readable = new ReadableStream({
    start: (c) => { controller = c; },
    cancel: () => { handle.cancelled = true; },
  });
  return handle;
}

/** One connection as the client sees it: the shape of the browser's WebTransport object. */
export class FakeWebTransport {
  constructor(server, url, options) {
    this.server = server;
    this.url = url;
    this.options = options;
    this.id = server.connections.length + 1;
    this.alive = true;
    this.identity = null;
    this.channels = new Map(); // channel -> id, subscriptions
    this.claims = new Map(); // id -> channel, publish claims
    this.nextChannelId = server.channelIdBase;
    this.roomStreams = [];
    this.uni = pipe();
    this.incoming = pipe();
    this.incomingUnidirectionalStreams = this.uni.readable;
    this.datagrams = {
      readable: this.incoming.readable,
      writable: new WritableStream({
        write: (d) => {
          if (!this.alive) return;
          if (isCopy(d)) server.copies.push({ conn: this, ...decodeCopy(d, DEFAULT_MAX_FRAME) });
          else server.datagrams.push({ conn: this, ...decodeTick(d) });
        },
      }),
      maxDatagramSize: 1200,
    };
    this.closed = new Promise((resolve, reject) => {
      this.resolveClosed = resolve;
      this.rejectClosed = reject;
    });
    this.ready = new Promise((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    this.ready.catch(() => {});
    this.opened = false; // ready resolved
    if (server.down || server.webTransportDown || server.downUrls.has(url)) {
      this.alive = false;
      this.settleReady.reject(new Error('connection refused'));
    } else if (server.webTransportHangs || server.silentUrls.has(url)) {
      // UDP dropped: QUIC never gets through (until closed)
    } else if (server.webTransportDelayMs > 0) {
      setTimeout(() => this.open(), server.webTransportDelayMs);
    } else {
      this.open();
    }
  }

  open() {
    if (!this.alive) return; // closed while connecting
    this.opened = true;
    this.settleReady.resolve();
  }

  async createBidirectionalStream() {
    this.control = pipe();
    const frames = new FrameReader();
    const writable = new WritableStream({
      write: (chunk) => {
        if (!this.alive) throw new Error('connection lost');
        for (const body of frames.push(chunk)) this.server.handle(this, wire.Request.decode(body));
      },
    });
    return { readable: this.control.readable, writable };
  }

  close({ closeCode = 0, reason = '' } = {}) {
    if (!this.alive) return;
    this.alive = false;
    this.closedBy = { closeCode, reason };
    this.settleReady.reject(new Error('closed before it was ready')); // nothing once ready
    this.end(null);
    this.resolveClosed({ closeCode, reason });
  }

  // ── server side ──

  /** The room streams held back (`heldStreams`) reach the client now, in the order they were opened. */
  releaseStreams() {
    for (const readable of this.heldStreams ?? []) this.uni.enqueue(readable);
    this.heldStreams = null;
  }

  send(msg) {
    if (this.alive) this.control.push(encodeFrame(wire.ServerMsg, msg));
  }

  /**
   * A room stream; `write` sends a RoomFrame value, `writeBytes` raw bytes; `stall()` makes it fall behind: what is
   * written after it never reaches the client. While
   * `heldStreams` is an array, new streams wait in it (late on the way) until `releaseStreams()`.
   */
  openRoomStream() {
    const stream = pipe();
    if (this.heldStreams) this.heldStreams.push(stream.readable);
    else this.uni.enqueue(stream.readable);
    this.roomStreams.push(stream);
    let stalled = false;
    return {
      write: (frame) => this.alive && !stalled && stream.push(encodeFrame(wire.RoomFrame, frame)),
      writeBytes: (bytes) => this.alive && !stalled && stream.push(bytes), // whatever they are
      stall: () => { stalled = true; },
      finish: () => stream.finish(),
      reset: (code) => stream.fail(Object.assign(new Error(`stream reset ${code}`), { streamErrorCode: code })),
      get cancelled() {
        return stream.cancelled;
      },
    };
  }

  sendTick(tick) {
    if (this.alive) this.incoming.enqueue(encodeTick(tick));
  }

  /** A room copy datagram: `events` (RoomEvent values) at positions from `first` of the stream with `slot`. */
  sendRoomCopy(slot, first, events) {
    const frames = events.map((event) => encodeFrame(wire.RoomFrame, { Event: event }));
    const parts = [0n, 0n, slot, first].map((v) => encodeVarint(v)).concat(frames);
    const datagram = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (datagram.set(p, at), at + p.length), 0);
    if (this.alive) this.incoming.enqueue(datagram);
  }

  /** The connection is lost (no close frame): every stream fails. */
  kill(reason = 'network unreachable') {
    if (!this.alive) return;
    this.alive = false;
    const err = new Error(reason);
    this.end(err);
    this.rejectClosed(err);
  }

  end(err) {
    for (const p of [this.control, this.uni, this.incoming, ...this.roomStreams]) {
      if (p) (err ? p.fail(err) : p.finish());
    }
    this.server.left(this);
  }
}

/**
 * The miniature server. `transport` is what the client takes as its WebTransport constructor, `webSocket` as its
 * WebSocket constructor.
 */
export class FakeServer {
  constructor() {
    this.connections = [];
    this.rooms = new Map();
    this.dedupe = new Map();
    this.requests = []; // every request: {conn, req}
    this.datagrams = []; // every datagram from clients: {conn, channel_id, seq, sent_time_us, payload}
    this.copies = []; // every copy datagram from clients: {conn, kind, first, frames}
    this.refuse = null; // a Failure to answer Hello with
    this.refuseUrls = new Map(); // URL -> a Failure to answer Hello with on connections to it (one node of a cluster)
    this.welcomeVersion = null; // the protocol version Welcome speaks (null: PROTOCOL_VERSION)
    this.down = false; // connections fail before they open
    this.downUrls = new Set(); // connections to these URLs fail before they open (a dead node of a cluster)
    this.silentUrls = new Set(); // connections to these URLs never open (a node gone quiet: its packets dropped)
    this.unavailablePosts = 0; // refuse this many posts with Unavailable (a broker unreachable), sequencing nothing
    this.refusedJoins = 0; // refuse this many joins with `refuseJoinsWith`
    this.refuseJoinsWith = ErrorCode.RateLimited;
    this.refusedLeaves = 0; // refuse this many leaves with RateLimited (nothing done: the membership stays)
    this.leaves = 0; // Leaves received
    // Codes to refuse the next subscribes / unsubscribes / claims / unpublishes with, in order.
    this.refusedTicks = { Subscribe: [], Unsubscribe: [], Publish: [], Unpublish: [] };
    // Accept posts but never answer them (their answers are lost with the connection); a connection's own
    // `holdPostReplies` holds only its posts, so a reconnect quicker than the test's next step is answered.
    this.holdPostReplies = false;
    this.heldClaims = null; // an array: Publish replies wait in it (call each to send) instead of going out at once
    this.ticksBeforeSubscribed = null; // a Map: channel -> payloads sent as ticks (seq 7 on) 20 ms before Subscribed
    this.openBeforeReply = true; // send a room stream's Open (and replay) before the Join reply
    this.replayOverlap = 0n; // replay this many already-seen messages on a resume (the client must drop them)
    this.channelIdBase = 1n; // first channel id handed out on each connection (1: 0 is a copy datagram's)
    this.loseRoomStreams = 0; // reset this many room streams as slow consumers before their Open frame
    this.dropOnPing = false; // lose the connection on its first Ping
    this.ignorePings = false; // answer no Ping (the connection stays up)
    this.dropOnFirst = new Set(); // request kinds ('Join', 'Subscribe', ...): the first of each loses its connection
    this.heldReplies = new Map(); // request kind ('Join', ...) -> an array its replies wait in (call each to send)
    // Request kinds whose first is refused Unavailable ("retry once reconnected") by a server that then closes the
    // connection 20 ms later, as one shutting down (or whose token expired) does.
    this.drainOnFirst = new Set();
    this.webTransportDown = false; // WebTransport connections fail before they open (the WebSocket gets through)
    this.webTransportHangs = false; // WebTransport connections never become ready (UDP silently dropped)
    this.webTransportDelayMs = 0; // WebTransport connections become ready this long after they are made
    this.webSocketDown = false; // WebSocket connections fail before they open
    this.limits = { ...LIMITS }; // the limits Welcome announces
    this.webSocketHangs = false; // WebSocket connections never open (until closed)
    this.webSocketDelayMs = 0; // WebSocket connections open this long after they are made
    this.closeAtHello = null; // {closeCode, reason}: close each connection at its Hello (ServerFull and the like)
    const server = this;
    this.transport = function WebTransport(url, options) {
      const conn = new FakeWebTransport(server, url, options);
      server.connections.push(conn);
      return conn;
    };
    this.webSocket = function WebSocket(url, protocols) {
      const conn = new FakeWebSocketConnection(server, url, protocols);
      server.connections.push(conn);
      return conn.socket;
    };
  }

  /** Live connections. */
  get live() {
    return this.connections.filter((c) => c.alive);
  }

  room(name) {
    if (!this.rooms.has(name)) this.rooms.set(name, { epoch: 7n, messages: [], members: new Map() });
    return this.rooms.get(name);
  }

  /** Requests of kind `tag` ('Post', 'Join', ...) in order, optionally only from `conn`. */
  requestsOf(tag, conn) {
    return this.requests.filter((r) => tag in r.req.body && (!conn || r.conn === conn)).map((r) => r.req.body[tag]);
  }

  handle(conn, req) {
    this.requests.push({ conn, req });
    const [tag, body] = Object.entries(req.body)[0];
    const send = (result) => conn.send({ Reply: { req_id: req.req_id, result } });
    const reply = (result) => this.heldReplies.get(tag)?.push(() => send(result)) ?? send(result);
    const ok = (value) => reply({ Ok: value });
    const fail = (code, message) => reply({ Err: { code, message } });
    if (this.dropOnFirst.delete(tag)) return conn.kill('lost under a request');
    if (this.drainOnFirst.delete(tag)) {
      setTimeout(() => conn.close({ closeCode: ErrorCode.TokenExpired, reason: 'the access token expired' }), 20);
      return fail(ErrorCode.Unavailable, 'the access token expired; retry once reconnected');
    }
    switch (tag) {
      case 'Hello':
        if (this.closeAtHello) return conn.close(this.closeAtHello);
        if (this.refuse) return reply({ Err: this.refuse });
        if (this.refuseUrls.has(conn.url)) return reply({ Err: this.refuseUrls.get(conn.url) });
        conn.identity = body.name ?? `guest-${conn.id}`;
        return ok({
          Welcome: {
            version: this.welcomeVersion ?? PROTOCOL_VERSION, session_id: BigInt(conn.id), server_time_us: nowUs(), identity: conn.identity,
            limits: this.limits,
          },
        });
      case 'Join': {
        const room = this.room(body.room);
        if (room.members.has(conn)) return fail(ErrorCode.AlreadyJoined, 'already joined');
        const held = [...this.rooms.values()].filter((r) => r.members.has(conn)).length;
        if (held >= Number(this.limits.max_rooms)) return fail(ErrorCode.TooManyRooms, 'at most max_rooms rooms');
        if (this.refusedJoins > 0 && this.refusedJoins--) return fail(this.refuseJoinsWith, 'refused by the test');
        const last = BigInt(room.messages.length);
        const since = body.since;
        // As the Rust hub: a first join (no since) is recovered, with nothing to replay.
        let recovered = true;
        let from = last + 1n;
        if (since && since.epoch === room.epoch && since.seq <= last) {
          from = since.seq + 1n - this.replayOverlap;
          if (from < 1n) from = 1n;
        } else if (since) {
          recovered = false;
          from = last > 100n ? last - 99n : 1n;
        }
        const stream = conn.openRoomStream();
        room.members.set(conn, stream);
        const members = [...room.members.keys()].map((c) => c.identity);
        const joined = {
          Joined: {
            room: body.room, epoch: room.epoch, recovered, replay_from: from, last_seq: last, members, req_id: req.req_id,
          },
        };
        if (this.loseRoomStreams > 0) {
          // The client never sees this stream's Open frame; the test sends the Kicked that names the room.
          this.loseRoomStreams -= 1;
          ok(joined);
          room.members.delete(conn);
          return stream.reset(ErrorCode.SlowConsumer);
        }
        if (!this.openBeforeReply) ok(joined);
        stream.write({ Open: joined.Joined });
        if (body.redundant) stream.write({ Copies: { slot: 1n } }); // the test sends the copies it wants
        for (const event of room.messages.slice(Number(from) - 1)) stream.write({ Event: event });
        if (this.openBeforeReply) ok(joined);
        return this.broadcast(room, presence(last, 'MemberJoined', conn.identity), conn);
      }
      case 'Leave': {
        this.leaves += 1;
        if (this.refusedLeaves > 0 && this.refusedLeaves--) return fail(ErrorCode.RateLimited, 'refused by the test');
        const room = this.rooms.get(body.room);
        const stream = room?.members.get(conn);
        if (!stream) return fail(ErrorCode.NotJoined, `not in room ${body.room}`);
        room.members.delete(conn);
        stream.finish();
        this.broadcast(room, presence(BigInt(room.messages.length), 'MemberLeft', conn.identity));
        return ok({ Left: { room: body.room } });
      }
      case 'Post': {
        if (this.unavailablePosts > 0) {
          this.unavailablePosts--;
          return fail(ErrorCode.Unavailable, 'the broker (Redis) is unavailable');
        }
        const room = this.room(body.room);
        const key = `${body.room}/${conn.identity}/${body.client_msg_id}`;
        let seq = this.dedupe.get(key);
        const duplicate = seq !== undefined;
        if (!duplicate) {
          seq = BigInt(room.messages.length + 1);
          const message = { sender: conn.identity, client_msg_id: body.client_msg_id, body: body.body };
          const event = { seq, time_us: nowUs(), kind: { Message: message } };
          room.messages.push(event);
          this.dedupe.set(key, seq);
          this.broadcast(room, event);
        }
        if (this.holdPostReplies || conn.holdPostReplies) return;
        return ok({ Posted: { room: body.room, seq, duplicate } });
      }
      case 'Subscribe': {
        if (this.refusedTicks.Subscribe.length) return fail(this.refusedTicks.Subscribe.shift(), 'refused by the test');
        const id = conn.nextChannelId++;
        conn.channels.set(body.channel, id);
        const early = this.ticksBeforeSubscribed?.get(body.channel) ?? [];
        early.forEach((payload, i) => {
          conn.sendTick({ channel_id: id, seq: 7n + BigInt(i), sent_time_us: nowUs(), payload });
        });
        const answer = () => ok({ Subscribed: { channel: body.channel, channel_id: id } });
        return early.length ? void setTimeout(answer, 20) : answer();
      }
      case 'Unsubscribe': {
        const refused = this.refusedTicks.Unsubscribe?.shift();
        if (refused !== undefined) return fail(refused, 'refused by the test');
        if (!conn.channels.delete(body.channel)) return fail(ErrorCode.NotJoined, 'not subscribed');
        return ok({ Unsubscribed: { channel: body.channel } });
      }
      case 'Publish': {
        if (this.refusedTicks.Publish.length) return fail(this.refusedTicks.Publish.shift(), 'refused by the test');
        // Idempotent, as the server's: a repeated claim answers the same id.
        const held = [...conn.claims].find(([, channel]) => channel === body.channel)?.[0];
        const id = held ?? conn.nextChannelId++;
        conn.claims.set(id, body.channel);
        const answer = () => ok({ Publishing: { channel: body.channel, channel_id: id } });
        return this.heldClaims ? void this.heldClaims.push(answer) : answer();
      }
      case 'Unpublish': {
        const refused = this.refusedTicks.Unpublish?.shift();
        if (refused !== undefined) return fail(refused, 'refused by the test');
        const claimed = [...conn.claims].filter(([, channel]) => channel === body.channel);
        if (!claimed.length) return fail(ErrorCode.NotJoined, 'not publishing');
        for (const [id] of claimed) conn.claims.delete(id);
        return ok({ Unpublished: { channel: body.channel } });
      }
      case 'Ping':
        if (this.dropOnPing) return conn.kill('lost during setup');
        // A server wedged past the QUIC level (or this connection's part of it): no Pong, ever.
        if (this.ignorePings || conn.ignorePings) return undefined;
        return ok({ Pong: { client_time_us: body.client_time_us, server_time_us: nowUs() } });
      case 'History': {
        const room = this.rooms.get(body.room);
        const after = body.since ?? 0n;
        const messages = (room?.messages ?? []).filter((e) => e.seq > after).slice(0, body.limit);
        return ok({ History: { room: body.room, epoch: room?.epoch ?? 0n, messages, more: false } });
      }
      default:
        return fail(ErrorCode.Unsupported, tag);
    }
  }

  broadcast(room, event, except = null) {
    for (const [conn, stream] of room.members) if (conn !== except) stream.write({ Event: event });
  }

  left(conn) {
    for (const room of this.rooms.values()) {
      if (!room.members.delete(conn)) continue;
      this.broadcast(room, presence(BigInt(room.messages.length), 'MemberLeft', conn.identity));
    }
  }

  /** Sends a tick to every live connection subscribed to `channel`. */
  tick(channel, seq, payload = new Uint8Array(0), sentTimeUs = nowUs()) {
    for (const conn of this.live) {
      const id = conn.channels.get(channel);
      if (id !== undefined) conn.sendTick({ channel_id: id, seq, sent_time_us: sentTimeUs, payload });
    }
  }

  /**
   * `conn`'s stream of room `name` fell behind: it is dropped from the room and its stream reset (what was not
   * read yet is lost). Returns the Kicked the Rust server pushes with the reset, for the test to send.
   */
  fallBehind(conn, name) {
    const room = this.rooms.get(name);
    const stream = room.members.get(conn);
    room.members.delete(conn);
    stream.reset(ErrorCode.SlowConsumer);
    return slowConsumerKick(name);
  }

  /** Loses every live connection (no close frame), as a network outage or a crash would. */
  dropAll() {
    for (const conn of this.live) conn.kill();
  }
}

export function nowUs() {
  return BigInt(Date.now()) * 1000n;
}

export function presence(seq, kind, member) {
  return { seq, time_us: nowUs(), kind: { [kind]: { member } } };
}

export function slowConsumerKick(room) {
  return { Kicked: { room, code: ErrorCode.SlowConsumer, reason: 'fell behind' } };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value (returned), or fails after `ms`. */
export async function until(what, check, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

export const URL_ = 'https://quiver.test:4433/quiver';
export const text = (s) => new TextEncoder().encode(s);

/** A client of `server` that reconnects within milliseconds; closed when the test ends. */
export async function connect(t, server, options = {}) {
  const client = await QuiverClient.connect(URL_, {
    transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20, ...options,
  });
  t.after(() => client.close());
  return client;
}

/** Joins `room`, collecting its events. */
export async function joinCollecting(client, room) {
  const events = [];
  const handle = await client.join(room, { onEvent: (e) => events.push(e) });
  const messages = () => events.filter((e) => e.type === 'message');
  return { handle, events, messages, seqs: () => messages().map((m) => Number(m.seq)) };
}

/** A client of `server` in transport mode `transport` with both constructors, reporting its transports. */
export async function connectAuto(t, server, options = {}) {
  const transports = [];
  const client = await QuiverClient.connect(URL_, {
    webTransport: server.transport, webSocket: server.webSocket, reconnectDelayMs: 1, reconnectMaxDelayMs: 20,
    fallbackTimeoutMs: 40, onTransport: (transport, fallback) => transports.push([transport, fallback]), ...options,
  });
  t.after(() => client.close());
  return { client, transports };
}

export const isWebSocket = (conn) => conn instanceof FakeWebSocketConnection;
