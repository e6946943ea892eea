//! The client crate's examples, run briefly against a test server: they build (cargo builds every example for
//! `cargo test`) and do what they say.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use quiver_proto::Limits;
use quiver_tests::TestServer;
use tokio::process::Command;

/// The built example `name` (target/debug/examples), built first if this test runs without the rest.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join("examples").join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "quiver-client", "--examples"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --examples");
    }
    path
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

/// The number after `word ` in `line`.
fn number_after(line: &str, word: &str) -> u64 {
    let rest = line.split(&format!("{word} ")).nth(1).unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_game_loops_see_each_other_at_60_hz() {
    let server = TestServer::start(Limits::default());
    let p1 = run(&server, "game_loop", &["--name", "p1", "--peer", "p2", "--seconds", "2"]);
    let p2 = run(&server, "game_loop", &["--name", "p2", "--peer", "p1", "--seconds", "2"]);
    let (p1, p2) = tokio::join!(output(p1), output(p2));
    for (out, me, peer) in [(&p1, "p1", "p2"), (&p2, "p2", "p1")] {
        let frames = out.lines().find(|l| l.starts_with(&format!("{me}: "))).unwrap();
        // 2 s at 60 Hz is 120 frames; on a loaded 2-core machine late frames are skipped, not bunched.
        let count: u64 = frames.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((60..=121).contains(&count), "{out}");
        let line = out.lines().find(|l| l.starts_with(&format!("peer {peer}:"))).unwrap();
        assert!(number_after(line, "received") >= 20, "{out}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_data_reports_the_feed_it_received() {
    let server = TestServer::start(Limits::default());
    let watcher = run(&server, "market_data", &["--channel", "prices", "--seconds", "2"]).spawn().unwrap();
    let client = server.client().await;
    let publisher = client.publisher("prices").await.unwrap();
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(1800) {
        publisher.send(format!("EURUSD 1.{sent:04}").into_bytes()).unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
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
    let pongs = |room: &mut quiver_client::Room| {
        let mut count = 0;
        while let Some(event) = room.try_next() {
            if let quiver_client::RoomEvent::Message(m) = event {
                count += usize::from(m.sender == "bot" && m.body == "pong");
            }
        }
        count
    };
    // Wait for the bot to be in the room before asking.
    loop {
        if let Some(quiver_client::RoomEvent::MemberJoined { member }) = room.next().await {
            if member == "bot" {
                break;
            }
        }
    }
    client.post("lobby", "!ping").await.unwrap();
    assert!(bot.wait().await.unwrap().success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pongs(&mut room), 1, "one answer to the one !ping it saw");
    assert!(state_file.exists(), "the position is stored");

    // While it is away: a question. Restarted, it answers that one, and not the one it answered already.
    client.post("lobby", "!ping").await.unwrap();
    let out = output(run(&server, "chat_bot", &["--name", "bot", "--state", state_arg, "--seconds", "2"])).await;
    assert!(out.starts_with("resuming lobby after epoch"), "{out}");
    assert!(out.contains("resumed, nothing missed"), "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pongs(&mut room), 1, "the missed !ping answered once: {out}");
    client.close().await;
    server.stop().await;
}
