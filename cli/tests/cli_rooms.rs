//! `quiver chat`, `quiver post` and `quiver history` as processes against an in-process server.
#![allow(clippy::unwrap_used)]

use std::{process::Stdio, time::Duration};

use quiver_proto::Limits;
use quiver_tests::TestServer;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

/// `quiver post` and `quiver history` on their own.
#[path = "cli_rooms/post_history.rs"]
mod post_history;

struct Chat {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Chat {
    fn start(server: &TestServer, name: &str) -> Chat {
        let (child, lines) = chat_process(server, &["--name", name]);
        Chat { child, lines }
    }

    async fn say(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{text}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads lines until `count` message lines (`[seq] name: text`) have been read; returns those.
    async fn messages(&mut self, count: usize) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} messages within 20 s: {seen:?}", seen.len()))
                .unwrap()
                .expect("output ended");
            if line.starts_with('[') {
                seen.push(line);
            }
        }
        seen
    }

    /// Reads lines until one equals `wanted`; returns every line read.
    async fn until(&mut self, wanted: &str) -> Vec<String> {
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let done = line == wanted;
                seen.push(line);
                if done {
                    return;
                }
            }
            panic!("output ended before {wanted:?}: {seen:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {wanted:?} within 20 s"));
        seen
    }

    #[cfg(unix)]
    async fn interrupt(mut self) {
        interrupt_pid(self.child.id().unwrap());
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "quiver chat exits cleanly on Ctrl-C: {status}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_see_one_order_and_a_restart_shows_leave_and_join() {
    let server = TestServer::start(Limits::default());
    let mut ann = Chat::start(&server, "ann");
    ann.until("* ann joined").await;
    let mut bob = Chat::start(&server, "bob");
    ann.until("* bob joined").await;
    bob.until("* bob joined").await;
    for i in 0..5 {
        ann.say(&format!("ann {i}")).await;
        bob.say(&format!("bob {i}")).await;
    }
    let ann_view = ann.messages(10).await;
    let bob_view = bob.messages(10).await;
    assert_eq!(ann_view, bob_view, "one order for both");
    for i in 0..5 {
        assert!(ann_view.iter().any(|l| l.ends_with(&format!("] ann: ann {i}"))), "{ann_view:?}");
        assert!(ann_view.iter().any(|l| l.ends_with(&format!("] bob: bob {i}"))), "{ann_view:?}");
    }

    bob.interrupt().await;
    ann.until("* bob left").await;
    let mut bob = Chat::start(&server, "bob");
    ann.until("* bob joined").await;
    bob.say("back").await;
    ann.until("[11] bob: back").await;
    server.stop().await;
}

/// The next line of `quiver chat --json` as JSON (within 20 s).
async fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(&line).unwrap()
}

/// `quiver chat` with stdin piped and kept open, stdout read line by line.
fn chat_process(server: &TestServer, extra: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["chat", "--room", "town", "--server", &server.addr.to_string(), "--data-dir"])
        .arg(server.data_dir.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_chat_within_a_second_while_stdin_stays_open() {
    let server = TestServer::start(Limits::default());
    let (mut child, mut lines) = chat_process(&server, &["--name", "ann", "--json"]);
    // Joined (the first line is the connection state), stdin open and idle.
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.contains("\"state\":\"connected\""), "{first}");
    let pid = child.id().unwrap();
    let sent = std::time::Instant::now();
    interrupt_pid(pid);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    // (Up to 600 ms of goodbyes to a server busy with the other tests, and the `kill` process's own start.)
    assert!(sent.elapsed() < Duration::from_millis(2_500), "exited {:?} after Ctrl-C", sent.elapsed());
    server.stop().await;
}

