//! The Lua scripts that make each room operation one atomic step in Redis. Redis runs a script alone, so a room's
//! seq, stream and channel see one order; everything a script touches is a key of one room (one hash tag), so
//! they run on Redis Cluster too. Numbers that may exceed 2^53 (epochs, µs times) stay strings: Lua has doubles.

use std::sync::LazyLock;

use redis::Script;

/// Shared by every script: the room's epoch, seq and op, creating the room (with the caller's fresh epoch) when it
/// is unknown, and starting a new epoch when its stream was lost (evicted, flushed) although it had messages.
const PRELUDE: &str = r#"
local function room(meta, log, candidate)
  local fields = redis.call('HMGET', meta, 'epoch', 'seq', 'op')
  local epoch, seq, op = fields[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0')
  if epoch and seq > 0 and redis.call('EXISTS', log) == 0 then
    epoch = nil
  end
  if not epoch then
    epoch = candidate
    seq = 0
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
    redis.call('DEL', log)
  end
  return epoch, seq, op
end
local function publish(channel, epoch, seq, op, time, event)
  redis.call('PUBLISH', channel,
    epoch .. ' ' .. string.format('%d', seq) .. ' ' .. string.format('%d', op) .. ' ' .. time .. ' ' .. event)
end
local function expire_if_empty(meta, log, members, ttl)
  if tonumber(ttl) > 0 and redis.call('EXISTS', members) == 0 then
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', log, ttl)
  end
end
"#;

/// KEYS: meta, log, members, dedupe key, dedupe ring. ARGV: fresh epoch, time µs, message payload, dedupe window
/// ms, max messages, max age µs (0: no age limit), room TTL ms, events channel, dedupe max entries. Returns {epoch,
/// seq, duplicate}. The dedupe keys of a room are bounded by count as well as by age, as on one node: each new post's
/// key is pushed onto the room's ring (a list), and once it holds 64 more than `dedupe_max_entries` the oldest
/// keys are deleted down to that many (one `RPUSH` a post, the rest every 64th). Without it a client posting at its
/// rate limit made a key per post for the whole window (about 150 bytes each: a Redis filled by one address). The age
/// limit is applied on Redis' clock (`TIME`, every 8th post), not the posting node's: a node whose clock runs
/// ahead would otherwise cut the other nodes' recent messages.
/// Seven calls in the common case (each costs Redis ~10 µs on this VM: the script is kept short on purpose): the
/// dedupe key is claimed with the seq it would get (`SET NX GET`), and the stream's existence is checked by
/// `XADD NOMKSTREAM` rather than by a separate `EXISTS`.
const POST: &str = r#"
local meta, log, members, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local fields = redis.call('HMGET', meta, 'epoch', 'seq', 'op')
local epoch, seq, op = fields[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0')
if not epoch then
  epoch = ARGV[1]
  seq = 0
  redis.call('DEL', log)
end
seq = seq + 1
op = op + 1
local mark = epoch .. ':' .. string.format('%d', seq)
local prior = redis.call('SET', dedupe, mark, 'NX', 'GET', 'PX', ARGV[4])
if prior then
  local sep = string.find(prior, ':', 1, true)
  if sep then
    local first_epoch, first_seq = string.sub(prior, 1, sep - 1), tonumber(string.sub(prior, sep + 1))
    if first_epoch == epoch then
      return {epoch, first_seq, 1}
    end
    -- The room moved to this epoch after Redis came back with older data, its stream kept: the seqs up to the
    -- switch are this epoch's now (ROLLED_BACK).
    local moved = redis.call('HMGET', meta, 'moved_from', 'moved_to', 'moved_at')
    if moved[1] == first_epoch and moved[2] == epoch and first_seq and first_seq <= tonumber(moved[3] or '0') then
      return {epoch, first_seq, 1}
    end
  end
  redis.call('SET', dedupe, mark, 'PX', ARGV[4])
end
-- A failed XADD gives the claim back (Redis keeps what a failing script wrote): a retry must not be told a seq
-- nothing was stored at.
local function failed(reply)
  if prior then redis.call('SET', dedupe, prior, 'PX', ARGV[4]) else redis.call('DEL', dedupe) end
  return redis.error_reply(reply.err)
end
local added = false
if seq > 1 then
  added = redis.pcall('XADD', log, 'NOMKSTREAM', 'MAXLEN', '~', ARGV[5], string.format('%d', seq) .. '-0',
    'o', op, 't', ARGV[2], 'p', ARGV[3])
  if type(added) == 'table' and added.err then return failed(added) end
end
if not added then
  if seq > 1 then
    -- The stream is gone although the room had messages (evicted, flushed): a new epoch.
    epoch = ARGV[1]
    seq = 1
    redis.call('SET', dedupe, epoch .. ':1', 'PX', ARGV[4])
  end
  local first = redis.pcall('XADD', log, 'MAXLEN', '~', ARGV[5], '1-0', 'o', op, 't', ARGV[2], 'p', ARGV[3])
  if type(first) == 'table' and first.err then return failed(first) end
end
redis.call('HSET', meta, 'epoch', epoch, 'seq', seq, 'op', op)
-- The ring lives as long as the window past its first entry or last trim: a room posted into slowly lets it expire
-- (its keys expire on their own), a busy one trims it every 64 posts.
-- A key claimed again (its earlier claim of another epoch was there: the ring names it already) is not pushed twice:
-- trimming its older entry would delete the new claim long before its turn.
local ring, max_entries = KEYS[5], tonumber(ARGV[9])
local held = 0
if not prior then held = redis.call('RPUSH', ring, dedupe) end
if held == 1 then
  redis.call('PEXPIRE', ring, ARGV[4])
elseif held > max_entries + 64 then
  local old = redis.call('LPOP', ring, held - max_entries)
  for i = 1, #old, 512 do
    redis.call('DEL', unpack(old, i, math.min(i + 511, #old)))
  end
  redis.call('PEXPIRE', ring, ARGV[4])
end
-- Every 8th message drops up to 16 entries past the age limit: twice the rate they can come of age.
local max_age = tonumber(ARGV[6])
if max_age > 0 and seq % 8 == 0 then
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000000 + tonumber(now[2]) - max_age
  for i = 1, 16 do
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    -- (An entry without a time, damaged or not written here, stops the walk: raising an error after the writes
    -- above would refuse a post stored already, and deleting what cannot be read is not this script's to do.)
    local t = first and tonumber(first[2][4] or '')
    if not t or t >= cutoff then break end
    redis.call('XDEL', log, first[1])
  end
end
expire_if_empty(meta, log, members, ARGV[7])
publish(ARGV[8], epoch, seq, op, ARGV[2], 'M' .. ARGV[3])
return {epoch, seq, 0}
"#;

/// KEYS: meta, log, members, this node's holders, the subscription's tombstone, this node's burial mark in the room.
/// ARGV: fresh epoch, identity, time µs, events channel, the subscription's id on this node, `1` to count it even
/// though this node was buried, the most member names to return (`0`: none; a room holding more gives that many,
/// the joiner's among them: until 2026-12-08 every join read the whole list, O(members) in Redis' one thread, and a
/// node announcing its members again after a burial, which reads none, had each of its joins read it).
/// Idempotent per subscription (a retry, or a node announcing its members again,
/// counts it once), and never counts a subscription whose leave ran first (its tombstone: a join whose reply was
/// lost is undone by a leave, and the join, late on a replaced connection, may run after it), nor, unless asked to,
/// one of a node buried in this room ([`NODE_GONE`]'s mark: a dead node's join still on its way, in a kernel's send
/// buffer across a partition, counted a member after the burial that nobody would ever take out; the node itself,
/// alive, asks again to be counted). Returns {epoch, seq, op before this join's event, members, 1 when refused for
/// the mark}.
const JOIN: &str = r#"
local function listed(members, identity, most)
  if most <= 0 then return {} end
  if redis.call('HLEN', members) <= most then return redis.call('HKEYS', members) end
  local some = redis.call('HRANDFIELD', members, most)
  if redis.call('HEXISTS', members, identity) == 0 then return some end
  for _, member in ipairs(some) do
    if member == identity then return some end
  end
  some[#some] = identity
  return some
end
local most = tonumber(ARGV[7])
if redis.call('EXISTS', KEYS[5]) == 1 then
  -- Left already: nothing is written (a room gone meanwhile is not made again, nor kept from expiring).
  local fields = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'op')
  local members = listed(KEYS[3], ARGV[2], most)
  return {fields[1] or ARGV[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0'), members, 0}
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  if ARGV[6] ~= '1' then
    local fields = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'op')
    local members = listed(KEYS[3], ARGV[2], most)
    return {fields[1] or ARGV[1], tonumber(fields[2] or '0'), tonumber(fields[3] or '0'), members, 1}
  end
  redis.call('DEL', KEYS[6])
end
local epoch, seq, op = room(KEYS[1], KEYS[2], ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local before = op
if redis.call('HSETNX', KEYS[4], ARGV[5], ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
    op = redis.call('HINCRBY', KEYS[1], 'op', 1)
    publish(ARGV[4], epoch, seq, op, ARGV[3], 'J' .. ARGV[2])
  end
end
return {epoch, seq, before, listed(KEYS[3], ARGV[2], most), 0}
"#;

/// Ends one subscription of one node (its identity's last one publishes the leave). Idempotent: a subscription
/// already gone is a no-op, but for its tombstone (`gone`, when given: set for `gone_ms`), which keeps a join of
/// it, or a reconcile that read it before this leave, from counting it when it runs later. Returns 1 if the
/// subscription was there.
const LEAVE_FN: &str = r#"
local function leave(meta, log, members, holders, sub, time, channel, ttl, gone, gone_ms)
  local identity = redis.call('HGET', holders, sub)
  if not identity then
    if gone then redis.call('SET', gone, '1', 'PX', gone_ms) end
    return 0
  end
  redis.call('HDEL', holders, sub)
  if redis.call('HINCRBY', members, identity, -1) <= 0 then
    redis.call('HDEL', members, identity)
    local fields = redis.call('HMGET', meta, 'epoch', 'seq')
    if fields[1] then
      local op = redis.call('HINCRBY', meta, 'op', 1)
      publish(channel, fields[1], tonumber(fields[2] or '0'), op, time, 'L' .. identity)
    end
  end
  expire_if_empty(meta, log, members, ttl)
  return 1
end
"#;

/// KEYS: meta, log, members, the node's holders, the subscription's tombstone. ARGV: subscription id, time µs,
/// events channel, room TTL ms, tombstone TTL ms.
const LEAVE: &str = r#"
return leave(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], KEYS[5], ARGV[5])
"#;

/// Every subscription a dead node held in the room ends, and the room keeps a mark of the burial for ARGV[4] ms, so
/// that a join of the node's that runs later counts nothing ([`JOIN`]). KEYS: meta, log, members, the dead node's
/// holders, its burial mark in the room. ARGV: time µs, events channel, room TTL ms, the mark's TTL ms. Returns the
/// subscriptions ended.
const NODE_GONE: &str = r#"
redis.call('SET', KEYS[5], '1', 'PX', ARGV[4])
local held = redis.call('HKEYS', KEYS[4])
for _, sub in ipairs(held) do
  leave(KEYS[1], KEYS[2], KEYS[3], KEYS[4], sub, ARGV[1], ARGV[2], ARGV[3], nil, nil)
end
redis.call('DEL', KEYS[4])
return #held
"#;

/// The node's subscriptions in the room as Redis counts them, made to agree with the node's own: every one it does
/// not hold any more ends (Redis back from a snapshot taken before they left; a leave that never reached it), and
/// every one it holds that Redis does not count is counted (taken after the snapshot: a member that looked absent,
/// and whose identity's other subscription's leave would have published it gone, though still there), as a join
/// counts it. KEYS: meta, log, members, the node's holders, its burial mark in the room, then the tombstone of every
/// subscription the node holds in the room. ARGV: time µs, events channel, room TTL ms, the node's last subscription id
/// when it read them, then the id and identity of every one. Run late (its call's connection stalled and was replaced),
/// it neither counts a subscription whose leave ran meanwhile (its tombstone, as JOIN) nor ends one joined since (an id
/// above the last one read). (A subscription whose leave found it counted leaves no tombstone, one key per leave for 15
/// minutes: a reconcile that read it and runs after that leave counts it again, until the node's next reconcile or
/// burial.) Nor does it count any while the node's burial mark is there ([`NODE_GONE`]): run late, after the node was
/// buried, it counted a dead node's members for good, as a late join did (the node, alive, is counted again by its
/// `announce`, whose joins clear the mark; until 2026-12-07, a review's find). Returns {subscriptions ended, counted}.
const RECONCILE: &str = r#"
local keep = {}
for i = 5, #ARGV, 2 do keep[ARGV[i]] = true end
local last = tonumber(ARGV[4])
local ended = 0
for _, sub in ipairs(redis.call('HKEYS', KEYS[4])) do
  if not keep[sub] and tonumber(sub) <= last then
    ended = ended + leave(KEYS[1], KEYS[2], KEYS[3], KEYS[4], sub, ARGV[1], ARGV[2], ARGV[3], nil, nil)
  end
end
local counted = 0
local fields = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if fields[1] and redis.call('EXISTS', KEYS[5]) == 0 then
  for i = 5, #ARGV, 2 do
    local identity = ARGV[i + 1]
    local gone = KEYS[5 + (i - 3) / 2]
    if redis.call('EXISTS', gone) == 0 and redis.call('HSETNX', KEYS[4], ARGV[i], identity) == 1 then
      counted = counted + 1
      if redis.call('HINCRBY', KEYS[3], identity, 1) == 1 then
        local op = redis.call('HINCRBY', KEYS[1], 'op', 1)
        publish(ARGV[2], fields[1], tonumber(fields[2] or '0'), op, ARGV[1], 'J' .. identity)
      end
    end
  end
end
if counted > 0 then
  -- Members again: the room must not expire (a leave above, or before, may have set its expiry), as JOIN.
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return {ended, counted}
"#;

/// A node's heartbeat, on Redis' clock. KEYS: the nodes' sorted set, the node's mark. ARGV: node id, the node's
/// token, `create` or `refresh`. Stamps the node (on Redis' clock, never backwards but after a step back of Redis'
/// clock) and, with `create`, sets its
/// mark; with `refresh` it only checks that the mark is still the node's: a node buried meanwhile (mark deleted) is
/// told so by every beat until it creates the mark again, even if a beat from before a partition runs late.
/// Returns {now ms, 1 if the mark is the node's, the node's stamp before this beat (0 if none)}: a stamp older than
/// the node's last beat tells it Redis lost its beats since (back from an older snapshot, or it was buried).
const BEAT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local before = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
-- Never backwards, but for stamps ahead of Redis' clock by more than 5 s, every node's: its clock stepped back (an
-- NTP step, a failover to a replica behind), and kept there a stamp would keep its node, once dead (already, or
-- later), from being buried until Redis' clock caught up with it (an hour's step, an hour). A live node's next beat
-- stamps it again.
for _, ahead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now + 5000), '+inf')) do
  redis.call('ZADD', KEYS[1], 'XX', now, ahead)
end
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
if ARGV[3] == 'create' then
  redis.call('SET', KEYS[2], ARGV[2])
  return {now, 1, before}
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  return {now, 1, before}
end
return {now, 0, before}
"#;

/// Lists a node in `q:{nodes}`, stamped with Redis' time, unless it is listed already. Sent with each write to the
/// node's lists of rooms and channels (`q:node:NODE:*`), so that a node whose entry is gone (Redis back without its
/// data, a burial that finished while it was cut off) and that dies before its next beat is still found by the
/// others' burials, which walk `q:{nodes}`: its members were otherwise counted in their rooms for good. KEYS: the
/// nodes' set. ARGV: the node. Returns 1 when it listed the node.
pub(super) const LISTED: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local time = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000), ARGV[1])
return 1
"#;

/// Adds [`LISTED`] for `node` to `pipe` (its reply ignored): sent with each addition to the node's lists.
pub(super) fn listed(pipe: &mut redis::Pipeline, node: &str) {
    pipe.cmd("EVAL").arg(LISTED).arg(1).arg(super::keys::NODES).arg(node).ignore();
}

/// The end of a dead node's burial, once its rooms' members were ended (`NODE_GONE`). KEYS: the node's rooms
/// list, its ticks list, its mark, the nodes' set. ARGV: the node, the presence expiry in ms, '1' when the node
/// retires itself (always buried), the control channel, the message that says it is dead. A node that came back
/// during the burial (its mark made again, or a beat since the expiry's start) is not buried: only its mark is
/// deleted again, so that its next beat finds itself buried and announces its members (some ended here) again; its
/// lists stay, so a burial after its later death still finds its rooms. (Deleted without this check, the lists a
/// node back from a partition had just filled were lost, and if it died before its next beat its members stayed in
/// their rooms for good.) Returns 1 when buried, 0 when it came back.
const BURIED: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local beat = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0')
local back = redis.call('EXISTS', KEYS[3]) == 1 or beat > now - tonumber(ARGV[2])
if back and ARGV[3] ~= '1' then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Redis came back with older data than a node delivered (a restart from a snapshot or an `everysec` AOF, a
/// failover to a replica that lagged): the room's seqs would be given again within its epoch, and a client's
/// position would name another message. KEYS: meta, log. ARGV: the epoch the node delivered in, its last seq, its
/// last op, a fresh epoch, the op and time of the message at its last seq. Compare and set: starts the fresh epoch
/// only while the room is still in that epoch and either behind the node (seq or op) or holding another message at
/// the node's last seq (new posts overtook what was lost; a trimmed entry tells nothing). The first node to notice
/// switches; the others find the new epoch. The stream is kept: its entries become the new epoch's, seqs go on
/// from the room's, and `moved_*` lets the post script answer a retry of a post stored before the switch as the
/// duplicate it is. Returns the room's epoch.
const ROLLED_BACK: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'op')
if fields[1] ~= ARGV[1] then return fields[1] end
local seq, op = tonumber(fields[2] or '0'), tonumber(fields[3] or '0')
local behind = seq < tonumber(ARGV[2]) or op < tonumber(ARGV[3])
if not behind and tonumber(ARGV[2]) > 0 and ARGV[5] ~= '' then
  local id = ARGV[2] .. '-0'
  local entry = redis.call('XRANGE', KEYS[2], id, id)[1]
  if entry then
    behind = entry[2][2] ~= ARGV[5] or entry[2][4] ~= ARGV[6]
  end
end
if not behind then return fields[1] end
redis.call('HSET', KEYS[1], 'epoch', ARGV[4], 'moved_from', ARGV[1], 'moved_to', ARGV[4], 'moved_at', seq)
return ARGV[4]
"#;

/// A room's stream entries from ARGV[2] to ARGV[3] (at most ARGV[4] of them), read only while the room's epoch is
/// ARGV[1]: `XRANGE` alone cannot tell which epoch it reads, and a Redis restarted empty, whose room then started a
/// new epoch under the same seqs, handed a gap fill or a paged replay under way the new epoch's messages as the old
/// one's (`recovered` and all); a join's first page and a History read too. KEYS: meta, log. Nil on another epoch
/// (or none).
const RANGE_IN_EPOCH: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return nil end
return redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
"#;

/// A room's newest stream entries from ARGV[2] down (at most ARGV[3] of them, newest first), read only while the
/// room's epoch is ARGV[1], as [`RANGE_IN_EPOCH`]: a join that is not recovered replays these. KEYS: meta, log. Nil
/// on another epoch (or none).
const LATEST_IN_EPOCH: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return nil end
return redis.call('XREVRANGE', KEYS[2], ARGV[2], '-', 'COUNT', ARGV[3])
"#;

/// The epoch-checked stream read.
pub(super) static RANGE_IN_EPOCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RANGE_IN_EPOCH));
/// The epoch-checked read of the newest entries.
pub(super) static LATEST_IN_EPOCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LATEST_IN_EPOCH));
/// The rollback script.
pub(super) static ROLLED_BACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ROLLED_BACK));
/// The end of a burial.
pub(super) static BURIED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BURIED));
/// The heartbeat script.
pub(super) static BEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEAT));
/// The post script.
pub(super) static POST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&POST_SOURCE));
/// The post script's source (`SCRIPT LOAD` at the head of a pipeline of posts: `posts`).
pub(super) static POST_SOURCE: LazyLock<String> = LazyLock::new(|| format!("{PRELUDE}{POST}"));
/// The join script.
pub(super) static JOIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{PRELUDE}{JOIN}")));
/// The leave script.
pub(super) static LEAVE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}{LEAVE_FN}{LEAVE}")));
/// The dead-node script.
pub(super) static NODE_GONE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}{LEAVE_FN}{NODE_GONE}")));
/// The reconcile script.
pub(super) static RECONCILE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}{LEAVE_FN}{RECONCILE}")));

#[cfg(test)]
#[path = "scripts_tests.rs"]
pub(super) mod tests;
