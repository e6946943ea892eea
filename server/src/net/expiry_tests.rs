//! A token's expiry, on the wall clock, when the timers' clock falls behind it (a machine that slept: the monotonic
//! clock stops meanwhile; a clock stepped forward). The server runs on a runtime whose clock is paused and held (a
//! paused clock is not moved on while a blocking task runs: no timer of the server's fires) while the wall clock
//! passes the token's `exp`.

use std::time::Duration;

use quiver_proto::{FrameCodec, Post, Reply, Request, RequestBody, ServerMsg};
use tokio_util::sync::CancellationToken;

use super::{tests::hello_and_join_a_new_room, Server, ServerConfig};
use crate::auth::Auth;

/// The token verifier's watch of the server (what `clock::watch_sessions` signals a step of the wall clock on).
type Keys = std::sync::Arc<tokio::sync::watch::Sender<std::sync::Arc<Auth>>>;

/// A dev server on a runtime whose clock stands still until `release` is sent: its address and its keys' watch.
fn held_clock_server(
    dir: &std::path::Path,
) -> (std::net::SocketAddr, Keys, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (path, (ready, up), (release, held)) =
        (dir.to_owned(), std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async move {
            let server = Server::bind(ServerConfig::dev("127.0.0.1:0".parse().unwrap(), path)).unwrap();
            let keys = server.current.read().unwrap().keys.clone();
            ready.send((server.local_addr(), keys)).unwrap();
            let shutdown = CancellationToken::new();
            let run = tokio::spawn(server.run(shutdown.clone()));
            tokio::task::spawn_blocking(move || held.recv()).await.unwrap().ok();
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
        });
    });
    let (addr, keys) = up.recv_timeout(Duration::from_secs(30)).unwrap();
    (addr, keys, release, server)
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Reads `recv` into `replies` until `done` holds of them or the stream ends.
async fn read_until(
    recv: &mut quinn::RecvStream,
    codec: &FrameCodec,
    replies: &mut Vec<ServerMsg>,
    done: impl Fn(&[ServerMsg]) -> bool,
) {
    let mut inbound = bytes::BytesMut::new();
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
        inbound.extend_from_slice(&chunk.bytes);
        while let Some(msg) = codec.decode::<ServerMsg>(&mut inbound).unwrap() {
            replies.push(msg);
        }
        if done(replies) {
            return;
        }
    }
}

fn joined(replies: &[ServerMsg]) -> bool {
    replies.iter().any(|m| matches!(m, ServerMsg::Reply { req_id: 1, result: Ok(Reply::Joined(_)) }))
}

/// A post after the token's `exp` on the wall clock is not taken, and the connection is closed `TokenExpired`,
/// though no timer of the server's fired. Before, a timer armed at Hello was the session's only look at the clock:
/// the post was taken and the session went on.
#[test]
fn a_session_ends_at_its_tokens_expiry_on_the_wall_clock_though_the_timers_clock_stood_still() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _keys, release, server) = held_clock_server(dir.path());
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (closed, replies) = client.block_on(async {
        // A token good for 2 s (`exp` is whole seconds, minted in the call: at most 2 s after it returns).
        let (conn, codec, mut send, mut recv) = hello_and_join_a_new_room(dir.path(), addr, 2).await;
        let exp = (now_s() as u64 + 2) as f64;
        let mut replies = Vec::new();
        let read = read_until(&mut recv, &codec, &mut replies, joined);
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("joined");
        assert!(joined(&replies), "welcomed and joined before the expiry: {replies:?}");
        tokio::time::sleep(Duration::from_secs_f64(exp - now_s() + 0.2)).await;
        let post = Post { room: "new".into(), client_msg_id: 1, body: bytes::Bytes::from_static(b"late") };
        let chunk = codec.encode_to_vec(&Request { req_id: 2, body: RequestBody::Post(post) }).unwrap();
        send.write_all(&chunk).await.unwrap();
        let read = read_until(&mut recv, &codec, &mut replies, |_| false);
        let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
        (tokio::time::timeout(Duration::from_secs(1), conn.closed()).await, replies)
    });
    release.send(()).unwrap();
    server.join().unwrap();
    let taken = replies.iter().any(|m| matches!(m, ServerMsg::Reply { req_id: 2, result: Ok(_) }));
    assert!(!taken, "a post after the token's expiry was taken: {replies:?}");
    let closed = closed.expect("the session outlived its token: the connection is still open");
    assert!(format!("{closed:?}").contains("token expired"), "{closed:?}");
}

