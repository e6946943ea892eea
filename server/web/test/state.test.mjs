// The client's pure state (quiver/state.js), without IO: backoff bounds, request ids, room resume position from a
// stream's Open frame and dedupe, which streams are a room's, post re-send order, latest-wins tick acceptance with
// loss and staleness counts, clock offset.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Backoff, ErrorCode, LatestWins, Merge, PostQueue, QuiverError, RequestTable, RoomState, clockOffsetUs,
} from '../quiver/index.js';

const joined = (fields) => ({
  room: 'lobby', epoch: 7n, recovered: false, replay_from: 1n, last_seq: 0n, members: [], ...fields,
});
const message = (seq, text = `m${seq}`) => ({
  seq, time_us: 1000n + seq, kind: { Message: { sender: 'ann', client_msg_id: seq, body: new TextEncoder().encode(text) } },
});
const presence = (seq, kind, member) => ({ seq, time_us: 5n, kind: { [kind]: { member } } });

test('Backoff: 50 ms doubling to 5 s, each delay in the upper half of its ceiling', () => {
  const ceilings = [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000];
  const low = new Backoff({ random: () => 0 });
  const high = new Backoff({ random: () => 0.999999 });
  ceilings.forEach((ceiling, attempt) => {
    assert.equal(low.ceiling(attempt), ceiling);
    assert.equal(low.delay(attempt), ceiling / 2);
    assert.ok(high.delay(attempt) <= ceiling && high.delay(attempt) > ceiling * 0.99);
  });
  assert.equal(low.ceiling(10_000), 5000, 'huge attempt numbers stay capped (no Infinity or NaN)');
  const real = new Backoff();
  for (let attempt = 0; attempt < 40; attempt++) {
    const delay = real.delay(attempt);
    assert.ok(delay >= real.ceiling(attempt) / 2 && delay <= real.ceiling(attempt), `attempt ${attempt}: ${delay}`);
    assert.ok(delay >= 25 && delay <= 5000);
  }
  assert.equal(new Backoff({ initialMs: 1, maxMs: 8, random: () => 1 }).delay(5), 8);
});

test('RequestTable: ids from 1 in order, one completion per reply, close fails waiters and later requests', () => {
  const table = new RequestTable();
  const a = table.start('a');
  const b = table.start('b');
  assert.deepEqual([a, b], [1n, 2n]);
  assert.equal(table.complete(b), 'b');
  assert.equal(table.complete(b), undefined, 'a second reply to the same id is not delivered');
  assert.equal(table.complete(99n), undefined);
  assert.equal(table.size, 1);
  assert.deepEqual(table.close({ code: ErrorCode.GoingAway, reason: 'bye' }), ['a']);
  assert.throws(() => table.start('c'), (err) => err instanceof QuiverError && err.closed && err.code === ErrorCode.GoingAway);
  table.close({ code: ErrorCode.Internal, reason: 'later' });
  assert.throws(() => table.start('d'), (err) => err.code === ErrorCode.GoingAway, 'the first reason sticks');
});

test('RoomState: the first Open sets the position before its replay; messages at or below it are dropped', () => {
  const room = new RoomState('lobby');
  assert.equal(room.position(), null);
  const first = joined({ epoch: 7n, recovered: true, replay_from: 11n, last_seq: 10n, members: ['ann', 'bob'] });
  assert.deepEqual(room.open(first), [], 'no resumed event on a first join');
  assert.deepEqual(room.position(), { epoch: 7n, seq: 10n });
  assert.deepEqual([...room.members].sort(), ['ann', 'bob']);
  assert.equal(room.event(message(10n)), null, 'the head itself was before the join');
  const m11 = room.event(message(11n, 'héllo'));
  assert.equal(m11.type, 'message');
  assert.equal(m11.seq, 11n);
  assert.equal(m11.text, 'héllo');
  assert.equal(m11.sender, 'ann');
  assert.equal(m11.epoch, 7n);
  assert.equal(room.event(message(11n)), null, 'a duplicate');
  assert.equal(room.event(message(5n)), null, 'an old one');
  assert.deepEqual(room.position(), { epoch: 7n, seq: 11n });
  // Presence is never dropped (it carries the seq of the message before it) and updates the members.
  assert.equal(room.event(presence(11n, 'MemberJoined', 'cy')).type, 'joined');
  assert.equal(room.event(presence(11n, 'MemberLeft', 'bob')).member, 'bob');
  assert.deepEqual([...room.members].sort(), ['ann', 'cy']);
  // Text of a body that is not UTF-8 is decoded leniently; the bytes stay as they were.
  const notText = { sender: 's', client_msg_id: 1n, body: Uint8Array.of(0xff) };
  const binary = room.event({ seq: 12n, time_us: 0n, kind: { Message: notText } });
  assert.equal(binary.text, '\ufffd');
  assert.deepEqual(binary.body, Uint8Array.of(0xff));
});

