//! `quiver post` (its seq printed, `--id` across a restart, `--id` where tokens are ignored) and `quiver history`
//! (JSON lines, `--since` a position trimmed or in another epoch).

use quiver_proto::Limits;
use quiver_tests::TestServer;
use tokio::process::Command;

#[tokio::test]
async fn post_prints_the_seq_and_history_prints_json_lines() {
    let server = TestServer::start(Limits::default());
    let run = |args: Vec<String>| {
        let server_args = ["--server".to_string(), server.addr.to_string(), "--data-dir".to_string()];
        let data_dir = server.data_dir.path().to_owned();
        async move {
            let output = Command::new(env!("CARGO_BIN_EXE_quiver"))
                .args(args)
                .args(server_args)
                .arg(data_dir)
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        }
    };
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let out =
            run(vec!["post".into(), "--room".into(), "log".into(), "--name".into(), "cli".into(), text.to_string()])
                .await;
        assert_eq!(out.trim(), (i + 1).to_string());
    }
    let out =
        run(vec!["history".into(), "--room".into(), "log".into(), "--since".into(), "1".into(), "--json".into()]).await;
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 2);
    assert_eq!(lines[0]["body"], "two");
    assert_eq!(lines[1]["sender"], "cli");
    for key in ["room", "epoch", "seq", "sender", "client_msg_id", "body"] {
        assert!(lines[1].get(key).is_some(), "{key} missing in {}", lines[1]);
    }
    let out = run(vec!["history".into(), "--room".into(), "log".into()]).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["[1] cli: one", "[2] cli: two", "[3] cli: three"]);
    // The same over the WebSocket fallback (--transport websocket).
    let ws_port = server.websocket.unwrap().port().to_string();
    let over_ws = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--transport".into(), "websocket".into(), "--websocket-port".into(), ws_port.clone()]);
        args
    };
    let out = run(over_ws(&["post", "--room", "log", "--name", "cli", "four"])).await;
    assert_eq!(out.trim(), "4");
    let out = run(over_ws(&["history", "--room", "log", "--since", "3"])).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["[4] cli: four"]);
    server.stop().await;
}

#[tokio::test]
async fn post_with_an_id_run_twice_gets_the_original_seq_even_across_a_restart() {
    let server = TestServer::start(Limits::default());
    let post = |extra: &[&str], text: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["post", "--room", "jobs", "--server", &server.addr.to_string(), "--data-dir"]);
        command.arg(server.data_dir.path()).args(extra).arg(text);
        async move { command.output().await.unwrap() }
    };
    let ok = |output: std::process::Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    assert_eq!(ok(post(&["--name", "cron", "--id", "nightly-2026-12-01"], "built").await), "1");
    assert_eq!(ok(post(&["--name", "cron"], "unrelated").await), "2");
    // The same command again (a retry after a crash): the original seq, nothing posted twice.
    assert_eq!(ok(post(&["--name", "cron", "--id", "nightly-2026-12-01"], "built").await), "1");
    assert_eq!(ok(post(&["--name", "cron", "--id", "nightly-2026-12-02"], "built").await), "3");
    // Another identity with the same key is another post.
    assert_eq!(ok(post(&["--name", "ops", "--id", "nightly-2026-12-01"], "built").await), "4");
    let refused = post(&["--id", "k"], "x").await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--id needs the same identity every time"));
    let history = server.client().await.history("jobs", None, 100).await.unwrap();
    assert_eq!(history.messages.len(), 4);
    // After a server restart the store still knows the key: the retry gets the original seq again.
    let server = server.restart(Limits::default()).await;
    let post = |extra: &[&str], text: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["post", "--room", "jobs", "--server", &server.addr.to_string(), "--data-dir"]);
        command.arg(server.data_dir.path()).args(extra).arg(text);
        async move { command.output().await.unwrap() }
    };
    assert_eq!(ok(post(&["--name", "cron", "--id", "nightly-2026-12-01"], "built").await), "1");
    assert_eq!(ok(post(&["--name", "cron", "--id", "nightly-2026-12-03"], "built").await), "5");
    let history = server.client().await.history("jobs", None, 100).await.unwrap();
    assert_eq!(history.messages.len(), 5, "nothing doubled across the restart");
    server.stop().await;
}

