//! A node's membership in Redis: the list of rooms its members are in (so that the others can find them if it
//! dies), the burial of a dead node's members, and a revived node's announcement of its own again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use quiver_proto::Failure;

use super::{
    keys::{self, RoomKeys},
    node_room::{new_epoch, Ctx, NodeRoom},
    scripts,
};
use crate::hub::{lock::lock, SubscriberId};

/// Every member `node` (dead) held leaves the rooms it was in. False when that could not be finished (Redis
/// failed): the node is buried again later.
pub(super) async fn bury(ctx: Arc<Ctx>, node: String) -> bool {
    let mut conn = ctx.broker.conn();
    let rooms: Vec<String> = match redis::AsyncCommands::smembers(&mut conn, keys::node_rooms(&node)).await {
        Ok(rooms) => rooms,
        Err(err) => {
            ctx.broker.failed(&err);
            return false;
        }
    };
    let mut done = true;
    for room in rooms {
        let keys = RoomKeys::new(&room);
        let dropped: redis::RedisResult<u64> = scripts::NODE_GONE_SCRIPT
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.members)
            .key(keys.holders(&node))
            .key(keys.buried(&node))
            .arg(crate::now_us().to_string())
            .arg(&keys.events)
            .arg(ctx.room_ttl_ms)
            .arg(BURIAL_MARK_MS)
            .invoke_async(&mut conn)
            .await;
        match dropped {
            Ok(n) if n > 0 => tracing::info!(%room, %node, subscriptions = n, "a dead node's members left the room"),
            Ok(_) => {}
            Err(err) => {
                ctx.broker.failed(&err);
                done = false;
            }
        }
    }
    done
}

/// Lists `room` among this node's rooms (before any of its subscriptions is counted there: if the node dies, the
/// others find them through this list), and the node among the nodes if its entry is gone (`scripts::LISTED`).
pub(super) async fn list_room(ctx: &Ctx, room: &str) -> Result<(), Failure> {
    let mut conn = ctx.broker.conn();
    let node = ctx.broker.node();
    let mut pipe = redis::pipe();
    scripts::listed(&mut pipe, node);
    pipe.sadd(keys::node_rooms(node), room).ignore();
    let listed: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    listed.map_err(|err| ctx.unavailable(err))
}

/// How long a room keeps the mark of a dead node's burial ([`scripts`]' NODE_GONE): longer than a join the node
/// sent before it died can take to reach Redis (a kernel retransmits what a dead process left in a socket's send
/// buffer for about 15 minutes by default, `tcp_retries2`).
pub(super) const BURIAL_MARK_MS: u64 = 60 * 60 * 1000;

/// Counts subscription `sub` of `identity` in `room` (idempotent per subscription). In a room where this node was
/// buried (cut off from Redis for longer than the presence expiry), the script counts nothing until asked again:
/// this node is alive, so it asks (a join of a dead one's that runs late never does). At most `most_members`
/// member names come back (the joiner's among them, when the room holds more; 0: none).
pub(super) async fn join_script(
    ctx: &Ctx,
    keys: &RoomKeys,
    (identity, sub): (&str, SubscriberId),
    now_us: u64,
    most_members: usize,
) -> redis::RedisResult<(String, u64, u64, Vec<String>)> {
    let mut conn = ctx.broker.conn();
    let node = ctx.broker.node();
    let fresh = new_epoch();
    let mut revive = "0";
    loop {
        let (epoch, seq, op, members, buried): (String, u64, u64, Vec<String>, u8) = scripts::JOIN_SCRIPT
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.members)
            .key(keys.holders(node))
            .key(keys.gone(node, sub))
            .key(keys.buried(node))
            .arg(fresh)
            .arg(identity)
            .arg(now_us.to_string())
            .arg(&keys.events)
            .arg(sub)
            .arg(revive)
            .arg(most_members)
            .invoke_async(&mut conn)
            .await?;
        if buried == 0 || revive == "1" {
            return Ok((epoch, seq, op, members));
        }
        let room = &keys.meta;
        tracing::info!(%node, %room, "this node was buried in the room meanwhile: its join is counted anew");
        revive = "1";
    }
}

