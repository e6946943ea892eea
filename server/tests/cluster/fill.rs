//! A room's gap filled from the stream does not hold the node's other rooms: the node's Pub/Sub reader hands each
//! event over without waiting, and the room whose messages are missing waits for its fill alone.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use quiver_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::harness::*;

/// A TCP relay to Redis for one node that can lose one Pub/Sub message (the next one whose bytes hold `DROP-`:
/// Pub/Sub is at-most-once), hold the node's stream reads (the epoch-checked `XRANGE` script's `EVALSHA`: Redis
/// slow to answer them) until released, and make the next few of them fail (sent as a command Redis does not know,
/// so that its error comes back in order).
#[derive(Clone)]
struct Relay {
    addr: std::net::SocketAddr,
    flags: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    drop_next: AtomicBool,
    dropped: AtomicBool,
    hold_reads: AtomicBool,
    holding: AtomicBool,
    fail_reads: AtomicU32,
    failed_reads: AtomicU32,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay { addr: listener.local_addr().unwrap(), flags: Arc::default() };
        let flags = relay.flags.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Relay::requests(client_read, server_write, flags.clone()));
                tokio::spawn(Relay::replies(server_read, client_write, flags.clone()));
            }
        });
        relay
    }

    /// Node to Redis: a read of the stream, and everything after it on its connection, waits while reads are held.
    async fn requests(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        flags: Arc<Flags>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A read of the stream is the epoch-checked script's EVALSHA (whose source, in a SCRIPT LOAD, is left
            // alone: changed, Redis would load another script).
            // (The command and the script's SHA as one RESP sequence: another EVALSHA in the same read, a
            // heartbeat's, is not it.)
            let call = format!("EVALSHA\r\n$40\r\n{}", quiver_server::cluster::stream_read_script_sha());
            let read = find(&buf[..n], call.as_bytes());
            if flags.hold_reads.load(Ordering::SeqCst) && read.is_some() {
                flags.holding.store(true, Ordering::SeqCst);
                while flags.hold_reads.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                flags.holding.store(false, Ordering::SeqCst);
            }
            if let Some(at) = read {
                let fail =
                    flags.fail_reads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1));
                if fail.is_ok() {
                    buf[at + 6] = b'X'; // "EVALSHX": an unknown command, answered with an error
                    flags.failed_reads.fetch_add(1, Ordering::SeqCst);
                }
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Redis to node: the marked Pub/Sub message is dropped once, whole, from the replies cut into whole RESP
    /// frames (a read may hold several, and may end inside one: the rest waits for the next read).
    async fn replies(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        flags: Arc<Flags>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending = Vec::new();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut out = Vec::with_capacity(pending.len());
            let mut at = 0;
            while let Some(len) = frame_len(&pending[at..]) {
                let frame = &pending[at..at + len];
                let marked = is_message(frame) && contains(frame, b"DROP-");
                if marked && flags.drop_next.swap(false, Ordering::SeqCst) {
                    flags.dropped.store(true, Ordering::SeqCst);
                } else {
                    out.extend_from_slice(frame);
                }
                at += len;
            }
            pending.drain(..at);
            if to.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// Two nodes on one Redis, node 1 (the second) through a [`Relay`]; `None` (skipped loudly) without Redis.
/// (Fields drop in this order: the nodes first, Redis and the nodes' directories last.)
struct BehindRelay {
    nodes: Vec<Node>,
    relay: Relay,
    runtime: tokio::runtime::Runtime,
    dirs: Vec<std::path::PathBuf>,
    _tmp: tempfile::TempDir,
    _redis: Redis,
}

impl BehindRelay {
    fn start(test: &str, env: &[(&str, &str)]) -> Option<BehindRelay> {
        if !redis_available(test) {
            return None;
        }
        let redis = Redis::start();
        let (tmp, dirs) = node_dirs(2);
        let runtime = clients_runtime();
        let relay = runtime.block_on(Relay::start(redis.port));
        let brokers = [redis.url(), format!("redis://{}", relay.addr)];
        let nodes = start_cluster(&dirs, &brokers, env);
        Some(BehindRelay { nodes, relay, runtime, dirs, _tmp: tmp, _redis: redis })
    }

    /// A client of node `node` named `name`.
    async fn client(&self, node: usize, name: &str) -> Client {
        Client::connect_with(&self.nodes[node].addr, options(&self.dirs[0], name)).await.unwrap()
    }

    /// `poster` posts `body` to `room` (seq `seq`), and node 1's copy of it is lost on the way.
    async fn post_lost_to_node_1(&self, poster: &Client, room: &str, body: &str, seq: u64) {
        self.relay.flags.drop_next.store(true, Ordering::SeqCst);
        assert_eq!(poster.post(room, body.to_string()).await.unwrap(), seq);
        wait_for("node 1's copy is lost", Duration::from_secs(10), || self.relay.flags.dropped.load(Ordering::SeqCst))
            .await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the whole RESP2/RESP3 frame at the start of `bytes`, `None` until all of it is there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let line = bytes.windows(2).position(|w| w == b"\r\n")?;
    let head = *bytes.first()?;
    let n = || std::str::from_utf8(&bytes[1..line]).ok()?.parse::<i64>().ok();
    let frames = |count: i64, mut off: usize| {
        for _ in 0..count.max(0) {
            off += frame_len(&bytes[off..])?;
        }
        Some(off)
    };
    match head {
        // Bulk string, bulk error, verbatim string: a length, then that many bytes and CRLF.
        b'$' | b'!' | b'=' => match n()? {
            len if len < 0 => Some(line + 2),
            len => {
                let total = line + 2 + usize::try_from(len).ok()? + 2;
                (bytes.len() >= total).then_some(total)
            }
        },
        // Array, push, set: that many frames; map: twice that; attribute: twice that, then the frame it annotates.
        b'*' | b'>' | b'~' => frames(n()?, line + 2),
        b'%' => frames(2 * n()?, line + 2),
        b'|' => frames(2 * n()? + 1, line + 2),
        // Simple string, error, integer, null, boolean, double, big number: one line.
        _ => Some(line + 2),
    }
}

/// Whether `frame` is a Pub/Sub message: `*3` (RESP2) or `>3` (RESP3) whose first element is `message`.
fn is_message(frame: &[u8]) -> bool {
    let Some(rest) = frame.strip_prefix(b"*3\r\n").or_else(|| frame.strip_prefix(b">3\r\n")) else { return false };
    rest.starts_with(b"$7\r\nmessage\r\n")
}

/// Node 1 loses one message of room `a` (Pub/Sub is at-most-once), sees the gap at the next one, and reads the
/// missing message from the stream, which Redis is slow to answer. Meanwhile a message of room `b` reaches node 1's
/// member at once; room `a` then goes on in order, gap filled, without a reset. Before, the node's Pub/Sub reader
/// waited for the fill: room `b`'s message (and every other room's) waited with it, piling up in the Redis client's
/// unbounded buffer.
#[test]
fn a_rooms_gap_fill_does_not_hold_the_nodes_other_rooms() {
    // Node 1's requests may wait behind the held read for a while: nothing times out or is buried meanwhile.
    let env = [("QUIVER_BROKER_REQUEST_TIMEOUT_MS", "30000"), ("QUIVER_BROKER_PRESENCE_EXPIRY_MS", "61000")];
    let Some(cluster) = BehindRelay::start("a_rooms_gap_fill_does_not_hold_the_nodes_other_rooms", &env) else {
        return;
    };
    let relay = &cluster.relay;
    cluster.runtime.block_on(async {
        let (poster, member) = (cluster.client(0, "poster").await, cluster.client(1, "member").await);
        let (seen_a, seen_b) = (Arc::new(Mutex::new(Seen::default())), Arc::new(Mutex::new(Seen::default())));
        read_room(member.join("a").await.unwrap(), seen_a.clone());
        read_room(member.join("b").await.unwrap(), seen_b.clone());
        let messages = |seen: &Arc<Mutex<Seen>>| seen.lock().unwrap().messages.clone();
        assert_eq!(poster.post("a", "a-1").await.unwrap(), 1);
        wait_for("a-1 reaches node 1", Duration::from_secs(10), || messages(&seen_a).len() == 1).await;

        cluster.post_lost_to_node_1(&poster, "a", "DROP-a-2", 2).await;
        relay.flags.hold_reads.store(true, Ordering::SeqCst);
        assert_eq!(poster.post("a", "a-3").await.unwrap(), 3);
        wait_for("node 1 reads the missing a-2 from the stream", Duration::from_secs(10), || {
            relay.flags.holding.load(Ordering::SeqCst)
        })
        .await;

        assert_eq!(poster.post("b", "b-1").await.unwrap(), 1);
        wait_for("b-1 reaches node 1's member while room a's fill waits", Duration::from_secs(10), || {
            messages(&seen_b).len() == 1
        })
        .await;
        assert!(relay.flags.holding.load(Ordering::SeqCst), "room a's fill was still waiting");
        assert_eq!(messages(&seen_a), [(1, "a-1".to_string())], "a-3 waits for a-2");

        relay.flags.hold_reads.store(false, Ordering::SeqCst);
        wait_for("room a's gap is filled", Duration::from_secs(10), || messages(&seen_a).len() == 3).await;
        assert_eq!(poster.post("a", "a-4").await.unwrap(), 4);
        wait_for("a-4 follows", Duration::from_secs(10), || messages(&seen_a).len() == 4).await;
        let expected: Vec<(u64, String)> =
            [(1, "a-1"), (2, "DROP-a-2"), (3, "a-3"), (4, "a-4")].map(|(s, b)| (s, b.to_string())).to_vec();
        assert_eq!(messages(&seen_a), expected, "room a: every message once, in order");
        assert!(seen_a.lock().unwrap().resumed.is_empty(), "room a was not reset");
        assert_eq!(messages(&seen_b), [(1, "b-1".to_string())]);
        member.close().await;
        poster.close().await;
    });
}

/// A gap read that fails (a blip, a failover) is tried again: node 1 loses a message of room `a`, its first two
/// reads of the stream fail, the third fills the gap, and the member sees every message once, in order, without a
/// reset. Before, the first failure reset every member of the room although the stream held the gap.
#[test]
fn a_gap_read_that_fails_is_tried_again_before_the_room_is_reset() {
    let Some(cluster) = BehindRelay::start("a_gap_read_that_fails_is_tried_again_before_the_room_is_reset", &[]) else {
        return;
    };
    let relay = &cluster.relay;
    cluster.runtime.block_on(async {
        let (poster, member) = (cluster.client(0, "poster").await, cluster.client(1, "member").await);
        let seen = Arc::new(Mutex::new(Seen::default()));
        read_room(member.join("a").await.unwrap(), seen.clone());
        let messages = || seen.lock().unwrap().messages.clone();
        assert_eq!(poster.post("a", "a-1").await.unwrap(), 1);
        wait_for("a-1 reaches node 1", Duration::from_secs(10), || messages().len() == 1).await;

        relay.flags.fail_reads.store(2, Ordering::SeqCst);
        cluster.post_lost_to_node_1(&poster, "a", "DROP-a-2", 2).await;
        assert_eq!(poster.post("a", "a-3").await.unwrap(), 3);
        wait_for("the gap is filled", Duration::from_secs(10), || messages().len() == 3).await;
        assert_eq!(relay.flags.failed_reads.load(Ordering::SeqCst), 2, "two reads failed before the fill");
        let expected: Vec<(u64, String)> =
            [(1, "a-1"), (2, "DROP-a-2"), (3, "a-3")].map(|(s, b)| (s, b.to_string())).to_vec();
        assert_eq!(messages(), expected, "every message once, in order");
        assert!(seen.lock().unwrap().resumed.is_empty(), "the room was not reset");
        member.close().await;
        poster.close().await;
    });
}
