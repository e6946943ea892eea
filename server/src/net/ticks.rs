//! A connection's datagrams: ticks in (publish on claimed channels) and out (subscriptions). Outgoing ticks pass a
//! [`Conflation`] (latest wins, one waiting per channel) in front of quinn's small datagram buffer; the sender
//! waits for room in that buffer, so a slow path is sent the newest tick, never a backlog. Nothing here waits on a
//! reliable stream, and no lock is held across a call into quinn that can wait (a fan-out's send at once, under
//! the subscriber's conflation lock, only queues: quinn's own lock, never a wait).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{BufMut, Bytes, BytesMut};
use quiver_proto::{copies, Limits, TickHeader};
use tokio::sync::{watch, Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    dispatch::PostCopy,
    lock,
    mailbox::Mailbox,
    tick_clock_us,
    wire::{Wire, WireError},
};
use crate::{
    hub::{
        conflate::{Conflation, Offered},
        connection::{ClaimLookup, ClaimTable},
        ticks::{Fanout, Tick, TickDatagrams, TickHub, TickSink},
    },
    rate::TokenBucket,
    stats::{bump, ServerStats},
};

/// Offers a published tick to every subscriber of the fan-out (called with no hub lock held).
pub(crate) fn deliver(fanout: Fanout) {
    fanout.offer();
}

/// One connection's outgoing ticks.
#[derive(Debug)]
pub(crate) struct DatagramSink {
    conn: Wire,
    waiting: Mutex<Conflation>,
    wake: Notify,
    stats: Arc<ServerStats>,
    /// quinn's datagram send buffer when empty (its space at the start).
    send_buffer: usize,
    /// What a WebSocket's lane had let go of when last counted ([`DatagramSink::count_lane`]).
    lane_counted: Mutex<(u64, u64)>,
}

/// A waiting tick's datagram (the sender task's path; a fan-out sending at once cuts its datagrams from one
/// [`TickDatagrams`] instead).
fn datagram(channel_id: u64, tick: &Tick) -> Option<Bytes> {
    let header = TickHeader { channel_id, seq: tick.seq, sent_time_us: tick.sent_time_us };
    let mut datagram = BytesMut::with_capacity(header.encoded_len() + tick.payload.len());
    // Fails only for seq or time above 2^62, which real clocks and counters do not reach.
    header.encode(&mut datagram).ok()?;
    datagram.put_slice(&tick.payload);
    Some(datagram.freeze())
}

impl DatagramSink {
    /// The sink of `conn`'s outgoing ticks, with nothing waiting.
    fn new(conn: &Wire, stats: &Arc<ServerStats>) -> Arc<DatagramSink> {
        Arc::new(DatagramSink {
            conn: conn.clone(),
            waiting: Mutex::new(Conflation::default()),
            wake: Notify::new(),
            stats: stats.clone(),
            send_buffer: conn.datagram_send_buffer_space(),
            lane_counted: Mutex::new((0, 0)),
        })
    }

    /// Counts the ticks a WebSocket's lane let go of since last counted, though handed to it (and counted as
    /// sent): replaced there by their channel's newer tick (conflated, as a slow subscriber's are), or older than
    /// the one waiting (reordered). Until 2026-12-06 they were sent for `/metrics`, and a slow WebSocket
    /// subscriber's conflation showed nowhere.
    fn count_lane(&self) {
        // Read under the lock: two callers (the fan-out and the sender task) reading apart stored an older reading
        // over a newer one, and the next call counted the difference again.
        let mut counted = lock(&self.lane_counted);
        let Some(now) = self.conn.lane_superseded() else { return };
        let before = std::mem::replace(&mut *counted, now);
        drop(counted);
        let add = |counter: &std::sync::atomic::AtomicU64, n: u64| {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        };
        add(&self.stats.ticks_conflated, now.0.saturating_sub(before.0));
        add(&self.stats.ticks_reordered_out, now.1.saturating_sub(before.1));
    }

    /// Sends `tick`'s datagram now if the transport has room, without dropping a datagram queued before it (a copy,
    /// a probe or the sender task's tick may have taken the room `offer` saw); else the tick waits in its channel's
    /// slot (`waiting`, the subscriber's conflation, locked) for the sender task.
    fn send(
        &self,
        waiting: &mut Conflation,
        (channel_id, tick, max_age_us): (u64, Tick, Option<u64>),
        datagram: Option<Bytes>,
    ) {
        let Some(datagram) = datagram else { return };
        match self.conn.try_send_datagram(datagram) {
            Some(Ok(())) => {
                bump(&self.stats.ticks_sent);
                self.count_lane();
            }
            Some(Err(WireError::TooLarge)) => bump(&self.stats.ticks_too_large),
            Some(Err(_)) => {}
            None => {
                waiting.wait(channel_id, tick, max_age_us);
                self.wake.notify_one();
            }
        }
    }

