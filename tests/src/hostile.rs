//! What every hostile-peer test (`tests/hostile_*.rs`) shares: raw quinn connections doing what no client should,
//! and beside them a well-behaved `quiver_client::Client` (a "bystander") joined to a room and subscribed to a tick
//! channel. A test runs its attack with [`beside_a_bystander`], which then asserts that the bystander kept receiving
//! every room message, in order with no gap, and ticks during and after the attack. Randomness is seeded
//! ([`SEED`]), so a failure reproduces. Every loop is bounded in count and time ([`bounded`]).

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quiver_client::{Client, ConnectOptions, RoomEvent};
use quiver_proto::{ErrorCode, FrameCodec, Hello, Limits, Reply, Request, RequestBody, ServerMsg, PROTOCOL_VERSION};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{read_msg, TestServer};

/// The seed of every random byte in the hostile tests.
pub const SEED: u64 = 0x5157_4956_4552; // "QUIVER"

/// The longest any one test may take.
pub const TEST_BOUND: Duration = Duration::from_secs(60);

/// How long an attack is kept up at least, so that "during" means something.
pub const ATTACK_AT_LEAST: Duration = Duration::from_millis(300);

/// The bystander's room.
pub const ROOM: &str = "town";
/// The bystander's tick channel.
pub const CHANNEL: &str = "prices";

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

/// One request as a control-stream frame.
pub fn frame(req_id: u64, body: RequestBody) -> BytesMut {
    codec().encode_to_vec(&Request { req_id, body }).unwrap()
}

/// A Hello with `token`.
pub fn hello(token: String) -> RequestBody {
    RequestBody::Hello(Hello { version: PROTOCOL_VERSION, agent: "hostile".into(), name: None, token: Some(token) })
}

/// A raw connection's control stream after a successful Hello.
#[derive(Debug)]
pub struct Control {
    /// The connection.
    pub conn: quinn::Connection,
    /// The control stream's sending side.
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Control {
    /// Connects, opens the control stream and says Hello as `hostile`.
    pub async fn open(server: &TestServer) -> Control {
        Control::over(server.try_raw().await.unwrap(), server).await
    }

    /// [`Control::open`] on `conn`, a connection of the test's own making.
    pub async fn over(conn: quinn::Connection, server: &TestServer) -> Control {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame(0, hello(server.token("hostile")))).await.unwrap();
        let mut control = Control { conn, send, recv, buf: BytesMut::new() };
        let welcome = control.next().await;
        assert!(matches!(welcome, Some(ServerMsg::Reply { req_id: 0, result: Ok(Reply::Welcome(_)) })), "{welcome:?}");
        control
    }

    /// The next server message, or `None` at the end of the stream (within 10 s).
    pub async fn next(&mut self) -> Option<ServerMsg> {
        tokio::time::timeout(Duration::from_secs(10), read_msg(&mut self.recv, &mut self.buf)).await.unwrap()
    }

    /// Sends a request and returns its reply.
    pub async fn request(&mut self, req_id: u64, body: RequestBody) -> Result<Reply, quiver_proto::Failure> {
        self.send.write_all(&frame(req_id, body)).await.unwrap();
        match self.next().await {
            Some(ServerMsg::Reply { req_id: got, result }) if got == req_id => result,
            other => panic!("no reply to {req_id}: {other:?}"),
        }
    }

    /// A Ping that must be answered with a Pong.
    pub async fn ping(&mut self, req_id: u64) {
        let reply = self.request(req_id, RequestBody::Ping { client_time_us: 1 }).await;
        assert!(matches!(reply, Ok(Reply::Pong { .. })), "{reply:?}");
    }