test('RoomState: a Join reply before the Open fills a new room; that join\'s Open then announces nothing', () => {
  const room = new RoomState('lobby');
  const reply = joined({ epoch: 7n, recovered: true, replay_from: 4n, last_seq: 3n, members: ['ann'] });
  room.replied(reply);
  assert.deepEqual(room.position(), { epoch: 7n, seq: 3n });
  assert.deepEqual([...room.members], ['ann']);
  assert.deepEqual(room.open(reply), []);
  room.event(message(4n));
  room.replied(joined({ epoch: 9n, last_seq: 50n }));
  assert.deepEqual(room.position(), { epoch: 7n, seq: 4n }, 'only a brand-new room takes a reply');
});

test('RoomState: a replay_from of 0 (a hostile or broken server) leaves the position at 0, not -1', () => {
  const room = new RoomState('lobby');
  room.replied(joined({ epoch: 7n, recovered: true, replay_from: 0n, last_seq: 0n }));
  assert.deepEqual(room.position(), { epoch: 7n, seq: 0n }, 'a Join reply');
  const other = new RoomState('lobby');
  other.open(joined({ epoch: 7n, recovered: true, replay_from: 0n, last_seq: 0n }));
  assert.deepEqual(other.position(), { epoch: 7n, seq: 0n }, 'an Open');
  other.open(joined({ epoch: 7n, recovered: false, replay_from: 0n, last_seq: 0n }));
  assert.deepEqual(other.position(), { epoch: 7n, seq: 0n }, 'an Open that cannot resume');
});

test('RoomState: a rejoin resumes from the last delivered message and announces recovery', () => {
  const room = new RoomState('lobby');
  room.open(joined({ epoch: 7n, recovered: true, replay_from: 1n, last_seq: 0n }));
  for (const seq of [1n, 2n, 3n]) room.event(message(seq));
  // Connection lost: the rejoin asks for everything after (7, 3); the server replays 3..5 (overlap of one).
  assert.deepEqual(room.position(), { epoch: 7n, seq: 3n });
  const rejoin = joined({ epoch: 7n, recovered: true, replay_from: 3n, last_seq: 5n, members: ['ann'] });
  assert.deepEqual(room.open(rejoin), [{ type: 'resumed', room: 'lobby', recovered: true, epoch: 7n }]);
  assert.deepEqual([...room.members], ['ann'], 'members come from the Open frame');
  const delivered = [3n, 4n, 5n, 4n, 6n].map((seq) => room.event(message(seq))?.seq ?? null);
  assert.deepEqual(delivered, [null, 4n, 5n, null, 6n]);
});