/// This node was buried while cut off from Redis: its subscriptions are counted again (idempotent per
/// subscription; one that left meanwhile is ended again). False when Redis failed on any (all are tried again).
pub(super) async fn announce(ctx: Arc<Ctx>, rooms: Arc<Mutex<HashMap<String, Arc<NodeRoom>>>>) -> bool {
    let rooms: Vec<Arc<NodeRoom>> = lock(&rooms).values().cloned().collect();
    let mut done = true;
    for room in rooms {
        // Under the room's join lock: a join under way when the burial deleted this node's list of rooms (its own
        // listing done before that) is either in the snapshot below, and listed again, or starts after this and
        // lists the room itself. Without the lock it could be in neither, counted in a room this node no longer
        // lists, which its own burial later would not clean.
        let _joining = room.channel.clone().lock_owned().await;
        let subs: Vec<(SubscriberId, String)> =
            lock(&room.state).subscribers.iter().map(|(id, sub)| (*id, sub.identity.clone())).collect();
        if subs.is_empty() {
            continue;
        }
        if list_room(&ctx, &room.name).await.is_err() {
            done = false;
            continue;
        }
        for (id, identity) in subs {
            // (No member list: nothing here reads it.)
            if let Err(err) = join_script(&ctx, &room.keys, (&identity, id), crate::now_us(), 0).await {
                ctx.broker.failed(&err);
                done = false;
            }
            if !lock(&room.state).subscribers.contains_key(&id) {
                tokio::spawn(ctx.clone().leave(room.name.clone(), id));
            }
        }
    }
    done
}

