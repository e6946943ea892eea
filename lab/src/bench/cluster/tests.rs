//! A small `quiver bench cluster` run: every series measured, the goals checked.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_measures_every_series_and_checks_the_goals() {
    if std::process::Command::new("redis-server").arg("--version").output().is_err() {
        let required = std::env::var("QUIVER_REQUIRE_ALL").is_ok_and(|v| v == "1");
        assert!(!required, "QUIVER_REQUIRE_ALL=1 and redis-server is not installed");
        // (The stderr handle: `eprintln!` is captured by the test harness for passing tests.)
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr().lock(),
            format_args!("\n!!! SKIPPED a_small_run_measures_every_series_and_checks_the_goals: no redis-server\n"),
        );
        return;
    }
    let config = ClusterConfig {
        echoes: 20,
        posters: 4,
        rooms: 2,
        in_flight: 2,
        duration: Duration::from_secs(1),
        subscribers: 6,
        tick_rate: 20,
        ..ClusterConfig::default()
    };
    let report = run_cluster(config, |_| {}).await.unwrap();
    assert!(report.echo_cross.count >= 18, "{report:?}");
    assert!(report.posts_cluster_per_s > 0.0 && report.posts_single_per_s > 0.0, "{report:?}");
    assert!(report.fanout_cluster.delivered_pct > 50.0, "{report:?}");
    let table = report.table();
    for needle in ["room echo, node A -> node B", "goal: posts through Redis", "tick fan-out, 3 nodes"] {
        assert!(table.contains(needle), "{table}");
    }
    assert_eq!(report.posts_failed, [0, 0], "{report:?}");
    // A goal is not judged on figures that measured nothing: posts that failed, a fan-out that lost ticks (a
    // fan-out that delivered nothing has a p99 of 0, and read "met").
    let mut failing = report.clone();
    failing.posts_failed = [0, 3];
    assert!(failing.table().contains("not judged: 3 posts failed through Redis (0 on one node)"));
    failing.fanout_cluster.delivered_pct = 0.0;
    assert!(failing.table().contains("fan-out p99") && failing.table().contains("not judged: delivered"));
}

/// Settings that would measure nothing, or something other than the command line says, are refused before
/// anything starts: none in flight posted nothing (and the posts goal was judged on it), a duration or echo
/// interval of 0 was silently made 1 s or 1 ms.
#[tokio::test]
async fn settings_that_measure_nothing_are_refused() {
    let refused = [
        ("in_flight", ClusterConfig { in_flight: 0, ..ClusterConfig::default() }),
        ("duration", ClusterConfig { duration: Duration::ZERO, ..ClusterConfig::default() }),
        ("echo_interval_ms", ClusterConfig { echo_interval: Duration::ZERO, ..ClusterConfig::default() }),
    ];
    for (field, config) in refused {
        match run_cluster(config, |_| {}).await {
            Err(BenchError::BadConfig { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field}: {:?}", other.map(|_| "ran")),
        }
    }
}
