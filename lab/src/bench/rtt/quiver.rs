//! Quiver's side of a round trip, shared by the datagram and stream series and the head-to-head: a sender's ticks
//! go out on a channel it subscribes to and its chat into a room it has joined, so the server's fan-out brings each
//! message back to it.

use quiver_client::{Client, RoomEvent, TickPublisher};
use tokio_util::sync::CancellationToken;

use crate::bench::{
    series::{parse, until_stopped, SharedTally, Tally},
    BenchError,
};

/// Subscribes `client` to tick channel `channel`, tallies every tick that comes back until `stop`, and returns a
/// publisher on the channel.
pub(super) async fn own_ticks(
    client: &Client,
    channel: &str,
    tally: SharedTally,
    stop: &CancellationToken,
) -> Result<TickPublisher, BenchError> {
    let mut subscription = client.subscribe(channel).await.map_err(BenchError::request("subscribe"))?;
    let publisher = client.publisher(channel).await.map_err(BenchError::request("publish"))?;
    // Every accepted tick, not only the newest: a tick superseded on arrival still arrived.
    until_stopped(stop, async move {
        loop {
            for tick in subscription.next_batch().await {
                if let Some((w, i)) = parse(&tick.payload) {
                    Tally::received(&tally, w, i);
                }
            }
        }
    });
    Ok(publisher)
}

/// Publishes a tick without waiting; one refused here is never sent, so it counts as lost.
pub(super) fn publish(publisher: &TickPublisher, payload: Vec<u8>) {
    if let Err(err) = publisher.send(payload) {
        tracing::debug!(%err, "tick not sent");
    }
}

/// Joins `client` to `room` and tallies every message that comes back until `stop`.
pub(super) async fn own_chat(
    client: &Client,
    room: &str,
    tally: SharedTally,
    stop: &CancellationToken,
) -> Result<(), BenchError> {
    let mut room = client.join(room).await.map_err(BenchError::request("join"))?;
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

/// Keeps `client` connected through the drain, then closes it.
pub(super) fn close_after(stop: &CancellationToken, client: Client) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        client.close().await;
    });
}
