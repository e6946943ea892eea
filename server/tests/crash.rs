//! The durability promise against a real server process: writers post as fast as they can while the server is
//! SIGKILLed and restarted 5 times, then stopped gracefully and restarted once more. Afterwards every acknowledged
//! post is in its room's history exactly once with the seq it was acknowledged with, seqs are contiguous from 1,
//! and each room kept one epoch throughout.
//!
//! The server binary is `QUIVER_SERVER_BIN` when set (`scripts/test.sh` sets it to the release build), else this
//! package's debug build.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use quiver_client::{Client, ConnectOptions, TrustOptions};

const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
const WRITERS: usize = 4;
/// Posts each writer keeps in flight.
const IN_FLIGHT: usize = 32;
const KILLS: usize = 5;
/// Time the writers have to get posts acknowledged again after a restart.
const RESUME_WITHIN: Duration = Duration::from_secs(15);

fn server_bin() -> String {
    std::env::var("QUIVER_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_quiver-server").to_string())
}

/// Ports outside the ephemeral range: the restarted server takes the same one, so clients reconnect to it.
#[path = "../../tests/src/ports.rs"]
mod ports;

#[path = "../../tests/src/lines.rs"]
mod lines;
use lines::{Lines, NoLine};

/// How long a server may take to say it listens (a store's recovery included).
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a SIGTERM's drain may take: the drain's own bound (10 s by default) and the store's close.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Waits for `child` to exit, at most `within` (then it is killed and the test fails: a drain that never ends must
/// fail the test, not hold CI until its timeout).
fn exit_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("the server did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server process, killed when dropped (a failing test must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, port: u16, durability: &str) -> Running {
    let started = Instant::now();
    loop {
        let mut child = Command::new(server_bin())
            // (No admin listener: its default, 127.0.0.1:9433, is taken wherever a dev server runs beside the tests.)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--no-web", "--admin", "off"])
            // Everything posted stays in history and in the dedupe window: a writer held up for seconds (its
            // retries wait for a reconnect) must still be recognised after the others posted 10,000 more.
            .args(["--history-max-messages", "1000000", "--dedupe-max-entries", "1000000"])
            .args(["--durability", durability])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // (Read on a thread of its own, which drains stdout from then on so the server never blocks on it.)
        let lines = Lines::read(child.stdout.take().unwrap());
        match lines.next_within(START_WITHIN) {
            Ok(line) if line.starts_with("listening on ") => return Running(child),
            Err(NoLine::TimedOut) => {
                let _ = child.kill();
                panic!("the server printed nothing within {START_WITHIN:?}");
            }
            Ok(_) | Err(NoLine::Ended) => {}
        }
        let status = child.wait().unwrap();
        // The port may still be held for a moment by the process just killed.
        assert!(started.elapsed() < Duration::from_secs(20), "the server does not start again: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the writers were told: `(room, body) → seq`.
type Acked = Arc<Mutex<HashMap<(String, String), u64>>>;

/// Posts until `stop`, then waits for what is in flight; returns how many posts were never answered, and the posts
/// that failed (each is retried until acknowledged, so none should).
async fn writer(
    server: String,
    dir: std::path::PathBuf,
    w: usize,
    acked: Acked,
    stop: Arc<tokio::sync::Notify>,
) -> (usize, Vec<String>) {
    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir },
        name: Some(format!("writer-{w}")),
        reconnect_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    // Made before the first connect: `notify_waiters` reaches only the waits that exist by then, and a connect slow
    // enough to span the restarts would have missed the stop and posted for good.
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let client = Client::connect_with(&server, options).await.expect("first connect");
    let room = ROOMS[w % ROOMS.len()];
    let mut posts = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut failed = Vec::new();
    loop {
        while posts.len() < IN_FLIGHT {
            n += 1;
            let body = format!("w{w}-{n}");
            let post = client.post(room, body.clone());
            let acked = acked.clone();
            posts.spawn(async move {
                // Retried across reconnects until acknowledged: an error here is a post given up.
                let seq = post.await.map_err(|err| format!("{body}: {err}"))?;
                acked.lock().unwrap().insert((room.to_string(), body), seq);
                Ok::<(), String>(())
            });
        }
        tokio::select! {
            joined = posts.join_next() => failed.extend(joined.and_then(|j| j.expect("a post's task").err())),
            () = &mut stopped => break,
        }
    }
    // What is in flight is retried across reconnects until acknowledged; give it time, then stop.
    let in_flight = posts.len();
    let waited = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(joined) = posts.join_next().await {
            failed.extend(joined.expect("a post's task").err());
        }
    })
    .await;
    eprintln!("writer {w}: {in_flight} in flight at the stop, {} left after {:?}", posts.len(), waited.elapsed());
    client.close().await;
    (posts.len(), failed)
}

#[test]
fn no_acknowledged_post_is_lost_or_doubled_across_kills_and_restarts() {
    kills_and_restarts("fsync");
}

/// `os` writes to the OS without syncing: a process killed keeps everything it acknowledged (a power cut would
/// not). Its posts are written by their posters once they let go of the room's lock (`store/inline.rs`).
#[test]
fn under_os_no_acknowledged_post_is_lost_or_doubled_across_kills_and_restarts() {
    kills_and_restarts("os");
}

