//! [`RedisRooms`]: the [`RoomHub`] of a node in a cluster. Redis sequences, stores and orders every room (one Lua
//! script per post, join and leave: [`super::scripts`]); each node subscribes to the channel of every room its
//! members joined and delivers what the channel carries, in the channel's (= the scripts') order, to its local
//! subscribers. Pub/Sub is at-most-once: a message whose seq jumps is preceded by the missing ones, read from the
//! room's stream, so members see one contiguous order; what cannot be filled (trimmed, or presence events lost
//! while disconnected) ends the node's subscriptions to the room with `SlowConsumer`, and clients rejoin from their
//! position. A post is acknowledged once its script ran (Redis' own persistence is its durability); a post that
//! cannot reach Redis is refused with `Unavailable`, to be retried with the same `client_msg_id`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use quiver_proto::{ErrorCode, Failure, FrameCodec, HistoryPage, Joined, Limits, RoomFrame};

use super::{
    broker::{Broker, ChannelHandler},
    event,
    keys::{self, RoomKeys},
    membership::{announce, bury, join_script, list_room, reconcile},
    node_room::{new_epoch, Channel, Ctx, NodeRoom, NodeState, Sub},
    posts::{FenceNote, PostQueues},
    replay::{plan, replay_rest},
    scripts,
    stream::Entry,
};
use crate::hub::{
    lock::lock, Delivery, Fenced, JoinRoom, Joining, PostMessage, PostProgress, Posted, Replay, RoomHub, RoomUsage,
    SubscriberId,
};

/// Rooms in Redis, shared by every node on the same broker.
pub struct RedisRooms {
    ctx: Arc<Ctx>,
    rooms: Arc<Mutex<HashMap<String, Arc<NodeRoom>>>>,
    posts: Arc<PostQueues>,
}

impl std::fmt::Debug for RedisRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRooms").field("broker", &self.ctx.broker).finish_non_exhaustive()
    }
}

impl RedisRooms {
    /// Rooms on `broker`, following `limits` (history, dedupe window, frame size). Registers this node's part in
    /// burying dead nodes (their members leave) and in coming back after being buried (its members join again).
    pub fn new(broker: Arc<Broker>, limits: Limits) -> RedisRooms {
        // Without an age bound (`history_max_age_s` 0) a room's history is kept however long it is unused: its
        // keys get no expiry (0), as the single node keeps it.
        let room_ttl_ms = match limits.history_max_age_s {
            0 => 0,
            age => u64::from(age.max(limits.dedupe_window_s)).max(1) * 1000,
        };
        let codec = FrameCodec::new(limits.max_frame as usize);
        let next_subscriber = AtomicU64::new(1);
        let ctx = Arc::new(Ctx { broker: broker.clone(), limits, codec, room_ttl_ms, next_subscriber });
        let rooms: Arc<Mutex<HashMap<String, Arc<NodeRoom>>>> = Arc::default();
        let dead_ctx = ctx.clone();
        broker.on_dead(Arc::new(move |node| Box::pin(bury(dead_ctx.clone(), node))));
        let (revived_ctx, revived_rooms) = (ctx.clone(), rooms.clone());
        broker.on_revived(Arc::new(move || Box::pin(announce(revived_ctx.clone(), revived_rooms.clone()))));
        let (connected_ctx, connected_rooms) = (ctx.clone(), rooms.clone());
        broker
            .on_pubsub_connected(Arc::new(move || Box::pin(reconcile(connected_ctx.clone(), connected_rooms.clone()))));
        RedisRooms { posts: PostQueues::new(ctx.clone()), ctx, rooms }
    }

    fn room(&self, name: &str) -> Arc<NodeRoom> {
        node_room(&self.ctx, &self.rooms, name)
    }

    /// Subscribes the node to `room`'s channel, once; returns the room with its join lock held.
    async fn subscribed(&self, name: &str) -> Result<(Arc<NodeRoom>, tokio::sync::OwnedMutexGuard<Channel>), Failure> {
        loop {
            let room = self.room(name);
            let mut guard = room.channel.clone().lock_owned().await;
            match *guard {
                Channel::Removed => continue,
                Channel::Subscribed => return Ok((room, guard)),
                Channel::Unsubscribed => {
                    let handler: Arc<dyn ChannelHandler> = room.clone();
                    self.ctx.broker.subscribe(&room.keys.events, handler).await.map_err(Failure::from)?;
                    *guard = Channel::Subscribed;
                    return Ok((room, guard));
                }
            }
        }
    }
}

