// A stand-in for the browser's WebSocket with a Quiver server behind it (the server's side shaped like
// FakeWebTransport, see fakes.mjs), speaking the protocol's WebSocket mapping. Not a test: a helper of the tests.

import {
  DEFAULT_MAX_FRAME, FrameReader, decodeCopy, decodeTick, decodeWsMessage, encodeFrame, encodeTick, encodeWsMessage,
  isCopy, wire,
} from '../quiver/index.js';

/**
 * One WebSocket connection: `socket` is what the client holds (the browser's WebSocket), the rest the server's side
 * with FakeWebTransport's shape, speaking the mapping of docs/protocol.md ("WebSocket mapping"). Events reach the
 * client in order, each in a microtask of its own (a browser queues a task for each).
 */
export class FakeWebSocketConnection {
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
    this.unanswered = []; // requests that went into the silence (see `silence`)
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
      this.end(this.opened ? 1000 : 1006); // closed while connecting: as a failed connection
    };
    this.socket = socket;
    this.opened = false;
    this.silent = false;
    if (server.down || server.webSocketDown) {
      this.alive = false;
      this.post(() => this.closeEvent(1006));
    } else if (server.webSocketHangs) {
      // the TCP connection or the upgrade never completes (until closed)
    } else if (server.webSocketDelayMs > 0) {
      setTimeout(() => this.open(), server.webSocketDelayMs);
    } else {
      this.post(() => this.open());
    }
  }

  open() {
    if (this.socket.readyState !== 0) return; // closed while connecting
    this.opened = true;
    Object.assign(this.socket, { readyState: 1, protocol: 'quiver' });
    this.socket.dispatchEvent(new Event('open'));
  }

  post(fn) {
    queueMicrotask(fn);
  }

  /** A message to the client. */
  deliver(message) {
    const data = encodeWsMessage(message).buffer;
    this.post(() => {
      if (this.socket.readyState === 1 && !this.silent) {
        this.socket.dispatchEvent(Object.assign(new Event('message'), { data }));
      }
    });
  }

  /** The close event; as in browsers, a connection that failed (1006) fires an error event just before it. */
  closeEvent(code) {
    if (this.socket.readyState === 3) return;
    this.socket.readyState = 3;
    if (code === 1006) this.socket.dispatchEvent(new Event('error'));
    this.socket.dispatchEvent(Object.assign(new Event('close'), { code, reason: '', wasClean: code !== 1006 }));
  }

  fromClient(message) {
    this.received.push(message);
    if (this.silent && message.Control) {
      for (const body of this.frames.push(message.Control)) this.unanswered.push(wire.Request.decode(body).body);
    }
    if (!this.alive || this.silent) return;
    if (message.Control) {
      for (const body of this.frames.push(message.Control)) this.server.handle(this, wire.Request.decode(body));
    } else if (message.Datagram) {
      const d = message.Datagram.slice();
      if (isCopy(d)) this.server.copies.push({ conn: this, ...decodeCopy(d, DEFAULT_MAX_FRAME) });
      else this.server.datagrams.push({ conn: this, ...decodeTick(d) });
    } else if (message.Close) {
      this.closedBy = { closeCode: message.Close.code, reason: message.Close.reason };
    } else if (message.Stop) {
      // The client stopped a room stream (its reader cancelled it): nothing more is written to it.
      const stream = this.roomStreams.find((s) => s.id === message.Stop.id);
      if (!stream) throw new Error(`a client stopped stream ${message.Stop.id}, which the server never opened`);
      stream.stops.push(message.Stop.code);
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
    const live = () => this.alive && !stalled && !ended && !stream.cancelled;
    const stream = {
      id,
      write: (frame) => live() && this.deliver({ Stream: { id, bytes: encodeFrame(wire.RoomFrame, frame) } }),
      stall: () => { stalled = true; },
      finish: () => { if (!ended && this.alive) this.deliver({ Finish: { id } }); ended = true; },
      reset: (code) => { if (!ended && this.alive) this.deliver({ Reset: { id, code } }); ended = true; },
      stops: [], // the codes of the client's Stops of this stream (kind 6), one each
      get cancelled() {
        return stream.stops.length > 0;
      },
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

  /** The path dies quietly (a network change, a NAT timeout): nothing gets through either way, and no close. */
  silence() {
    this.silent = true;
  }
}
