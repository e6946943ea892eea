// QuiverClient's IO layer (Hello/Welcome, requests and replies, room streams, datagrams, connection loss and
// everything a reconnect restores), against in-memory stand-ins for the browser's WebTransport and WebSocket (the
// fallback, speaking the protocol's WebSocket mapping) and a miniature Quiver server: rooms with an epoch and
// contiguous seqs, room streams that open with the Join's outcome, resume from a position, slow consumers (stream
// reset, then Kicked), post deduplication by (identity, client_msg_id), tick channel ids per connection.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DEFAULT_MAX_FRAME, ErrorCode, FrameReader, PROTOCOL_VERSION, QuiverClient, QuiverError, decodeCopy, decodeTick,
  decodeWsMessage, encodeFrame, encodeTick, encodeVarint, encodeWsMessage, isCopy, wire,
} from '../quiver/index.js';

// ───────────────────────────────────────────── the fake server ─────────────────────────────────────────────

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
class FakeWebTransport {
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
    const down = server.down || server.webTransportDown || server.downUrls.has(url);
    this.ready = down ? Promise.reject(new Error('connection refused')) : Promise.resolve();
    if (server.webTransportHangs) this.ready = new Promise(() => {}); // UDP dropped: QUIC never gets through
    this.ready.catch(() => {});
    if (down) this.alive = false;
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
    this.end(null);
    this.resolveClosed({ closeCode, reason });
  }

  // ── server side ──

  send(msg) {
    if (this.alive) this.control.push(encodeFrame(wire.ServerMsg, msg));
  }

  /** A room stream; `stall()` makes it fall behind: what is written after it never reaches the client. */
  openRoomStream() {
    const stream = pipe();
    this.uni.enqueue(stream.readable);
    this.roomStreams.push(stream);
    let stalled = false;
    return {
      write: (frame) => this.alive && !stalled && stream.push(encodeFrame(wire.RoomFrame, frame)),
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
 * One WebSocket connection: `socket` is what the client holds (the browser's WebSocket), the rest the server's side
 * with FakeWebTransport's shape, speaking the mapping of docs/protocol.md ("WebSocket mapping"). Events reach the
 * client in order, each in a microtask of its own (a browser queues a task for each).
 */
class FakeWebSocketConnection {
  constructor(server, url, protocols) {
    this.server = server;
    this.url = url;
    this.protocols = protocols;
    this.id = server.connections.length + 1;
    this.alive = true;
    this.identity = null;
    this.channels = new Map();
    this.claims = new Map();
    this.nextChannelId = server.channelIdBase;
    this.roomStreams = [];
    this.nextStream = 1n;
    this.frames = new FrameReader();
    this.received = []; // every message from the client, decoded
    const socket = new EventTarget();
    Object.assign(socket, { readyState: 0, protocol: '', binaryType: 'blob', bufferedAmount: 0 });
    socket.send = (data) => {
      if (socket.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.fromClient(decodeWsMessage(new Uint8Array(data)));
    };
    socket.close = (code) => {
      if (socket.readyState >= 2) return;
      socket.readyState = 2;
      this.closedByClient = code;
      this.end(1000);
    };
    this.socket = socket;
    if (server.down || server.webSocketDown) {
      this.alive = false;
      this.post(() => this.closeEvent(1006));
    } else {
      this.post(() => {
        Object.assign(socket, { readyState: 1, protocol: 'quiver' });
        socket.dispatchEvent(new Event('open'));
      });
    }
  }

  post(fn) {
    queueMicrotask(fn);
  }

  /** A message to the client. */
  deliver(message) {
    const data = encodeWsMessage(message).buffer;
    this.post(() => {
      if (this.socket.readyState === 1) this.socket.dispatchEvent(Object.assign(new Event('message'), { data }));
    });
  }

  closeEvent(code) {
    if (this.socket.readyState === 3) return;
    this.socket.readyState = 3;
    this.socket.dispatchEvent(Object.assign(new Event('close'), { code, reason: '', wasClean: code !== 1006 }));
  }

  fromClient(message) {
    this.received.push(message);
    if (!this.alive) return;
    if (message.Control) {
      for (const body of this.frames.push(message.Control)) this.server.handle(this, wire.Request.decode(body));
    } else if (message.Datagram) {
      const d = message.Datagram.slice();
      if (isCopy(d)) this.server.copies.push({ conn: this, ...decodeCopy(d, DEFAULT_MAX_FRAME) });
      else this.server.datagrams.push({ conn: this, ...decodeTick(d) });
    } else if (message.Close) {
      this.closedBy = { closeCode: message.Close.code, reason: message.Close.reason };
    } else {
      throw new Error(`a client sent ${Object.keys(message)[0]}`);
    }
  }

  /** The connection ends; a close event with `code` reaches the client (1006: no close frame, the TCP is gone). */
  end(code) {
    const wasAlive = this.alive;
    this.alive = false;
    this.post(() => this.closeEvent(code));
    if (wasAlive) this.server.left(this);
  }

  // ── server side: FakeWebTransport's shape ──

  send(msg) {
    if (this.alive) this.deliver({ Control: encodeFrame(wire.ServerMsg, msg) });
  }

  /** A room stream: its id is new, so its first message opens it at the client. */
  openRoomStream() {
    const id = this.nextStream++;
    let stalled = false;
    let ended = false;
    const live = () => this.alive && !stalled && !ended;
    const stream = {
      write: (frame) => live() && this.deliver({ Stream: { id, bytes: encodeFrame(wire.RoomFrame, frame) } }),
      stall: () => { stalled = true; },
      finish: () => { if (!ended && this.alive) this.deliver({ Finish: { id } }); ended = true; },
      reset: (code) => { if (!ended && this.alive) this.deliver({ Reset: { id, code } }); ended = true; },
      cancelled: false, // a WebSocket stream is only dropped by its reader: the server is not told
    };
    this.roomStreams.push(stream);
    return stream;
  }

  sendTick(tick) {
    if (this.alive) this.deliver({ Datagram: encodeTick(tick) });
  }

  /** The server closes the connection: a Close message with the code and reason, then the close frame. */
  close({ closeCode = 0, reason = '' } = {}) {
    if (!this.alive) return;
    this.closedBy = { closeCode, reason };
    this.deliver({ Close: { code: closeCode, reason } });
    this.end(1000);
  }

  /** The connection is lost: the socket closes without a Close message. */
  kill() {
    if (this.alive) this.end(1006);
  }
}

/**
 * The miniature server. `transport` is what the client takes as its WebTransport constructor, `webSocket` as its
 * WebSocket constructor.
 */
class FakeServer {
  constructor() {
    this.connections = [];
    this.rooms = new Map();
    this.dedupe = new Map();
    this.requests = []; // every request: {conn, req}
    this.datagrams = []; // every datagram from clients: {conn, channel_id, seq, sent_time_us, payload}
    this.copies = []; // every copy datagram from clients: {conn, kind, first, frames}
    this.refuse = null; // a Failure to answer Hello with
    this.down = false; // connections fail before they open
    this.downUrls = new Set(); // connections to these URLs fail before they open (a dead node of a cluster)
    this.unavailablePosts = 0; // refuse this many posts with Unavailable (a broker unreachable), sequencing nothing
    this.holdPostReplies = false; // accept posts but never answer them (their answers are lost with the connection)
    this.openBeforeReply = true; // send a room stream's Open (and replay) before the Join reply
    this.replayOverlap = 0n; // replay this many already-seen messages on a resume (the client must drop them)
    this.channelIdBase = 0n; // first channel id handed out on each connection
    this.loseRoomStreams = 0; // reset this many room streams as slow consumers before their Open frame
    this.dropOnPing = false; // lose the connection on its first Ping
    this.webTransportDown = false; // WebTransport connections fail before they open (the WebSocket gets through)
    this.webTransportHangs = false; // WebTransport connections never become ready (UDP silently dropped)
    this.webSocketDown = false; // WebSocket connections fail before they open
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
    const reply = (result) => conn.send({ Reply: { req_id: req.req_id, result } });
    const ok = (value) => reply({ Ok: value });
    const fail = (code, message) => reply({ Err: { code, message } });
    const [tag, body] = Object.entries(req.body)[0];
    switch (tag) {
      case 'Hello':
        if (this.refuse) return reply({ Err: this.refuse });
        conn.identity = body.name ?? `guest-${conn.id}`;
        return ok({
          Welcome: {
            version: PROTOCOL_VERSION, session_id: BigInt(conn.id), server_time_us: nowUs(), identity: conn.identity,
            limits: LIMITS,
          },
        });
      case 'Join': {
        const room = this.room(body.room);
        if (room.members.has(conn)) return fail(ErrorCode.AlreadyJoined, 'already joined');
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
          Joined: { room: body.room, epoch: room.epoch, recovered, replay_from: from, last_seq: last, members },
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
        if (this.holdPostReplies) return;
        return ok({ Posted: { room: body.room, seq, duplicate } });
      }
      case 'Subscribe': {
        const id = conn.nextChannelId++;
        conn.channels.set(body.channel, id);
        return ok({ Subscribed: { channel: body.channel, channel_id: id } });
      }
      case 'Unsubscribe':
        if (!conn.channels.delete(body.channel)) return fail(ErrorCode.NotJoined, 'not subscribed');
        return ok({ Unsubscribed: { channel: body.channel } });
      case 'Publish': {
        const id = conn.nextChannelId++;
        conn.claims.set(id, body.channel);
        return ok({ Publishing: { channel: body.channel, channel_id: id } });
      }
      case 'Ping':
        if (this.dropOnPing) return conn.kill('lost during setup');
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

function nowUs() {
  return BigInt(Date.now()) * 1000n;
}

function presence(seq, kind, member) {
  return { seq, time_us: nowUs(), kind: { [kind]: { member } } };
}

function slowConsumerKick(room) {
  return { Kicked: { room, code: ErrorCode.SlowConsumer, reason: 'fell behind' } };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value (returned), or fails after `ms`. */
async function until(what, check, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

// ───────────────────────────────────────────────── the tests ─────────────────────────────────────────────────

const URL_ = 'https://quiver.test:4433/quiver';
const text = (s) => new TextEncoder().encode(s);

/** A client of `server` that reconnects within milliseconds; closed when the test ends. */
async function connect(t, server, options = {}) {
  const client = await QuiverClient.connect(URL_, {
    transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20, ...options,
  });
  t.after(() => client.close());
  return client;
}

/** Joins `room`, collecting its events. */
async function joinCollecting(client, room) {
  const events = [];
  const handle = await client.join(room, { onEvent: (e) => events.push(e) });
  const messages = () => events.filter((e) => e.type === 'message');
  return { handle, events, messages, seqs: () => messages().map((m) => Number(m.seq)) };
}

test('connect: Hello with version, agent, name and token; certHash as serverCertificateHashes; Welcome', async (t) => {
  const server = new FakeServer();
  const statuses = [];
  const onStatus = (s) => statuses.push(s);
  const client = await connect(t, server, { name: 'ann', token: 'tok', certHash: 'AB'.repeat(32), onStatus });
  const [conn] = server.connections;
  assert.equal(conn.url, URL_);
  assert.equal(conn.options.serverCertificateHashes.length, 1);
  assert.equal(conn.options.serverCertificateHashes[0].algorithm, 'sha-256');
  assert.deepEqual(conn.options.serverCertificateHashes[0].value, new Uint8Array(32).fill(0xab));
  const first = server.requests[0].req;
  const hello = { version: PROTOCOL_VERSION, agent: 'quiver-web/0.1', name: 'ann', token: 'tok' };
  assert.deepEqual(first, { req_id: 0n, body: { Hello: hello } });
  assert.equal(server.requestsOf('Ping').length, 5, 'five pings estimate the clock offset');
  assert.deepEqual(server.requests.slice(1).map((r) => r.req.req_id), [1n, 2n, 3n, 4n, 5n], 'request ids follow Hello\'s 0');
  assert.equal(client.status, 'connected');
  assert.deepEqual(statuses, ['connected']);
  assert.equal(client.welcome.identity, 'ann');
  assert.equal(client.welcome.limits.max_frame, DEFAULT_MAX_FRAME);
  assert.ok(Math.abs(client.serverClockUs() - Date.now() * 1000) < 2_000_000, 'the server clock is estimated');
  const rtt = await client.ping();
  assert.ok(typeof rtt === 'number' && rtt >= 0);

  const anonymous = await connect(t, server);
  assert.equal(server.connections[1].options, undefined, 'no certificate hash: no options');
  assert.match(anonymous.welcome.identity, /^guest-/);
  client.close();
  assert.equal(client.status, 'closed');
  assert.deepEqual(conn.closedBy, { closeCode: 0, reason: 'closed by the application' });
  await assert.rejects(client.ping(), (err) => err instanceof QuiverError && err.closed);
});

test('connect: a refused Hello or an unreachable server rejects and closes', async () => {
  const server = new FakeServer();
  server.refuse = { code: ErrorCode.UnsupportedVersion, message: 'this server speaks 2 only' };
  await assert.rejects(
    QuiverClient.connect(URL_, { transport: server.transport }),
    (err) => err instanceof QuiverError && err.refused && err.code === ErrorCode.UnsupportedVersion,
  );
  server.refuse = null;
  server.down = true;
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport }), /connection refused/);
  assert.throws(() => new QuiverClient(URL_, { transport: 'webtransport', webTransport: null }), /no WebTransport/);
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport, certHash: 'abc' }), /64 hex digits/);
});

test('cluster: several URLs, the first that answers is used, and a lost connection moves to the next node', async (t) => {
  const server = new FakeServer();
  const urls = ['https://node-a.test/quiver', 'https://node-b.test/quiver', 'https://node-c.test/quiver'];
  server.downUrls.add(urls[0]);
  const client = await QuiverClient.connect(urls, {
    transport: server.transport, reconnectDelayMs: 1, reconnectMaxDelayMs: 20,
  });
  t.after(() => client.close());
  assert.deepEqual(server.connections.map((c) => c.url), [urls[0], urls[1]]);
  const before = server.connections.length;
  server.downUrls = new Set();
  server.live[0].kill();
  await until('reconnected', () => client.status === 'connected' && server.live.length === 1);
  assert.equal(server.connections[before].url, urls[2], 'the next node is tried first after a loss');
  assert.throws(() => new QuiverClient([], { transport: server.transport }), /no server URL/);
});

test('posts refused as Unavailable are sent again, in order, and resolve once the broker is back', async (t) => {
  const server = new FakeServer();
  const client = await connect(t, server);
  server.unavailablePosts = 3;
  const seqs = await Promise.all(['a', 'b', 'c'].map((s) => client.post('lobby', text(s))));
  assert.deepEqual(seqs, [1n, 2n, 3n]);
  assert.deepEqual(server.room('lobby').messages.map((m) => new TextDecoder().decode(m.kind.Message.body)), ['a', 'b', 'c']);
  const ids = server.requestsOf('Post').map((p) => p.client_msg_id);
  assert.ok(ids.length > 3, 'refused posts were sent again');
  assert.deepEqual([...new Set(ids)].length, 3, 'with the same client_msg_id');
});

test('rooms: join, live events in order, members, posts resolve to their seq, history, leave', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  assert.deepEqual(a.handle.members, ['ann']);
  server.openBeforeReply = false; // the reply first this time: both orders must work
  const b = await joinCollecting(bob, 'lobby');
  assert.deepEqual(b.handle.members, ['ann', 'bob']);
  await until('ann sees bob join', () => a.events.some((e) => e.type === 'joined' && e.member === 'bob'));
  assert.deepEqual(a.handle.members, ['ann', 'bob']);

  const seqs = await Promise.all([bob.post('lobby', 'one'), bob.post(b.handle, text('two')), b.handle.post('three')]);
  assert.deepEqual(seqs, [1n, 2n, 3n], 'posts keep the order of the calls');
  await until('ann gets 3 messages', () => a.messages().length === 3);
  const [first] = a.messages();
  assert.equal(first.text, 'one');
  assert.equal(first.sender, 'bob');
  assert.equal(first.seq, 1n);
  assert.equal(typeof first.timeUs, 'bigint');
  assert.equal(typeof first.clientMsgId, 'bigint');
  assert.deepEqual(first.body, text('one'));
  assert.deepEqual(a.handle.position, { epoch: 7n, seq: 3n });
  const ids = server.requestsOf('Post').map((p) => p.client_msg_id);
  assert.deepEqual(ids, [ids[0], ids[0] + 1n, ids[0] + 2n], 'client_msg_ids count up');

  const page = await ann.history('lobby', 1, 10);
  assert.deepEqual(page.messages.map((m) => m.text), ['two', 'three']);
  assert.equal(page.epoch, 7n);
  assert.equal(page.more, false);

  await assert.rejects(ann.join('lobby'), (err) => err.code === ErrorCode.AlreadyJoined);
  await bob.leave('lobby');
  await until('ann sees bob leave', () => a.events.some((e) => e.type === 'left' && e.member === 'bob'));
  const notJoined = (err) => err instanceof QuiverError && err.code === ErrorCode.NotJoined && !err.closed;
  await assert.rejects(bob.leave('lobby'), notJoined);
  await assert.rejects(bob.request({ Nope: {} }), /RequestBody's variants/);
});

test('reconnect: rejoin from the last message, no duplicates, posts re-sent in order and delivered once', async (t) => {
  const server = new FakeServer();
  const statuses = [];
  const ann = await connect(t, server, { name: 'ann', onStatus: (s) => statuses.push(s) });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  await joinCollecting(bob, 'lobby');
  for (const m of ['m1', 'm2', 'm3']) await bob.post('lobby', m);
  await until('ann has m1..m3', () => a.messages().length === 3);

  // Ann posts twice; the server takes both (everyone sees them) but the answers are lost with the connection.
  server.holdPostReplies = true;
  const p1 = ann.post('lobby', 'p1');
  const p2 = ann.post('lobby', 'p2');
  await until('the server has p1 and p2', () => server.rooms.get('lobby').messages.length === 5);
  await until('ann sees her posts', () => a.messages().length === 5);
  server.holdPostReplies = false;
  server.replayOverlap = 2n; // the resume replays two messages ann has already seen
  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  const p3 = ann.post('lobby', 'p3'); // made while reconnecting: queued behind p1 and p2
  server.down = false;

  assert.deepEqual(await Promise.all([p1, p2, p3]), [4n, 5n, 6n], 'the original seqs; p3 after them');
  await until('bob is back', () => bob.status === 'connected');
  await bob.post('lobby', 'm7');
  await until('ann has 7 messages', () => a.messages().length === 7);
  assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5, 6, 7], 'every message once, in order');
  assert.deepEqual(a.messages().map((m) => m.text), ['m1', 'm2', 'm3', 'p1', 'p2', 'p3', 'm7']);
  const resumed = a.events.filter((e) => e.type === 'resumed');
  assert.deepEqual(resumed, [{ type: 'resumed', room: 'lobby', recovered: true, epoch: 7n }]);
  assert.ok(a.events.indexOf(resumed[0]) < a.events.findIndex((e) => e.text === 'p3'), 'resumed comes before the replay');

  const conn2 = server.connections.filter((c) => c.identity === 'ann')[1];
  assert.deepEqual(server.requestsOf('Join', conn2), [{ room: 'lobby', since: { epoch: 7n, seq: 5n }, redundant: false }]);
  const posts = server.requestsOf('Post').filter((p) => ['p1', 'p2', 'p3'].includes(new TextDecoder().decode(p.body)));
  const [id1, id2] = posts.slice(0, 2).map((p) => p.client_msg_id);
  assert.deepEqual(posts.map((p) => p.client_msg_id), [id1, id2, id1, id2, id2 + 1n], 're-sent with the same ids, in order');
  assert.deepEqual(server.rooms.get('lobby').messages.map((m) => Number(m.seq)), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(statuses, ['connected', 'reconnecting', 'connected']);
});

test('reconnect: a lost room history (new epoch) is announced as not recovered', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const a = await joinCollecting(ann, 'lobby');
  await ann.post('lobby', 'old');
  await until('ann has her message', () => a.messages().length === 1);
  server.rooms.set('lobby', { epoch: 8n, messages: [], members: new Map() }); // the server restarted
  server.dropAll();
  await until('ann is back', () => a.events.some((e) => e.type === 'resumed'));
  assert.deepEqual(a.events.find((e) => e.type === 'resumed'), { type: 'resumed', room: 'lobby', recovered: false, epoch: 8n });
  assert.equal(await ann.post('lobby', 'new'), 1n);
  await until('the new epoch\'s seq 1 is delivered', () => a.messages().length === 2);
  assert.deepEqual(a.messages().map((m) => [m.epoch, m.seq, m.text]), [[7n, 1n, 'old'], [8n, 1n, 'new']]);
});

for (const openBeforeReply of [true, false]) {
  const order = openBeforeReply ? 'Open before the reply' : 'reply before the Open';
  test(`slow consumer: the Kicked naming the room rejoins it from the last message, no gap or duplicate (${order})`, async (t) => {
    const server = new FakeServer();
    server.openBeforeReply = openBeforeReply;
    const notices = [];
    const ann = await connect(t, server, { name: 'ann', onNotice: (n) => notices.push(n) });
    const bob = await connect(t, server, { name: 'bob' });
    const a = await joinCollecting(ann, 'lobby');
    await joinCollecting(bob, 'lobby');
    await bob.post('lobby', 'm1');
    await until('ann has m1', () => a.messages().length === 1);

    // Ann's stream falls behind: m2 and m3 wait for her and are lost with the reset.
    const [conn] = server.connections;
    server.rooms.get('lobby').members.get(conn).stall();
    await bob.post('lobby', 'm2');
    await bob.post('lobby', 'm3');
    server.replayOverlap = 1n; // the replay repeats m1: dropped
    const kicked = server.fallBehind(conn, 'lobby');
    await sleep(20);
    assert.equal(server.requestsOf('Join', conn).length, 1, 'a reset alone does not rejoin');
    conn.send(kicked);
    await until('rejoined', () => a.events.some((e) => e.type === 'resumed'));
    await bob.post('lobby', 'm4');
    await until('ann has 4 messages', () => a.messages().length === 4);
    assert.deepEqual(a.seqs(), [1, 2, 3, 4], 'the missed messages replayed, each once, in order');
    assert.deepEqual(server.requestsOf('Join', conn)[1], { room: 'lobby', since: { epoch: 7n, seq: 1n }, redundant: false });
    const resumed = a.events.filter((e) => e.type === 'resumed');
    assert.deepEqual(resumed, [{ type: 'resumed', room: 'lobby', recovered: true, epoch: 7n }]);
    assert.ok(a.events.indexOf(resumed[0]) < a.events.findIndex((e) => e.text === 'm2'), 'resumed comes before the replay');
    assert.deepEqual(a.handle.members, ['ann', 'bob'], 'members from the new stream\'s Open');

    // A Kicked for a room the server still has on this connection: the rejoin's AlreadyJoined is ignored.
    conn.send(kicked);
    await until('joined a third time', () => server.requestsOf('Join', conn).length === 3);
    await bob.post('lobby', 'm5');
    await until('ann has m5', () => a.messages().length === 5);
    assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5]);
    assert.deepEqual(notices.map((n) => [n.type, n.code]), [['kicked', ErrorCode.SlowConsumer], ['kicked', ErrorCode.SlowConsumer]]);
    assert.equal(a.events.some((e) => e.type === 'kicked'), false, 'falling behind does not end the room');
    assert.equal(ann.status, 'connected', 'the connection was not touched');
  });
}