/// On a server that admits anonymous sessions a token is ignored and the identity is the name the client chose for
/// itself, new each run: `--id` with a token and no name is refused there (it used to post, and a re-run posted
/// again).
#[tokio::test]
async fn post_with_an_id_and_a_token_is_refused_where_tokens_are_ignored() {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = quiver_server::ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().to_owned());
    let config = quiver_server::ServerConfig { auth: quiver_auth::AuthConfig::Anonymous, ..dev };
    let server = TestServer::start_with(config, data_dir);
    // (Any token: this server reads none.)
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjcm9uIn0.c2lnbmF0dXJl";
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    command.args(["post", "--room", "jobs", "--server", &server.addr.to_string(), "--data-dir"]);
    command.arg(server.data_dir.path()).args(["--token", token, "--id", "nightly", "built"]);
    let refused = command.output().await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--id needs the same identity every time"), "{stderr}");
    let reader = server.client_with(quiver_client::ConnectOptions {
        name: Some("reader".into()),
        token: None,
        trust: server.trust(),
        ..Default::default()
    });
    let history = reader.await.unwrap().history("jobs", None, 100).await.unwrap();
    assert!(history.messages.is_empty(), "nothing posted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_since_a_position_says_when_history_was_trimmed_or_lost() {
    let server = TestServer::start(Limits { history_max_messages: 3, ..Limits::default() });
    let client = quiver_client::Client::connect(&server.addr.to_string(), server.trust()).await.unwrap();
    for i in 1..=5 {
        client.post("town", format!("m{i}")).await.unwrap();
    }
    let room = client.join("town").await.unwrap();
    let epoch = room.position().unwrap().epoch;
    let history = |since: String| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command
            .args(["history", "--room", "town", "--since", &since, "--server", &server.addr.to_string()])
            .arg("--data-dir")
            .arg(server.data_dir.path());
        command
    };
    let out = history(format!("{epoch}:1")).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("history was trimmed: seqs 2 to 2 of room town"), "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let out = history("999:2".into()).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains(&format!("is in epoch {epoch} now, not 999")), "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "everything retained: {stdout}");
    let bad = history("yesterday".into()).output().await.unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected EPOCH:SEQ"));
    client.close().await;
    server.stop().await;
}

/// `--timeout` bounds the connect too, for `post` and `history`: against a server that never answers they give up
/// within it, saying they could not connect (they waited the client's own 10 s connect timeout).
#[tokio::test]
async fn post_and_history_give_up_within_their_timeout_on_a_server_that_never_answers() {
    let (dir, _endpoint, _) = quiver_tests::fakes::fake_endpoint(); // (its data directory: a certificate to trust)
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    for command in [&["post", "--room", "log", "--name", "cli", "hello"][..], &["history", "--room", "log"]] {
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(command)
            .args(["--timeout", "1", "--transport", "quic", "--server", &addr, "--data-dir"])
            .arg(dir.path())
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(20), output).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("cannot connect to"), "{command:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{command:?}: {:?}", started.elapsed());
    }
}

/// Output that cannot be written for another reason than its reader going (`> /dev/full`: a full disk) fails the
/// command, named: until 2026-12-08 it was ignored, and a script read a truncated dump after status 0.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_cannot_be_written_fails_the_command() {
    let server = TestServer::start(Limits::default());
    let client = server.client().await;
    client.post("town", "a line").await.unwrap();
    for args in [&["history", "--room", "town"][..], &["post", "--room", "town", "another"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .args(["--server", &server.addr.to_string(), "--data-dir"])
            .arg(server.data_dir.path())
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("writing the output: No space left on device"), "{args:?}: {stderr}");
    }
    client.close().await;
    server.stop().await;
}
