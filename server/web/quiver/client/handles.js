// What the application holds: a joined `Room`, a tick `Subscription`, a `Publisher`'s right to send ticks. Thin
// handles over the QuiverClient that made them, which keeps their state across reconnects; and how ticks reach
// them and leave from them.

import { ErrorCode, QuiverError } from '../wire/errors.js';
import { encodeTick } from '../wire/ticks.js';
import { LatestWins, RoomState } from '../state.js';
import { callBack, expectReply, leftAnyway, unixUs, untilTaken } from './values.js';

/** A joined room: its name, members and position; post to it or leave it. Made by `QuiverClient.join`. */
export class Room {
  #state;
  #client;

  constructor(client, state) {
    this.#client = client;
    this.#state = state;
  }

  /** The room's name. */
  get name() {
    return this.#state.name;
  }

  /** Members present, as of the events delivered so far (sorted). */
  get members() {
    return [...this.#state.members].sort();
  }

  /** `{epoch, seq}` of the last message delivered, or null. */
  get position() {
    return this.#state.position();
  }

  /** Posts `textOrBytes`; resolves to the seq (BigInt) it got. See `QuiverClient.post`. */
  post(textOrBytes) {
    return this.#client.post(this.name, textOrBytes);
  }

  /** Leaves the room (resolves at once if it ended, or was left, already: a newer join of its name stays). */
  leave() {
    return this.#client.leave(this);
  }
}

/** A subscription to a tick channel. Made by `QuiverClient.subscribe`. */
export class Subscription {
  #entry;
  #client;

  constructor(client, entry) {
    this.#client = client;
    this.#entry = entry;
  }

  /** The channel's name. */
  get channel() {
    return this.#entry.channel;
  }

  /** `{received, lost, stale}`: accepted ticks, seqs skipped, ticks dropped for arriving after a newer one. */
  get stats() {
    return this.#entry.ticks.stats;
  }

  /** The newest tick delivered (`{seq, sentTimeUs, payload, latencyMs}`), or null. */
  get latest() {
    return this.#entry.latest;
  }

  /** `{code, reason}` once the server refused to take the subscription back after a reconnect, else null. */
  get ended() {
    return this.#entry.ended ?? null;
  }

  /** Stops the subscription (nothing to do once it ended or was unsubscribed: a newer one of the channel stays). */
  unsubscribe() {
    return this.#client.unsubscribe(this.channel, this.#entry);
  }
}

/** The right to publish ticks on a channel. Made by `QuiverClient.publisher`. */
export class Publisher {
  #send;
  #ended;
  #unpublish;

  constructor(channel, send, ended, unpublish) {
    this.channel = channel;
    this.#send = send;
    this.#ended = ended;
    this.#unpublish = unpublish;
  }

  /**
   * `{code, reason}` once the server refused to take the claim back after a reconnect, or it was unpublished (code
   * 0, NoError): `send` then returns null.
   */
  get ended() {
    return this.#ended();
  }

  /**
   * Gives the claim up on the server, for every publisher of the channel sharing it, so that a long-lived publisher
   * can go through more channels than `max_publish_channels` (one per match, say). A later `publisher()` of the
   * channel claims it anew.
   */
  unpublish() {
    return this.#unpublish();
  }

