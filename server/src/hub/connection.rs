//! One connection's protocol state, without IO: which rooms it has joined (and with which subscription), the
//! channel ids it was given, its tick subscriptions and publish claims, all checked against [`Limits`]. The
//! network layer asks it before doing anything and tells it what was done; every refusal (AlreadyJoined,
//! TooManyRooms, TooManySubscriptions, ...) is decided here, before anything is allocated.
//!
//! `O` is what the network layer keeps per joined room (its stream's outbox); tests use `()`.

use std::{collections::HashMap, sync::Arc, time::Instant};

use quiver_proto::{ErrorCode, Failure, Limits};

use super::{ticks::TickSubscriberId, SubscriberId};
use crate::shares::{Hold, Kind, NetworkShare};

/// A room this connection has joined.
#[derive(Debug)]
pub struct JoinedRoom<O> {
    /// The subscription in the room hub.
    pub subscriber: SubscriberId,
    /// The network layer's handle for the room's stream.
    pub outbox: O,
    /// The room's place in its network's share (`crate::shares`), given back with the entry.
    pub hold: Hold,
}

/// A publish claim that was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The id the client puts in its tick datagrams for the channel.
    pub channel_id: u64,
    /// The claim's max age (a repeated claim's: the smaller of what it held and what it asked for), to pass on to
    /// the tick hub.
    pub max_age_us: Option<u64>,
    /// False for a repeated claim (already carried out in the tick hub).
    pub new: bool,
    /// A repeated claim's max age before it.
    pub previous_max_age_us: Option<u64>,
}

/// What an incoming tick datagram's channel id means on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimLookup {
    /// A channel this connection claimed: publish on it.
    Claimed(Arc<str>),
    /// A channel this connection gave up within [`UNPUBLISH_GRACE`]: its claim is released, and a tick still goes to
    /// the channel's subscribers (`TickHub::publish_given_up`).
    GivenUp(Arc<str>),
    /// A channel id this connection has (it subscribed) but did not claim.
    NotClaimed,
    /// An id this connection was never given.
    Unknown,
}

/// The connection's claims as the datagram reader sees them: replaced as a whole (copy on write) on every change,
/// so the reader never waits for the control task.
#[derive(Debug, Clone)]
pub struct ClaimTable {
    claimed: HashMap<u64, Arc<str>>,
    /// Claims given up (Unpublish) less than [`UNPUBLISH_GRACE`] ago, and when that ends: still published on (their
    /// claims released), at most `max_publish_channels` of them (the oldest give way).
    released: Vec<(u64, Arc<str>, Instant)>,
    /// Ids below this one have been given out (ids start at 1: 0 marks copy datagrams, `quiver_proto::copies`).
    allocated: u64,
}

/// How long a claim given up (Unpublish) is still published on: a tick the client sent before its Unpublish may be
/// read after it (the datagram reader is another task than the control stream's; a path may reorder them), and was
/// dropped as unclaimed though `send` had returned its seq. The claim's place under `max_publish_channels` is given
/// back at once; the hub's claim and the place in the network's share when the grace ends (the dispatcher's
/// Unpublish: the channel stays for a tick relayed to other nodes, and counts meanwhile).
pub const UNPUBLISH_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for ClaimTable {
    fn default() -> Self {
        ClaimTable { claimed: HashMap::new(), released: Vec::new(), allocated: quiver_proto::copies::COPY_CHANNEL + 1 }
    }
}

impl ClaimTable {
    /// True while `channel_id` is claimed on this connection (or given up within its grace).
    pub fn is_claimed(&self, channel_id: u64) -> bool {
        self.claimed.contains_key(&channel_id) || self.released.iter().any(|(id, ..)| *id == channel_id)
    }

    /// What `channel_id` means on this connection at `now`.
    pub fn lookup(&self, channel_id: u64, now: Instant) -> ClaimLookup {
        let released = || self.released.iter().find(|(id, _, until)| *id == channel_id && now < *until);
        if let (None, Some((_, channel, _))) = (self.claimed.get(&channel_id), released()) {
            return ClaimLookup::GivenUp(channel.clone());
        }
        match self.claimed.get(&channel_id) {
            Some(channel) => ClaimLookup::Claimed(channel.clone()),
            None if (quiver_proto::copies::COPY_CHANNEL + 1..self.allocated).contains(&channel_id) => {
                ClaimLookup::NotClaimed
            }
            None => ClaimLookup::Unknown,
        }
    }
}

