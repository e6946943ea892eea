//! A room stream's outbox against a real QUIC stream whose reader never reads.

use std::sync::Arc;

use bytes::Bytes;

use super::StreamOutbox;
use crate::{hub::Outbox, net::wire::WireSend, stats::ServerStats};

/// A QUIC connection on loopback, and a unidirectional stream the server opened on it that the client never reads
/// (the client endpoint and connection are returned to keep them open).
async fn unread_stream() -> (web_transport_quinn::SendStream, quinn::Endpoint, quinn::Connection, tempfile::TempDir) {
    let (server_conn, client_conn, client, dir) = crate::net::test_quic::loopback_pair().await;
    let send = web_transport_quinn::Session::raw(server_conn).open_uni().await.unwrap();
    (send, client, client_conn, dir)
}

/// An outbox of 64 KiB (its bound, returned) on a stream the client never reads, its counters, and what keeps the
/// stream open.
async fn unread_outbox() -> (Arc<StreamOutbox>, Arc<ServerStats>, usize, impl Sized) {
    let (send, client, conn, dir) = unread_stream().await;
    let stats = Arc::new(ServerStats::default());
    let probe = quiver_transport::TailProbe::disabled();
    let bound = 64 * 1024;
    let outbox = StreamOutbox::new("r".into(), WireSend::Quic(send), bound, (probe, None), stats.clone());
    (outbox, stats, bound, (client, conn, dir))
}

/// An outbox whose pump has not run yet (it is not even started here) is flushed after every push. Once the
/// stream stops taking bytes (the client does not read), the frames a flush could not write stay queued and
/// count toward the bound: the outbox overflows instead of growing. Before, each flush reset the count to 0 and
/// put the frames back uncounted, so the queue grew by a frame per push without end.
#[tokio::test]
async fn frames_a_flush_could_not_write_still_count_toward_the_bound() {
    let (outbox, stats, bound, _kept) = unread_outbox().await;
    let frame = Bytes::from(vec![b'x'; 16 * 1024]);
    // quinn's stream window (1.25 MB by default) takes the first frames at once; then the bound applies.
    let mut pushed = 0;
    while outbox.push(frame.clone()) {
        outbox.flush();
        pushed += 1;
        assert!(pushed < 1_000, "16 MB queued toward a reader that takes nothing, and no overflow");
    }
    // What is still queued (not taken by quinn) is within the bound.
    let queued = stats.outbox_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(queued <= bound as i64, "{queued} bytes queued, bound {bound}");
}

/// With the pump writing, the batch it took (and waits to write) still counts toward the bound: a reader that
/// stops reading is reset once `room_queue_bytes` are behind, not twice that (a whole batch in the pump's hands,
/// uncounted, plus a full queue behind it).
#[tokio::test]
async fn the_batch_the_pump_is_writing_counts_toward_the_bound() {
    let (outbox, stats, bound, _kept) = unread_outbox().await;
    let kicked = crate::net::mailbox::Mailbox::new(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let pump = tokio::spawn(super::pump(outbox.clone(), kicked, stop.clone(), stats.clone()));
    let frame = Bytes::from(vec![b'x'; 4 * 1024]);
    let mut most = 0;
    // Bursts of 15 frames (60 KiB, under the bound), the pump taking each whole: one of them meets the end of the
    // stream's flow-control window part way, and the pump is left holding the rest of it.
    'pushing: for burst in 0.. {
        for _ in 0..15 {
            if !outbox.push(frame.clone()) {
                break 'pushing;
            }
            most = most.max(stats.outbox_bytes.load(std::sync::atomic::Ordering::Relaxed));
        }
        outbox.wake.notify_one();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(burst < 1_000, "60 MB queued toward a reader that takes nothing, and no overflow");
    }
    assert!(most <= (bound + frame.len()) as i64, "{most} bytes held for a stream bound to {bound}");
    stop.cancel();
    let _ = pump.await;
}