/// One at a time: two servers under load at once on 2 cores would leave each half the time its deadlines assume.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kills_and_restarts(durability: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    eprintln!("durability {durability}");
    let dir = tempfile::tempdir().unwrap();
    let port = ports::restartable_port();
    let server = format!("127.0.0.1:{port}");
    let mut child = start(dir.path(), port, durability);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let acked: Acked = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| runtime.spawn(writer(server.clone(), dir.path().to_owned(), w, acked.clone(), stop.clone())))
        .collect();
    let epochs = |client: &Client| {
        let client = client.clone();
        runtime.block_on(async move {
            let mut epochs = Vec::new();
            for room in ROOMS {
                epochs.push(client.history(room, None, 1).await.map(|page| page.epoch).unwrap_or(0));
            }
            epochs
        })
    };
    let mut seen_epochs: Vec<Vec<u64>> = Vec::new();
    let mut progress = Vec::new();
    let mut rng_state = port as u64;
    for kill in 0..=KILLS {
        // Each kill lands while the writers are posting: wait until posts are acknowledged again after the last
        // restart (their clients must notice the restart and reconnect: at once when the server's stateless
        // reset reaches them, after their next retransmission otherwise, which QUIC backs off while the server
        // is down), then let them post a random while.
        let resumed = Instant::now();
        while acked.lock().unwrap().len() <= progress.last().copied().unwrap_or(0) {
            assert!(
                resumed.elapsed() < RESUME_WITHIN,
                "no post acknowledged within {RESUME_WITHIN:?} of restart {kill}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (rng_state >> 33) % 500));
        let before = acked.lock().unwrap().len();
        progress.push(before);
        if kill < KILLS {
            child.0.kill().unwrap(); // SIGKILL
            let _ = child.0.wait();
        } else {
            // The last restart is graceful: SIGTERM, and the server must exit by itself.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = exit_within(&mut child.0, STOP_WITHIN);
            assert!(status.success(), "graceful stop: {status}");
        }
        eprintln!("restart {}: {before} posts acknowledged so far", kill + 1);
        child = start(dir.path(), port, durability);
        let probe = runtime.block_on(async {
            let options = ConnectOptions {
                trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
                name: Some("probe".into()),
                ..ConnectOptions::default()
            };
            Client::connect_with(&server, options).await.expect("probe connect")
        });
        seen_epochs.push(epochs(&probe));
        runtime.block_on(probe.close());
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.notify_waiters();
    for writer in writers {
        let (unanswered, failed) = runtime.block_on(writer).unwrap();
        assert_eq!(unanswered, 0, "every post in flight was answered after the restarts");
        assert!(failed.is_empty(), "posts failed instead of being retried until acknowledged: {failed:?}");
    }
    eprintln!("acknowledged posts at each restart: {progress:?}");

    let options = ConnectOptions {
        trust: TrustOptions::Auto { data_dir: dir.path().to_owned() },
        name: Some("checker".into()),
        ..ConnectOptions::default()
    };
    let checker = runtime.block_on(Client::connect_with(&server, options)).unwrap();
    seen_epochs.push(epochs(&checker));
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1_000, "the writers got through: {} posts acknowledged", acked.len());
    for (r, room) in ROOMS.iter().enumerate() {
        let room_epochs: Vec<u64> = seen_epochs.iter().map(|e| e[r]).collect();
        assert!(room_epochs.iter().all(|e| *e == room_epochs[0] && *e != 0), "{room}: epochs {room_epochs:?}");
        let mut history = Vec::new();
        let mut since = None;
        loop {
            let page = runtime.block_on(checker.history(room, since, 1_000)).unwrap();
            assert_eq!(page.epoch, room_epochs[0], "{room}: one epoch throughout");
            since = page.messages.last().map(|m| m.seq).or(since);
            let more = page.more || page.messages.len() == 1_000;
            history.extend(page.messages);
            if !more {
                break;
            }
        }
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "{room}: seqs contiguous from 1");
        let mut bodies: HashMap<String, u64> = HashMap::new();
        for message in &history {
            let quiver_proto::EventKind::Message { body, .. } = &message.kind else { continue };
            let body = String::from_utf8_lossy(body).into_owned();
            if let Some(first) = bodies.insert(body.clone(), message.seq) {
                let acked = acked.get(&(room.to_string(), body.clone()));
                panic!("{room}: {body} stored twice, at seqs {first} and {} (acknowledged: {acked:?})", message.seq);
            }
        }
        let mine: Vec<_> = acked.iter().filter(|((ackroom, _), _)| ackroom == room).collect();
        for ((_, body), seq) in &mine {
            assert_eq!(bodies.get(body), Some(*seq), "{room}: acknowledged {body} (seq {seq}) in history at that seq");
        }
        eprintln!("{room}: {} acknowledged, {} stored, epoch {}", mine.len(), history.len(), room_epochs[0]);
    }
    runtime.block_on(checker.close());
    drop(child);
}