/// The node's room of that name, made (not subscribed to) if it has none.
/// Ends a join's subscription in Redis if the join is dropped before it completes (also after an error: a leave of a
/// subscription not counted is a no-op).
struct UndoOnDrop {
    ctx: Arc<Ctx>,
    room: String,
    subscriber: SubscriberId,
    armed: bool,
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        if let (true, Ok(runtime)) = (self.armed, tokio::runtime::Handle::try_current()) {
            runtime.spawn(self.ctx.clone().leave(self.room.clone(), self.subscriber));
        }
    }
}

/// The most member names a join asks Redis for: more than fit one `max_frame` (`hub::fit_members` counts each name
/// at 3 bytes more than its own) are cut off anyway.
fn most_members(max_frame: usize) -> usize {
    max_frame / 3
}

pub(super) fn node_room(ctx: &Arc<Ctx>, rooms: &Mutex<HashMap<String, Arc<NodeRoom>>>, name: &str) -> Arc<NodeRoom> {
    lock(rooms)
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(NodeRoom {
                name: name.to_string(),
                keys: RoomKeys::new(name),
                ctx: ctx.clone(),
                channel: Arc::new(tokio::sync::Mutex::new(Channel::Unsubscribed)),
                state: Mutex::new(NodeState::default()),
            })
        })
        .clone()
}