test('RoomState: recovered false, and a new epoch, are announced as not recovered', () => {
  const room = new RoomState('lobby');
  room.open(joined({ epoch: 7n, recovered: true, replay_from: 51n, last_seq: 50n }));
  room.event(message(51n));
  // Same epoch, history trimmed past the position: not recovered; the replay starts after a gap.
  assert.equal(room.open(joined({ epoch: 7n, recovered: false, replay_from: 55n, last_seq: 60n }))[0].recovered, false);
  assert.equal(room.event(message(51n)), null, 'delivered before');
  assert.equal(room.event(message(55n)).seq, 55n);
  // Same epoch, a position ahead of the room (a store that lost its tail, the epoch kept): the latest are new
  // messages and are delivered (they were dropped as duplicates of the old seqs, the room silent up to seq 55).
  assert.equal(room.open(joined({ epoch: 7n, recovered: false, replay_from: 50n, last_seq: 52n }))[0].recovered, false);
  assert.equal(room.event(message(50n)).seq, 50n);
  assert.equal(room.event(message(52n)).seq, 52n);
  // Same epoch, not recovered (trimmed after the position the rejoin asked from), the replay starting at messages
  // the replaced stream handed out after the rejoin was written (52 came on the old stream): each goes out once.
  assert.equal(room.open(joined({ epoch: 7n, recovered: false, replay_from: 52n, last_seq: 60n }))[0].recovered, false);
  assert.equal(room.event(message(52n)), null, 'delivered by the replaced stream');
  assert.equal(room.event(message(53n)).seq, 53n);
  // The server lost the room: a new epoch; seqs start over and nothing old counts.
  const [resumed] = room.open(joined({ epoch: 99n, recovered: true, replay_from: 1n, last_seq: 2n }));
  assert.deepEqual(resumed, { type: 'resumed', room: 'lobby', recovered: false, epoch: 99n });
  assert.deepEqual(room.position(), { epoch: 99n, seq: 0n });
  assert.equal(room.event(message(1n)).seq, 1n);
  assert.equal(room.event(message(1n)), null);
});

test('RoomState: after a stream lost before its Open, the next Open is announced only when messages were missed', () => {
  // The first Join's reply set the position; its stream was reset before its Open, and the room joined again.
  const kept = new RoomState('lobby');
  kept.replied(joined({ epoch: 7n, recovered: true, replay_from: 6n, last_seq: 5n }));
  assert.deepEqual(kept.open(joined({ epoch: 7n, recovered: true, replay_from: 6n, last_seq: 8n })), []);
  assert.equal(kept.event(message(6n)).seq, 6n, 'what came meanwhile is replayed');
  const lost = new RoomState('lobby');
  lost.replied(joined({ epoch: 7n, recovered: true, replay_from: 6n, last_seq: 5n }));
  const announced = lost.open(joined({ epoch: 8n, recovered: false, replay_from: 3n, last_seq: 4n }));
  assert.deepEqual(announced, [{ type: 'resumed', room: 'lobby', recovered: false, epoch: 8n }], 'a gap is never silent');
  assert.deepEqual(lost.position(), { epoch: 8n, seq: 2n }, 'the new epoch\'s replay is delivered whole');
  // Every Open after the first is a rejoin's, announced even when nothing was missed.
  assert.equal(lost.open(joined({ epoch: 8n, recovered: true, replay_from: 3n, last_seq: 4n }))[0].recovered, true);
});

test('RoomState: only streams of the room\'s own Joins are its: from its first Join on the latest session on', () => {
  const [one, two] = [{ name: 'session 1' }, { name: 'session 2' }];
  const room = new RoomState('lobby');
  assert.equal(room.ours(one, 1n), false, 'no Join written yet');
  room.joining(one, 3n);
  assert.equal(room.ours(one, 1n), false, 'a Join of the name before this room\'s (left since)');
  assert.equal(room.ours(two, 3n), false, 'request 3 of another session');
  room.joining(one, 4n); // a rejoin refused as AlreadyJoined: request 3's stream stays the room's
  assert.equal(room.ours(one, 3n), true);
  assert.equal(room.ours(one, 4n), true, 'a rejoin that was taken (after a kick)');
  room.joining(two, 1n);
  assert.equal(room.ours(one, 5n), false, 'the old session\'s streams, after a reconnect');
  assert.equal(room.ours(two, 1n), true);
});

