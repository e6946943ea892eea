//! A room stream's pump: moves what the outbox queued onto the stream between direct writes, finishes it once the
//! room is left, and resets it when the subscriber falls behind.

use super::*;

/// True when `outbox`'s room is left (or the connection stops) within [`LEFT_STREAM_GRACE`]: a stream stopped by
/// its client is usually followed by the client's Leave.
async fn left_in_grace(outbox: &StreamOutbox, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = outbox.left.cancelled() => true,
        () = stop.cancelled() => true,
        () = tokio::time::sleep(LEFT_STREAM_GRACE) => false,
    }
}

/// Completes with the code of a stop the client sent on the QUIC stream parked in `outbox` (a quiet room's stream
/// stopped while nothing is written: otherwise noticed only at its next write, the member meanwhile in the room's
/// presence and a rejoin refused `AlreadyJoined`); `None` once the stream or the connection ended. Pending while a
/// flush holds the stream (it wakes the pump when it puts the stream back: `stop_watch_waits`) and for WebSocket
/// streams (their stop signal tells).
///
/// Polled off the queue's lock, the stream taken out meanwhile as a flush takes it: quinn's stream calls take its
/// connection's lock, and a room's fan-out takes the queue's lock under the room's, so a post to the room waited on
/// one member's connection (its driver busy with a packet) while this held the queue. A flush that finds the
/// stream taken wakes the pump, which writes what it queued.
fn parked_stop(outbox: &StreamOutbox) -> impl Future<Output = Option<u32>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut send = {
            let mut queue = lock(&outbox.queue);
            match queue.send.take() {
                Some(send) => send,
                None => {
                    queue.stop_watch_waits = true;
                    return Poll::Pending;
                }
            }
        };
        let polled = send.poll_stopped(cx);
        let mut queue = lock(&outbox.queue);
        queue.send = Some(send);
        outbox.notify_if_drained(&mut queue); // (a paged replay waiting saw the stream taken)
        polled
    })
}

/// What the client's stop of the stream with `code` means: it cannot take more (`SlowConsumer`), kicked at once
/// as an overflow is; or, with any other code, it let the room go and its Leave, sent beside the stop, is on its
/// way. A room not left within the grace ends on this connection anyway (reset, and Kicked names it) rather than
/// stay joined with nothing delivered: in the room's presence, refusing a rejoin. True when it was kicked (the
/// pump resets the stream); false when the room was left (or the connection ends): nothing more goes to the stream.
async fn stopped_by_peer(outbox: &StreamOutbox, code: u32, stop: &CancellationToken) -> bool {
    let slow = code == ErrorCode::SlowConsumer.to_u32();
    let kick = slow || !left_in_grace(outbox, stop).await;
    if kick {
        // (Until 2026-12-08 a stop without a Leave was told "fell behind" and counted as a slow consumer.)
        outbox.overflow_for(if slow { Overflow::SlowReader } else { Overflow::StoppedByClient });
    }
    kick
}

/// Why a room stream's outbox overflowed (its subscription ended, the stream reset with `SlowConsumer`): told the
/// client in `Kicked`, and counted by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// The reader fell `room_queue_bytes` behind (or stopped the stream saying `SlowConsumer`).
    SlowReader,
    /// A join's replay could not deliver its range ([`Outbox::kick_replay`]).
    ReplayCutShort,
    /// The client stopped the stream (another code) and sent no Leave within [`LEFT_STREAM_GRACE`].
    StoppedByClient,
    /// The room's engine lost its thread ([`Outbox::kick`]: a cluster room's new epoch, or a gap it cannot fill),
    /// every member at once: no reader's doing (until 2026-12-08 told "fell behind" and counted as a slow reader).
    RoomReset,
}

impl StreamOutbox {
    /// Why this outbox overflowed (read once it did).
    pub(crate) fn overflow_cause(&self) -> Overflow {
        let cause = self.cause.load(std::sync::atomic::Ordering::Relaxed);
        [Overflow::ReplayCutShort, Overflow::StoppedByClient, Overflow::RoomReset]
            .into_iter()
            .find(|c| *c as u8 == cause)
            .unwrap_or(Overflow::SlowReader)
    }

    /// Overflows for `cause` (the first cause given wins; an overflow for a slow reader sets none) and wakes the
    /// pump to reset the stream.
    pub(crate) fn overflow_for(&self, cause: Overflow) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.overflow.is_cancelled() {
            let _ = self.cause.compare_exchange(Overflow::SlowReader as u8, cause as u8, Relaxed, Relaxed);
        }
        self.overflow.cancel();
        self.wake.notify_one();
    }
}

/// What the pump does next, decided under the queue's lock.
enum Next {
    /// Write this backlog (the stream is taken from the outbox meanwhile).
    Drain(VecDeque<Bytes>, SendStream),
    /// Reset the stream: the subscriber fell behind.
    Reset(SendStream),
    /// Finish the stream (the room was left and everything is written), then done.
    Finish(SendStream),
    /// Nothing to do until woken (or a flush is writing and will wake the pump when it is done).
    Wait,
}

fn next(outbox: &StreamOutbox) -> Next {
    let mut queue = lock(&outbox.queue);
    if outbox.overflow.is_cancelled() {
        return queue.send.take().map_or(Next::Wait, Next::Reset);
    }
    if queue.frames.is_empty() {
        if !queue.closed {
            return Next::Wait;
        }
        // Finished off the lock (as every quinn call: see `parked_stop`).
        return queue.send.take().map_or(Next::Wait, Next::Finish);
    }
    let Some(send) = queue.send.take() else { return Next::Wait };
    queue.in_flight = std::mem::take(&mut queue.bytes);
    Next::Drain(queue.take_frames(), send)
}

