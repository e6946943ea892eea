//! The driver's tick channels: subscriptions (routed by their channel id on each connection) and publish claims
//! (valid on the connection they were made on), both put back on every new connection; and sending a tick.

use crate::wire::{Link, SendDatagramError};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::{BufMut, Bytes, BytesMut};
use quiver_proto::{Reply, RequestBody, TickHeader};
use tokio::sync::Notify;

use crate::{
    connection::{Connection, Handler},
    error::{RequestError, TickError},
    state::ticks::LatestWins,
    sync::lock,
};

/// What the client keeps per subscription.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) channel: String,
    pub(crate) state: Mutex<LatestWins>,
    pub(crate) arrived: Notify,
}

/// What the client keeps per publish claim.
#[derive(Debug)]
pub(crate) struct PubEntry {
    pub(crate) channel: String,
    max_age_ms: Option<u32>,
    /// (connection id, channel id on that connection).
    claim: Mutex<Option<(usize, u64)>>,
    next_seq: AtomicU64,
}

/// A handler whose routes are subscriptions.
pub(crate) trait TickHandler: Handler<Route = Arc<SubEntry>> {}

impl<H: Handler<Route = Arc<SubEntry>>> TickHandler for H {}

/// The application's subscriptions and claims, by channel.
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    subscriptions: Mutex<HashMap<String, Arc<SubEntry>>>,
    publishers: Mutex<HashMap<String, Arc<PubEntry>>>,
}

impl Ticks {
    /// Subscribes to `channel` on `connection` (the subscription's entry is shared if it exists).
    pub(crate) async fn subscribe<H: TickHandler>(
        &self,
        connection: &Connection<H>,
        channel: &str,
    ) -> Result<Arc<SubEntry>, RequestError> {
        let entry = lock(&self.subscriptions)
            .entry(channel.to_string())
            .or_insert_with(|| {
                Arc::new(SubEntry { channel: channel.to_string(), state: Mutex::default(), arrived: Notify::new() })
            })
            .clone();
        if let Err(err) = subscribe_on(connection, &entry).await {
            lock(&self.subscriptions).remove(channel);
            return Err(err);
        }
        Ok(entry)
    }

    /// Forgets a subscription (the caller tells the server); returns it, to unroute its datagrams.
    pub(crate) fn unsubscribed(&self, channel: &str) -> Option<Arc<SubEntry>> {
        lock(&self.subscriptions).remove(channel)
    }

    /// Claims `channel` for publishing on `connection`.
    pub(crate) async fn publisher<H: Handler>(
        &self,
        connection: &Connection<H>,
        channel: &str,
        max_age_ms: Option<u32>,
    ) -> Result<Arc<PubEntry>, RequestError> {
        let entry = Arc::new(PubEntry {
            channel: channel.to_string(),
            max_age_ms,
            claim: Mutex::new(None),
            next_seq: AtomicU64::new(1),
        });
        claim_on(connection, &entry).await?;
        lock(&self.publishers).insert(channel.to_string(), entry.clone());
        Ok(entry)
    }

    /// Puts every subscription and claim back on a new connection.
    pub(crate) async fn restore<H: TickHandler>(&self, connection: &Connection<H>) {
        let subscriptions: Vec<Arc<SubEntry>> = lock(&self.subscriptions).values().cloned().collect();
        for entry in subscriptions {
            lock(&entry.state).resync();
            if let Err(err) = subscribe_on(connection, &entry).await {
                tracing::warn!(channel = %entry.channel, %err, "cannot resubscribe");
            }
        }
        let publishers: Vec<Arc<PubEntry>> = lock(&self.publishers).values().cloned().collect();
        for entry in publishers {
            if let Err(err) = claim_on(connection, &entry).await {
                tracing::warn!(channel = %entry.channel, %err, "cannot claim channel again");
            }
        }
    }
}

/// A tick datagram for `entry` arrived at `now_us` (server clock).
pub(crate) fn on_tick(entry: &SubEntry, header: TickHeader, payload: Bytes, now_us: u64) {
    if lock(&entry.state).on_tick(header, payload, now_us) {
        entry.arrived.notify_waiters();
    }
}

/// The largest tick payload that fits one datagram on `link`. The limit counts the largest header, so it does not
/// shift as seqs and ids grow.
pub(crate) fn max_payload(link: &Link) -> Result<usize, TickError> {
    let max = link.max_datagram_size().ok_or(TickError::Unsupported)?;
    Ok(max.saturating_sub(TickHeader::MAX_LEN))
}

/// Sends one tick of `publisher` on `connection` (which must be the one it claimed on), stamped `now_us` (server
/// clock); returns the publisher's own seq for it. Never waits.
pub(crate) fn send_tick<H: Handler>(
    connection: &Connection<H>,
    publisher: &PubEntry,
    payload: Bytes,
    now_us: u64,
) -> Result<u64, TickError> {
    let channel_id = match *lock(&publisher.claim) {
        Some((claimed_on, id)) if claimed_on == connection.id => id,
        _ => return Err(TickError::NotConnected),
    };
    let max_payload = max_payload(&connection.link)?;
    if payload.len() > max_payload {
        return Err(TickError::TooLarge { size: payload.len(), max_payload });
    }
    let seq = publisher.next_seq.fetch_add(1, Ordering::Relaxed);
    let header = TickHeader { channel_id, seq, sent_time_us: now_us };
    let mut datagram = BytesMut::with_capacity(header.encoded_len() + payload.len());
    header.encode(&mut datagram).map_err(|_| TickError::Unsupported)?;
    datagram.put_slice(&payload);
    connection.link.send_datagram(datagram.freeze()).map_err(|err| match err {
        SendDatagramError::TooLarge => TickError::TooLarge { size: payload.len(), max_payload },
        SendDatagramError::Closed => TickError::NotConnected,
        SendDatagramError::Unsupported => TickError::Unsupported,
    })?;
    Ok(seq)
}

async fn subscribe_on<H: TickHandler>(connection: &Connection<H>, entry: &Arc<SubEntry>) -> Result<(), RequestError> {
    match connection.request(RequestBody::Subscribe { channel: entry.channel.clone() }).await? {
        Reply::Subscribed { channel_id, .. } => {
            connection.route(channel_id, entry.clone());
            Ok(())
        }
        other => Err(RequestError::unexpected(other)),
    }
}

async fn claim_on<H: Handler>(connection: &Connection<H>, entry: &PubEntry) -> Result<(), RequestError> {
    let body = RequestBody::Publish { channel: entry.channel.clone(), max_age_ms: entry.max_age_ms };
    match connection.request(body).await? {
        Reply::Publishing { channel_id, .. } => {
            *lock(&entry.claim) = Some((connection.id, channel_id));
            Ok(())
        }
        other => Err(RequestError::unexpected(other)),
    }
}