test('PostQueue: posts in call order; a lost connection re-sends the unacknowledged ones first, in order', () => {
  const queue = new PostQueue();
  const posts = [1, 2, 3, 4, 5].map((id) => ({ clientMsgId: BigInt(id) }));
  const ids = (jobs) => jobs.map((job) => Number(job.clientMsgId));
  queue.enqueue(posts[0]);
  queue.enqueue(posts[1]);
  assert.deepEqual(ids(queue.startSending('conn1')), [1, 2]);
  queue.enqueue(posts[2]);
  assert.deepEqual(ids(queue.startSending('conn1')), [3]);
  assert.equal(queue.settle(posts[1], 'conn1'), true, 'replies may complete out of order');
  assert.equal(queue.settle(posts[1], 'conn1'), false, 'only once');
  queue.enqueue(posts[3]); // made while the connection is going: not sent yet
  queue.connectionLost();
  assert.equal(queue.settle(posts[0], 'conn1'), false, 'a late answer from the lost connection does not count');
  queue.enqueue(posts[4]);
  assert.equal(queue.size, 4);
  assert.deepEqual(ids(queue.startSending('conn2')), [1, 3, 4, 5], 'same posts, same ids, original order');
  assert.equal(queue.settle(posts[0], 'conn1'), false);
  assert.equal(queue.settle(posts[0], 'conn2'), true);
  queue.connectionLost();
  assert.deepEqual(ids(queue.startSending('conn3')), [3, 4, 5]);
  assert.deepEqual(ids(queue.drain()), [3, 4, 5]);
  assert.equal(queue.size, 0);
});

test('PostQueue: full at max posts queued or in flight (0: never), free again once one is settled', () => {
  const queue = new PostQueue(2);
  const posts = [1, 2].map((id) => ({ clientMsgId: BigInt(id) }));
  queue.enqueue(posts[0]);
  assert.equal(queue.full, false);
  queue.startSending('conn1');
  queue.enqueue(posts[1]);
  assert.equal(queue.full, true, 'one in flight and one queued');
  queue.connectionLost();
  assert.equal(queue.full, true, 'a lost connection frees nothing: both are sent again');
  queue.startSending('conn2');
  assert.equal(queue.settle(posts[0], 'conn2'), true);
  assert.equal(queue.full, false);
  const unbounded = new PostQueue(0);
  for (let i = 0; i < 100; i++) unbounded.enqueue({ clientMsgId: BigInt(i) });
  assert.equal(unbounded.full, false);
  for (const bad of [-1, 1.5, NaN, null, '10']) assert.throws(() => new PostQueue(bad), /maxQueuedPosts must be a count/);
});

test('LatestWins: newer ticks pass, gaps count as lost, older or repeated ones as stale (a late one not lost too)', () => {
  const ticks = new LatestWins();
  const accepted = [1n, 2n, 2n, 5n, 3n, 4n, 6n, 10n, 1n].map((seq) => ticks.accept(seq));
  assert.deepEqual(accepted, [true, true, false, true, false, false, true, true, false]);
  // lost: 7, 8, 9 (3 and 4 were counted lost when 5 came, then arrived: stale, no longer lost)
  assert.deepEqual(ticks.stats, { received: 5, lost: 3, stale: 4 });
  assert.equal(ticks.lastSeq, 10n);
  // Resubscribed on a new connection: the channel's seqs may start over; counters carry on.
  ticks.resync();
  assert.equal(ticks.accept(1n), true);
  assert.equal(ticks.accept(3n), true);
  assert.deepEqual(ticks.stats, { received: 7, lost: 4, stale: 4 });
  // Past the 64 seqs before the newest a late one stays lost (and is stale too).
  ticks.accept(100n);
  ticks.accept(10n);
  ticks.accept(99n);
  assert.deepEqual(ticks.stats, { received: 8, lost: 4 + 96 - 1, stale: 6 });
  // The first tick ever sets the baseline: no loss counted before it.
  const late = new LatestWins();
  late.accept(1000n);
  assert.deepEqual(late.stats, { received: 1, lost: 0, stale: 0 });
});

test('clockOffsetUs: the fastest round trip wins', () => {
  assert.equal(clockOffsetUs([]), null);
  const offset = clockOffsetUs([
    { rttUs: 900, clientTimeUs: 1000, serverTimeUs: 9000 },
    { rttUs: 100, clientTimeUs: 5000, serverTimeUs: 5550 }, // midpoint 5050: server ahead by 500
    { rttUs: 300, clientTimeUs: 8000, serverTimeUs: 0 },
  ]);
  assert.equal(offset, 500);
});