    /// Forgets an unsubscribed channel: its waiting tick, and any tick offered from now on.
    pub(crate) fn remove(&self, channel_id: u64) {
        lock(&self.waiting).remove(channel_id);
    }
}

impl TickSink for DatagramSink {
    /// Sends at once when quinn has room and no tick of any channel waits or is being sent (no task hop, no
    /// conflation of ticks that merely arrived together); otherwise the tick waits in the channel's slot, replacing
    /// an older one, for its turn.
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>, datagrams: &mut TickDatagrams) {
        crate::hub::assert_unlocked("a tick's offer");
        let header = TickHeader { channel_id, seq: tick.seq, sent_time_us: tick.sent_time_us };
        // Decided and sent under the subscriber's conflation lock (a leaf: quinn's send only queues): two fan-outs
        // of one channel to this subscriber at once (two publishers, a local one and a relay) would otherwise each
        // be told "send", and the older could reach the wire after the newer; and both would see the same room.
        let mut waiting = lock(&self.waiting);
        let space = self.conn.datagram_send_buffer_space();
        let room = space >= header.encoded_len() + tick.payload.len();
        match waiting.offer(channel_id, tick, max_age_us, room) {
            // An empty queue sends at the driver's next turn: a slice of the fan-out's shared buffer. Behind
            // others the datagram may wait (a stalled peer): its own exact copy, so that it holds no one else's.
            // (A WebSocket's lane can hold it while the socket is stalled: its own copy there too.)
            Offered::Send(tick) if space >= self.send_buffer && !self.conn.is_websocket() => {
                let datagram = datagrams.datagram(channel_id, &tick);
                self.send(&mut waiting, (channel_id, tick, max_age_us), datagram)
            }
            Offered::Send(tick) => {
                let datagram = datagram(channel_id, &tick);
                self.send(&mut waiting, (channel_id, tick, max_age_us), datagram)
            }
            Offered::Queued => self.wake.notify_one(),
            Offered::Replaced => bump(&self.stats.ticks_conflated),
            Offered::Older => bump(&self.stats.ticks_reordered_out),
            Offered::Unsubscribed => {}
        }
        drop(waiting);
    }

    /// Takes ticks for a channel being subscribed, those after `last_seq` (under the tick hub's channel lock;
    /// the conflation's lock is a leaf).
    fn open(&self, channel_id: u64, last_seq: u64) {
        lock(&self.waiting).open(channel_id, last_seq);
    }
}

/// Sends waiting ticks as datagrams until the connection ends or `stop` is cancelled.
async fn send_ticks(conn: &Wire, sink: Arc<DatagramSink>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = sink.wake.notified() => {}
            () = stop.cancelled() => return,
        }
        // One at a time: each tick is checked for age just before it goes, and while it waits for room its
        // channel's newer ticks wait behind it (`Conflation::take`).
        loop {
            let taken = lock(&sink.waiting).take(tick_clock_us());
            for _ in 0..taken.expired {
                bump(&sink.stats.ticks_expired);
            }
            let Some((channel_id, tick)) = taken.next else { break };
            let Some(datagram) = datagram(channel_id, &tick) else {
                lock(&sink.waiting).sent();
                continue;
            };
            // Waiting for room (a peer that stopped acknowledging) ends where the tick's max age does: it is
            // dropped then, not sent late with its channel's newer ticks held behind it.
            let expires = taken.max_age_us.map(|max| {
                let left = tick.received_us.saturating_add(max).saturating_sub(tick_clock_us());
                tokio::time::Instant::now() + std::time::Duration::from_micros(left)
            });
            let sent = tokio::select! {
                sent = conn.send_datagram_wait(datagram) => Some(sent),
                () = until(expires) => None,
                () = stop.cancelled() => return,
            };
            lock(&sink.waiting).sent();
            match sent {
                Some(Ok(())) => {
                    bump(&sink.stats.ticks_sent);
                    sink.count_lane();
                }
                Some(Err(WireError::TooLarge)) => bump(&sink.stats.ticks_too_large),
                None => bump(&sink.stats.ticks_expired),
                // The connection is gone, or the peer takes no datagrams at all.
                Some(Err(_)) => return,
            }
        }
    }
}