  /**
   * Sends one tick (string: UTF-8; or bytes) as a datagram; returns the publisher's seq for it (BigInt), or null
   * when there is no connection to send on or the claim `ended` (ticks are dropped, never queued: the next one is
   * newer anyway).
   * Throws a DatagramTooLarge QuiverError for a payload that cannot fit a datagram on this path.
   */
  send(payload) {
    return this.#send(payload);
  }
}

/** A join's entry of `room`, listed in the client's `rooms`; AlreadyJoined while one is. (`joined` once answered.) */
export function listRoom(client, rooms, room, { onEvent, redundant }) {
  if (rooms.has(room)) throw new QuiverError(ErrorCode.AlreadyJoined, `already in room ${room}`);
  const entry = { state: new RoomState(room), onEvent, handle: null, joining: null, stream: 0, redundant };
  entry.handle = new Room(client, entry.state);
  rooms.set(room, entry);
  return entry;
}

/** A subscribe's entry of `channel`, listed in the client's `subscriptions`; AlreadyJoined while one is. */
export function listSubscription(client, subscriptions, channel, { onTick, onEnd }) {
  if (subscriptions.has(channel)) throw new QuiverError(ErrorCode.AlreadyJoined, `already subscribed to ${channel}`);
  // Until answered (`confirmed`), a reconnect leaves it to this call, which would subscribe it a second time.
  const entry = { channel, onTick, onEnd: [onEnd], ticks: new LatestWins(), latest: null, confirmed: false };
  entry.handle = new Subscription(client, entry);
  subscriptions.set(channel, entry);
  return entry;
}

/** Subscribes `entry` on `session`; its ticks are routed to it while it is the one in `subscriptions`. */
export async function subscribeOn(session, entry, subscriptions) {
  const answered = session.unrouted.began(); // ticks that overtake the answer are held for its route (Unrouted)
  try {
    const { channel_id } = expectReply(await session.request({ Subscribe: { channel: entry.channel } }), 'Subscribed');
    const held = session.unrouted.take(channel_id);
    if (subscriptions.get(entry.channel) !== entry) return;
    session.channels.set(channel_id, entry);
    if (held) session.hooks.onTick(entry, held.tick, unixUs() - held.at); // (its latency from its arrival)
  } finally {
    answered();
  }
}

/** Gives `entry`'s claim up on `session` (in the channel's turn, so `claim` says where the server holds it):
 *  nothing to write where it is not held, or on a version-4 session, which has no Unpublish (refused Unsupported:
 *  the claim stays until the connection ends). Writes the Unpublish, waits for its reply (sent again while refused
 *  for its rate, `untilTaken`: in the turn, so that no claim goes before it) and returns what is left of the wait
 *  (`leftAnyway`), or null: the caller does it outside the turn, as the Rust client does. So the wait of a refusal
 *  `Unavailable` (a server shutting down) for the session to end, up to `ENDING_WAIT_MS`, holds no claim up. */
export async function unclaimOn(session, entry) {
  const held = Boolean(session) && entry.claim?.session === session && !session.closedWhy;
  if (!held) return null;
  if (Number(session.welcome.version) < 5) {
    // No Unpublish in version 4: the server holds the claim, and the newest tick number it took on it, until the
    // connection ends, and a new publisher of the channel numbering from 1 again had its ticks dropped there as
    // reordered (as the Rust client's did): it numbers on (`numberedOn`).
    const kept = session.unpublished.get(entry.channel);
    session.unpublished.set(entry.channel, kept !== undefined && kept > entry.nextSeq ? kept : entry.nextSeq);
    return null;
  }
  const reply = untilTaken(session, { Unpublish: { channel: entry.channel } });
  await reply.catch(() => {}); // (judged by the caller once out of the turn)
  return () => leftAnyway(reply, 'Unpublished', entry, session);
}

/**
 * A new publisher `made` of a channel about to be claimed on `session`, numbered on from a claim of the channel
 * unpublished on that version-4 session (`unclaimOn`); `made`.
 */
export function numberedOn(session, made) {
  // Kept (not taken): the server holds the number until the connection ends, also when this claim is refused.
  const kept = session.unpublished.get(made.channel);
  if (kept !== undefined && kept > made.nextSeq) made.nextSeq = kept;
  return made;
}

/** Claims `entry`'s channel for publishing on `session` (in the channel's turn: `Client#inTurn`). */
export async function claimOn(session, entry) {
  // Whole milliseconds, rounded up: the server refuses 0 (a max age below 1 ms asks for 1 ms).
  const maxAgeMs = entry.maxAgeMs == null ? null : Math.max(1, Math.ceil(entry.maxAgeMs));
  const body = { Publish: { channel: entry.channel, max_age_ms: maxAgeMs } };
  const { channel_id } = expectReply(await session.request(body), 'Publishing');
  entry.claim = { session, channelId: channel_id };
}

/** A tick datagram for subscription `entry` arrived (`nowUs`: the server's clock): delivered if it is newer. */
export function deliverTick(entry, tick, nowUs) {
  if (!entry.ticks.accept(tick.seq)) return;
  const latencyMs = (nowUs - Number(tick.sent_time_us)) / 1000;
  entry.latest = { seq: tick.seq, sentTimeUs: tick.sent_time_us, payload: tick.payload, latencyMs };
  callBack(entry.onTick, entry.latest);
}

/** Sends one tick of publisher `entry` on `session` (`nowUs`: the server's clock); its seq, or null if not claimed there. */
export function sendTick(session, entry, payload, nowUs) {
  if (!session || session.closedWhy || entry.ended || entry.claim?.session !== session) return null;
  session.checkTickPayload(payload);
  const seq = entry.nextSeq;
  const sentTimeUs = BigInt(Math.round(nowUs));
  const datagram = encodeTick({ channel_id: entry.claim.channelId, seq, sent_time_us: sentTimeUs, payload });
  // Numbered once encoded: a tick that throws takes no seq (its subscribers would count it lost, and a send of a
  // publisher that retries it would skip one each time).
  entry.nextSeq = seq + 1n;
  session.sendDatagram(datagram);
  return seq;
}

/**
 * The client ended (`why`): what the application holds ends with it, as the Rust client's handles do: a joined room
 * as one kicked (`endRoom(entry)`: its last event `{type: 'kicked', code, reason}`), a subscription or publisher with
 * its `ended` set and its `onEnd` called (once; a publisher unpublished already is left as it is). The client's maps
 * are emptied: a later join, subscribe or claim of the name rejects as closed (before, a join was refused
 * AlreadyJoined, and the handles stayed as if live). A join or subscribe not answered yet is not told: it rejects as
 * closed.
 */
export function endHeld(rooms, subscriptions, publishers, why, endRoom) {
  for (const entry of [...rooms.values()]) if (entry.joined) endRoom(entry);
  const ticks = [...subscriptions.values()].filter((entry) => entry.confirmed).concat([...publishers.values()]);
  for (const held of [rooms, subscriptions, publishers]) held.clear();
  for (const entry of ticks.filter((held) => !held.ended)) {
    entry.ended = why;
    for (const onEnd of entry.onEnd) callBack(onEnd, why);
  }
}

/**
 * Gives up `entry`'s claim on the server, for every publisher sharing it (their `send` returns null and `ended`
 * says `unpublished` from now on): the channel no longer counts against the connection's `max_publish_channels`.
 * A later `publisher()` of the channel claims it anew. Resolves at once if the claim ended already. In the channel's
 * claim turn (`turns`); `publishers`: the client's; `session()`: its current session.
 */
export async function unpublish(entry, { turns, publishers, session }) {
  const replied = await turns.run(entry.channel, async () => {
    if (entry.ended) return null;
    entry.ended = { code: ErrorCode.NoError, reason: 'unpublished' };
    if (publishers.get(entry.channel) === entry) publishers.delete(entry.channel);
    return unclaimOn(session(), entry);
  });
  await replied?.();
}