/// Ctrl-C while still connecting (a server that never answers) ends chat at once: the handler chat installs first
/// replaced the default action, and nothing listened to it before the join.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_chat_while_it_is_still_connecting() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["chat", "--room", "town", "--server", &silent.local_addr().unwrap().to_string()])
        .args(["--cert-hash", &"ab".repeat(32), "--transport", "quic"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // Once chat catches SIGINT (`SigCgt` bit 1 in /proc; a fixed wait could signal it before, and its default
    // action's kill passed the test without a handler), or after 2 s where /proc does not say.
    let started = std::time::Instant::now();
    let caught = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim().to_string();
        u64::from_str_radix(&mask, 16).ok().map(|mask| mask & (1 << 1) != 0)
    };
    while caught() != Some(true) && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = std::time::Instant::now();
    interrupt_pid(pid);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
    assert!(status.code().is_some(), "killed by the signal ({status}): no handler ran");
    assert!(sent.elapsed() < Duration::from_millis(2_500), "exited {:?} after Ctrl-C ({status})", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_json_prints_messages_acks_presence_disconnects_and_an_unrecovered_resume() {
    let dir = tempfile::tempdir().unwrap();
    let memory = |dir: &std::path::Path, addr| quiver_server::ServerConfig {
        durability: quiver_server::store::Durability::Memory,
        ..quiver_server::ServerConfig::dev(addr, dir.to_owned())
    };
    let server = TestServer::start_with(memory(dir.path(), "127.0.0.1:0".parse().unwrap()), dir);
    let (mut child, mut lines) = chat_process(&server, &["--name", "ann", "--json"]);
    assert_eq!(next(&mut lines).await["state"], "connected");
    assert_eq!(next(&mut lines).await["type"], "joined", "ann's own join");
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut got = [next(&mut lines).await, next(&mut lines).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    let (ack, message) = (&got[0], &got[1]);
    assert_eq!((ack["type"].as_str(), ack["line"].as_u64(), ack["seq"].as_u64()), (Some("ack"), Some(1), Some(1)));
    assert_eq!(message["type"], "message");
    assert_eq!((message["seq"].as_u64(), message["sender"].as_str()), (Some(1), Some("ann")));
    assert_eq!((message["body"].as_str(), message["epoch"].as_u64()), (Some("hello"), ack["epoch"].as_u64()));

    let bob = quiver_client::Client::connect_with(
        &server.addr.to_string(),
        quiver_client::ConnectOptions { trust: server.trust(), name: Some("bob".into()), ..Default::default() },
    )
    .await
    .unwrap();
    let bob_room = bob.join("town").await.unwrap();
    let joined = next(&mut lines).await;
    assert_eq!((joined["type"].as_str(), joined["member"].as_str()), (Some("joined"), Some("bob")));
    drop(bob_room);
    bob.close().await;
    let left = next(&mut lines).await;
    assert_eq!((left["type"].as_str(), left["member"].as_str()), (Some("left"), Some("bob")));

    // A restart with the memory store: the chat sees the link go and come back, and is told the room's history
    // was lost.
    let server = server.restart_with(memory).await;
    let mut seen = Vec::new();
    let resumed = async {
        while !seen.iter().any(|v: &serde_json::Value| v["type"] == "resumed") {
            seen.push(next(&mut lines).await);
        }
    };
    // (Bounded as a whole too: a chat reconnecting for good prints lines that never say "resumed".)
    tokio::time::timeout(Duration::from_secs(60), resumed).await.expect("resumed within 60 s");
    let states: Vec<&str> = seen.iter().filter_map(|v| v["state"].as_str()).collect();
    assert!(states.contains(&"reconnecting") && states.contains(&"connected"), "{seen:?}");
    let resumed = seen.iter().find(|v| v["type"] == "resumed").unwrap();
    assert_eq!(resumed["recovered"], false, "{seen:?}");
    drop(child);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_exits_non_zero_when_pings_are_lost() {
    let server = TestServer::start(Limits::default());
    let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["ping", "--count", "300", "--interval-ms", "10", "--timeout-ms", "500", "--json", "--server"])
        .arg(server.addr.to_string())
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Stopped once `quiver ping` is connected and pinging (after a fixed second, a slow start of the debug binary
    // found no server and printed no report), and a moment later.
    let connected = tokio::time::timeout(Duration::from_secs(20), async {
        while server.stats.connections_native.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    connected.await.expect("quiver ping connected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["lost"].as_u64().unwrap() > 0, "{report}");
    assert!(stderr.contains("pings got no answer"), "{stderr}");
}

/// A file piped into `quiver chat` is posted whole, however long, even while the server is away: input waits while
/// 1,000 lines are unacknowledged, so it never meets the client's `max_queued_posts` (10,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_posts_every_line_of_a_long_piped_file_even_while_the_server_is_away() {
    // Time for the chat to read all it will while nobody acknowledges (and for the old socket to be released).
    piped_while_the_server_is_away(12_000, &[], Duration::ZERO, Duration::from_millis(1500)).await;
}

/// `--timeout` counts from when posts began to wait, not from the last acknowledgement before a quiet stretch: a
/// burst of input after a stretch longer than the limit, its first 1,000 lines unanswered for a moment (the server
/// away), is posted whole. The wait counted from the join: the chat gave up at once, the lines after the first
/// 1,000 never posted, "1000 posts not acknowledged: none was for 2s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_timeout_counts_from_when_posts_began_to_wait_not_from_a_quiet_stretch_before() {
    let quiet = Duration::from_millis(2500);
    piped_while_the_server_is_away(1_200, &["--timeout", "2"], quiet, Duration::from_millis(200)).await;
}

/// `quiver chat --json` joins, is quiet for `quiet`, then its server goes away, `count` lines come in, and `away`
/// later the server is back (same address and data directory): every line is acknowledged, the chat exits 0.
async fn piped_while_the_server_is_away(count: u64, extra: &[&str], quiet: Duration, away: Duration) {
    let config = |dir: &std::path::Path, addr| quiver_server::ServerConfig {
        durability: quiver_server::store::Durability::Memory,
        limits: Limits { posts_per_s: 1_000_000, requests_per_s: 1_000_000, ..Limits::default() },
        ..quiver_server::ServerConfig::dev(addr, dir.to_owned())
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), "127.0.0.1:0".parse().unwrap()), dir);
    let (mut child, mut lines) = chat_process(&server, &[&["--name", "ann", "--json"], extra].concat());
    assert_eq!(next(&mut lines).await["state"], "connected");
    tokio::time::sleep(quiet).await;
    // The server goes away, the whole file comes in, then the server is back.
    let TestServer { addr, data_dir, shutdown, task, .. } = server;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input: String = (1..=count).map(|i| format!("line {i}\n")).collect();
    let writer = tokio::spawn(async move {
        stdin.write_all(input.as_bytes()).await.unwrap();
        // Dropped: end of input; the chat ends once every line is acknowledged.
    });
    tokio::time::sleep(away).await;
    let server = TestServer::start_with(config(data_dir.path(), addr), data_dir);
    let (mut acks, mut failed) = (0u64, Vec::new());
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap() {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        match value["type"].as_str() {
            Some("ack") => acks += 1,
            Some("post_failed") => failed.push(value),
            _ => {}
        }
    }
    writer.await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!((acks, failed.len()), (count, 0), "first failures: {:?}", &failed[..failed.len().min(3)]);
    server.stop().await;
}

/// `quiver chat` whose posts are refused says so for each and exits non-zero at the end of its input (it exited 0,
/// the README's one-shot `echo … | quiver chat` then looked successful); `quiver post` whose post gets no answer
/// gives up after `--timeout`, saying that the post may have been stored (it waited for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_whose_posts_fail_and_a_post_with_no_answer_exit_non_zero() {
    let server = TestServer::start(Limits { max_body: 8, ..Limits::default() });
    let mut chat = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["chat", "--room", "town", "--name", "ann", "--server", &server.addr.to_string(), "--data-dir"])
        .arg(server.data_dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"short\nthis line is over the eight bytes allowed\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), chat.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("post of line 2 failed") && stderr.contains("1 of 2 posts failed"), "{stderr}");
    server.stop().await;

    let (dir, endpoint, addr) = quiver_tests::fakes::fake_endpoint();
    let mute = tokio::spawn(quiver_tests::fakes::mute_after_welcome(endpoint, tokio::sync::oneshot::channel().0, true));
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["post", "--room", "town", "--name", "ann", "--timeout", "1", "--server", &addr, "--data-dir"])
        .arg(dir.path())
        .arg("hello")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out).await.expect("post gave up").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("no answer within 1s") && stderr.contains("--id"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    mute.abort();
}

/// A piped line that is not UTF-8 (a Latin-1 log) is posted as its bytes, CRLF line ends taken off: before, it
/// ended the chat at once ("stream did not contain valid UTF-8"), the lines before it left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_posts_lines_that_are_not_utf8_as_their_bytes() {
    let server = TestServer::start(Limits::default());
    let (mut child, mut lines) = chat_process(&server, &["--name", "ann", "--json"]);
    assert_eq!(next(&mut lines).await["state"], "connected");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"before\ncaf\xe9 cr\xe8me\r\nafter").await.unwrap();
    drop(stdin);
    let mut acks = 0;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap() {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        acks += usize::from(value["type"] == "ack");
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success() && acks == 3, "{status}, {acks} acknowledged");
    let page = server.client().await.history("town", None, 10).await.unwrap();
    let bodies: Vec<&[u8]> = (page.messages.iter())
        .filter_map(|m| match &m.kind {
            quiver_proto::EventKind::Message { body, .. } => Some(&body[..]),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [&b"before"[..], b"caf\xe9 cr\xe8me", b"after"]);
    server.stop().await;
}

