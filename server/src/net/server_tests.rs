//! The server as a whole, without clients: its data-directory lock and how a run ends.

use super::*;

/// A connection left open after the drain timeout keeps the room store (through the hub) past its server: the
/// data directory stays locked until the store is closed, so a second server cannot take the directory while
/// the first one's writer may still be committing.
#[test]
fn the_data_directory_stays_locked_while_the_store_outlives_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let config = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    assert!(config.durability != crate::store::Durability::Memory, "the default stores rooms");
    let server = Server::bind(config).unwrap();
    let leftover = server.rooms.clone();
    drop(server);
    let held = crate::datadir::DataDirLock::acquire(dir.path());
    assert!(
        matches!(held, Err(crate::datadir::DataDirError::InUse { .. })),
        "released while the store was still open: {held:?}"
    );
    drop(leftover);
    crate::datadir::DataDirLock::acquire(dir.path()).expect("released once the store is closed");
}

/// An endpoint that stops by itself (quinn's driver ends on a socket error, as a close here stands in for)
/// ends the run at once, without waiting out the drain timeout for tasks that only a shutdown stops, and the
/// summary says it failed (the binary exits 1, so a supervisor restarts it).
#[tokio::test]
async fn an_endpoint_that_stops_by_itself_ends_the_run_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durability: crate::store::Durability::Memory,
        drain_timeout: Duration::from_secs(30),
        ..ServerConfig::dev("127.0.0.1:0".parse().unwrap(), dir.path().to_owned())
    };
    let server = Server::bind(config).unwrap();
    assert!(server.websocket_addr().is_some(), "a task only the shutdown stops");
    let endpoint = server.endpoint.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(0u32.into(), b"gone");
    let summary = tokio::time::timeout(Duration::from_secs(5), run).await.expect("the run ended").unwrap();
    assert!(summary.endpoint_lost, "{summary}");
    assert!(shutdown.is_cancelled(), "the other listeners were told to stop");
    assert!(summary.to_string().contains("FAILED"), "{summary}");
}