/// What the server's clock watch does on a step of the wall clock (`clock::watch_sessions`: a change on the keys'
/// watch, the keys themselves unchanged) ends an idle session whose token the step expired, at once: the client
/// sends nothing, and no timer of the server's fires. A session whose token is still good goes on. Each session's
/// timer used to look at the wall clock once a minute for this (167 wake-ups a second at 10,000 sessions).
#[test]
fn a_step_of_the_wall_clock_ends_the_idle_sessions_it_expired_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, keys, release, server) = held_clock_server(dir.path());
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (expired, lasting) = client.block_on(async {
        let (short, codec, _send, mut recv) = hello_and_join_a_new_room(dir.path(), addr, 2).await;
        let exp = (now_s() as u64 + 2) as f64;
        let (long, _, _long_send, mut long_recv) = hello_and_join_a_new_room(dir.path(), addr, 3_600).await;
        for recv in [&mut recv, &mut long_recv] {
            let mut replies = Vec::new();
            let read = read_until(recv, &codec, &mut replies, joined);
            tokio::time::timeout(Duration::from_secs(10), read).await.expect("joined");
        }
        tokio::time::sleep(Duration::from_secs_f64(exp - now_s() + 0.2)).await;
        assert!(short.close_reason().is_none(), "closed before the step was seen: {:?}", short.close_reason());
        keys.send_modify(|_| {});
        let expired = tokio::time::timeout(Duration::from_secs(2), short.closed()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (expired, long.close_reason())
    });
    release.send(()).unwrap();
    server.join().unwrap();
    let expired = expired.expect("the session outlived its token after the step: the connection is still open");
    assert!(format!("{expired:?}").contains("token expired"), "{expired:?}");
    assert!(lasting.is_none(), "a session whose token is good was closed: {lasting:?}");
}

/// The server's own watch of the wall clock (`clock::watch_sessions`, started by `run`) sees a step and re-arms
/// every session's expiry timer from the wall clock: here the server's wall clock steps forward by 3,598 s, so that
/// a token good for an hour has 1 to 2 s left, and its idle session ends then, not an hour of timer later; a token
/// good for two hours goes on. (The server's runtime runs on one thread, whose wall clock alone is stepped.)
#[test]
fn the_servers_watch_re_arms_the_expiry_of_idle_sessions_at_a_step_of_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (path, (ready, up)) = (dir.path().to_owned(), std::sync::mpsc::channel());
    let (steps, mut stepped) = tokio::sync::mpsc::unbounded_channel::<Option<i64>>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let server = Server::bind(ServerConfig::dev("127.0.0.1:0".parse().unwrap(), path)).unwrap();
            ready.send(server.local_addr()).unwrap();
            let shutdown = CancellationToken::new();
            let run = tokio::spawn(server.run(shutdown.clone()));
            while let Some(Some(us)) = stepped.recv().await {
                crate::net::test_clock::step(us);
            }
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
        });
    });
    let addr = up.recv_timeout(Duration::from_secs(30)).unwrap();
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (ended, lasting) = client.block_on(async {
        let (hour, codec, _send, mut recv) = hello_and_join_a_new_room(dir.path(), addr, 3_600).await;
        let (two_hours, _, _two_send, mut two_recv) = hello_and_join_a_new_room(dir.path(), addr, 7_200).await;
        for recv in [&mut recv, &mut two_recv] {
            let mut replies = Vec::new();
            let read = read_until(recv, &codec, &mut replies, joined);
            tokio::time::timeout(Duration::from_secs(10), read).await.expect("joined");
        }
        steps.send(Some(3_598_000_000)).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(8), hour.closed()).await;
        (ended, two_hours.close_reason())
    });
    steps.send(None).unwrap();
    server.join().unwrap();
    let ended = ended.expect("the session outlived its token by the timer's hour: the connection is still open");
    assert!(format!("{ended:?}").contains("token expired"), "{ended:?}");
    assert!(lasting.is_none(), "a session whose token is good was closed: {lasting:?}");
}