/// `quiver chat --timeout`: piped input whose posts the server, gone for good, never acknowledges ends the command
/// (it reconnected forever before) naming how many were left; a join with no answer ends it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_gives_up_on_posts_and_a_join_nobody_answers_after_its_timeout() {
    let (child, _lines, mut stdin) = chat_whose_server_is_gone(&["--timeout", "1"]).await;
    stdin.write_all(b"into the void\n").await.unwrap();
    drop(stdin);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.expect("gave up").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("1 posts not acknowledged: none was for 1s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    let (dir, endpoint, addr) = quiver_tests::fakes::fake_endpoint();
    let mute = tokio::spawn(quiver_tests::fakes::mute_after_welcome(endpoint, tokio::sync::oneshot::channel().0, true));
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["chat", "--room", "town", "--name", "ann", "--timeout", "1", "--server", &addr, "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out).await.expect("chat gave up").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not joined within 1s"), "{stderr}");
    mute.abort();
}

/// `quiver chat` stopped (Ctrl-C, a supervisor's SIGTERM) with posts not acknowledged fails naming how many: it
/// exited 0, and a script read that as every line stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stopped_with_posts_not_acknowledged_fails_naming_them() {
    let (mut child, mut lines, mut stdin) = chat_whose_server_is_gone(&[]).await;
    // The post waits for a server that is gone (queued, reconnecting); stdin stays open.
    stdin.write_all(b"never acknowledged\n").await.unwrap();
    stdin.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    interrupt_pid(child.id().unwrap());
    // (Drained on a task: the chat's reconnecting lines must not fill the pipe.)
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut stderr = String::new();
    let mut err = child.stderr.take().unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::io::AsyncReadExt::read_to_string(&mut err, &mut stderr).await.unwrap();
        child.wait().await.unwrap()
    });
    let status = exited.await.expect("chat exits after the signal");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped with 1 posts not acknowledged"), "{stderr}");
    drop(stdin);
}

/// `quiver chat --json` with `extra` arguments, joined to a server that is then stopped for good: the process, its
/// stdout's lines (the first, `connected`, read) and its stdin.
async fn chat_whose_server_is_gone(
    extra: &[&str],
) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>, tokio::process::ChildStdin) {
    let server = TestServer::start(Limits::default());
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["chat", "--room", "town", "--name", "ann", "--json"])
        .args(extra)
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await["state"], "connected", "joined");
    server.stop().await;
    let stdin = child.stdin.take().unwrap();
    (child, lines, stdin)
}

/// SIGINT to `pid`, as Ctrl-C sends (through nix: the `kill` program is procps', not on every machine).
#[cfg(unix)]
fn interrupt_pid(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
}
