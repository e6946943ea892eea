//! A connection's state against real hubs and a real QUIC connection on loopback.

use std::sync::{atomic::Ordering, Arc};

use quiver_proto::{Join, Limits};
use quiver_transport::TailProbe;
use tokio_util::sync::CancellationToken;

use super::Connection;
use crate::{
    hub::{
        ticks::{LocalTicks, TickHub},
        LocalRooms, RoomHub,
    },
    net::{now_us, wire::Wire},
    session::{RoomRequest, TickRequest},
    stats::ServerStats,
};

/// A connection on a real QUIC connection on loopback, with hubs of its own: the connection, the client's end (and
/// what keeps it open), the hubs and the counters.
struct OnLoopback {
    connection: Connection<LocalRooms>,
    client_conn: quinn::Connection,
    _client: (quinn::Endpoint, tempfile::TempDir),
    rooms: Arc<LocalRooms>,
    ticks: Arc<LocalTicks>,
    stats: Arc<ServerStats>,
}

async fn on_loopback() -> OnLoopback {
    let (server_conn, client_conn, endpoint, dir) = crate::net::test_quic::loopback_pair().await;
    let wire = Wire::Quic(Arc::new(web_transport_quinn::Session::raw(server_conn)));
    let limits = Limits::default();
    let rooms = Arc::new(LocalRooms::new(limits.clone(), crate::Budget::default()));
    let ticks = Arc::new(LocalTicks::default());
    let hubs = (rooms.clone(), ticks.clone() as Arc<dyn TickHub>);
    let stats = Arc::new(ServerStats::default());
    let counted = (stats.clone(), None);
    let connection =
        Connection::start(&wire, &limits, hubs, TailProbe::disabled(), None, counted, CancellationToken::new());
    OnLoopback { connection, client_conn, _client: (endpoint, dir), rooms, ticks, stats }
}

/// A connection whose task ends without its close (a panic unwinding it) leaves its rooms, its subscriptions and
/// its tick task all the same, and tells the peer. Before, its membership kept the room (and its presence) for as
/// long as the server ran, and its tick task ran on.
#[tokio::test]
async fn a_connection_dropped_without_its_close_still_leaves_its_rooms() {
    let OnLoopback { mut connection, client_conn, _client, rooms, ticks, stats } = on_loopback().await;
    let join = Join { room: "lobby".into(), since: None, redundant: false };
    connection.room("alice", (1, RoomRequest::Join(join)), now_us()).await.expect("joined");
    let subscribe = TickRequest::Subscribe { channel: "prices".into() };
    connection.tick(subscribe).expect("subscribed");
    assert_eq!(stats.room_members.load(Ordering::Relaxed), 1);
    assert_eq!(stats.subscriptions.load(Ordering::Relaxed), 1);
    assert_eq!((rooms.usage().rooms, ticks.channels()), (1, 1));
    let tick_task = connection.datagrams.tasks.clone();

    drop(connection);

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        rooms.sweep(now_us()).await; // removes a room without members or history
        if rooms.usage().rooms == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rooms.usage().rooms, 0, "the room kept a member whose connection is gone");
    assert_eq!(stats.room_members.load(Ordering::Relaxed), 0);
    assert_eq!(stats.subscriptions.load(Ordering::Relaxed), 0);
    assert_eq!(ticks.channels(), 0, "the channel kept a subscriber whose connection is gone");
    tokio::time::timeout(std::time::Duration::from_secs(5), tick_task.wait()).await.expect("the tick task stopped");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), client_conn.closed()).await;
    assert!(closed.is_ok(), "the peer was not told");
}

/// A quiet room's stream parked in its outbox when the connection is lost goes with the pump, not with the room's
/// member, which is dropped under the room's lock at the close (a debug assertion in the outbox's drop: quinn's
/// stream drop takes its connection's lock, which a room's posts, joins and leaves then waited on).
#[tokio::test]
async fn a_lost_connections_parked_room_stream_is_not_dropped_under_the_rooms_lock() {
    let OnLoopback { mut connection, client_conn, _client, rooms, .. } = on_loopback().await;
    let join = Join { room: "lobby".into(), since: None, redundant: false };
    connection.room("alice", (1, RoomRequest::Join(join)), now_us()).await.expect("joined");
    client_conn.close(0u32.into(), b"gone");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // (the pump sees its stream's end, and ends)
    connection.close(now_us(), std::time::Duration::from_millis(100)).await;
    rooms.sweep(now_us()).await;
    assert_eq!(rooms.usage().rooms, 0, "left");
}

/// A session's expiry timer looks at the wall clock within `EXPIRY_LOOK` however far its token's `exp` is, and a
/// request's wait for it ends on the wall clock: here the wall clock passes `exp` while the timers' clock is held (a
/// paused clock does not move while a blocking task runs), as after a machine's sleep.
#[tokio::test(start_paused = true)]
async fn a_tokens_expiry_is_looked_for_on_the_wall_clock() {
    use std::time::Duration;
    let in_a_day = now_us() + 86_400_000_000;
    let look = crate::net::clock::next_expiry_look(in_a_day, crate::net::clock::EXPIRY_LOOK);
    assert_eq!(look, tokio::time::Instant::now() + crate::net::clock::EXPIRY_LOOK);
    let soon = now_us() + 200_000;
    let start = tokio::time::Instant::now();
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(300))).await.unwrap();
    tokio::time::timeout(Duration::from_millis(1), crate::net::clock::until_expired(soon))
        .await
        .expect("expired on the wall clock");
    assert_eq!(tokio::time::Instant::now(), start, "the timers' clock stood still");
}