/// An outbox on a stream the client never reads, its pump running, overflowed by `overflow`: the stream is reset
/// (its room told the connection); its cause, and the counts.
async fn reset_by(overflow: impl FnOnce(&StreamOutbox)) -> (super::Overflow, crate::stats::StatsSnapshot) {
    let (send, _client, _conn, _dir) = unread_stream().await;
    let stats = Arc::new(ServerStats::default());
    let probe = quiver_transport::TailProbe::disabled();
    let outbox = StreamOutbox::new("r".into(), WireSend::Quic(send), 64 * 1024, (probe, None), stats.clone());
    let kicked = crate::net::mailbox::Mailbox::new(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let pump = tokio::spawn(super::pump(outbox.clone(), kicked.clone(), stop.clone(), stats.clone()));
    overflow(&outbox);
    let (room, _) = tokio::time::timeout(std::time::Duration::from_secs(5), kicked.pop()).await.expect("reset");
    assert_eq!(&*room, "r");
    stop.cancel();
    let _ = pump.await;
    (outbox.overflow_cause(), stats.snapshot())
}

/// A join's replay that cannot deliver its range ends the stream as a slow reader's overflow does (the client
/// rejoins and is told it missed messages), but is counted apart: before, it counted as a slow-consumer reset and
/// the client was told it "fell behind by more than room_queue_bytes".
#[tokio::test]
async fn a_replay_cut_short_is_not_counted_as_a_slow_consumer() {
    let (cause, s) = reset_by(|outbox| outbox.kick_replay()).await;
    assert_eq!(cause, super::Overflow::ReplayCutShort);
    assert_eq!((s.replays_cut_short, s.slow_consumer_resets), (1, 0), "{s:?}");
}

/// A room's engine that lost the room's thread (a cluster room's new epoch, a gap it cannot fill) ends every
/// member's stream the same way, but no reader fell behind: before, each was counted as a slow-consumer reset (a
/// `room_queue_bytes` breach per member at every Redis incident) and told it fell behind.
#[tokio::test]
async fn a_room_reset_is_not_counted_as_a_slow_consumer() {
    let (cause, s) = reset_by(|outbox| {
        outbox.kick();
        outbox.kick_replay(); // (a later cause does not replace the first)
    })
    .await;
    assert_eq!(cause, super::Overflow::RoomReset);
    assert_eq!((s.replays_cut_short, s.slow_consumer_resets), (0, 0), "{s:?}");
}

/// A paged replay reads its next page only once the last one was handed to the stream, not as soon as the pump took
/// it: a reader that takes nothing holds one page per room (before, one in the pump's hands and the next queued).
#[tokio::test]
async fn a_replay_page_counts_as_drained_once_written_not_once_taken() {
    let (send, _client, _conn, _dir) = unread_stream().await;
    let stats = Arc::new(ServerStats::default());
    let probe = quiver_transport::TailProbe::disabled();
    let outbox = StreamOutbox::new("r".into(), WireSend::Quic(send), 64 * 1024, (probe, None), stats.clone());
    let kicked = crate::net::mailbox::Mailbox::new(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let pump = tokio::spawn(super::pump(outbox.clone(), kicked, stop.clone(), stats.clone()));
    // A page past what quinn takes for a reader that reads nothing (its 1 MiB send window).
    for _ in 0..100 {
        outbox.push_replay(Bytes::from(vec![b'x'; 16 * 1024]));
    }
    outbox.wake.notify_one();
    // The pump takes the page at once and writes what it can.
    let taken = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !crate::net::lock(&outbox.queue).frames.is_empty() {
            tokio::task::yield_now().await;
        }
    });
    taken.await.expect("the pump took the page");
    let drained = tokio::time::timeout(std::time::Duration::from_millis(300), outbox.drained()).await;
    assert!(drained.is_err(), "drained while the page is still unwritten: {drained:?}");
    stop.cancel();
    let _ = pump.await;
}

/// Frames a cluster node catches up on (a gap fill read from the room's stream, and the events held behind it) go
/// outside the live bound, as a replay's do: a gap larger than `room_queue_bytes` is not a slow reader. Live frames
/// after them are bound by their own bytes; behind a paged replay (held) a catch-up frame is bound as a live one is.
#[tokio::test]
async fn catch_up_frames_are_outside_the_live_bound_unless_held() {
    let (outbox, stats, _bound, _kept) = unread_outbox().await;
    let frame = Bytes::from(vec![b'x'; 16 * 1024]);
    for k in 0..10 {
        assert!(outbox.push_catch_up(frame.clone()), "catch-up frame {k} overflowed the live bound");
    }
    assert!(outbox.push(frame.clone()), "a live frame counted the catch-up's bytes");
    assert_eq!(stats.room_deliveries.load(std::sync::atomic::Ordering::Relaxed), 11);
    outbox.hold();
    let held = (0..10).take_while(|_| outbox.push_catch_up(frame.clone())).count();
    assert!(held < 10, "held behind a paged replay, catch-up frames are bound as live ones are");
}

/// Catch-up frames are bounded too, apart from the live bound: at most 16 times it queued since the queue was last
/// written out, so a member that reads nothing while most of its room comes by gap fills is still found slow.
#[tokio::test]
async fn catch_up_frames_a_reader_never_takes_are_bounded() {
    let (outbox, _stats, bound, _kept) = unread_outbox().await;
    let frame = Bytes::from(vec![b'x'; 16 * 1024]);
    let taken = (0..1_000).take_while(|_| outbox.push_catch_up(frame.clone())).count();
    assert_eq!(taken, 16 * bound / frame.len(), "catch-up frames queued before the outbox overflowed");
}

