// The protocol's message types (quiver-proto's control.rs, room.rs, limits.rs) as postcard wire types. The three a
// stream carries are `wire.Request` (client → server, control stream), `wire.ServerMsg` (server → client, control
// stream) and `wire.RoomFrame` (room streams).
//
// Values mirror serde_json's externally tagged form of the Rust types: structs are objects with the Rust field
// names, enum variants with data are `{Variant: data}`, unit variants are the string "Variant", `None` is null.
// u64 fields are BigInt, u32 fields are Number, byte strings are Uint8Array, error codes are Numbers. The node
// tests check every type against the byte-exact vectors quiver-proto generates (test/vectors.json).

import { bool, bytes, enumeration, option, string, struct, u32, u64, vec } from './postcard.js';

/** The protocol version this client speaks (`quiver_proto::PROTOCOL_VERSION`). */
export const PROTOCOL_VERSION = 5;

/** The message types, by their Rust names. */
export const wire = (() => {
  const errorCode = u32; // ErrorCode serializes as its number; unknown numbers are kept as they are
  const Position = struct('Position', [['epoch', u64], ['seq', u64]]);
  const Hello = struct('Hello', [
    ['version', u32], ['agent', string], ['name', option(string)], ['token', option(string)],
  ]);
  const Join = struct('Join', [['room', string], ['since', option(Position)], ['redundant', bool]]);
  const Post = struct('Post', [['room', string], ['client_msg_id', u64], ['body', bytes]]);
  const RequestBody = enumeration('RequestBody', [
    ['Hello', Hello],
    ['Join', Join],
    ['Leave', struct('Leave', [['room', string]])],
    ['Post', Post],
    ['Subscribe', struct('Subscribe', [['channel', string]])],
    ['Unsubscribe', struct('Unsubscribe', [['channel', string]])],
    ['Publish', struct('Publish', [['channel', string], ['max_age_ms', option(u32)]])],
    ['Ping', struct('Ping', [['client_time_us', u64]])],
    ['History', struct('History', [['room', string], ['since', option(u64)], ['limit', u32]])],
    ['Unpublish', struct('Unpublish', [['channel', string]])],
  ]);
  const Request = struct('Request', [['req_id', u64], ['body', RequestBody]]);
  const Limits = struct('Limits', [
    'max_frame', 'max_body', 'max_name', 'max_rooms', 'max_subscriptions', 'max_publish_channels', 'room_queue_bytes',
    'handshake_timeout_ms', 'history_max_messages', 'history_max_age_s', 'gap_replay', 'dedupe_window_s',
    'dedupe_max_entries', 'max_connections', 'max_connections_per_ip', 'new_connections_per_s_per_ip',
    'requests_per_s', 'posts_per_s', 'ticks_per_s',
  ].map((field) => [field, u32]));
  const Welcome = struct('Welcome', [
    ['version', u32], ['session_id', u64], ['server_time_us', u64], ['identity', string], ['limits', Limits],
  ]);
  const Joined = struct('Joined', [
    ['room', string], ['epoch', u64], ['recovered', bool], ['replay_from', u64], ['last_seq', u64],
    ['members', vec(string)], ['req_id', u64],
  ]);
  const EventKind = enumeration('EventKind', [
    ['Message', struct('Message', [['sender', string], ['client_msg_id', u64], ['body', bytes]])],
    ['MemberJoined', struct('MemberJoined', [['member', string]])],
    ['MemberLeft', struct('MemberLeft', [['member', string]])],
  ]);
  const RoomEvent = struct('RoomEvent', [['seq', u64], ['time_us', u64], ['kind', EventKind]]);
  const HistoryPage = struct('HistoryPage', [
    ['room', string], ['epoch', u64], ['messages', vec(RoomEvent)], ['more', bool],
  ]);
  const Failure = struct('Failure', [['code', errorCode], ['message', string]]);
  const Reply = enumeration('Reply', [
    ['Welcome', Welcome],
    ['Joined', Joined],
    ['Left', struct('Left', [['room', string]])],
    ['Posted', struct('Posted', [['room', string], ['seq', u64], ['duplicate', bool]])],
    ['Subscribed', struct('Subscribed', [['channel', string], ['channel_id', u64]])],
    ['Unsubscribed', struct('Unsubscribed', [['channel', string]])],
    ['Publishing', struct('Publishing', [['channel', string], ['channel_id', u64]])],
    ['Pong', struct('Pong', [['client_time_us', u64], ['server_time_us', u64]])],
    ['History', HistoryPage],
    ['Unpublished', struct('Unpublished', [['channel', string]])],
  ]);
  const ReplyResult = enumeration('Result<Reply, Failure>', [['Ok', Reply], ['Err', Failure]]);
  const ServerMsg = enumeration('ServerMsg', [
    ['Reply', struct('Reply', [['req_id', u64], ['result', ReplyResult]])],
    ['GoAway', struct('GoAway', [['code', errorCode], ['reason', string]])],
    ['Kicked', struct('Kicked', [['room', option(string)], ['code', errorCode], ['reason', string]])],
    ['Error', Failure],
  ]);
  const RoomFrame = enumeration('RoomFrame', [
    ['Open', Joined],
    ['Event', RoomEvent],
    ['Copies', struct('Copies', [['slot', u64]])],
  ]);
  return Object.freeze({
    Request, RequestBody, Hello, Join, Post, Position,
    ServerMsg, Reply, Failure, Welcome, Limits, Joined, HistoryPage,
    RoomFrame, RoomEvent, EventKind,
  });
})();