test('after a rejoin an older stream of the room delivers nothing more: no event twice, none out of order', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann' });
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  await joinCollecting(bob, 'lobby');
  await bob.post('lobby', 'm1');
  await until('ann has m1', () => a.messages().length === 1);

  // The server drops ann's subscription as a slow consumer; frames of the old stream are still on the way.
  const [conn] = server.connections;
  const room = server.rooms.get('lobby');
  const old = room.members.get(conn);
  room.members.delete(conn);
  await bob.post('lobby', 'm2');
  conn.send(slowConsumerKick('lobby'));
  await until('m2 from the replay', () => a.messages().length === 2);
  old.write({ Event: room.messages[1] }); // m2 again
  old.write({ Event: presence(1n, 'MemberJoined', 'cy') }); // older than the new stream's Open
  await until('the old stream is given up', () => old.cancelled);
  await bob.post('lobby', 'm3');
  await until('ann has m3', () => a.messages().length === 3);
  assert.deepEqual(a.seqs(), [1, 2, 3]);
  assert.deepEqual(a.events.map((e) => e.type), ['joined', 'message', 'resumed', 'message', 'message']);
  assert.deepEqual(a.handle.members, ['ann', 'bob'], 'no stale presence from the old stream');
});

test('ticks: latest wins with loss and staleness counted; resubscribed and re-claimed after a reconnect', async (t) => {
  const server = new FakeServer();
  server.channelIdBase = 5n;
  const ann = await connect(t, server);
  const ticks = [];
  const sub = await ann.subscribe('demo.ticks', { onTick: (tick) => ticks.push(tick) });
  assert.equal(sub.channel, 'demo.ticks');
  for (const seq of [1n, 2n, 2n, 5n, 3n, 6n]) server.tick('demo.ticks', seq, text(`${seq}`), BigInt(Date.now() - 3) * 1000n);
  server.tick('other', 9n); // a channel id this client does not know: dropped
  await until('4 ticks', () => ticks.length === 4);
  assert.deepEqual(ticks.map((k) => k.seq), [1n, 2n, 5n, 6n]);
  assert.deepEqual(sub.stats, { received: 4, lost: 2, stale: 2 });
  assert.equal(new TextDecoder().decode(sub.latest.payload), '6');
  assert.ok(ticks[0].latencyMs >= 2 && ticks[0].latencyMs < 1000, `latency ${ticks[0].latencyMs}`);
  assert.equal(typeof ticks[0].sentTimeUs, 'bigint');

  const publisher = await ann.publisher('demo.ticks', { maxAgeMs: 100 });
  assert.deepEqual(server.requestsOf('Publish'), [{ channel: 'demo.ticks', max_age_ms: 100 }]);
  assert.equal(publisher.send('0.5'), 1n);
  assert.equal(publisher.send(Uint8Array.of(1, 2)), 2n);
  await until('2 datagrams', () => server.datagrams.length === 2);
  const sent = server.datagrams.map((d) => [d.channel_id, d.seq, d.payload]);
  assert.deepEqual(sent, [[6n, 1n, text('0.5')], [6n, 2n, Uint8Array.of(1, 2)]]);
  assert.ok(Math.abs(Number(server.datagrams[0].sent_time_us) - Date.now() * 1000) < 2_000_000);
  assert.throws(
    () => publisher.send(new Uint8Array(1200 - 24 + 1)),
    (err) => err.code === ErrorCode.DatagramTooLarge && /maximum payload is 1176 bytes/.test(err.message),
  );

  server.down = true;
  server.dropAll();
  await until('ann notices', () => ann.status === 'reconnecting');
  assert.equal(publisher.send('lost'), null, 'no connection: the tick is dropped, not queued');
  server.down = false;
  const restored = () => server.live[0]?.channels.has('demo.ticks') && server.live[0].claims.size === 1;
  await until('resubscribed and claimed again', restored);
  server.tick('demo.ticks', 1n); // the channel's seqs started over on the new connection
  await until('a 5th tick', () => ticks.length === 5);
  assert.deepEqual(sub.stats, { received: 5, lost: 2, stale: 2 });
  assert.equal(publisher.send('again'), 3n);
  await until('a 3rd datagram', () => server.datagrams.length === 3);
  assert.equal(server.datagrams[2].conn, server.live[0]);

  await sub.unsubscribe();
  assert.equal(server.live[0].channels.has('demo.ticks'), false);
  server.tick('demo.ticks', 2n);
  await sleep(20);
  assert.equal(ticks.length, 5, 'nothing after unsubscribing');
  await assert.rejects(ann.subscribe('x').then(() => ann.subscribe('x')), (err) => err.code === ErrorCode.AlreadyJoined);
});