impl RoomHub for RedisRooms {
    async fn join(&self, join: JoinRoom) -> Result<Joining, Failure> {
        let JoinRoom { room: name, identity, since, req_id, outbox, now_us } = join;
        let (room, _joining) = self.subscribed(&name).await?;
        let ctx = &self.ctx;
        // A reset of the room's subscriptions while this join waits for Redis (an event of a newer epoch, a gap
        // the stream could not fill, a rollback) may come after this join's script read the room: its reply is
        // stale, and the room set live from it would be reset again at the next event.
        let started = lock(&room.state).generation;
        // A Pub/Sub reconnect from here until the room is live here loses what was published meanwhile, and the
        // reconnect's own catch-up skips a room that is not live yet: the join catches up instead. So does a stray
        // subscription's end (its UNSUBSCRIBE may land after this join's SUBSCRIBE: `Broker::unsubscribe_orphan`).
        let pubsub_connections = ctx.broker.pubsub_generation();
        let mut catch_up = false;
        let keys = &room.keys;
        let subscriber = ctx.next_subscriber.fetch_add(1, Ordering::Relaxed);
        list_room(ctx, &name).await?;
        // Undone on any failure from here on, also when the script's reply is lost: it may have run (a leave of a
        // subscription that is not counted is a no-op); and if this join is dropped from here on (its connection
        // ended while it waited for Redis), since nothing else would end it. Every return but the success's drops
        // this armed.
        let mut dropped = UndoOnDrop { ctx: ctx.clone(), room: name.clone(), subscriber, armed: true };
        let (epoch, seq, op_before, mut members) =
            join_script(ctx, keys, (&identity, subscriber), now_us, most_members(ctx.codec.max_frame()))
                .await
                .map_err(|err| ctx.unavailable(err))?;
        let mut conn = ctx.broker.conn();
        let epoch: u64 = epoch.parse().map_err(|_| Failure::new(ErrorCode::Internal, "unreadable room epoch"))?;
        let read = (keys.meta.as_str(), keys.log.as_str());
        let plan = plan(ctx, &mut conn, (read, epoch, seq), since, now_us).await.map_err(|err| ctx.unavailable(err))?;
        let Some(plan) = plan else {
            let why = format!("room {name} started a new epoch while this join was under way; retry");
            return Err(Failure::new(ErrorCode::Unavailable, why));
        };
        members.sort();
        let mut joined = Joined {
            room: name.clone(),
            epoch,
            recovered: plan.recovered,
            replay_from: plan.first.first().map_or(seq + 1, Entry::seq),
            last_seq: seq,
            members,
            req_id,
        };
        crate::hub::fit_members(&mut joined, &identity, ctx.codec.max_frame());
        let mut delivery = Delivery::default();
        {
            let mut state = lock(&room.state);
            if state.generation != started {
                drop(state);
                return Err(Failure::new(
                    ErrorCode::Unavailable,
                    format!("room {name} was reset while this join was under way; retry"),
                ));
            }
            if state.live && state.epoch != epoch {
                delivery.extend(room.reset(&mut state, "the room started a new epoch (its history was lost)"));
            }
            let was_live = state.live;
            let missed: Vec<Bytes> = match was_live && state.last_op > op_before {
                false => Vec::new(),
                true if state.recent.front().is_some_and(|(op, _)| *op <= op_before + 1) => {
                    state.recent.iter().filter(|(op, _)| *op > op_before).map(|(_, f)| f.clone()).collect()
                }
                true => {
                    drop(state);
                    delivery.flush();
                    return Err(Failure::new(
                        ErrorCode::Unavailable,
                        format!("room {name} moved on faster than this join could follow; retry"),
                    ));
                }
            };
            if !was_live {
                // Every event after the join's script that reached this node must still be here to replay: one
                // delivered before a reset, or dropped with it, is not (the join is tried again; its next script
                // starts after it).
                let first_pending =
                    state.pending.iter().filter(|p| p.epoch == epoch && p.op > op_before).map(|p| p.op).min();
                let other_epoch = state.pending.iter().any(|p| p.epoch != epoch);
                let seen_beyond = state.seen.0 == epoch && state.seen.1 > op_before;
                if other_epoch || (seen_beyond && first_pending != Some(op_before + 1)) {
                    state.pending.clear();
                    drop(state);
                    delivery.flush();
                    return Err(Failure::new(
                        ErrorCode::Unavailable,
                        format!("room {name} changed while this join was under way; retry"),
                    ));
                }
                // Which message is at `seq`, if the join read it (a resume's or a gap's replay ends there): else the
                // node does not know it until it delivers one, and its rollback check compares seqs and ops only.
                let last_message = plan.first.last().filter(|e| e.seq() == seq).map(|e| (e.op, e.event.time_us));
                *state = NodeState {
                    live: true,
                    epoch,
                    last_op: op_before,
                    last_seq: seq,
                    last_message,
                    ..std::mem::take(&mut *state)
                };
                catch_up = ctx.broker.pubsub_generation() != pubsub_connections;
            }
            if let Ok(open) = ctx.codec.encode_to_vec(&RoomFrame::Open(joined.clone())) {
                outbox.push_replay(open.freeze());
            }
            for entry in &plan.first {
                outbox.push_replay(entry.frame.clone());
            }
            if plan.rest.is_some() {
                outbox.hold();
            }
            for frame in missed {
                outbox.push(frame);
            }
            state
                .subscribers
                .insert(subscriber, Sub { identity: identity.clone(), outbox: outbox.clone(), after_op: op_before });
            delivery.add(outbox.clone());
            if !was_live {
                for published in std::mem::take(&mut state.pending).into_iter().filter(|p| p.epoch == epoch) {
                    if room.apply(&mut state, published, &mut delivery).is_some() {
                        // Events missed before the room went live here: everyone (the joiner too) rejoins.
                        delivery.extend(room.reset(&mut state, "events missed before the room's first join"));
                        break;
                    }
                    if !state.live {
                        // Reset by the event (which dropped what was pending): the rest go with it, and the next
                        // join, which starts after them, sets the room's position afresh.
                        break;
                    }
                }
            }
        }
        if catch_up {
            tokio::spawn(room.clone().on_resubscribed());
        }
        let read = (keys.meta.clone(), keys.log.clone(), joined.epoch);
        let replay = plan.rest.map(|rest| Replay::new(replay_rest(ctx.clone(), read, rest, outbox)));
        dropped.armed = false;
        Ok(Joining { joined, subscriber, delivery, replay })
    }

    async fn leave(&self, room: &str, subscriber: SubscriberId, _now_us: u64) -> Delivery {
        let node_room = lock(&self.rooms).get(room).cloned();
        let gone = node_room.and_then(|r| lock(&r.state).subscribers.remove(&subscriber));
        if gone.is_some() {
            // The leave reaches everyone (this node too) through the room's channel.
            tokio::spawn(self.ctx.clone().leave(room.to_string(), subscriber));
        }
        Delivery::default()
    }

