//! The WebSocket side of the fan-out: the same workload through a minimal WebSocket hub, ticks and chat sharing
//! each client's one TCP connection as they do in WebSocket apps.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    cpu::CpuMeter,
    report::FanoutSide,
    workload::{drive, Kind, Recorder, SharedRecorder},
    FanoutConfig,
};
use crate::bench::{namespaces::Progress, series::until_stopped, websocket, BenchError};

/// First byte of a hub message: a tick goes to everyone else, a chat message to everyone.
const HUB_TICK: u8 = 0;
const HUB_CHAT: u8 = 1;

/// Runs the workload through the hub at `hub`: the same subscribers, publisher and chat posters as Quiver's side,
/// each its own WebSocket connection.
pub(super) async fn measure(
    config: &FanoutConfig,
    hub: SocketAddr,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    let mut posters = Vec::new();
    for who in 0..config.subscribers {
        super::connecting(progress, "websocket", who, config.subscribers);
        let (queue, mut incoming) = websocket::connect(hub, &stop).await?;
        let recorder = recorder.clone();
        until_stopped(&stop, async move {
            while let Some(Ok(message)) = incoming.next().await {
                match message.into_data().split_first() {
                    Some((&HUB_TICK, rest)) => Recorder::received(&recorder, who, Kind::Tick, rest),
                    Some((&HUB_CHAT, rest)) => Recorder::received(&recorder, who, Kind::Chat, rest),
                    _ => {}
                }
            }
        });
        posters.push(queue);
    }
    let (publisher, mut publisher_incoming) = websocket::connect(hub, &stop).await?;
    // The hub sends chat to the publisher's connection too: read it, or TCP backpressure would stall the hub's
    // task for that connection, and with it the ticks it reads.
    until_stopped(&stop, async move { while let Some(Ok(_)) = publisher_incoming.next().await {} });
    let framed = |kind: u8, mut body: Vec<u8>| {
        body.insert(0, kind);
        Message::binary(body)
    };
    progress("websocket: measuring");
    let cpu = CpuMeter::start(true);
    drive(
        config,
        &recorder,
        true,
        |tick| drop(publisher.send(framed(HUB_TICK, tick))),
        |who, message| drop(posters[who].send(framed(HUB_CHAT, message))),
    )
    .await;
    let cpu = cpu.stop();
    stop.cancel();
    Ok(Recorder::side(&recorder, "websocket", config.subscribers, cpu))
}

/// A minimal WebSocket hub on `ip` (one channel, one room): each binary message is forwarded to every other
/// connection (a tick, first byte 0) or to every connection (a chat message, first byte 1), through one
/// broadcast queue; a connection that falls 4096 messages behind loses the oldest, as a hub's bounded client
/// queue would. Until `stop`.
pub(super) async fn hub(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let (hub, _) = tokio::sync::broadcast::channel::<(u64, Message)>(4096);
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of descriptors and the like: do not spin.
                        tracing::warn!(%err, "WebSocket hub: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            next_id += 1;
            let (id, hub, mut feed, stop) = (next_id, hub.clone(), hub.subscribe(), stop.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (mut sink, mut incoming) = ws.split();
                loop {
                    tokio::select! {
                        message = incoming.next() => match message {
                            Some(Ok(message)) if message.is_binary() => { let _ = hub.send((id, message)); }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        forwarded = feed.recv() => match forwarded {
                            Ok((from, message)) => {
                                let chat = message.clone().into_data().first() == Some(&HUB_CHAT);
                                if (from != id || chat) && sink.send(message).await.is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
    });
    Ok(addr)
}