/// How far back a publisher's seq may be and still count as reordered on the way up; further back, the publisher
/// numbers anew (a client that restarts its counter), and its ticks are taken.
const REORDER_WINDOW: u64 = 1024;

/// True when a publisher's tick numbered `seq` is older than the newest (`newest`) taken from it on its channel:
/// reordered on the way up. An equal seq is taken (a client that numbers nothing sends the same one every time).
fn reordered(seq: u64, newest: u64) -> bool {
    seq < newest && newest - seq <= REORDER_WINDOW
}

/// Sleeps until `deadline`, or for ever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads datagrams: ticks on claimed channels are published up to `ticks_per_s`, post copies go to the control
/// loop (`post_copies`, dropped when it is behind), anything else is counted and dropped. A tick whose publisher
/// seq is older than the newest taken on its channel from this connection is dropped too ([`reordered`]): the path
/// reordered it, and stamping it now would give subscribers the older value as the newest.
async fn read_ticks(
    conn: &Wire,
    hub: Arc<dyn TickHub>,
    mut claims: watch::Receiver<Arc<ClaimTable>>,
    stats: Arc<ServerStats>,
    (ticks_per_s, max_frame): (u32, usize),
    post_copies: Arc<Mailbox<PostCopy>>,
    stop: CancellationToken,
) {
    let mut rate = TokenBucket::per_second(ticks_per_s, Instant::now());
    // Channel id → the newest publisher seq taken; at most one entry per claim (`max_publish_channels`).
    let mut newest: HashMap<u64, u64> = HashMap::new();
    loop {
        let datagram = tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(datagram) => datagram,
                // A WebTransport datagram for another (or no) session id: the peer's garbage, not the end.
                Err(WireError::Malformed) => {
                    bump(&stats.datagrams_malformed);
                    continue;
                }
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        if quiver_proto::is_probe(&datagram) {
            continue; // a tail-loss probe (quiver_transport::probe): it only elicits an ACK
        }
        if copies::is_copy(&datagram) {
            match super::copies::post_copy(&datagram, max_frame) {
                Some(copy) => drop(post_copies.push(copy)),
                None => bump(&stats.datagrams_malformed),
            }
            continue;
        }
        let Ok((header, payload)) = TickHeader::decode(&datagram) else {
            bump(&stats.datagrams_malformed);
            continue;
        };
        if claims.has_changed().unwrap_or(false) {
            // A claim given up (Unpublish): its newest seq goes with it (a connection cycling through channels
            // would otherwise grow this map for as long as it lives).
            let table = claims.borrow_and_update();
            newest.retain(|channel_id, _| table.is_claimed(*channel_id));
        }
        // One reading of the clock per datagram: for a given-up claim's grace and for the rate.
        let now = Instant::now();
        let lookup = claims.borrow().lookup(header.channel_id, now);
        let (channel, given_up) = match lookup {
            ClaimLookup::Claimed(channel) => (channel, false),
            ClaimLookup::GivenUp(channel) => (channel, true),
            ClaimLookup::NotClaimed => {
                bump(&stats.datagrams_unclaimed);
                continue;
            }
            ClaimLookup::Unknown => {
                bump(&stats.datagrams_unknown_channel);
                continue;
            }
        };
        // Larger than the server's paths carry (Quiver's clients never send one): every subscriber's would refuse
        // it, one by one, and the channel's seq taken for it would read as a lost tick everywhere. Measured with the
        // longest header, not the publisher's: the server sends it on with each subscriber's channel id and the
        // channel's seq (8 bytes from 2^30), so a short header that fit would not (a 1,148-byte datagram passed the
        // WebSocket lane's check before and left it at up to 1,163). A portable payload always fits (the path's size,
        // behind quinn's connection lock, is looked up only for a larger one: not on every tick).
        let portable = payload.len() <= TickHeader::MAX_PORTABLE_PAYLOAD;
        if !portable && payload.len() + TickHeader::MAX_LEN > conn.tick_datagram_max() {
            bump(&stats.ticks_too_large_in);
            continue;
        }
        if newest.get(&header.channel_id).is_some_and(|&newest| reordered(header.seq, newest)) {
            bump(&stats.ticks_reordered_in);
            continue;
        }
        if !rate.try_take(now) {
            bump(&stats.ticks_rate_limited);
            continue;
        }
        newest.insert(header.channel_id, header.seq);
        let published = match given_up {
            false => hub.publish(&channel, header.sent_time_us, tick_clock_us(), payload),
            true => hub.publish_given_up(&channel, header.sent_time_us, tick_clock_us(), payload),
        };
        match published {
            Some(fanout) => {
                deliver(fanout);
                bump(&stats.ticks_published);
            }
            // Its claim went in the hub meanwhile (at the grace's end): counted as unclaimed, not lost unseen.
            None => bump(&stats.datagrams_unclaimed),
        }
    }
}

