//! The `quiver` binary against an in-process server.
#![allow(clippy::unwrap_used)]

use quiver_proto::Limits;
use quiver_tests::TestServer;

#[tokio::test]
async fn quiver_ping_json_reports_every_ping_answered() {
    let server = TestServer::start(Limits::default());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["ping", "--server", &server.addr.to_string(), "--count", "200", "--interval-ms", "1", "--json"])
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["count"], 200, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    for key in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[key].as_u64().unwrap() > 0, "{key} in {report}");
    }
    let p = |k: &str| report[k].as_u64().unwrap();
    assert!(p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us") && p("p99_us") <= p("max_us"), "{report}");
    server.stop().await;
}

#[tokio::test]
async fn quiver_ping_explains_a_missing_dev_certificate() {
    let server = TestServer::start(Limits::default());
    let empty = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["ping", "--server", &server.addr.to_string(), "--count", "1", "--data-dir"])
        .arg(empty.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no dev certificate") && stderr.contains("--cert-hash"), "{stderr}");
    server.stop().await;
}

/// Reads `quiver tick sub`'s stderr until it says it subscribed to `channel` (within 10 s).
async fn subscribed(said: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>, channel: &str) {
    let wanted = format!("subscribed to {channel}");
    let reading = async {
        while let Some(line) = said.next_line().await.unwrap() {
            if line.contains(&wanted) {
                return;
            }
        }
        panic!("quiver tick sub ended before it subscribed");
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), reading).await.expect("subscribed within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_sub_json_reports_what_quiver_tick_pub_sent() {
    let server = TestServer::start(Limits::default());
    let common = |cmd: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["tick", cmd, "--channel", "prices", "--server", &server.addr.to_string(), "--data-dir"]);
        command.arg(server.data_dir.path());
        command
    };
    use tokio::io::AsyncBufReadExt;
    let mut sub = common("sub");
    sub.args(["--duration", "6", "--json"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut sub = sub.kill_on_drop(true).spawn().unwrap();
    // Publishing once the subscription is there (a fixed wait lost ticks on a busy machine), and counting against
    // what the publisher says it sent (its --duration includes connecting).
    let mut said = tokio::io::BufReader::new(sub.stderr.take().unwrap()).lines();
    subscribed(&mut said, "prices").await;
    let publish = common("pub").args(["--rate", "500", "--size", "64", "--duration", "1.5"]).output().await.unwrap();
    assert!(publish.status.success(), "{}", String::from_utf8_lossy(&publish.stderr));
    let published = String::from_utf8_lossy(&publish.stdout).into_owned();
    let sent: u64 = published.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect(&published);
    let output = sub.wait_with_output().await.unwrap();
    assert!(output.status.success(), "quiver tick sub failed");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    let received = report["received"].as_u64().unwrap();
    assert!(sent >= 300 && received >= sent * 8 / 10, "{sent} sent: {report}");
    assert!(report["lost"].as_u64().unwrap() < received / 10, "{report}");
    assert_eq!(report["stale_dropped"], 0, "{report}");
    for key in ["count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report["latency"][key].is_u64(), "latency.{key} in {report}");
    }
    assert_eq!(report["latency"]["count"].as_u64().unwrap(), received);
    server.stop().await;
}

/// `quiver tick sub` whose server goes away during the run says so on stderr, reports the time without a connection
/// (`disconnected_ms`, `connected_at_end`) and exits non-zero: it printed "0/s" and exited 0, as on a channel
/// nobody published on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_sub_fails_when_its_server_is_gone_at_the_end() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start(Limits::default());
    let mut sub = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
    sub.args(["tick", "sub", "--channel", "prices", "--duration", "120", "--json", "--server"]);
    sub.arg(server.addr.to_string()).arg("--data-dir").arg(server.data_dir.path());
    sub.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut sub = sub.kill_on_drop(true).spawn().unwrap();
    let mut said = tokio::io::BufReader::new(sub.stderr.take().unwrap()).lines();
    subscribed(&mut said, "prices").await;
    // Gone (its data directory kept: the dev token the reconnects mint comes from its key).
    let TestServer { data_dir, shutdown, task, .. } = server;
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), task).await.unwrap().unwrap();
    // The run ends (Ctrl-C, which still reports) once it said it is reconnecting and some time passed without a
    // server: no timing of its own to race with.
    let mut stderr = Vec::new();
    let reconnecting = async {
        while let Ok(Some(line)) = said.next_line().await {
            let seen = line.contains("reconnecting");
            stderr.push(line);
            if seen {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), reconnecting).await.expect("said it is reconnecting");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sub.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = said.next_line().await {
            rest.push(line);
        }
        rest
    });
    let mut stdout = String::new();
    let mut out = sub.stdout.take().unwrap();
    let read = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout);
    // (Bounded: a run that Ctrl-C does not end keeps its stdout open for good.)
    tokio::time::timeout(std::time::Duration::from_secs(20), read).await.expect("ended by Ctrl-C").unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), sub.wait()).await.unwrap().unwrap();
    stderr.extend(rest.await.unwrap());
    let stderr = stderr.join("\n");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("not connected at the end"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["connected_at_end"], false, "{report}");
    assert!(report["disconnected_ms"].as_u64().unwrap() > 500, "{report}");
    drop(data_dir);
}

