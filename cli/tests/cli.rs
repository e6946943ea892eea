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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_tick_sub_json_reports_what_quiver_tick_pub_sent() {
    let server = TestServer::start(Limits::default());
    let common = |cmd: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["tick", cmd, "--channel", "prices", "--server", &server.addr.to_string(), "--data-dir"]);
        command.arg(server.data_dir.path());
        command
    };
    let sub = common("sub").args(["--duration", "3", "--json"]).output();
    let sub = tokio::spawn(sub);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let publish = common("pub").args(["--rate", "500", "--size", "64", "--duration", "1.5"]).output().await.unwrap();
    assert!(publish.status.success(), "{}", String::from_utf8_lossy(&publish.stderr));
    let output = sub.await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    let received = report["received"].as_u64().unwrap();
    assert!(received >= 600, "{report}");
    assert!(report["lost"].as_u64().unwrap() < received / 10, "{report}");
    assert_eq!(report["stale_dropped"], 0, "{report}");
    for key in ["count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report["latency"][key].is_u64(), "latency.{key} in {report}");
    }
    assert_eq!(report["latency"]["count"].as_u64().unwrap(), received);
    server.stop().await;
}

#[tokio::test]
async fn quiver_bench_post_and_restart_print_their_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("post.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "post", "--posters", "2", "--rooms", "1", "--modes", "memory,fsync"])
        .args(["--duration", "0.3", "--warmup", "0.1", "--json"])
        .arg(&json)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("fsync on this disk") && stdout.contains("goals:"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 2, "{report}");
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
