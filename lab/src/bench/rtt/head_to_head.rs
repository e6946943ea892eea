//! The head-to-head with WebSocket over TCP: each sender carries the same ticks and chat at the same rates on one
//! Quiver connection (ticks as datagrams, chat on a room stream) and on one WebSocket connection (both on its one
//! ordered TCP stream, as WebSocket apps do).

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::{
    lanes::measure_lanes,
    quiver::{self, close_after},
    targets::TargetsView,
    RttConfig,
};
use crate::bench::{
    series::{parse, payload, until_stopped, SeriesResult, Tally},
    websocket, BenchError,
};

/// Marks a chat message (in the sender field) on the WebSocket, where ticks and chat share one connection.
const CHAT_BIT: u32 = 1 << 31;

/// The WebSocket side: one WebSocket-over-TCP connection per sender (TCP_NODELAY) carrying ticks and chat as
/// binary messages, echoed by the server; a writer task sends whatever either schedule hands it, as a WebSocket
/// app's outgoing queue does.
pub(super) async fn websocket_mixed_series(
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<Vec<SeriesResult>, BenchError> {
    let size = config.size.max(12);
    let lanes = [("websocket tick", config.rate, true), ("websocket chat", config.chat_rate, true)];
    measure_lanes(&config, &lanes, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let (queue, mut incoming) = websocket::connect(targets.websocket, &stop).await?;
            let (tick_tally, chat_tally) = (lanes.tally(0), lanes.tally(1));
            until_stopped(&stop, async move {
                while let Some(Ok(message)) = incoming.next().await {
                    match parse(&message.into_data()) {
                        Some((w, i)) if w & CHAT_BIT != 0 => Tally::received(&chat_tally, w & !CHAT_BIT, i),
                        Some((w, i)) => Tally::received(&tick_tally, w, i),
                        None => {}
                    }
                }
            });
            let (ticks, chat) = lanes.start_two().await;
            let send = |mark: u32| {
                let queue = &queue;
                move |i| {
                    let _ = queue.send(Message::binary(payload(who | mark, i, size)));
                }
            };
            tokio::join!(ticks.send_scheduled(who, send(0)), chat.send_scheduled(who, send(CHAT_BIT)));
            Ok(())
        }
    })
    .await
}

/// The Quiver side: one connection per sender, ticks published as datagrams on a channel it subscribes to, chat
/// posted into a room of the same name it has joined; over QUIC, or (`websocket`) over Quiver's WebSocket
/// fallback, where ticks stay latest-wins and chat has its own stream, on one TCP connection.
pub(super) async fn quiver_mixed_series(
    config: RttConfig,
    targets: Arc<TargetsView>,
    websocket: bool,
) -> Result<Vec<SeriesResult>, BenchError> {
    let size = config.size.max(12);
    let lanes = match websocket {
        false => [("quiver tick", config.rate, false), ("quiver chat", config.chat_rate, true)],
        // Ticks ride TCP here: none is lost, but a newer one replaces a waiting one (counted as lost).
        true => [("quiver-ws tick", config.rate, false), ("quiver-ws chat", config.chat_rate, true)],
    };
    let mut results = measure_lanes(&config, &lanes, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let client = match websocket {
                false => targets.quiver_client().await?,
                true => targets.quiver_ws_client().await?,
            };
            let name = quiver::fresh_name("h2h", who, websocket);
            let server = targets.quiver.stats.clone().filter(|_| who == 0);
            let (publisher, dropped) = quiver::own_ticks(&client, &name, lanes.tally(0), &stop, server).await?;
            quiver::own_chat(&client, &name, lanes.tally(1), &stop, false).await?;
            let (ticks, chat) = lanes.start_two().await;
            // Ticks reordered and dropped as stale are not lost (the WebSocket's, over TCP, never are).
            let warmup = ticks.plan.warmup;
            tokio::join!(
                ticks.send_scheduled(who, |i| {
                    if i == warmup {
                        dropped.measured_in(&ticks.tally);
                    }
                    quiver::publish(&publisher, payload(who, i, size))
                }),
                chat.send_scheduled(who, |i| quiver::post(&client, &name, payload(who, i, size))),
            );
            close_after(&stop, client);
            Ok(())
        }
    })
    .await?;
    // Each Quiver series is compared with its WebSocket counterpart.
    for (result, baseline) in results.iter_mut().zip(["websocket tick", "websocket chat"]) {
        result.baseline = Some(baseline.to_string());
    }
    Ok(results)
}