#[tokio::test]
async fn quiver_bench_post_and_restart_print_their_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("post.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "post", "--posters", "2", "--rooms", "1", "--modes", "memory,fsync"])
        .env("RUST_LOG", "warn")
        .args(["--duration", "0.3", "--warmup", "0.1", "--json"])
        .arg(&json)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("fsync on this disk") && stdout.contains("goals:"), "{stdout}");
    // Its stores are closed before their directories are removed: nothing of theirs complains on the way out.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaint = |l: &&str| l.contains("WARN") || l.contains("ERROR");
    let about_a_store = |l: &&str| ["fjall", "lsm_tree", "store"].iter().any(|w| l.contains(w));
    assert!(!stderr.lines().filter(complaint).any(|l| about_a_store(&l)), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 2, "{report}");
    // Where the numbers came from.
    let meta = &report["meta"];
    assert!(meta["unix_time_s"].as_u64().unwrap() > 1_700_000_000, "{meta}");
    assert!(meta["quiver_version"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")), "{meta}");
    assert!(meta["cpus"].as_u64().unwrap() >= 1 && meta["command"].as_str().unwrap().contains("bench post"));
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "post", "--modes", "disk"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown durability \"disk\""));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "restart", "--mib", "4", "--rooms", "2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("ready (lock, store open") && stdout.contains("512 messages"), "{stdout}");
}

#[tokio::test]
async fn bench_outputs_are_checked_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(Vec<String>, &str); 5] = [
        (vec!["--plot".into(), dir.path().join("x.jpg").display().to_string()], "a plot is .svg or .png"),
        (vec!["--json".into(), dir.path().join("missing/x.json").display().to_string()], "No such file"),
        (vec!["--size".into(), "4".into()], "from 12"),
        // Over a datagram: the datagram series would lose every message, as if the path had.
        (vec!["--size".into(), "1200".into()], "to 1024"),
        // Was a panic (the expected run time overflowed).
        (vec!["--warmup".into(), "1e19".into()], "at most 86400 s"),
    ];
    for (args, wanted) in cases {
        let started = std::time::Instant::now();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["bench", "rtt", "--duration", "30"])
            .args(&args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(wanted), "{args:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{args:?} ran the bench first");
    }
}