    async fn post(&self, post: PostMessage<'_>) -> Result<(Posted, Delivery), Failure> {
        match self.sequence_post(post).await? {
            PostProgress::Done(done) => Ok(done),
            PostProgress::Committing(commit) => commit.await,
        }
    }

    /// Queues the post's script call behind the node's earlier posts (`super::posts`): the connection goes on
    /// reading the posts it pipelines, and the node's posts reach Redis together, in order.
    async fn sequence_post(&self, post: PostMessage<'_>) -> Result<PostProgress, Failure> {
        let PostMessage { room, identity, client_msg_id, body, now_us, fenced } = post;
        let ctx = &self.ctx;
        // The body is within `max_body`, and `Limits::check` makes any such post fit a room frame.
        let limits = &ctx.limits;
        let payload = event::message_payload(identity, client_msg_id, &body);
        // 17 arguments: EVALSHA, the script's hash, the key count, 5 keys (and the channel) of about the room's
        // name and a suffix each, 9 more (numbers but for the payload).
        let size = 6 * (room.len() + 16) + identity.len() + payload.len() + 180;
        let mut call = redis::Cmd::with_capacity(17, size);
        call.arg("EVALSHA").arg(scripts::POST_SCRIPT.get_hash()).arg(5);
        let events = keys::write_post_keys(&mut call, room, identity, client_msg_id);
        call.arg(new_epoch())
            .arg(now_us)
            .arg(payload)
            .arg(u64::from(limits.dedupe_window_s).max(1) * 1000)
            .arg(limits.history_max_messages)
            .arg(limits.history_max_age_us().unwrap_or(0))
            .arg(ctx.room_ttl_ms)
            .arg(events)
            .arg(limits.dedupe_max_entries.max(1));
        let note = fenced.map(|Fenced { fence, order }| FenceNote {
            fence: fence.clone(),
            order,
            room: room.to_string(),
            client_msg_id,
        });
        let outcome = self.posts.push(call, size, note).await?;
        Ok(PostProgress::Committing(Box::pin(async move {
            let posted = outcome.await.map_err(|_| Failure::new(ErrorCode::Unavailable, "the node is stopping"))??;
            // Delivered to the members through the room's channel, as everyone's posts are.
            Ok((posted, Delivery::default()))
        })))
    }

    async fn history(
        &self,
        room: &str,
        since: Option<u64>,
        limit: u32,
        budget: usize,
        now_us: u64,
    ) -> Result<HistoryPage, Failure> {
        super::history::page(&self.ctx, room, since, (limit, budget), now_us).await
    }

    async fn sweep(&self, _now_us: u64) {
        let idle: Vec<Arc<NodeRoom>> =
            lock(&self.rooms).values().filter(|r| lock(&r.state).subscribers.is_empty()).cloned().collect();
        for room in idle {
            let Ok(mut channel) = room.channel.clone().try_lock_owned() else { continue };
            if !lock(&room.state).subscribers.is_empty() {
                continue;
            }
            let node = self.ctx.broker.node();
            let mut conn = self.ctx.broker.conn();
            // Still listed while any subscription of this node is counted there (a leave being retried): if the
            // node dies meanwhile, the others must find it. Looked at again at the next sweep.
            let held: redis::RedisResult<u64> = redis::AsyncCommands::hlen(&mut conn, room.keys.holders(node)).await;
            if held != Ok(0) {
                continue;
            }
            let unlisted: redis::RedisResult<()> =
                redis::AsyncCommands::srem(&mut conn, keys::node_rooms(node), &room.name).await;
            if unlisted.is_err() {
                continue;
            }
            if *channel == Channel::Subscribed {
                self.ctx.broker.unsubscribe(&room.keys.events).await;
            }
            *channel = Channel::Removed;
            let mut rooms = lock(&self.rooms);
            if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                rooms.remove(&room.name);
            }
        }
    }

    fn room_usage(&self) -> RoomUsage {
        RoomUsage { rooms: lock(&self.rooms).len() as u64, ..RoomUsage::default() }
    }

    fn health(&self) -> Result<(), &'static str> {
        self.ctx.broker.ready()
    }
}