/// A flush that finds the pump gone once it wrote what the stream took gives back the bytes it could not write:
/// they leave with it, and the `quiver_outbox_bytes` gauge kept them for good (a review's find, 2026-12-07).
#[tokio::test]
async fn a_flush_that_finds_the_pump_gone_gives_back_what_it_could_not_write() {
    let (outbox, stats, _bound, _kept) = unread_outbox().await;
    for _ in 0..256 {
        outbox.push_replay(Bytes::from(vec![b'x'; 16 * 1024])); // 4 MiB: past what quinn takes for this reader
    }
    crate::net::lock(&outbox.queue).gone = true; // the pump ended while the flush wrote
    outbox.flush();
    drop(outbox);
    assert_eq!(stats.outbox_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A pump that ends (the connection stops) while its parked stream holds the rest of a frame a flush wrote in part
/// resets the stream: dropped, quinn finished it, a finish inside a frame that the client reads as a protocol
/// violation, which could hide the close that follows (its token expired: reconnect with a fresh one). The
/// pump's Drain branch reset it; its Wait branch left it to the drop (a review's find, 2026-12-08).
#[tokio::test]
async fn a_stream_given_up_inside_a_frame_is_reset_not_finished() {
    let (outbox, conn, _kept) = overfull_outbox().await;
    outbox.flush(); // writes what quinn takes, the last frame in part, and parks the stream with the rest
    assert!(!crate::net::lock(&outbox.queue).frames.is_empty(), "frames left unwritten");
    drop(super::PumpGone(outbox.clone()));
    assert!(reset_at_the_client(&conn).await);
}

/// The same when the pump ends while a flush holds the stream: the flush, finding it gone, resets the stream it
/// wrote a frame of in part (it dropped it: finished inside the frame; the diff review's find, 2026-12-08).
#[tokio::test]
async fn a_flush_that_finds_the_pump_gone_inside_a_frame_resets_the_stream() {
    let (outbox, conn, _kept) = overfull_outbox().await;
    crate::net::lock(&outbox.queue).gone = true; // the pump ended while the flush wrote
    outbox.flush();
    assert!(reset_at_the_client(&conn).await);
}

/// An outbox on a stream the client does not read yet, 4 MB of 10,000-byte frames queued (past what quinn takes
/// for it: a flush writes the last frame it can in part), the client's connection, and what keeps it all open (the
/// server's connection by its handle, as a server's is by its connection task).
async fn overfull_outbox() -> (Arc<StreamOutbox>, quinn::Connection, impl Sized) {
    let (server_conn, conn, client, dir) = crate::net::test_quic::loopback_pair().await;
    let send = web_transport_quinn::Session::raw(server_conn.clone()).open_uni().await.unwrap();
    let (stats, probe) = (Arc::new(ServerStats::default()), quiver_transport::TailProbe::disabled());
    let outbox = StreamOutbox::new("r".into(), WireSend::Quic(send), 64 * 1024, (probe, None), stats);
    for _ in 0..400 {
        outbox.push_replay(Bytes::from(vec![b'x'; 10_000]));
    }
    (outbox, conn, (server_conn, client, dir))
}

/// Whether the first stream the server opened on `conn` ends, read to its end, with a reset (not a finish).
async fn reset_at_the_client(conn: &quinn::Connection) -> bool {
    let mut recv = conn.accept_uni().await.unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), recv.read_to_end(64 << 20)).await.unwrap();
    let reset = matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_))));
    if !reset {
        eprintln!("the stream ended {:?}", read.map(|bytes| bytes.len()));
    }
    reset
}

/// Catch-up frames count toward their bound only until the queue is written out, by whoever writes it: gap fills
/// that each arrive while a writer holds the stream (the pump writing a backlog) of a reader that reads everything
/// never overflow. Before, only a catch-up push that found the stream parked started the count afresh, and such
/// fills added up, over any length of time, to a reset of a member that kept up.
#[tokio::test]
async fn catch_up_frames_count_only_until_the_queue_is_written_out() {
    let (server_conn, client_conn, _client, _dir) = crate::net::test_quic::loopback_pair().await;
    let send = web_transport_quinn::Session::raw(server_conn).open_uni().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut recv = client_conn.accept_uni().await.unwrap();
        while let Ok(Some(_)) = recv.read_chunk(usize::MAX, true).await {}
    });
    let stats = Arc::new(ServerStats::default());
    let probe = quiver_transport::TailProbe::disabled();
    let outbox = StreamOutbox::new("r".into(), WireSend::Quic(send), 64 * 1024, (probe, None), stats.clone());
    let frame = Bytes::from(vec![b'x'; 16 * 1024]);
    // 200 fills of 16 KiB (3.2 MB, three times the catch-up bound of 16 × 64 KiB), each pushed while a writer has
    // the stream, which then writes it out.
    for fill in 0..200 {
        let taken = crate::net::lock(&outbox.queue).send.take();
        assert!(outbox.push_catch_up(frame.clone()), "fill {fill} overflowed a reader that reads everything");
        crate::net::lock(&outbox.queue).send = taken;
        // (A flush writes what the stream's window takes now: again until it took everything.)
        let mut flushes = 0;
        loop {
            outbox.flush();
            let written = tokio::time::timeout(std::time::Duration::from_millis(20), outbox.drained()).await;
            if written == Ok(true) {
                break;
            }
            flushes += 1;
            assert!(flushes < 250, "fill {fill} was not written out in 5 s");
        }
    }
    reader.abort();
}