test('clockOffsetUs: a server time no clock shows (past 2^53 µs, a hostile Pong\'s 2^63) is left out', () => {
  const good = { rttUs: 300, clientTimeUs: 1000, serverTimeUs: 2150 };
  const hostile = { rttUs: 100, clientTimeUs: 1000, serverTimeUs: Number(2n ** 63n) };
  assert.equal(clockOffsetUs([hostile, good]), 1000, 'the slower plausible sample wins');
  assert.equal(clockOffsetUs([hostile, { ...hostile, serverTimeUs: 2 ** 53 }]), null);
});

test('Merge: stream and copies under seeded loss, duplication and reordering give each position once, in order', () => {
  let state = 5;
  const random = () => ((state = (state * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let run = 0; run < 100; run++) {
    const n = 100;
    const loss = [0, 0.1, 0.5, 1][run % 4];
    const copies = [];
    for (let p = 0; p < n; p++) for (let k = Math.floor(random() * 4); k > 0; k--) if (random() >= loss) copies.push(p);
    for (let i = 0; i < copies.length; i++) {
      const j = Math.min(copies.length - 1, i + Math.floor(random() * 8));
      [copies[i], copies[j]] = [copies[j], copies[i]];
    }
    const merge = new Merge(0n);
    const out = [];
    let [stream, copy] = [0, 0];
    while (stream < n || copy < copies.length) {
      if (copy === copies.length || (stream < n && random() < 0.3)) {
        const frame = merge.stream(BigInt(stream), stream);
        if (frame !== null) out.push(frame);
        stream++;
      } else {
        merge.copy(BigInt(copies[copy]), copies[copy]);
        copy++;
      }
      for (let f = merge.ready(); f !== null; f = merge.ready()) out.push(f);
    }
    assert.deepEqual(out, [...Array(n).keys()], `run ${run}`);
  }
});

test('Turns: tasks of a key run one at a time in order, a rejection does not stop the next, idle keys are forgotten', async () => {
  const { Turns } = await import('../quiver/client/waiting.js');
  const turns = new Turns();
  const log = [];
  let release;
  const first = turns.run('a', () => new Promise((resolve) => { release = resolve; }).then(() => log.push('a1')));
  const failing = turns.run('a', () => { log.push('a2'); throw new Error('refused'); });
  const third = turns.run('a', () => log.push('a3'));
  await turns.run('b', () => log.push('b1')); // another key does not wait
  assert.deepEqual(log, ['b1']);
  release();
  await first;
  await assert.rejects(failing, /refused/);
  await third;
  assert.deepEqual(log, ['b1', 'a1', 'a2', 'a3']);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(turns.size, 0);
});

test('restore: refusals for now are tried RESTORE_TRIES times, then end with the last one\'s code', async () => {
  const { restore, RESTORE_TRIES } = await import('../quiver/client/waiting.js');
  const refusedForNow = [ErrorCode.Unavailable, ErrorCode.ServerFull];
  const options = (what) => ({ still: () => true, sleep: async () => {}, delay: () => 0, refusedForNow, what });
  let tries = 0;
  const full = () => { tries++; throw new QuiverError(ErrorCode.ServerFull, 'max_rooms'); };
  const ended = await restore(full, options('the room'));
  assert.equal(tries, RESTORE_TRIES);
  assert.equal(ended.code, ErrorCode.ServerFull, 'the server said full, not unavailable');
  assert.ok(ended.message.endsWith(`${RESTORE_TRIES} times, the last: max_rooms`), ended.message);
  const denied = await restore(() => { throw new QuiverError(ErrorCode.PermissionDenied, 'no'); }, options('it'));
  assert.equal(denied.code, ErrorCode.PermissionDenied);
  assert.equal(await restore(async () => {}, options('it')), null);
});

test('Signal: a wait that times out leaves no waiter behind; a notify still wakes the ones waiting', async () => {
  const { Signal } = await import('../quiver/client/waiting.js');
  const signal = new Signal();
  for (let i = 0; i < 10; i++) await signal.nextWithin(new Promise((resolve) => setTimeout(resolve, 1)));
  assert.equal(signal.waiters.length, 0, 'each timed-out wait left its waiter (kept until the next notify)');
  const woken = signal.nextWithin(new Promise(() => {}));
  assert.equal(signal.waiters.length, 1);
  signal.notify();
  await woken;
  assert.equal(signal.waiters.length, 0);
});