test('pushes are surfaced; a kick from a room ends that room; a refusal on reconnect ends the client', async (t) => {
  const server = new FakeServer();
  const notices = [];
  const statuses = [];
  const ann = await connect(t, server, {
    name: 'ann', onNotice: (n) => notices.push(n), onStatus: (s, why) => statuses.push([s, why?.code]),
  });
  const a = await joinCollecting(ann, 'lobby');
  const [conn] = server.connections;
  conn.send({ Kicked: { room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' } });
  conn.send({ Error: { code: ErrorCode.RateLimited, message: 'slow down' } });
  conn.send({ GoAway: { code: ErrorCode.GoingAway, reason: 'restarting' } });
  await until('3 notices', () => notices.length === 3);
  assert.deepEqual(notices, [
    { type: 'kicked', room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' },
    { type: 'error', code: ErrorCode.RateLimited, reason: 'slow down' },
    { type: 'goaway', code: ErrorCode.GoingAway, reason: 'restarting' },
  ]);
  assert.deepEqual(a.events.at(-1), { type: 'kicked', room: 'lobby', code: ErrorCode.PermissionDenied, reason: 'bye' });
  // Falling behind in a room this client is not in (any more): a notice, no rejoin.
  conn.send(slowConsumerKick('lobby'));
  await until('4 notices', () => notices.length === 4);
  await sleep(20);
  assert.equal(server.requestsOf('Join').length, 1);

  // The server goes away and refuses the next session: the client ends with the refusal, pending posts fail.
  server.refuse = { code: ErrorCode.PermissionDenied, message: 'token expired' };
  server.holdPostReplies = true;
  const post = ann.post('lobby', 'never acknowledged');
  await until('the post reached the server', () => server.requestsOf('Post').length === 1);
  conn.close({ closeCode: ErrorCode.GoingAway, reason: 'restarting' });
  await assert.rejects(post, (err) => err instanceof QuiverError && err.closed && err.code === ErrorCode.PermissionDenied);
  assert.equal(ann.status, 'closed');
  assert.deepEqual(ann.closeReason, { code: ErrorCode.PermissionDenied, reason: 'token expired' });
  assert.deepEqual(statuses.map(([s]) => s), ['connected', 'reconnecting', 'closed']);
  assert.equal(statuses[1][1], ErrorCode.GoingAway);
  await assert.rejects(ann.post('lobby', 'after the end'), (err) => err.closed);
});

test('reconnect keeps trying while the server is down, and reconnect: false ends at the first loss', async (t) => {
  const server = new FakeServer();
  const attempts = [];
  const ann = await connect(t, server, {
    reconnectDelayMs: 2, reconnectMaxDelayMs: 10, onAttempt: (a) => attempts.push(a),
  });
  server.down = true;
  server.dropAll();
  await until('several failed attempts', () => server.connections.length >= 5);
  assert.equal(ann.status, 'reconnecting');
  // Each attempt is announced: its number, why the link is down (then why the last attempt failed), the delay.
  assert.deepEqual(attempts.slice(0, 3).map((a) => a.attempt), [0, 1, 2]);
  assert.ok(attempts.every((a) => a.nextTryMs >= 0 && a.nextTryMs <= 10), JSON.stringify(attempts));
  assert.match(attempts[1].lastError.reason, /connection refused/);
  assert.deepEqual(ann.reconnecting, attempts.at(-1));
  const ping = ann.ping(); // waits for the next connection
  server.down = false;
  assert.ok((await ping) >= 0);
  assert.equal(ann.status, 'connected');
  assert.equal(ann.reconnecting, null);

  const once = await connect(t, server, { reconnect: false });
  server.dropAll();
  await until('ended', () => once.status === 'closed');
  assert.equal(once.closeReason.code, ErrorCode.Internal);
  assert.match(once.closeReason.reason, /network unreachable/);
});

test('a room stream reset before its Open frame is joined again on the Kicked; a loss during setup fails connect', async (t) => {
  const server = new FakeServer();
  const bob = await connect(t, server, { name: 'bob' });
  await joinCollecting(bob, 'lobby');
  await bob.post('lobby', 'm1');
  server.loseRoomStreams = 1;
  const ann = await connect(t, server, { name: 'ann' });
  const a = await joinCollecting(ann, 'lobby');
  assert.deepEqual(a.handle.members, ['ann', 'bob'], 'members from the Join reply');
  assert.deepEqual(a.handle.position, { epoch: 7n, seq: 1n }, 'the position from the Join reply');
  await bob.post('lobby', 'm2'); // ann has no stream: she gets m2 from the replay
  const annConn = server.connections.find((c) => c.identity === 'ann');
  annConn.send(slowConsumerKick('lobby'));
  await until('joined again', () => server.requestsOf('Join', annConn).length === 2);
  await bob.post('lobby', 'm3');
  await until('m2 and m3 delivered on the second stream', () => a.messages().length === 2);
  assert.deepEqual(a.seqs(), [2, 3]);
  assert.deepEqual(server.requestsOf('Join', annConn)[1], { room: 'lobby', since: { epoch: 7n, seq: 1n }, redundant: false });
  assert.equal(a.events.some((e) => e.type === 'resumed'), false, 'nothing was missed: nothing to announce');

  // A join whose stream never opened before its connection was lost: the next connection resumes from the reply.
  server.loseRoomStreams = 1;
  const cy = await connect(t, server, { name: 'cy' });
  const c = await joinCollecting(cy, 'lobby');
  server.dropAll();
  const cyConn = () => server.connections.filter((conn) => conn.identity === 'cy')[1];
  await until('cy joined again', () => cyConn() && server.requestsOf('Join', cyConn()).length === 1);
  assert.deepEqual(server.requestsOf('Join', cyConn()), [{ room: 'lobby', since: { epoch: 7n, seq: 3n }, redundant: false }]);
  await until('bob is back', () => bob.status === 'connected');
  await bob.post('lobby', 'm4');
  await until('cy has m4', () => c.messages().length === 1);
  assert.deepEqual(c.seqs(), [4]);
  assert.ok(c.handle.members.includes('cy'), 'members from the new stream\'s Open');

  server.dropOnPing = true;
  await assert.rejects(QuiverClient.connect(URL_, { transport: server.transport }), /lost during setup/);
});

test('redundant rooms: stream and copies merge into one order, each event once; posts also go up as copies', async (t) => {
  const server = new FakeServer();
  const ann = await connect(t, server, { name: 'ann', copies: 2, copySpacingMs: 2 });
  const events = [];
  await ann.join('fast', { onEvent: (e) => events.push(e), redundant: true });
  assert.deepEqual(server.requestsOf('Join').at(-1), { room: 'fast', since: null, redundant: true });
  const [conn] = server.connections;
  const stream = server.rooms.get('fast').members.get(conn); // Open at position 0, Copies at 1
  const message = (seq, id) => ({ seq, time_us: 1n, kind: { Message: { sender: 'bob', client_msg_id: id, body: text(`m${seq}`) } } });
  const [m1, bobJoined, m2, m3] = [message(1n, 10n), presence(1n, 'MemberJoined', 'bob'), message(2n, 11n), message(3n, 12n)];
  const seen = () => events.map((e) => (e.type === 'message' ? `m${e.seq}` : `${e.type}:${e.member}`));
  await until('the Copies frame is read', () => server.requestsOf('Join').length === 1 && conn.roomStreams.length === 1);
  await new Promise((resolve) => setTimeout(resolve, 10));
  conn.sendRoomCopy(1n, 3n, [bobJoined]); // ahead of position 2: waits
  conn.sendRoomCopy(1n, 2n, [m1, bobJoined]); // 2 and 3, 3 again
  await until('copies delivered in order', () => events.length === 2);
  stream.write({ Event: m1 }); // position 2, from the stream: already delivered
  stream.write({ Event: bobJoined }); // 3
  stream.write({ Event: m2 }); // 4: its copies were lost
  await until('the stream fills the gap', () => events.length === 3);
  conn.sendRoomCopy(1n, 4n, [m2, m3]); // 4 late, 5 new
  conn.sendRoomCopy(7n, 5n, [m3]); // another slot: not this stream's
  await until('m3 from its copy', () => events.length === 4);
  stream.write({ Event: m3 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(seen(), ['m1', 'joined:bob', 'm2', 'm3'], 'each once, in order');

  await ann.post('fast', 'up');
  await until('two post copies', () => server.copies.length === 2);
  for (const copy of server.copies) {
    assert.equal(copy.kind, 'posts');
    // Requests after Hello are numbered in the order written: five Pings, the Join, then this post.
    assert.equal(copy.first, 7n);
    const { body } = wire.Request.decode(copy.frames[0]);
    assert.equal(new TextDecoder().decode(body.Post.body), 'up');
  }
  await ann.post('elsewhere', 'plain');
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.copies.length, 2, 'a room not joined redundant: no copies');
});

// ───────────────────────────────────────── the WebSocket fallback ─────────────────────────────────────────

/** A client of `server` in transport mode `transport` with both constructors, reporting its transports. */
async function connectAuto(t, server, options = {}) {
  const transports = [];
  const client = await QuiverClient.connect(URL_, {
    webTransport: server.transport, webSocket: server.webSocket, reconnectDelayMs: 1, reconnectMaxDelayMs: 20,
    fallbackTimeoutMs: 40, onTransport: (transport, fallback) => transports.push([transport, fallback]), ...options,
  });
  t.after(() => client.close());
  return { client, transports };
}

const isWebSocket = (conn) => conn instanceof FakeWebSocketConnection;

test('auto: WebTransport not ready in time falls back to the WebSocket, which serves everything; reconnects stay on it', async (t) => {
  const server = new FakeServer();
  server.channelIdBase = 1n;
  server.webTransportHangs = true;
  const started = Date.now();
  const { client: ann, transports } = await connectAuto(t, server, { name: 'ann' });
  assert.ok(Date.now() - started >= 35, 'WebTransport had its fallbackTimeoutMs');
  assert.equal(ann.transport, 'websocket');
  const fallback = 'WebTransport to https://quiver.test:4433/quiver was not ready within 40 ms';
  assert.deepEqual(transports, [['websocket', fallback]]);
  const [quic, ws] = server.connections;
  assert.ok(!isWebSocket(quic) && !quic.alive, 'the WebTransport attempt was given up');
  assert.ok(isWebSocket(ws));
  assert.equal(ws.url, 'wss://quiver.test:4433/quiver', 'the WebSocket URL derived from the WebTransport URL');
  assert.equal(ws.protocols, 'quiver');
  const hello = { version: PROTOCOL_VERSION, agent: 'quiver-web/0.1', name: 'ann', token: null };
  assert.deepEqual(server.requestsOf('Hello', ws), [hello]);

  // Rooms, posts, presence, history and ticks over the WebSocket, with a WebTransport client in the same room.
  server.webTransportHangs = false;
  const bob = await connect(t, server, { name: 'bob' });
  const a = await joinCollecting(ann, 'lobby');
  const b = await joinCollecting(bob, 'lobby');
  await until('ann sees bob join', () => a.events.some((e) => e.type === 'joined' && e.member === 'bob'));
  const posted = [ann.post('lobby', 'one'), bob.post('lobby', 'two'), ann.post('lobby', 'three')];
  assert.deepEqual(await Promise.all(posted), [1n, 2n, 3n]);
  await until('both have 3 messages', () => a.messages().length === 3 && b.messages().length === 3);
  assert.deepEqual(a.messages().map((m) => m.text), ['one', 'two', 'three']);
  assert.deepEqual((await ann.history('lobby', 0, 10)).messages.map((m) => m.text), ['one', 'two', 'three']);
  const ticks = [];
  await ann.subscribe('prices', { onTick: (tick) => ticks.push(tick) });
  server.tick('prices', 1n, text('1.5'));
  await until('a tick over the WebSocket', () => ticks.length === 1);
  const publisher = await ann.publisher('prices');
  assert.equal(publisher.send('2.5'), 1n);
  await until('a tick from the WebSocket', () => server.datagrams.length === 1);
  assert.equal(server.datagrams[0].conn, ws);
  assert.deepEqual(server.datagrams[0].payload, text('2.5'));
  assert.throws(() => publisher.send(new Uint8Array(1200 - 24 + 1)), (err) => err.code === ErrorCode.DatagramTooLarge);

  // A slow consumer's reset, then the Kicked: the room is joined again from its position, over the WebSocket.
  await bob.post('lobby', 'four');
  await until('ann has four', () => a.messages().length === 4);
  ws.send(server.fallBehind(ws, 'lobby'));
  await until('rejoined', () => a.events.some((e) => e.type === 'resumed'));
  await bob.post('lobby', 'five');
  await until('ann has five', () => a.messages().length === 5);
  assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5]);

  // A lost connection: the reconnect goes straight to the WebSocket (WebTransport would work by now).
  const before = server.connections.length;
  ws.kill();
  const annIsBack = () => server.connections.slice(before).some((c) => c.alive && c.identity === 'ann');
  await until('reconnected', () => ann.status === 'connected' && annIsBack());
  const again = server.connections.slice(before); // bob's connection is not touched: all of these are ann's
  assert.ok(again.length >= 1 && again.every(isWebSocket), 'no WebTransport attempt after the fallback');
  assert.deepEqual(transports.length, 1, 'the transport did not change');
  await bob.post('lobby', 'six');
  await until('ann has six', () => a.messages().length === 6);
  assert.deepEqual(a.seqs(), [1, 2, 3, 4, 5, 6]);
  await until('resubscribed', () => server.live.find((c) => c.identity === 'ann')?.channels.has('prices'));
});

test('auto: a failing WebTransport falls back at once; one that connects is used; neither: connect fails', async (t) => {
  const server = new FakeServer();
  server.webTransportDown = true;
  const started = Date.now();
  const { client, transports } = await connectAuto(t, server, { fallbackTimeoutMs: 5000 });
  assert.ok(Date.now() - started < 1000, 'no waiting for the fallback timeout');
  assert.deepEqual(transports, [['websocket', 'WebTransport to https://quiver.test:4433/quiver failed: connection refused']]);
  assert.equal(client.transport, 'websocket');

  server.webTransportDown = false;
  const quic = await connectAuto(t, server);
  assert.equal(quic.client.transport, 'webtransport');
  assert.deepEqual(quic.transports, [['webtransport', null]]);
  assert.ok(!isWebSocket(server.connections.at(-1)), 'no WebSocket opened');

  // Neither gets through: the first connect fails, naming both; the next attempt tries WebTransport again.
  server.down = true;
  await assert.rejects(
    QuiverClient.connect(URL_, { webTransport: server.transport, webSocket: server.webSocket }),
    /connection refused; the WebSocket fallback failed too: the WebSocket to wss:\/\/quiver.test:4433\/quiver did not open \(code 1006\)/,
  );
  server.down = false;

  // A client on WebTransport whose reconnects find neither for a while, then only the WebSocket.
  client.close();
  quic.client.close();
  server.webSocketDown = true;
  const { client: cy, transports: cyTransports } = await connectAuto(t, server);
  assert.equal(cy.transport, 'webtransport');
  server.webTransportDown = true;
  const mark = server.connections.length;
  server.dropAll();
  const attempts = () => server.connections.slice(mark).map((c) => (isWebSocket(c) ? 'ws' : 'wt')).join(' ');
  await until('WebTransport tried again after both failed', () => /^wt ws wt ws/.test(attempts()));
  server.webSocketDown = false;
  await until('reconnected over the WebSocket', () => cy.status === 'connected' && cy.transport === 'websocket');
  assert.deepEqual(cyTransports.map(([transport]) => transport), ['webtransport', 'websocket'], 'the change is reported');
});

test('websocket mode: straight to the given WebSocket URL; the server\'s Close is the client\'s close reason', async (t) => {
  const server = new FakeServer();
  const { client, transports } = await connectAuto(t, server, {
    transport: 'websocket', websocketUrl: 'ws://127.0.0.1:4433/quiver', reconnect: false, name: 'ann', copies: 2,
  });
  assert.equal(server.connections.length, 1);
  assert.equal(server.connections[0].url, 'ws://127.0.0.1:4433/quiver');
  assert.deepEqual(transports, [['websocket', null]]);

  // A redundant room over the WebSocket: the join asks (the server decides), no copies go up.
  await client.join('fast', { redundant: true });
  assert.equal(await client.post('fast', 'up'), 1n);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.copies.length, 0, 'no post copies over the WebSocket');
  assert.ok(server.connections[0].received.every((m) => !m.Datagram), 'no datagrams at all');

  server.connections[0].close({ closeCode: ErrorCode.GoingAway, reason: 'restarting' });
  await until('closed', () => client.status === 'closed');
  assert.deepEqual(client.closeReason, { code: ErrorCode.GoingAway, reason: 'restarting' });

  // A connection lost without a Close is a lost connection.
  const { client: bob } = await connectAuto(t, server, { transport: 'websocket', reconnect: false });
  server.connections.at(-1).kill();
  await until('bob ended', () => bob.status === 'closed');
  assert.equal(bob.closeReason.code, ErrorCode.Internal);
  assert.match(bob.closeReason.reason, /connection lost: the WebSocket closed without a Quiver close \(code 1006\)/);

  // Closing the client tells the server why.
  const { client: cy } = await connectAuto(t, server, { transport: 'websocket' });
  const conn = server.connections.at(-1);
  cy.close();
  assert.deepEqual(conn.closedBy, { closeCode: 0, reason: 'closed by the application' });
  assert.equal(conn.closedByClient, 1000);
});

test('transport options: checked, and the older `transport` constructor still means WebTransport only', async () => {
  const server = new FakeServer();
  assert.throws(() => new QuiverClient(URL_, { transport: 'quic' }), /transport must be one of auto, webtransport, websocket/);
  assert.throws(() => new QuiverClient(URL_, { transport: 'websocket', webSocket: null }), /no WebSocket/);
  assert.throws(() => new QuiverClient(URL_, { webTransport: null, webSocket: null }), /neither WebTransport nor WebSocket/);
  server.webTransportDown = true;
  const legacy = { transport: server.transport, webSocket: server.webSocket };
  await assert.rejects(QuiverClient.connect(URL_, legacy), /connection refused/);
  assert.ok(!server.connections.some(isWebSocket), 'no fallback');
  // A certificate hash that is not one is a mistake, not a reason to fall back.
  const badHash = { webTransport: server.transport, webSocket: server.webSocket, certHash: 'abc' };
  await assert.rejects(QuiverClient.connect(URL_, badHash), /64 hex digits/);
  assert.ok(!server.connections.some(isWebSocket), 'no fallback');
});