/// A tick the client sent before its Unpublish and the server reads after it (the datagram reader is another task
/// than the control stream's) still reaches the channel's subscribers, for a grace, though the claim is released
/// at once: before, it was dropped as unclaimed, though the client's `send` had returned its seq (a match's last
/// score, sent before unpublishing). After the grace the claim's datagrams are dropped.
#[tokio::test]
async fn a_tick_read_after_its_claims_unpublish_is_published_within_the_grace() {
    use quiver_proto::{Reply, TickHeader};
    let OnLoopback { mut connection, client_conn, _client, stats, .. } = on_loopback().await;
    // A subscriber of the channel: this connection itself (its ticks come back to it).
    let Ok(Reply::Subscribed { channel_id: back, .. }) =
        connection.tick(TickRequest::Subscribe { channel: "score".into() })
    else {
        panic!("not subscribed")
    };
    let publish = TickRequest::Publish { channel: "score".into(), max_age_ms: None };
    let Ok(Reply::Publishing { channel_id, .. }) = connection.tick(publish) else { panic!("not claimed") };
    let tick = |seq: u64| {
        let mut datagram = bytes::BytesMut::new();
        TickHeader { channel_id, seq, sent_time_us: now_us() }.encode(&mut datagram).unwrap();
        datagram.extend_from_slice(b"final");
        datagram.freeze()
    };
    // Sent, then unpublished without a yield (this runtime has one thread): the server reads the tick after.
    client_conn.send_datagram(tick(1)).unwrap();
    connection.tick(TickRequest::Unpublish { channel: "score".into() }).expect("unpublished");
    let counts = || {
        let s = stats.snapshot();
        (s.ticks_published, s.datagrams_unclaimed)
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while counts() == (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(counts(), (1, 0), "(published, dropped as unclaimed)");
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(2), client_conn.read_datagram()).await;
    let (header, payload) = TickHeader::decode(&delivered.expect("delivered").unwrap()).unwrap();
    assert_eq!((header.channel_id, &payload[..]), (back, &b"final"[..]), "the subscriber got it");
    tokio::time::sleep(crate::hub::connection::UNPUBLISH_GRACE + std::time::Duration::from_millis(50)).await;
    client_conn.send_datagram(tick(2)).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while counts() == (1, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(counts(), (1, 1), "after the grace its datagrams are dropped");
}

/// A channel whose only publisher unpublished, with no subscriber on this node, is kept for the grace: a tick read
/// after the Unpublish is still stamped (a cluster relays it to other nodes' subscribers from there). Before, the
/// channel was removed at once and such ticks were dropped without a count.
#[tokio::test]
async fn a_channel_unpublished_stays_for_the_grace_without_subscribers_here() {
    use quiver_proto::Reply;
    let OnLoopback { mut connection, ticks, .. } = on_loopback().await;
    let publish = TickRequest::Publish { channel: "elsewhere".into(), max_age_ms: None };
    let Ok(Reply::Publishing { .. }) = connection.tick(publish) else { panic!("not claimed") };
    connection.tick(TickRequest::Unpublish { channel: "elsewhere".into() }).expect("unpublished");
    let late = ticks.publish_given_up("elsewhere", now_us(), now_us(), bytes::Bytes::from_static(b"final"));
    assert_eq!(late.map(|fanout| fanout.tick.seq), Some(1), "a tick within the grace is stamped");
    tokio::time::sleep(crate::hub::connection::UNPUBLISH_GRACE + std::time::Duration::from_millis(100)).await;
    assert_eq!(ticks.channels(), 0, "released once the grace is over");
}

/// A channel unpublished keeps its place in the network's share while the hub holds it for the grace: a client
/// claiming and unpublishing new channels in a loop holds no more of `max_channels` than its network's share. When
/// the place went back at once, such channels, each lingering 250 ms, were bounded only by the request rate (16
/// connections held all 10,000 of the defaults).
#[tokio::test]
async fn channels_lingering_for_their_grace_count_in_the_networks_share() {
    use quiver_proto::Reply;
    let (server_conn, _client_conn, endpoint, _dir) = crate::net::test_quic::loopback_pair().await;
    let wire = Wire::Quic(Arc::new(web_transport_quinn::Session::raw(server_conn)));
    let limits = Limits::default();
    let rooms = Arc::new(LocalRooms::new(limits.clone(), crate::Budget::default()));
    let ticks = Arc::new(LocalTicks::default());
    let share = crate::shares::Shares::new(100, 3, None).of("203.0.113.7".parse().unwrap());
    let hubs = (rooms, ticks.clone() as Arc<dyn TickHub>);
    let counted = (Arc::new(ServerStats::default()), Some(share));
    let mut connection =
        Connection::start(&wire, &limits, hubs, TailProbe::disabled(), None, counted, CancellationToken::new());
    let mut claimed = 0;
    for n in 0..6 {
        let publish = TickRequest::Publish { channel: format!("c{n}"), max_age_ms: None };
        match connection.tick(publish) {
            Ok(Reply::Publishing { .. }) => claimed += 1,
            Err(refused) => {
                assert_eq!(refused.code, quiver_proto::ErrorCode::TooManyChannels, "{refused:?}");
                break;
            }
            Ok(other) => panic!("{other:?}"),
        }
        connection.tick(TickRequest::Unpublish { channel: format!("c{n}") }).expect("unpublished");
    }
    assert_eq!(claimed, 3, "the network's share of three channels, lingering ones included");
    tokio::time::sleep(crate::hub::connection::UNPUBLISH_GRACE + std::time::Duration::from_millis(100)).await;
    let publish = TickRequest::Publish { channel: "after".into(), max_age_ms: None };
    assert!(matches!(connection.tick(publish), Ok(Reply::Publishing { .. })), "places back after the grace");
    drop(endpoint);
}
