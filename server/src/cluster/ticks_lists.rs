//! The nodes' lists of tick interest in Redis (`q:node:<id>:ticks`): every other node's read afresh after a
//! reconnect, and this node's own made to agree with its subscriptions at each Pub/Sub connection.

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
};

use super::{Inner, RETRY_PAUSE};
use crate::{cluster::keys, hub::lock::lock};

impl Inner {
    /// Reads every other node's interest afresh (at start, and after the control channel may have missed some);
    /// what Redis did not answer is read again, every [`RETRY_PAUSE`], until it has been.
    pub(super) async fn reload(self: &Arc<Self>) {
        if !self.try_reload().await {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    if me.broker.stopped() || me.try_reload().await {
                        return;
                    }
                }
            });
        }
    }

    /// One reload; false when some read failed (a node whose channels could not be read keeps what was known of
    /// it, instead of losing its relayed ticks until the next reload). Control messages that arrive while it reads
    /// are applied again over what it read ([`RemoteInterest`]).
    async fn try_reload(&self) -> bool {
        let _one = self.reloading.lock().await;
        self.remote().begin_reload();
        let mut conn = self.broker.conn();
        let nodes: Vec<String> = match redis::AsyncCommands::zrange(&mut conn, keys::NODES, 0, -1).await {
            Ok(nodes) => nodes,
            Err(err) => {
                self.broker.failed(&err);
                self.remote().abandon_reload();
                return false;
            }
        };
        let (mut fresh, mut complete): (HashMap<String, HashSet<String>>, bool) = (HashMap::new(), true);
        for node in nodes.into_iter().filter(|n| n != self.broker.node()) {
            let channels: Vec<String> = match redis::AsyncCommands::smembers(&mut conn, keys::node_ticks(&node)).await {
                Ok(channels) => channels,
                Err(err) => {
                    self.broker.failed(&err);
                    complete = false;
                    self.remote.read().unwrap_or_else(|p| p.into_inner()).of_node(&node)
                }
            };
            for channel in channels {
                fresh.entry(channel).or_default().insert(node.clone());
            }
        }
        let mut remote = self.remote();
        remote.finish_reload(fresh);
        self.any_remote.store(!remote.is_empty(), Ordering::Relaxed);
        complete
    }

    /// This node's listed interest in Redis made to agree with its own (at each Pub/Sub connection): Redis back from
    /// an older snapshot lacks the channels the node took since (the other nodes, reading the list afresh, relayed
    /// it none of their ticks any more) and lists those it gave up (relayed to it for nothing). Each difference is
    /// made as a change of interest (listed and announced). False when the list could not be read (nothing changed:
    /// [`Inner::reassert_until_done`] tries again).
    async fn reassert(&self) -> bool {
        let mut conn = self.broker.conn();
        let listed =
            redis::AsyncCommands::smembers::<_, HashSet<String>>(&mut conn, keys::node_ticks(self.broker.node()));
        let listed = match listed.await {
            Ok(listed) => listed,
            Err(err) => {
                self.broker.failed(&err);
                return false;
            }
        };
        // Under the interest lock, as subscribe and unsubscribe make their changes (see `on_revived`).
        let interest = lock(&self.interest);
        for channel in interest.keys().filter(|channel| !listed.contains(*channel)) {
            self.change(channel, true);
        }
        for channel in listed.iter().filter(|channel| !interest.contains_key(*channel)) {
            self.change(channel, false);
        }
        true
    }

    /// [`Inner::reassert`] on a task of its own, every [`RETRY_PAUSE`] until Redis answered it (it may still be
    /// loading its snapshot, the command connection still reconnecting), the node stops, or a newer Pub/Sub
    /// connection does it again.
    pub(super) fn reassert_until_done(self: &Arc<Self>) {
        let (me, connection) = (self.clone(), self.broker.pubsub_connections());
        tokio::spawn(async move {
            while !me.reassert().await {
                tokio::time::sleep(RETRY_PAUSE).await;
                if me.broker.stopped() || me.broker.pubsub_connections() != connection {
                    return;
                }
            }
        });
    }
}