/// The first pause between two tries of one of reconcile's calls, and the longest (doubling from the first): it
/// runs just as Redis comes back, when the command connection may still hold the dead socket, or Redis still loads
/// its snapshot (`LOADING`, for as long as the snapshot takes).
const RECONCILE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
const RECONCILE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Redis' count of this node's members made to agree with the node's own, in every room Redis lists for it and every
/// room where it holds members (run at each Pub/Sub connection: Redis may be back from a snapshot that still counts
/// subscriptions ended since, which would look present until this node died, or lacks ones taken since). Each room's call runs under its join lock, so that no join is counted
/// meanwhile (the lock is let go between tries); a room this node does not have is looked at through a room made
/// for it (the sweep takes it away again). A call the connection fails (or Redis, for now) is tried until it answers
/// (until 2026-12-07, six times in 3 s: a Redis loading a larger snapshot outlasted them, and the snapshot's
/// presence stayed for the node's life, since a Pub/Sub connection made during the load was the last one); one
/// Redis refuses is skipped. A newer Pub/Sub connection
/// (and its own reconcile) takes over at the next room.
pub(super) async fn reconcile(ctx: Arc<Ctx>, rooms: Arc<Mutex<HashMap<String, Arc<NodeRoom>>>>) {
    let (node, connection) = (ctx.broker.node().to_string(), ctx.broker.pubsub_connections());
    let listed = retried(&ctx, connection, |mut conn| {
        let key = keys::node_rooms(&node);
        async move { redis::AsyncCommands::smembers::<_, Vec<String>>(&mut conn, key).await }
    });
    let mut listed = match listed.await {
        Ok(listed) => listed,
        Err(Gave::Up) => return tracing::debug!("reconcile: taken over by a newer connection, or the node stops"),
        Err(Gave::Failed(err)) => {
            return tracing::warn!(%err, "could not read this node's rooms from the broker to check its members there")
        }
    };
    // Rooms where this node holds members that Redis does not list for it (joined after Redis' snapshot): listed
    // again (so that a burial of this node cleans them), then mended like the others.
    let known: std::collections::HashSet<&String> = listed.iter().collect();
    let held: Vec<(String, Arc<NodeRoom>)> =
        lock(&rooms).iter().filter(|(name, _)| !known.contains(name)).map(|(n, r)| (n.clone(), r.clone())).collect();
    let unlisted: Vec<String> =
        held.into_iter().filter(|(_, room)| !lock(&room.state).subscribers.is_empty()).map(|(n, _)| n).collect();
    for name in unlisted {
        let added = retried(&ctx, connection, |mut conn| {
            // (With the node among the nodes again if its entry is gone, as `list_room` does.)
            let mut pipe = redis::pipe();
            scripts::listed(&mut pipe, &node);
            pipe.sadd(keys::node_rooms(&node), &name).ignore();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        match added.await {
            Ok(()) => listed.push(name),
            Err(Gave::Up) => return tracing::debug!("reconcile: taken over by a newer connection, or the node stops"),
            Err(Gave::Failed(err)) => tracing::warn!(room = %name, %err, "could not list a room of this node's again"),
        }
    }
    for name in &listed {
        if ctx.broker.pubsub_connections() != connection || ctx.broker.stopped() {
            return tracing::debug!("reconcile: taken over by a newer connection, or the node stops");
        }
        let (ctx, rooms, node) = (&ctx, &rooms, &node);
        let ended = retried(ctx, connection, |mut conn| async move {
            let (room, _joining) = loop {
                let room = super::rooms::node_room(ctx, rooms, name);
                let guard = room.channel.clone().lock_owned().await;
                if !matches!(*guard, super::node_room::Channel::Removed) {
                    break (room, guard);
                }
            };
            let held: Vec<(SubscriberId, String)> =
                lock(&room.state).subscribers.iter().map(|(id, sub)| (*id, sub.identity.clone())).collect();
            // Read under the room's join lock: a join after this takes a higher id.
            let last = ctx.next_subscriber.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(1);
            let mut call = scripts::RECONCILE_SCRIPT.prepare_invoke();
            call.key(&room.keys.meta).key(&room.keys.log).key(&room.keys.members).key(room.keys.holders(node));
            call.key(room.keys.buried(node));
            for (id, _) in &held {
                call.key(room.keys.gone(node, *id));
            }
            call.arg(crate::now_us().to_string()).arg(&room.keys.events).arg(ctx.room_ttl_ms).arg(last);
            for (id, identity) in &held {
                call.arg(*id).arg(identity);
            }
            let answer = call.invoke_async::<(u64, u64)>(&mut conn).await;
            // A leave does not take the join lock: one that ran while the call was on its way found nothing to end
            // in Redis, and the call then counted its subscription. Ended again (as `announce` does).
            let state = lock(&room.state);
            for (id, _) in held.iter().filter(|(id, _)| !state.subscribers.contains_key(id)) {
                tokio::spawn(ctx.clone().leave(room.name.clone(), *id));
            }
            drop(state);
            answer
        });
        match ended.await {
            Ok((0, 0)) => {}
            Ok((ended, counted)) => tracing::warn!(
                room = %name,
                ended,
                counted,
                "the broker's count of this node's members was not this node's (Redis back from older data?); mended"
            ),
            Err(Gave::Up) => return tracing::debug!("reconcile: taken over by a newer connection, or the node stops"),
            Err(Gave::Failed(err)) => tracing::warn!(room = %name, %err, "could not check this node's members here"),
        }
    }
}

/// Why [`retried`] returned without an answer.
enum Gave {
    /// The node stops, or a newer Pub/Sub connection took over.
    Up,
    /// A refusal by Redis (not tried again: trouble of the connection, or Redis' own for now, is).
    Failed(redis::RedisError),
}

/// An error worth trying again: the connection's, or Redis' own for now (`LOADING` a snapshot just after its
/// restart, `MASTERDOWN`, `TRYAGAIN`, `READONLY`: what redis-rs would retry), not a refusal of the call.
fn connection_trouble(err: &redis::RedisError) -> bool {
    use redis::RetryMethod;
    let for_now =
        !matches!(err.retry_method(), RetryMethod::NoRetry | RetryMethod::AskRedirect | RetryMethod::MovedRedirect);
    for_now || err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout()
}

/// `call` on the broker's command connection until it answers, tried again while the connection (or Redis, for
/// now) fails it, until the node stops or a newer Pub/Sub connection takes over.
async fn retried<T, F>(
    ctx: &Ctx,
    connection: u64,
    mut call: impl FnMut(redis::aio::ConnectionManager) -> F,
) -> Result<T, Gave>
where
    F: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut pause = RECONCILE_RETRY;
    let mut tries = 0u32;
    loop {
        let err = match call(ctx.broker.conn()).await {
            Ok(answer) => return Ok(answer),
            Err(err) => err,
        };
        ctx.broker.failed(&err);
        if !connection_trouble(&err) {
            return Err(Gave::Failed(err));
        }
        // Said now and then (a demoted primary answering READONLY to every write holds the repair up until the next
        // Pub/Sub connection): not in silence, nor at every try.
        tries += 1;
        if tries.is_power_of_two() && tries >= 8 {
            tracing::warn!(%err, tries, "the broker still fails this node's presence repair; trying again");
        }
        if ctx.broker.stopped() || ctx.broker.pubsub_connections() != connection {
            return Err(Gave::Up);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONCILE_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicU64, Arc};

    use super::*;

    /// One of reconcile's calls that Redis answers `LOADING` (it loads a snapshot) for longer than six tries is
    /// tried until it answers: before, it gave up after six tries in 3 s, and the snapshot's presence stayed.
    #[tokio::test(start_paused = true)]
    async fn a_call_redis_answers_loading_is_tried_until_it_answers() {
        let config = crate::cluster::broker::BrokerConfig {
            url: "redis://127.0.0.1:1".into(),
            presence_expiry: std::time::Duration::from_secs(30),
            heartbeat: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            allow_eviction: false,
        };
        let limits = quiver_proto::Limits::default();
        let ctx = Ctx {
            broker: crate::cluster::broker::Broker::new(config).unwrap(),
            codec: quiver_proto::FrameCodec::new(limits.max_frame as usize),
            limits,
            room_ttl_ms: 0,
            next_subscriber: AtomicU64::new(1),
        };
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let started = tokio::time::Instant::now();
        let answer = retried(&ctx, ctx.broker.pubsub_connections(), move |_| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n < 20 {
                    true => Err(redis::RedisError::from((redis::ServerErrorKind::BusyLoading.into(), "LOADING"))),
                    false => Ok(n),
                }
            }
        });
        assert_eq!(answer.await.ok(), Some(20), "given up while Redis loaded");
        assert!(started.elapsed() < std::time::Duration::from_secs(40), "pauses of 2 s at most");
    }
}
