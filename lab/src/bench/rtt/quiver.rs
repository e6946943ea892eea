//! Quiver's side of a round trip, shared by the datagram and stream series and the head-to-head: a sender's ticks
//! go out on a channel it subscribes to and its chat into a room it has joined, so the server's fan-out brings each
//! message back to it.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use quiver_client::{Client, JoinOptions, RoomEvent, TickPublisher};
use tokio_util::sync::CancellationToken;

use crate::bench::{
    series::{parse, until_stopped, SharedTally, Tally},
    BenchError,
};

/// What a subscription counted so far of the ticks it did not hand its reader: dropped as stale (arrived after a
/// newer one: reordered on the way, not lost), and superseded in its backlog (the reader fell behind).
#[derive(Debug, Clone, Default)]
pub(super) struct Dropped {
    pub stale: Arc<AtomicU64>,
    pub superseded: Arc<AtomicU64>,
}

impl Dropped {
    /// The counts from now on are of measured ticks, read when `tally`'s result is taken.
    pub(super) fn measured_in(&self, tally: &SharedTally) {
        Tally::stale_from(tally, &self.stale);
        Tally::superseded_from(tally, &self.superseded);
    }
}

/// Subscribes `client` to tick channel `channel`, tallies every tick that comes back until `stop`, and returns a
/// publisher on the channel and the counts of the ticks the subscription did not hand on.
///
/// `server`: the in-process server's counters, for one sender of a series: the ticks it dropped for arriving after
/// a newer one of their publisher (reordered on the way up, `ticks_reordered_in`) count as stale too, as the echoes
/// count theirs wherever the path reordered them (until 2026-12-07 they counted as lost, and Quiver's stale column
/// missed the uplink's share).
pub(super) async fn own_ticks(
    client: &Client,
    channel: &str,
    tally: SharedTally,
    stop: &CancellationToken,
    server: Option<Arc<quiver_server::stats::ServerStats>>,
) -> Result<(TickPublisher, Dropped), BenchError> {
    let mut subscription = BenchError::answered("subscribe", client.subscribe(channel)).await?;
    let publisher = BenchError::answered("publish", client.publisher(channel)).await?;
    let dropped = Dropped::default();
    let seen = dropped.clone();
    // Every accepted tick, not only the newest: a tick superseded on arrival still arrived.
    // The stale count is read on a timer too: a tick dropped as stale wakes no reader (only accepted ones do), so
    // one after the last accepted tick would otherwise never be counted.
    until_stopped(stop, async move {
        let mut refresh = tokio::time::interval(std::time::Duration::from_millis(20));
        loop {
            tokio::select! {
                batch = subscription.next_batch() => match batch {
                    Some(ticks) => {
                        for tick in ticks {
                            // (By the sender's index, as the echoes judge theirs: the server drops a tick the
                            // uplink reordered, `server` above, and one reordered on the way down is stale here.)
                            if let Some((w, i)) = parse(&tick.payload) {
                                Tally::received_latest(&tally, w, i);
                            }
                        }
                    }
                    None => break,
                },
                _ = refresh.tick() => {}
            }
            // (The counters alone: the latency summary walks a histogram, with arriving ticks waiting for it.)
            let stats = subscription.counts();
            let uplink = server.as_ref().map_or(0, |server| server.snapshot().ticks_reordered_in);
            seen.stale.store(stats.stale_dropped + uplink, Ordering::Relaxed);
            seen.superseded.store(stats.superseded, Ordering::Relaxed);
        }
    });
    Ok((publisher, dropped))
}

/// UDP payload bytes `client`'s connection has sent and received.
pub(super) fn wire_bytes(client: &Client) -> Option<WireMark> {
    client.connection().map(|quic| WireMark { connection: quic.stable_id(), bytes: quinn_bytes(&quic) })
}

/// A connection's byte count at one moment ([`wire_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WireMark {
    connection: usize,
    bytes: u64,
}

/// Bytes on the wire since `before`, on the same connection; `None` when the client reconnected meanwhile (a new
/// connection counts from 0, and the old one's bytes are gone): that sender's figure is left out, with a warning.
pub(super) fn wire_since(client: &Client, before: Option<WireMark>) -> Option<u64> {
    match (before, wire_bytes(client)) {
        (Some(before), Some(now)) if before.connection == now.connection => Some(now.bytes - before.bytes),
        _ => {
            tracing::warn!("a sender's client reconnected during the series: its bytes per message are left out");
            None
        }
    }
}

/// UDP payload bytes a quinn connection has sent and received.
pub(super) fn quinn_bytes(quic: &quinn::Connection) -> u64 {
    let stats = quic.stats();
    stats.udp_tx.bytes + stats.udp_rx.bytes
}

/// Publishes a tick without waiting; one refused here is never sent, so it counts as lost.
pub(super) fn publish(publisher: &TickPublisher, payload: Vec<u8>) {
    if let Err(err) = publisher.send(payload) {
        tracing::debug!(%err, "tick not sent");
    }
}

/// Joins `client` to `room` (with redundant delivery when `redundant`) and tallies every message that comes back
/// until `stop`.
pub(super) async fn own_chat(
    client: &Client,
    room: &str,
    tally: SharedTally,
    stop: &CancellationToken,
    redundant: bool,
) -> Result<(), BenchError> {
    let options = JoinOptions { redundant, ..JoinOptions::default() };
    let mut room = BenchError::answered("join", client.join_with(room, options)).await?;
    until_stopped(stop, async move {
        while let Some(event) = room.next().await {
            if let RoomEvent::Message(m) = event {
                if let Some((w, i)) = parse(&m.body) {
                    Tally::received(&tally, w, i);
                }
            }
        }
    });
    Ok(())
}

/// Posts a chat message without waiting: it is queued at the call, and the acknowledgement is not what is
/// measured.
pub(super) fn post(client: &Client, room: &str, payload: Vec<u8>) {
    drop(client.post(room, payload));
}

/// A room or channel name for sender `who` that no earlier series of this process used: a series' later round
/// must not join its earlier round's room (whose history it would be handed) or share its channel.
pub(super) fn fresh_name(kind: &str, who: u32, tag: impl std::fmt::Display) -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("bench.{kind}.{who}.{}.{tag}.{n}", std::process::id())
}

/// Keeps `client` connected through the drain, then closes it.
pub(super) fn close_after(stop: &CancellationToken, client: Client) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        client.close().await;
    });
}
