//! The client crate's examples, run briefly against a test server: they build (cargo builds every example for
//! `cargo test`) and do what they say.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use quiver_proto::Limits;
use quiver_tests::TestServer;
use tokio::{io::AsyncBufReadExt, process::Command};

/// The built example `name` (target/<profile>/examples). `cargo test --workspace` builds the examples with
/// everything else; when this test runs alone (`cargo test -p quiver-tests`) and the binary is missing or older
/// than the client's sources, it is built here first.
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let profile_dir = deps.parent().unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client");
    let stale = built.is_none_or(|built| newest(&client).is_some_and(|source| source > built));
    if stale {
        BUILT.call_once(|| {
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args(["build", "--workspace", "--examples"]);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            assert!(build.status().unwrap().success(), "cargo build --examples");
        });
    }
    path
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() { newest(&path) } else { entry.metadata().ok()?.modified().ok() };
        latest = latest.max(time);
    }
    latest
}

fn run(server: &TestServer, name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(example(name));
    command
        .args(["--server", &server.addr.to_string(), "--data-dir"])
        .arg(server.data_dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn output(mut command: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout.into_owned()
}

/// The bot's `pong`s arriving in `room`: waits up to 10 s for the first, then 300 ms for any more.
async fn pongs(room: &mut quiver_client::Room) -> usize {
    let mut count = 0;
    let mut wait = Duration::from_secs(10);
    while let Ok(Some(event)) = tokio::time::timeout(wait, room.next()).await {
        if let quiver_client::RoomEvent::Message(m) = event {
            if m.sender == "bot" && m.body == "pong" {
                count += 1;
                wait = Duration::from_millis(300);
            }
        }
    }
    count
}

/// The number after `word ` in `line`.
fn number_after(line: &str, word: &str) -> u64 {
    let rest = line.split(&format!("{word} ")).nth(1).unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_game_loops_see_each_other_at_60_hz() {
    let server = TestServer::start(Limits::default());
    // 4 s each, started together: however late one process starts on a loaded machine, they overlap.
    let p1 = run(&server, "game_loop", &["--name", "p1", "--peer", "p2", "--seconds", "4"]);
    let p2 = run(&server, "game_loop", &["--name", "p2", "--peer", "p1", "--seconds", "4"]);
    let (p1, p2) = tokio::join!(output(p1), output(p2));
    for (out, me, peer) in [(&p1, "p1", "p2"), (&p2, "p2", "p1")] {
        let frames = out.lines().find(|l| l.starts_with(&format!("{me}: "))).unwrap();
        // 4 s at 60 Hz is 240 frames; on a loaded 2-core machine late frames are skipped, not bunched.
        let count: u64 = frames.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((120..=241).contains(&count), "{out}");
        let line = out.lines().find(|l| l.starts_with(&format!("peer {peer}:"))).unwrap();
        assert!(number_after(line, "received") >= 20, "{out}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_data_reports_the_feed_it_received() {
    let server = TestServer::start(Limits::default());
    let mut watcher = run(&server, "market_data", &["--channel", "prices", "--seconds", "4"]).spawn().unwrap();
    // Publish once it is subscribed, however long its start took.
    let mut lines = tokio::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, "subscribed to prices");
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest.join("\n")
    });
    let client = server.client().await;
    let publisher = client.publisher("prices").await.unwrap();
    let mut sent = 0;
    for _ in 0..300 {
        publisher.send(format!("EURUSD 1.{sent:04}").into_bytes()).unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), watcher.wait()).await.unwrap().unwrap();
    let stdout = reader.await.unwrap();
    assert!(status.success(), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("summary prices:")).unwrap();
    let (received, lost) = (number_after(summary, "received"), number_after(summary, "lost"));
    assert!(received >= 50 && received + lost <= sent, "{summary} after {sent} sent");
    assert!(stdout.lines().any(|l| l.starts_with("prices: ") && l.contains("last EURUSD")), "{stdout}");
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_bot_answers_once_and_resumes_from_its_stored_position() {
    let server = TestServer::start(Limits::default());
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("bot.position");
    let state_arg = state_file.to_str().unwrap();
    let client = server.client().await;
    let mut room = client.join("lobby").await.unwrap();
    client.post("lobby", "!ping").await.unwrap();
    // First run: it joins at the room's head, so the earlier !ping is not its business; a new one is.
    let mut bot = run(&server, "chat_bot", &["--name", "bot", "--state", state_arg, "--seconds", "3"]).spawn().unwrap();
    // Wait for the bot to be in the room before asking.
    let bot_joined = quiver_tests::first_event(&mut room, Duration::from_secs(20), |event| match event {
        quiver_client::RoomEvent::MemberJoined { member } if member == "bot" => Some(()),
        _ => None,
    });
    bot_joined.await.expect("the bot joins");
    client.post("lobby", "!ping").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), bot.wait()).await.expect("the bot ends").unwrap();
    assert!(status.success());
    assert_eq!(pongs(&mut room).await, 1, "one answer to the one !ping it saw");
    assert!(state_file.exists(), "the position is stored");

    // While it is away: a question. Restarted, it answers that one, and not the one it answered already.
    client.post("lobby", "!ping").await.unwrap();
    let out = output(run(&server, "chat_bot", &["--name", "bot", "--state", state_arg, "--seconds", "2"])).await;
    assert!(out.starts_with("resuming lobby after epoch"), "{out}");
    assert!(out.contains("resumed, nothing missed"), "{out}");
    assert_eq!(pongs(&mut room).await, 1, "the missed !ping answered once: {out}");
    client.close().await;
    server.stop().await;
}