/// What a closing connection must release.
#[derive(Debug)]
pub struct Release<O> {
    /// (room, its entry).
    pub rooms: Vec<(String, JoinedRoom<O>)>,
    /// (channel, the tick hub's subscription).
    pub subscriptions: Vec<(Arc<str>, TickSubscriberId)>,
    /// Channels claimed for publishing, with their claims' max ages.
    pub claims: Vec<(Arc<str>, Option<u64>)>,
}

/// Everything one connection has set up, and the limits on it.
#[derive(Debug)]
pub struct ConnectionState<O> {
    limits: Limits,
    rooms: HashMap<String, JoinedRoom<O>>,
    /// Channel name → id of its subscription, and of its claim, for the channels subscribed or claimed now. Ids
    /// are small (the header's first byte for the first 64) and never reused on a connection, so a late datagram
    /// cannot be taken for another channel's tick, nor for a later claim of the same channel (its seqs start over):
    /// a channel subscribed or claimed again gets a new id. A subscription and a claim of one channel have ids of
    /// their own.
    sub_ids: HashMap<Arc<str>, u64>,
    claim_ids: HashMap<Arc<str>, u64>,
    /// A protocol-version-4 session: a subscription and a claim of one channel share its id, as version 4 promised
    /// (it has no Unpublish, so no claim of a channel is ever made again on the connection).
    shared_ids: bool,
    subscriptions: HashMap<u64, (Arc<str>, TickSubscriberId)>,
    claims: Arc<ClaimTable>,
    /// Each claim's max age (channel id → it), released with the claim.
    claim_ages: HashMap<u64, Option<u64>>,
    /// The network's share of rooms and channels this connection takes from (`None`: none applies).
    share: Option<NetworkShare>,
    /// Each subscription's (`false`) and claim's (`true`) place in the network's share of channels, by id.
    channel_holds: HashMap<(u64, bool), Hold>,
}

impl<O> ConnectionState<O> {
    /// A connection with nothing set up yet.
    pub fn new(limits: Limits) -> Self {
        ConnectionState {
            limits,
            rooms: HashMap::new(),
            sub_ids: HashMap::new(),
            claim_ids: HashMap::new(),
            shared_ids: false,
            subscriptions: HashMap::new(),
            claims: Arc::default(),
            claim_ages: HashMap::new(),
            share: None,
            channel_holds: HashMap::new(),
        }
    }

    /// Takes the rooms and channels this connection joins, subscribes to and claims from its network's `share`.
    pub fn with_share(mut self, share: NetworkShare) -> Self {
        self.share = Some(share);
        self
    }

    /// A place in the network's share of `kind` for `name` (nothing to take when no share applies).
    fn take(&self, kind: Kind, name: &str) -> Result<Hold, Failure> {
        match &self.share {
            Some(share) => share.take(kind, &Arc::from(name)),
            None => Ok(Hold::none()),
        }
    }

    /// The session speaks protocol `version` (said at Hello): before 5, a channel's subscription and claim share
    /// one id.
    pub fn speaks(&mut self, version: u32) {
        self.shared_ids = version < 5;
    }

    /// The id for a new subscription or claim of `channel`: the other's, where they share it, else a new one.
    fn new_id(&self, channel: &str, other: &HashMap<Arc<str>, u64>) -> u64 {
        let shared = other.get(channel).filter(|_| self.shared_ids);
        shared.copied().unwrap_or(self.claims.allocated)
    }

    /// Checks that `room` may be joined: not joined already, below `max_rooms`, and within the network's share of
    /// rooms, whose place it returns for [`ConnectionState::joined`] (dropped, it is given back).
    pub fn may_join(&self, room: &str) -> Result<Hold, Failure> {
        if self.rooms.contains_key(room) {
            return Err(Failure::new(ErrorCode::AlreadyJoined, format!("already in room {room}")));
        }
        if self.rooms.len() >= self.limits.max_rooms as usize {
            return Err(Failure::new(
                ErrorCode::TooManyRooms,
                format!("at most {} rooms per connection", self.limits.max_rooms),
            ));
        }
        self.take(Kind::Room, room)
    }