/// Moves queued frames from `outbox` to the room stream until the room is left (finish), the subscriber falls
/// behind (reset with `SlowConsumer`, and `kicked` hears of it), the connection ends, or `stop` is cancelled.
/// Between backlogs the stream is parked in the outbox for direct writes.
pub(crate) async fn pump(
    outbox: Arc<StreamOutbox>,
    kicked: Arc<Mailbox<Kicked>>,
    stop: CancellationToken,
    stats: Arc<ServerStats>,
) {
    let _gone = PumpGone(outbox.clone());
    // Once the room is left, what is queued has this long to be written (a peer that never reads the stream must
    // not keep it, and its queue, for the connection's life).
    let left_too_long = async {
        outbox.left.cancelled().await;
        tokio::time::sleep(LEFT_STREAM_GRACE).await;
    };
    tokio::pin!(left_too_long);
    let never = || -> std::pin::Pin<Box<dyn Future<Output = ErrorCode> + Send>> { Box::pin(std::future::pending()) };
    let mut peer_stopped = lock(&outbox.peer_stopped).take().map_or_else(never, |signal| signal.0);
    // The parked stream's stop is handled once (a stopped stream's `poll_stopped` stays ready).
    let mut watch_parked = true;
    loop {
        match next(&outbox) {
            Next::Drain(mut batch, mut send) => {
                // The frame being written when the stream was given up (an overflow, a stop): not written.
                let mut cut_short = 0;
                while let Some(frame) = batch.pop_front() {
                    let len = frame.len();
                    tokio::select! {
                        written = send.write_chunk(frame) => match written {
                            Ok(()) => {
                                dequeued(&stats, len);
                                // (A replay frame, not counted, may come off early: the bound errs on the lenient
                                // side for the length of a replay.)
                                let mut queue = lock(&outbox.queue);
                                queue.in_flight = queue.in_flight.saturating_sub(len);
                            }
                            Err(err) => {
                                let kicked = match err {
                                    WireError::Stream(code) => stopped_by_peer(&outbox, code, &stop).await,
                                    // A browser's WT_SESSION_GONE: a stop like any other; if its session is closing,
                                    // the connection's end comes within the grace (it was taken for that end, and a
                                    // peer stopping this stream alone with it stayed in the room, fed nothing).
                                    WireError::SessionGone => {
                                        stopped_by_peer(&outbox, crate::net::wire::INVALID_STOP, &stop).await
                                    }
                                    _ => false, // the connection ended
                                };
                                if !kicked {
                                    return dequeued(&stats, len + batch.iter().map(Bytes::len).sum::<usize>());
                                }
                                // Kicked: the stream is reset, and Kicked names the room.
                                dequeued(&stats, len);
                                cut_short = 1;
                                break;
                            }
                        },
                        () = outbox.overflow.cancelled() => {
                            dequeued(&stats, len);
                            cut_short = 1;
                            break;
                        }
                        () = stop.cancelled() => {
                            // Reset, not dropped: a dropped stream is finished, and a finish inside a frame reads as a
                            // protocol violation to the client, which could hide the close that follows (its token
                            // expired: reconnect with a fresh one).
                            send.reset(ErrorCode::NoError);
                            return dequeued(&stats, len + batch.iter().map(Bytes::len).sum::<usize>());
                        }
                        () = &mut left_too_long => {
                            send.reset(ErrorCode::NoError);
                            let rest = {
                                let mut queue = lock(&outbox.queue);
                                (queue.bytes, queue.in_flight) = (0, 0);
                                queue.take_frames().iter().map(Bytes::len).sum::<usize>()
                            };
                            return dequeued(&stats, len + rest + batch.iter().map(Bytes::len).sum::<usize>());
                        }
                    }
                }
                // Copies of what is left unwritten (an overflow: it goes with the reset) stay held.
                let written_before = lock(&outbox.queue).written_before() - (batch.len() + cut_short) as u64;
                outbox.probed(written_before);
                // What is left after an overflow goes with the reset.
                dequeued(&stats, batch.iter().map(Bytes::len).sum());
                batch.clear();
                let mut queue = lock(&outbox.queue);
                queue.in_flight = 0;
                queue.send = Some(send);
                queue.put_back(batch);
                outbox.notify_if_drained(&mut queue);
            }
            Next::Reset(mut send) => {
                match outbox.overflow_cause() {
                    Overflow::ReplayCutShort => bump(&stats.replays_cut_short),
                    // (The client's own doing, or the room's engine's: no slow reader.)
                    Overflow::StoppedByClient | Overflow::RoomReset => {}
                    Overflow::SlowReader => bump(&stats.slow_consumer_resets),
                }
                send.reset(ErrorCode::SlowConsumer);
                let _ = kicked.push((outbox.room.clone(), outbox.clone()));
                return;
            }
            Next::Wait => {
                let parked = async {
                    match watch_parked {
                        true => parked_stop(&outbox).await,
                        false => std::future::pending().await,
                    }
                };
                let code = tokio::select! {
                    () = outbox.wake.notified() => None,
                    code = &mut peer_stopped => {
                        peer_stopped = never();
                        Some(code.to_u32())
                    }
                    code = parked => match code {
                        Some(code) => {
                            watch_parked = false;
                            Some(code)
                        }
                        None => return,
                    },
                    () = stop.cancelled() => return,
                };
                if let Some(code) = code {
                    if !stopped_by_peer(&outbox, code, &stop).await {
                        return;
                    }
                }
            }
            Next::Finish(mut send) => {
                send.finish();
                return;
            }
        }
    }
}