/// One connection's datagram tasks: the tick sender behind its sink, and the reader publishing what it claimed.
#[derive(Debug)]
pub(crate) struct ConnectionTicks {
    pub(crate) sink: Arc<DatagramSink>,
    claims: watch::Sender<Arc<ClaimTable>>,
    pub(super) tasks: TaskTracker,
    stop: CancellationToken,
}

impl ConnectionTicks {
    /// Starts the connection's datagram reader and tick sender; post copies go to `post_copies`.
    pub(crate) fn start(
        conn: &Wire,
        hub: Arc<dyn TickHub>,
        limits: &Limits,
        post_copies: Arc<Mailbox<PostCopy>>,
        stats: Arc<ServerStats>,
    ) -> Self {
        let read_limits = (limits.ticks_per_s, limits.max_frame as usize);
        let (claims, claims_rx) = watch::channel(Arc::default());
        let sink = DatagramSink::new(conn, &stats);
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        // One task for both directions, sharing one handle on the connection: a task and a `Session` (776 bytes)
        // less per connection (docs/benchmarks.md, "10,000 idle connections").
        let (conn, sending, stopping) = (conn.clone(), sink.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::join!(
                send_ticks(&conn, sending, stopping.clone()),
                read_ticks(&conn, hub, claims_rx, stats, read_limits, post_copies, stopping)
            );
        });
        ConnectionTicks { sink, claims, tasks, stop }
    }

    /// The reader publishes on these claims from now on.
    pub(crate) fn set_claims(&self, claims: Arc<ClaimTable>) {
        self.claims.send_replace(claims);
    }

    /// Tells the connection's tick tasks to stop, without waiting for them.
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Stops the connection's tick tasks.
    pub(crate) async fn stop(&self) {
        self.cancel();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use quiver_transport::ws::{Role, WsConfig, WsSession};
    use tokio_tungstenite::{tungstenite::protocol::Role as WsRole, WebSocketStream};

    use super::*;

    /// A WebSocket subscriber's wire (its lane holding `datagram_buffer` bytes), counters and tick sink, and the
    /// client's end, which never reads.
    async fn websocket_subscriber(
        datagram_buffer: usize,
    ) -> (Wire, Arc<ServerStats>, Arc<DatagramSink>, WebSocketStream<tokio::io::DuplexStream>) {
        let config = WsConfig { datagram_buffer, ..WsConfig::default() };
        let (a, b) = tokio::io::duplex(4096);
        let server = WebSocketStream::from_raw_socket(a, WsRole::Server, Some(config.websocket())).await;
        let client = WebSocketStream::from_raw_socket(b, WsRole::Client, Some(config.websocket())).await;
        let conn = Wire::Ws(WsSession::start(server, Role::Server, config, "127.0.0.1:1".parse().unwrap()));
        let stats = Arc::new(ServerStats::default());
        let sink = DatagramSink::new(&conn, &stats);
        (conn, stats, sink, client)
    }

    /// A subscriber that stopped reading: the socket and the lane are full, so the sender waits for room. A tick
    /// with a max age is given up when it expires (and the ticks behind it go their way), not waited on for ever.
    #[tokio::test]
    async fn a_tick_waiting_for_room_is_dropped_when_its_max_age_passes() {
        let (conn, stats, sink, _client_never_reads) = websocket_subscriber(200).await;
        let stop = CancellationToken::new();
        let sender = tokio::spawn({
            let (conn, sink, stop) = (conn.clone(), sink.clone(), stop.clone());
            async move { send_ticks(&conn, sink, stop).await }
        });
        let channels = 1..=60u64;
        for channel_id in channels.clone() {
            sink.open(channel_id, 0);
            let tick =
                Tick { seq: 1, sent_time_us: 1, received_us: tick_clock_us(), payload: Bytes::from(vec![7; 150]) };
            sink.offer(channel_id, tick, Some(50_000), &mut TickDatagrams::new(1));
        }
        let settled = || {
            let s = stats.snapshot();
            s.ticks_sent + s.ticks_expired == channels.clone().count() as u64
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !settled() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let s = stats.snapshot();
        assert!(settled(), "ticks left waiting behind one that waits for room for ever: {s:?}");
        assert!(s.ticks_expired > 0, "{s:?}");
        stop.cancel();
        sender.await.unwrap();
    }

    /// A WebSocket subscriber whose lane holds a tick the socket has not taken: its channel's next tick replaces
    /// it there. Both were counted as sent; the replaced one now counts as conflated too (it counted nowhere, and a
    /// slow WebSocket subscriber's conflation showed nowhere).
    #[tokio::test]
    async fn ticks_replaced_in_a_websocket_lane_count_as_conflated() {
        let (_conn, stats, sink, _client_never_reads) = websocket_subscriber(4096).await;
        sink.open(1, 0);
        // Without a yield (one thread): the lane's writer does not run meanwhile.
        for seq in 1..=5 {
            let tick = Tick { seq, sent_time_us: 1, received_us: tick_clock_us(), payload: Bytes::from(vec![7; 20]) };
            sink.offer(1, tick, None, &mut TickDatagrams::new(1));
        }
        let s = stats.snapshot();
        assert_eq!((s.ticks_sent, s.ticks_conflated), (5, 4), "{s:?}");
    }

    /// A server connection on loopback (wrapped as the server wraps a native one) and the client's end.
    async fn quic_pair() -> (Wire, quinn::Connection, quinn::Endpoint, tempfile::TempDir) {
        let (accepted, client_conn, client, dir) = crate::net::test_quic::loopback_pair().await;
        (Wire::Quic(Arc::new(web_transport_quinn::Session::raw(accepted))), client_conn, client, dir)
    }

    /// The sends that must not push out a datagram queued before them (a fan-out's tick sent at once, a copy
    /// round, the probe) go through `try_send_datagram`: with no room it queues nothing, where `send_datagram`
    /// made room by dropping the oldest datagram, a tick already counted as sent. Checking the room first and then
    /// sending was a race with the connection's other senders.
    #[tokio::test]
    async fn a_send_that_finds_no_room_queues_nothing_and_drops_nothing() {
        let (conn, client, _endpoint, _dir) = quic_pair().await;
        // Filled without yielding (this runtime has one thread): the connection's driver cannot send meanwhile.
        let datagram = |i: u8| Bytes::from(vec![i; 1_000]);
        let mut queued = 0u8;
        while let Some(sent) = conn.try_send_datagram(datagram(queued)) {
            sent.unwrap();
            queued += 1;
            assert!(queued < 100, "quinn's datagram buffer is bounded");
        }
        assert!(queued >= 2 && conn.datagram_send_buffer_space() < 1_000, "{queued} queued");
        assert!(conn.try_send_datagram(datagram(255)).is_none(), "still no room: nothing queued");
        // Every datagram queued before arrives: none was dropped to make room.
        for i in 0..queued {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_datagram()).await;
            assert_eq!(got.expect("arrives").unwrap()[0], i);
        }
    }

    /// Two fan-outs of one channel reaching a subscriber out of their order (two publishers, a relay and a local
    /// publish): the older is not sent, and is counted as reordered, not as conflated, which operators read as "a
    /// subscriber too slow".
    #[tokio::test]
    async fn a_tick_older_than_one_already_sent_is_counted_as_reordered_not_conflated() {
        let (conn, _client, _endpoint, _dir) = quic_pair().await;
        let stats = Arc::new(ServerStats::default());
        let sink = DatagramSink::new(&conn, &stats);
        sink.open(1, 0);
        let tick = |seq| Tick { seq, sent_time_us: 1, received_us: tick_clock_us(), payload: Bytes::from_static(b"v") };
        sink.offer(1, tick(6), None, &mut TickDatagrams::new(1));
        sink.offer(1, tick(5), None, &mut TickDatagrams::new(1));
        let s = stats.snapshot();
        assert_eq!((s.ticks_sent, s.ticks_conflated, s.ticks_reordered_out), (1, 0, 1), "{s:?}");
    }
}
