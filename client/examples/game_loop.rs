//! A 60 Hz game loop: every frame it publishes this player's state as a tick on `game.<name>` and reads the other
//! players' newest states (`--peer NAME`, repeatable) without ever waiting: a tick late by a frame is worth less
//! than the next one, so the loop never blocks on the network.
//!
//!     quiver-server &
//!     cargo run -p quiver-client --example game_loop -- --name p1 --peer p2 &
//!     cargo run -p quiver-client --example game_loop -- --name p2 --peer p1
//!
//! At the end it prints one summary line per peer: states received, lost on the way, and their age.

mod common;

use std::time::Duration;

const FRAME: Duration = Duration::from_micros(16_667);

#[tokio::main]
async fn main() {
    let args = common::Args::parse();
    let name = args.or("name", "player").to_string();
    let client = args.connect().await;
    let publisher = client.publisher_with_max_age(&format!("game.{name}"), Some(FRAME * 3)).await.expect("publish");
    let mut peers = Vec::new();
    for peer in args.all("peer") {
        peers.push((peer.to_string(), client.subscribe(&format!("game.{peer}")).await.expect("subscribe"), None));
    }
    let mut frame = tokio::time::interval(FRAME);
    // A late frame is skipped, not caught up with a burst.
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut frames, mut published, mut x) = (0u64, 0u64, 0f32);
    let end = tokio::time::Instant::now() + args.seconds();
    while tokio::time::Instant::now() < end {
        frame.tick().await;
        frames += 1;
        // Simulate: move, publish where we are (a full state each frame, so any one tick is enough).
        x += 0.1;
        let state = format!("{name} x={x:.1} frame={frames}");
        match publisher.send(state.into_bytes()) {
            Ok(_) => published += 1,
            Err(err) => eprintln!("frame {frames}: tick not sent: {err}"),
        }
        // Read: the newest state of each peer, if a new one came; never wait.
        for (_, subscription, last) in &mut peers {
            if let Some(tick) = subscription.try_next() {
                *last = Some(tick);
            }
        }
    }
    println!("{name}: {frames} frames, {published} states published");
    for (peer, subscription, last) in &peers {
        let stats = subscription.stats();
        let age = last.as_ref().map_or("none".to_string(), |t| format!("{} us", t.latency().as_micros()));
        println!(
            "peer {peer}: received {} lost {} stale {} last latency {age} p99 {} us",
            stats.received, stats.lost, stats.stale_dropped, stats.latency.p99_us
        );
    }
    client.close().await;
}
