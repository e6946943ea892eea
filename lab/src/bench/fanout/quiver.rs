//! Quiver's side of the fan-out: ticks as datagrams on one channel, chat on a room stream, both over each
//! subscriber's one connection.

use std::time::Duration;

use quiver_client::RoomEvent;
use quiver_transport::TransportTuning;
use tokio_util::sync::CancellationToken;

use super::{
    cpu::CpuMeter,
    report::{FanoutSide, ServerTicks},
    workload::{drive, Kind, Recorder, SharedRecorder},
    FanoutConfig,
};
use crate::bench::{namespaces::Progress, server::QuiverServer, BenchError};

/// Quiver's side: each subscriber its own connection, subscribed to the tick channel and joined to the chat room,
/// and one more connection for the publisher.
pub(super) async fn measure(
    config: &FanoutConfig,
    server: &QuiverServer,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    let tuning = TransportTuning::default();
    let connect = || server.connect(&tuning);
    // Names of this run only, so runs against a shared server do not see each other's traffic.
    let run_id = rand::random::<u32>();
    let channel = format!("bench.fanout.{run_id:08x}");
    let chat_room = format!("bench.fanout.{run_id:08x}.chat");
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    let (mut subscribers, mut tasks) = (Vec::new(), Vec::new());
    for who in 0..config.subscribers {
        super::connecting(progress, "quiver", who, config.subscribers);
        let client = connect().await?;
        let mut subscription = BenchError::answered("subscribe", client.subscribe(&channel)).await?;
        // Ticks only: no room, as the baselines' receivers have none (a subscriber that also waits on a room pays
        // for that wait at every tick).
        let mut room = match config.chat_rate > 0.0 {
            true => Some(BenchError::answered("join", client.join(&chat_room)).await?),
            false => None,
        };
        let (recorder, stop) = (recorder.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let chat = async {
                    match room.as_mut() {
                        Some(room) => room.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    ticks = subscription.next_batch() => match ticks {
                        Some(ticks) => for tick in ticks {
                            Recorder::received(&recorder, who, Kind::Tick, &tick.payload);
                        },
                        None => break,
                    },
                    event = chat => match event {
                        Some(RoomEvent::Message(m)) => Recorder::received(&recorder, who, Kind::Chat, &m.body),
                        Some(_) => {}
                        None => break,
                    },
                }
            }
            // Counted however the loop ended (a subscription or room that ended early too).
            let stats = subscription.stats();
            Recorder::stale_dropped(&recorder, stats.stale_dropped);
            Recorder::superseded(&recorder, stats.superseded);
        }));
        subscribers.push(client);
    }
    let publisher_client = connect().await?;
    let publisher = BenchError::answered("publish", publisher_client.publisher(&channel)).await?;
    progress("quiver: measuring");
    let cpu = CpuMeter::start(config.server.is_none());
    let counters = || server.stats.as_ref().map(|s| s.snapshot());
    let before = counters();
    drive(
        config,
        &recorder,
        false,
        |tick| drop(publisher.send(tick)),
        |who, message| drop(subscribers[who].post(&chat_room, message)),
    )
    .await;
    let cpu = cpu.stop();
    let server_ticks = before.zip(counters()).map(|(b, a)| ServerTicks {
        sent: a.ticks_sent - b.ticks_sent,
        conflated: a.ticks_conflated - b.ticks_conflated,
        expired: a.ticks_expired - b.ticks_expired,
    });
    stop.cancel();
    // Every subscriber's stale and superseded counts in (they are deliveries, which the CPU per delivery divides
    // by): the tasks joined, not 100 ms given to them, which a loaded machine's last ones missed (a review's find).
    let joined = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(tasks)).await;
    if joined.is_err() {
        tracing::warn!("some subscribers' counts were not in 10 s after the run: left out");
    }
    Ok(FanoutSide { server_ticks, ..Recorder::side(&recorder, "quiver", config.subscribers, cpu) })
}
