//! A chat bot that never answers twice and never misses a message across restarts: it answers `!ping` with
//! `pong` and `!time` with the server's clock in `--room` (default `lobby`), and stores its room position in
//! `--state FILE` after each message it has handled. Restarted, it joins from that position: what was posted
//! while it was away is replayed, nothing before it is (and `Resumed { recovered: false }` says when the server
//! no longer had all of it).
//!
//!     quiver-server &
//!     cargo run -p quiver-client --example chat_bot -- --name bot --state bot.position
//!     quiver chat --room lobby     # then type !ping

mod common;

use std::path::Path;

use quiver_client::Position;
use quiver_client::RoomEvent;

#[tokio::main]
async fn main() {
    let args = common::Args::parse();
    let room_name = args.or("room", "lobby").to_string();
    let state = args.or("state", "bot.position").to_string();
    let client = args.connect().await;
    let mut room = match load(Path::new(&state)) {
        Some(position) => {
            println!("resuming {room_name} after epoch {} seq {}", position.epoch, position.seq);
            client.join_from(&room_name, position).await
        }
        None => client.join(&room_name).await,
    }
    .expect("join");
    let me = client.welcome().identity;
    let end = tokio::time::Instant::now() + args.seconds();
    loop {
        let event = tokio::select! {
            event = room.next() => event,
            () = tokio::time::sleep_until(end) => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Some(RoomEvent::Message(message)) => {
                let answer = match String::from_utf8_lossy(&message.body).trim() {
                    _ if message.sender == me => None,
                    "!ping" => Some("pong".to_string()),
                    "!time" => Some(format!("server time {} us", client.server_clock_us())),
                    _ => None,
                };
                if let Some(answer) = answer {
                    println!("[{}] {}: answering {answer:?}", message.seq, message.sender);
                    // Acknowledged before the position moves past the question: a crash in between answers it
                    // again, with the same id (the question's place), so the server stores the answer once (within
                    // its dedupe window, and for a bot with a fixed --name).
                    let id = message.epoch.rotate_left(32) ^ message.seq;
                    client.post_with_id(&room_name, id, answer).await.expect("post");
                }
                store(Path::new(&state), Position { epoch: message.epoch, seq: message.seq });
            }
            Some(RoomEvent::Resumed { recovered, .. }) => {
                println!("resumed, {}", if recovered { "nothing missed" } else { "some messages were lost" })
            }
            Some(_) => {}
            None => break,
        }
    }
    client.close().await;
}

/// The position stored in `path` (`EPOCH:SEQ`).
fn load(path: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(path).ok()?;
    let (epoch, seq) = text.trim().split_once(':')?;
    Some(Position { epoch: epoch.parse().ok()?, seq: seq.parse().ok()? })
}

/// Stores `position` whole or not at all (written beside, then renamed over).
fn store(path: &Path, position: Position) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, format!("{}:{}\n", position.epoch, position.seq))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(err) = written {
        eprintln!("cannot store the position in {}: {err}", path.display());
    }
}
