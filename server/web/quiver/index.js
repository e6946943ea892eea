// Quiver for browsers: a reconnecting client over WebTransport (or the WebSocket fallback) and the protocol's wire
// format. ES modules, no build step, no dependencies. This file is the public API; the layers beneath it, bottom up:
//   wire/   the bytes: error codes and errors, QUIC varints, postcard and the protocol's messages, stream frames,
//           tick and copy datagrams, WebSocket messages (no IO; also runs in node)
//   state.js  the client's bookkeeping without IO: backoff, request ids, room positions, post re-sends, ticks
//   client.js QuiverClient over sessions (client/: WebTransport, or a WebSocket shaped like it), handing out Room,
//           Subscription and Publisher
// The source of truth is the Rust crate `quiver-proto` (docs/protocol.md is the map).

export {
  ErrorCode, QuiverDecodeError, QuiverEncodeError, QuiverError, errorCodeName,
} from './wire/errors.js';
export { VARINT_MAX, decodeVarint, encodeVarint, varintLength } from './wire/varint.js';
export { PROTOCOL_VERSION, wire } from './wire/messages.js';
export {
  DEFAULT_MAX_FRAME,
  FrameReader,
  MAX_FRAME_CEILING,
  MAX_ROOMS_CEILING,
  decodeFrame,
  encodeFrame,
} from './wire/frames.js';
export { MAX_PORTABLE_DATAGRAM, PROBE, TICK_HEADER_MAX_LEN, decodeTick, encodeTick, isProbe } from './wire/ticks.js';
export { MAX_COPY_FRAMES, decodeCopy, encodePostCopy, isCopy } from './wire/copies.js';
export {
  WS_MAX_CHUNK, WS_MAX_DATAGRAM, WS_MAX_MESSAGE, WS_MAX_REASON, WS_SUBPROTOCOL, WsKind, decodeWsMessage,
  encodeWsMessage, tickChannel,
} from './wire/ws.js';
export {
  Backoff, LatestWins, Merge, Pacer, PostQueue, RequestTable, RoomState, STABLE_CONNECTION_MS, clockOffsetUs,
} from './state.js';
export { AGENT, DEAD_SERVER_AFTER_MS, IDLE_TIMEOUT_MS, KEEP_ALIVE_MS } from './client/session.js';
export { NEXT_ADDRESS_DELAY_MS } from './client/race.js';
export { TRANSPORTS, websocketUrlOf } from './client/dial.js';
export { MAX_INBOUND_STREAMS, TICK_HIGH_WATER, WebSocketTransport, WebSocketTransportError } from './client/websocket.js';
export { Publisher, Room, Subscription } from './client/handles.js';
export { QuiverClient } from './client.js';