    /// Reads replies until the stream ends; counts them by outcome (`Ok`, `RateLimited`).
    pub async fn drain(&mut self) -> (u64, u64) {
        let (mut ok, mut limited) = (0, 0);
        while let Some(msg) = self.next().await {
            match msg {
                ServerMsg::Reply { result: Ok(_), .. } => ok += 1,
                ServerMsg::Reply { result: Err(f), .. } if f.code == ErrorCode::RateLimited => limited += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (ok, limited)
    }
}

/// What the bystander saw.
#[derive(Debug, Default)]
struct Seen {
    /// Room message seqs with their arrival.
    messages: Vec<(u64, Instant)>,
    /// Tick arrivals.
    ticks: Vec<Instant>,
    /// Other room events that mean the connection was disturbed (`Resumed`).
    resumed: Vec<RoomEvent>,
    /// The tick subscription ended.
    ticks_ended: bool,
}

/// A well-behaved pair of clients: `feeder` posts to the room every 10 ms and publishes a tick every 5 ms;
/// `watcher` is joined to the room and subscribed to the channel and records what arrives.
struct Bystander {
    stop_feeding: CancellationToken,
    stop_watching: CancellationToken,
    feeding: tokio::task::JoinHandle<JoinSet<Result<u64, quiver_client::RequestError>>>,
    watching: tokio::task::JoinHandle<quiver_client::TickStats>,
    seen: Arc<Mutex<Seen>>,
    watcher: Client,
    _feeder: Client,
}

/// A library client called `name`, with a token for it.
pub async fn named(server: &TestServer, name: &str) -> Client {
    let options =
        ConnectOptions { name: Some(name.into()), token: Some(server.token(name)), ..ConnectOptions::default() };
    server.client_with(options).await.unwrap()
}

impl Bystander {
    async fn start(server: &TestServer) -> Bystander {
        let watcher = named(server, "watcher").await;
        let mut room = watcher.join(ROOM).await.unwrap();
        let mut ticks = watcher.subscribe(CHANNEL).await.unwrap();
        let feeder = named(server, "feeder").await;
        let publisher = feeder.publisher(CHANNEL).await.unwrap();
        let (stop_feeding, stop_watching) = (CancellationToken::new(), CancellationToken::new());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watching = {
            let (seen, stop) = (seen.clone(), stop_watching.clone());
            tokio::spawn(async move {
                let mut ticks_ended = false;
                loop {
                    tokio::select! {
                        // (An ended subscription answers `None` at once, again and again: not a tick.)
                        tick = ticks.next(), if !ticks_ended => match tick {
                            Some(_) => seen.lock().unwrap().ticks.push(Instant::now()),
                            None => (ticks_ended, seen.lock().unwrap().ticks_ended) = (true, true),
                        },
                        event = room.next() => match event {
                            Some(RoomEvent::Message(m)) => seen.lock().unwrap().messages.push((m.seq, Instant::now())),
                            Some(resumed @ RoomEvent::Resumed { .. }) => seen.lock().unwrap().resumed.push(resumed),
                            Some(_) => {}
                            None => return ticks.stats(),
                        },
                        () = stop.cancelled() => return ticks.stats(),
                    }
                }
            })
        };
        let feeding = {
            let (feeder, stop) = (feeder.clone(), stop_feeding.clone());
            tokio::spawn(async move {
                let mut posts = JoinSet::new();
                let mut interval = tokio::time::interval(Duration::from_millis(5));
                // Bounded: at most 60 s of feeding.
                for i in 0..12_000u64 {
                    tokio::select! {
                        _ = interval.tick() => {}
                        () = stop.cancelled() => break,
                    }
                    let _ = publisher.send(format!("tick {i}"));
                    if i % 2 == 0 {
                        posts.spawn(feeder.post(ROOM, format!("message {i}")));
                    }
                }
                posts
            })
        };
        // Flowing before the attack starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Bystander { stop_feeding, stop_watching, feeding, watching, seen, watcher, _feeder: feeder }
    }

    /// Stops feeding and checks: every post acknowledged and delivered once, in order, with no gap, on a
    /// connection that was never disturbed; ticks arrived during `attack` and after it.
    async fn check(self, attack: (Instant, Instant)) {
        let (started, ended) = attack;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let finished = Instant::now();
        self.stop_feeding.cancel();
        let mut posts = self.feeding.await.unwrap();
        let mut acked = Vec::new();
        while let Some(result) = tokio::time::timeout(Duration::from_secs(10), posts.join_next()).await.unwrap() {
            acked.push(result.unwrap().expect("the bystander's post is accepted"));
        }
        acked.sort_unstable();
        let posted = acked.len() as u64;
        assert!(posted > 20, "the bystander posted only {posted} messages");
        assert_eq!(acked, (1..=posted).collect::<Vec<_>>(), "acknowledged seqs");
        // The last posts may still be on their way to the watcher.
        for _ in 0..200 {
            if self.seen.lock().unwrap().messages.len() as u64 >= posted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.stop_watching.cancel();
        let tick_stats = self.watching.await.unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let seqs: Vec<u64> = seen.messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=posted).collect::<Vec<_>>(), "room messages in order, no gap, no duplicate");
        assert!(seen.resumed.is_empty(), "the bystander's connection was disturbed: {:?}", seen.resumed);
        assert!(!seen.ticks_ended, "the bystander's tick subscription ended");
        let count = |from: Instant, to: Instant| seen.ticks.iter().filter(|t| **t >= from && **t <= to).count();
        let during = count(started, ended);
        let after = count(ended, finished);
        assert!(during > 0 && after > 0, "ticks during the attack: {during}, after: {after}");
        let in_attack: Vec<Instant> =
            seen.messages.iter().map(|(_, t)| *t).filter(|t| *t >= started && *t <= ended).collect();
        assert!(!in_attack.is_empty(), "no room message arrived during the attack");
        let gap = seen.ticks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        eprintln!(
            "bystander: {posted} messages ({} during the attack), {} ticks ({during} during, {after} after), \
             longest gap between ticks {gap:?}",
            in_attack.len(),
            seen.ticks.len()
        );
        assert!(gap < Duration::from_secs(1), "ticks stopped for {gap:?}");
        assert_eq!((tick_stats.lost, tick_stats.stale_dropped), (0, 0), "no tick lost: {tick_stats:?}");
        assert!(self.watcher.connection().unwrap().close_reason().is_none(), "the bystander is still connected");
    }
}

/// Runs `attack` (for at least [`ATTACK_AT_LEAST`]) beside a bystander, then checks the bystander.
pub async fn beside_a_bystander(server: &TestServer, attack: impl Future<Output = ()>) {
    let bystander = Bystander::start(server).await;
    let started = Instant::now();
    tokio::time::timeout(TEST_BOUND, attack).await.expect("the attack ends in time");
    tokio::time::sleep_until((started + ATTACK_AT_LEAST).into()).await;
    bystander.check((started, Instant::now())).await;
}

/// Runs a test body within [`TEST_BOUND`].
pub async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_BOUND, test).await.expect("test bounded in time");
}