/// Values a command cannot run with are refused before it connects, naming the flag, without a panic: a tick rate
/// so low that its interval overflowed a `Duration`, and a ping timeout of 0 (every ping lost at once; elsewhere 0
/// means no limit).
#[tokio::test]
async fn values_a_command_cannot_run_with_are_refused_up_front() {
    for (args, wanted) in [
        (&["tick", "pub", "--channel", "c", "--rate", "1e-20"][..], "--rate must be from 0.01"),
        (&["ping", "--timeout-ms", "0"][..], "--timeout-ms"),
        (&["ping", "--count", "0"][..], "--count"),
        (&["churn", "--body-bytes", "1000000000000"][..], "from 1 to 16777216"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .args(["--server", "127.0.0.1:9", "--data-dir", "/nonexistent"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(wanted), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("unexpected argument"), "{args:?}: {stderr}");
    }
    // (A bench runs its own server: no --server.)
    for (args, wanted) in [
        (&["bench", "post", "--size", "1000000000000"][..], "from 1 to 16777216"),
        (&["bench", "cluster", "--echo-interval-ms", "18446744073709551615"], "--echo-interval-ms"),
        (&["bench", "restart", "--mib", "17592186044417"], "--mib"),
        (
            &[
                "impair",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
                "--max-clients",
                "0",
                "--duration",
                "0.1",
            ],
            "--max-clients",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(wanted), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("unexpected argument"), "{args:?}: {stderr}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_a_command_quietly() {
    // `quiver history ... | head -2`: the reader goes, the command ends at once with status 0, no panic.
    let server = quiver_tests::TestServer::start(quiver_proto::Limits::default());
    let client = server.client().await;
    for i in 0..50 {
        client.post("town", format!("line {i}")).await.unwrap();
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["history", "--room", "town", "--server", &server.addr.to_string(), "--data-dir"])
        .arg(server.data_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output()).await.unwrap();
    let output = output.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !stderr.contains("panicked"), "{}: {stderr}", output.status);
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn bench_fanout_draws_its_percentile_plot() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("fanout.svg");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "fanout", "--subscribers", "3", "--rate", "50", "--chat-rate", "5"])
        .args(["--duration", "1", "--warmup", "0.2", "--plot"])
        .arg(&plot)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("mean ± sd"), "{stdout}");
    for row in ["raw udp ticks", "raw udp sendmmsg ticks", "bare quinn ticks", "quiver ticks", "µs/delivery"] {
        assert!(stdout.contains(row), "{row} missing: {stdout}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("quiver ticks") && svg.contains("quiver chat"), "{stderr}");
    assert!(svg.contains("raw udp ticks") && svg.contains("bare quinn ticks"), "the baselines are drawn too");
}

#[tokio::test]
async fn bench_connections_reports_memory_handshakes_resumptions_and_idle_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("connections.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "connections", "--count", "500", "--sockets", "4", "--resumed", "50", "--idle", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    for row in ["full handshakes/s", "resumed handshakes/s", "server memory/connection", "server idle CPU"] {
        assert!(stdout.contains(row), "{row} missing: {stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((report["connections"].as_u64(), report["failed"].as_u64()), (Some(500), Some(0)), "{report}");
    assert_eq!(report["server_connections"].as_i64(), Some(500), "the server held them all: {report}");
    // Every reopened connection resumed its TLS session from the ticket the server issued.
    assert_eq!(
        (report["resumed"].as_u64(), report["server_tickets_accepted"].as_u64()),
        (Some(50), Some(50)),
        "{report}"
    );
    let per_connection = report["bytes_per_connection"].as_f64().unwrap();
    assert!((1_000.0..1_000_000.0).contains(&per_connection), "a connection costs some memory: {report}");
    let handshakes = report["full_handshakes_per_s"].as_f64().unwrap();
    assert!(handshakes > 0.0 && report["resumed_handshakes_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let idle = report["idle_cpu_pct"].as_f64().unwrap();
    assert!((0.0..200.0).contains(&idle), "{report}");
    assert!(report["server_cpu_per_handshake_us"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["meta"]["command"].as_str().unwrap().contains("connections"), "{report}");
}

/// A fixed token that expires ends the connection and, refused again at the reconnect, the client: `tick sub` and
/// `tick pub` exit non-zero naming why, instead of printing `0/s` (or counting ticks "not sent while
/// reconnecting") until their --duration or Ctrl-C, and exiting 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_exits_non_zero_once_its_token_expired() {
    let server = TestServer::start(Limits::default());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = quiver_auth::mint_dev(server.data_dir.path(), &quiver_auth::Claims::everything("t", now, 2)).unwrap();
    let run = |cmd: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["tick", cmd, "--channel", "c", "--server", &server.addr.to_string(), "--token", &token]);
        command.args(["--duration", "30", "--data-dir"]).arg(server.data_dir.path());
        if cmd == "sub" {
            command.arg("--json");
        }
        command.kill_on_drop(true).output()
    };
    let started = std::time::Instant::now();
    let (sub, publish) = tokio::join!(run("sub"), run("pub"));
    let (sub, publish) = (sub.unwrap(), publish.unwrap());
    for (what, output) in [("sub", &sub), ("pub", &publish)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "tick {what} exited 0 after its token expired: {stderr}");
        assert!(stderr.contains("TokenExpired"), "tick {what}: {stderr}");
    }
    // `sub --json` still prints its report of what it received (a script read nothing at all).
    let report: serde_json::Value = serde_json::from_slice(&sub.stdout).expect("sub --json prints its report");
    assert!(report["received"].is_u64(), "{report}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    server.stop().await;
}

/// `tick pub` whose server went away mid-run exits non-zero, as `tick sub` does (it exited 0, having sent some).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_pub_exits_non_zero_when_its_server_went_away() {
    let server = TestServer::start(Limits::default());
    let publish = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["tick", "pub", "--channel", "c", "--server", &server.addr.to_string(), "--duration", "3"])
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .kill_on_drop(true)
        .output();
    let stopping = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        server.stop().await;
    };
    let (output, ()) = tokio::join!(publish, stopping);
    let output = output.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("not connected at the end"), "{stderr}");
}

/// `quiver ARGS --server ADDR --data-dir DIR` against a server that answers Hello (and pings) but no request: it
/// must end within 10 s, failing, and saying `expected` on stderr.
async fn gives_up_on_a_mute_server(args: &[&str], expected: &str) {
    let (dir, endpoint, addr) = quiver_tests::fakes::fake_endpoint();
    let (welcomed, _) = tokio::sync::oneshot::channel();
    tokio::spawn(quiver_tests::fakes::mute_after_welcome(endpoint, welcomed, true));
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .args(["--transport", "quic", "--server", &addr, "--data-dir"])
        .arg(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), output).await.expect("it hung").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}

/// A server that answers Hello (and pings) but never a History: `quiver history` gives up after --timeout with a
/// clear error instead of hanging a script for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_history_gives_up_on_a_server_that_never_answers() {
    gives_up_on_a_mute_server(&["history", "--room", "r", "--timeout", "1"], "no history page within").await;
}

/// The same mute server and `quiver tick sub --duration 1`: the run ends with the duration, saying the server did
/// not answer its Subscribe. The duration's clock started only after the subscription was answered, so a script's
/// `tick sub --duration 5 &` waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_sub_duration_bounds_a_subscribe_never_answered() {
    let args = ["tick", "sub", "--channel", "c", "--duration", "1"];
    gives_up_on_a_mute_server(&args, "before the server answered (Subscribe)").await;
}