    /// Records a join that [`ConnectionState::may_join`] allowed (with the place it took) and the hub carried out.
    pub fn joined(&mut self, room: String, subscriber: SubscriberId, outbox: O, hold: Hold) {
        self.rooms.insert(room, JoinedRoom { subscriber, outbox, hold });
    }

    /// Forgets `room` for a Leave; `NotJoined` if it is not joined.
    pub fn leave(&mut self, room: &str) -> Result<JoinedRoom<O>, Failure> {
        self.rooms.remove(room).ok_or_else(|| Failure::new(ErrorCode::NotJoined, format!("not in room {room}")))
    }

    /// Forgets `room` because a subscription to it fell behind and was dropped by the room; `is_current` tells
    /// whether the joined entry is that subscription. `None` when it is not current any more (left, or replaced
    /// by a new join).
    pub fn kicked(&mut self, room: &str, is_current: impl FnOnce(&JoinedRoom<O>) -> bool) -> Option<JoinedRoom<O>> {
        if !is_current(self.rooms.get(room)?) {
            return None;
        }
        self.rooms.remove(room)
    }

    /// The joined room's entry.
    pub fn room(&self, room: &str) -> Option<&JoinedRoom<O>> {
        self.rooms.get(room)
    }

    /// Bytes of encoded events a History reply may carry: a frame less the reply's own fields.
    pub fn history_budget(&self) -> usize {
        (self.limits.max_frame as usize).saturating_sub(self.limits.history_reply_overhead() as usize)
    }

    /// Subscribes to `channel` (idempotent: a second Subscribe answers the same id). `subscribe` carries it out in
    /// the tick hub with the channel's id; it is called only when the subscription is allowed and new, and if it
    /// fails nothing is recorded.
    pub fn subscribe(
        &mut self,
        channel: &str,
        subscribe: impl FnOnce(u64) -> Result<TickSubscriberId, Failure>,
    ) -> Result<u64, Failure> {
        if let Some(id) = self.sub_ids.get(channel) {
            return Ok(*id);
        }
        if self.subscriptions.len() >= self.limits.max_subscriptions as usize {
            return Err(Failure::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {} subscriptions per connection", self.limits.max_subscriptions),
            ));
        }
        let id = self.new_id(channel, &self.claim_ids);
        let hold = self.take(Kind::Subscription, channel)?;
        let subscriber = subscribe(id)?;
        self.channel_holds.insert((id, false), hold);
        let name = self.name(channel);
        let claims = Arc::make_mut(&mut self.claims);
        claims.allocated = claims.allocated.max(id + 1);
        self.sub_ids.insert(name.clone(), id);
        self.subscriptions.insert(id, (name, subscriber));
        Ok(id)
    }

    /// Ends the subscription to `channel`: its id and the tick hub's subscription. `NotJoined` if not subscribed.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<(u64, TickSubscriberId), Failure> {
        let not_subscribed = || Failure::new(ErrorCode::NotJoined, format!("not subscribed to {channel}"));
        let id = self.sub_ids.remove(channel).ok_or_else(not_subscribed)?;
        let (_, subscriber) = self.subscriptions.remove(&id).ok_or_else(not_subscribed)?;
        self.channel_holds.remove(&(id, false));
        Ok((id, subscriber))
    }

    /// Claims the right to publish on `channel` (idempotent), below `max_publish_channels`. `claim` carries a new
    /// claim out in the tick hub (with the max age asked for); if it fails nothing is recorded. A repeated claim
    /// answers the same id with `new: false` (the caller passes its max age on to the hub).
    pub fn claim(
        &mut self,
        channel: &str,
        max_age_ms: Option<u32>,
        claim: impl FnOnce(Option<u64>) -> Result<(), Failure>,
    ) -> Result<Claim, Failure> {
        if max_age_ms == Some(0) {
            // Every tick that waited at all would be dropped, for every subscriber of the channel, for as long as
            // the claim lasts.
            return Err(Failure::new(ErrorCode::BadRequest, "max_age_ms must be at least 1 (or absent: no max age)"));
        }
        let max_age_us = max_age_ms.map(|ms| u64::from(ms) * 1000);
        if let Some(&id) = self.claim_ids.get(channel) {
            let held = self.claim_ages.entry(id).or_default();
            let previous_max_age_us = *held;
            if let Some(asked) = max_age_us {
                *held = Some(held.map_or(asked, |held| held.min(asked)));
            }
            return Ok(Claim { channel_id: id, max_age_us: *held, new: false, previous_max_age_us });
        }
        let max = self.limits.max_publish_channels as usize;
        if self.claims.claimed.len() >= max {
            return Err(Failure::new(
                ErrorCode::TooManyChannels,
                format!("at most {max} publish channels per connection"),
            ));
        }
        let id = self.new_id(channel, &self.sub_ids);
        let hold = self.take(Kind::Claim, channel)?;
        claim(max_age_us)?;
        self.channel_holds.insert((id, true), hold);
        let name = self.name(channel);
        let claims = Arc::make_mut(&mut self.claims);
        claims.allocated = claims.allocated.max(id + 1);
        claims.claimed.insert(id, name.clone());
        self.claim_ids.insert(name, id);
        self.claim_ages.insert(id, max_age_us);
        Ok(Claim { channel_id: id, max_age_us, new: true, previous_max_age_us: None })
    }

    /// Gives up the claim on `channel` (Unpublish) at `now`: its id, and the max age the claim held, to release in
    /// the tick hub. `NotJoined` if it is not claimed. Datagrams with its id still go to the channel's subscribers
    /// until [`UNPUBLISH_GRACE`] has passed, then are dropped (a later claim of the channel gets a new id).
    pub fn unclaim(&mut self, channel: &str, now: Instant) -> Result<(u64, Option<u64>), Failure> {
        self.unclaim_held(channel, now).map(|(id, max_age_us, _)| (id, max_age_us))
    }

    /// [`ConnectionState::unclaim`], with the claim's place in the network's share: the caller keeps it for as
    /// long as the hub holds the channel for the grace (given back at once, a client unpublishing new channels in
    /// a loop held `max_channels` with channels no share counted).
    pub fn unclaim_held(&mut self, channel: &str, now: Instant) -> Result<(u64, Option<u64>, Option<Hold>), Failure> {
        let not_claimed = || Failure::new(ErrorCode::NotJoined, format!("not publishing on {channel}"));
        let id = self.claim_ids.remove(channel).ok_or_else(not_claimed)?;
        let max = (self.limits.max_publish_channels as usize).max(1);
        let claims = Arc::make_mut(&mut self.claims);
        claims.released.retain(|(_, _, until)| now < *until);
        if let Some(name) = claims.claimed.remove(&id) {
            if claims.released.len() >= max {
                claims.released.remove(0);
            }
            claims.released.push((id, name, now + UNPUBLISH_GRACE));
        }
        let hold = self.channel_holds.remove(&(id, true));
        Ok((id, self.claim_ages.remove(&id).flatten(), hold))
    }

    /// The claims as they stand, for the datagram reader.
    pub fn claims(&self) -> Arc<ClaimTable> {
        self.claims.clone()
    }

    /// Everything to release when the connection ends: its rooms and its tick subscriptions. (The rooms' places
    /// in the network's share go with their entries; the channels' go now.)
    pub fn close(&mut self) -> Release<O> {
        self.sub_ids.clear();
        self.claim_ids.clear();
        self.channel_holds.clear();
        Release {
            rooms: self.rooms.drain().collect(),
            subscriptions: self.subscriptions.drain().map(|(_, subscription)| subscription).collect(),
            claims: std::mem::take(&mut Arc::make_mut(&mut self.claims).claimed)
                .into_iter()
                .map(|(id, channel)| (channel, self.claim_ages.remove(&id).flatten()))
                .collect(),
        }
    }

    /// Channel names this connection holds an id for (subscribed or claimed now).
    pub fn channel_names(&self) -> usize {
        self.sub_ids.len() + self.claim_ids.keys().filter(|name| !self.sub_ids.contains_key(*name)).count()
    }

    /// `channel`'s name, shared with its subscription or claim if it has one.
    fn name(&self, channel: &str) -> Arc<str> {
        let held = self.sub_ids.get_key_value(channel).or_else(|| self.claim_ids.get_key_value(channel));
        held.map_or_else(|| Arc::from(channel), |(name, _)| name.clone())
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
