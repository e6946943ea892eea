//! Cubic with a floor under its window, for real-time traffic.
//!
//! Loss-based controllers read random loss as congestion: at a few percent loss quinn's Cubic sits at its
//! minimum window, two full packets (2,400 B), and quinn sends only while a full packet still fits, so about one
//! packet's worth is in flight. Ticks and chat messages are small (~100 B on the wire) and frequent: a 200 Hz tick
//! stream plus chat over a 40 ms path needs ~10 of them in flight. At the minimum window the connection is
//! congestion-blocked, datagrams queue behind the window and stream data waits for probe timeouts (measured: chat
//! p99 724 ms against WebSocket's 205 ms at 2 % burst loss + 20 ms; docs/benchmarks.md). TCP escapes this by
//! merging queued small writes into full segments; datagrams cannot be merged into one message.
//!
//! The floor is the initial window (10 packets, RFC 9002 §7.2 / RFC 6928: what any new flow may send in its first
//! round trip without feedback). Above it Cubic reacts to loss as usual, so a bulk flow still backs off; below it a
//! real-time connection keeps its (application-limited) rate. It never lets more than the initial window into
//! a path that is losing everything: the loss still costs retransmissions and PTOs.
//!
//! The controller also keeps what the tail probe asks before it sends ([`unacknowledged`]): whether what was
//! written at some moment may still be unacknowledged. quinn tells a controller of each transmit (after its last
//! packet, ACK-only ones included) and, after each ACK that acknowledges something new, of the bytes still in
//! flight; it has no other public view of them.

use std::{any::Any, sync::Arc, time::Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Cubic whose window never drops below `floor` bytes (0: plain Cubic), and which knows whether anything sent
/// may still be unacknowledged.
pub struct FlooredCubic {
    inner: Box<dyn Controller>,
    floor: u64,
    /// When quinn last transmitted.
    last_sent: Option<Instant>,
    /// After the last ACK processed: the bytes still in flight, and when quinn had last transmitted before it.
    in_flight_at_ack: u64,
    covered_until: Option<Instant>,
    /// quinn transmitted since that ACK (true until the first ACK).
    sent_since_ack: bool,
    /// At that ACK, quinn's last look for something to send found nothing left (`app_limited`: not blocked by the
    /// congestion window or pacing with data waiting), and no loss declared since put data back to send.
    drained: bool,
    /// quinn declared bytes lost (their data queued again) and has not transmitted since: its `app_limited` is
    /// from before the loss (an ACK processed in the same batch, right after the loss it revealed, took the write
    /// in the lost packet for drained and acknowledged; a review's find).
    lost_unsent: bool,
}

impl std::fmt::Debug for FlooredCubic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlooredCubic").field("window", &self.inner.window()).field("floor", &self.floor).finish()
    }
}

impl Controller for FlooredCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        (self.last_sent, self.sent_since_ack, self.lost_unsent) = (Some(now), true, false);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        (self.in_flight_at_ack, self.covered_until) = (in_flight, self.last_sent);
        (self.sent_since_ack, self.drained) = (false, app_limited && !self.lost_unsent);
        self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        if lost_bytes > 0 {
            (self.lost_unsent, self.drained) = (true, false);
        }
        self.inner.on_congestion_event(now, sent, persistent, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(FlooredCubic { inner: self.inner.clone_box(), ..*self })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`FlooredCubic`] per connection.
#[derive(Debug)]
pub struct FlooredCubicFactory {
    cubic: Arc<CubicConfig>,
    floor: u64,
}

impl FlooredCubicFactory {
    /// quinn's default Cubic with a window floor of `floor` bytes.
    pub fn new(floor: u64) -> FlooredCubicFactory {
        FlooredCubicFactory { cubic: Arc::new(CubicConfig::default()), floor }
    }
}

impl ControllerFactory for FlooredCubicFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let inner = self.cubic.clone().build(now, current_mtu);
        let (last_sent, covered_until, sent_since_ack, drained) = (None, None, true, false);
        Box::new(FlooredCubic {
            inner,
            floor: self.floor,
            last_sent,
            in_flight_at_ack: 0,
            covered_until,
            sent_since_ack,
            drained,
            lost_unsent: false,
        })
    }
}

impl FlooredCubic {
    /// Whether what was written at `written` may still be unacknowledged. No, once an ACK left nothing in flight,
    /// quinn had nothing left to send when it last looked before that ACK (not held back by the congestion window
    /// or pacing, where a transmit after the write may have carried earlier data and left the write's waiting), and
    /// either it had transmitted at or after `written` before that ACK (ACK-only packets sent since need no
    /// acknowledgment) or it has not transmitted since (the write went out before that ACK: its transmit may have
    /// read the clock before the writer did, on another thread). Conservative: anything ACK-eliciting in flight (a
    /// tick too) counts. Not a proof in one case: a write made after that ACK whose data quinn has not transmitted
    /// at all by the time it is asked (its driver not run since) is taken for covered.
    pub fn unacknowledged(&self, written: Instant) -> bool {
        let covered = !self.sent_since_ack || self.covered_until.is_some_and(|covered| covered >= written);
        self.in_flight_at_ack > 0 || !self.drained || !covered
    }
}

/// Whether what `quic` was given at `written` may still be unacknowledged ([`FlooredCubic::unacknowledged`]); true
/// when its controller is not a [`FlooredCubic`]. A controller made for a new path (a migration) knows of no ACK
/// and says true.
pub fn unacknowledged(quic: &quinn::Connection, written: Instant) -> bool {
    quic.congestion_state().into_any().downcast::<FlooredCubic>().map_or(true, |cubic| cubic.unacknowledged(written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_falls_to_the_floor_and_no_further() {
        let now = Instant::now();
        let plain = Arc::new(CubicConfig::default()).build(now, 1200);
        let mut floored = Arc::new(FlooredCubicFactory::new(12_000)).build(now, 1200);
        assert_eq!(floored.window(), plain.window().max(12_000));
        // Repeated losses, then persistent congestion: Cubic alone ends at its minimum window (2 packets).
        let mut plain = plain;
        for i in 0..10u64 {
            let at = now + std::time::Duration::from_millis(100 * (i + 1));
            plain.on_congestion_event(at, at, i == 9, 1200);
            floored.on_congestion_event(at, at, i == 9, 1200);
        }
        assert_eq!(plain.window(), 2 * 1200);
        assert_eq!(floored.window(), 12_000);
        assert_eq!(floored.metrics().congestion_window, 12_000);
        assert_eq!(floored.clone_box().window(), 12_000);
    }

    /// What the tail probe asks: a write is unacknowledged until quinn transmitted after it and then took an ACK
    /// that left nothing in flight; ACK-only transmits after that do not change it; a copy of the controller (quinn
    /// hands out copies) says the same.
    #[test]
    fn it_knows_whether_a_write_is_unacknowledged() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let build = || Arc::new(FlooredCubicFactory::new(0)).build(t0, 1200);
        let unacked = |controller: Box<dyn Controller>, written| match controller.into_any().downcast::<FlooredCubic>()
        {
            Ok(cubic) => cubic.unacknowledged(written),
            Err(_) => panic!("not a FlooredCubic"),
        };
        assert!(unacked(build(), t0), "no ACK yet (a new path's controller too)");
        let mut cubic = build();
        cubic.on_sent(at(2), 100, 1); // the write of 1 ms, sent
        assert!(unacked(cubic.clone_box(), at(1)));
        cubic.on_end_acks(at(3), 100, true, Some(0));
        assert!(unacked(cubic.clone_box(), at(1)), "an ACK that leaves bytes in flight");
        cubic.on_end_acks(at(4), 0, false, Some(1));
        assert!(unacked(cubic.clone_box(), at(1)), "all acknowledged, but quinn was held back with data waiting");
        cubic.on_end_acks(at(4), 0, true, Some(1));
        assert!(!unacked(cubic.clone_box(), at(1)), "acknowledged");
        assert!(!unacked(cubic.clone_box(), at(5)), "no transmit since the ACK: a write stamped after its transmit");
        cubic.on_sent(at(5), 30, 2); // an ACK-only packet: in flight stays 0
        assert!(!unacked(cubic.clone_box(), at(1)), "ACK-only transmits since do not count");
        assert!(unacked(cubic.clone_box(), at(5)), "a write sent after that ACK is not covered by it");
        assert_eq!(cubic.window(), build().window(), "floor 0: plain Cubic");
    }

    /// A loss declared between two ACKs of one batch (the first ACK reveals it, the second leaves nothing in flight
    /// while quinn's `app_limited` is from before the loss): the write in the lost packet stays unacknowledged until
    /// its data is sent again and an ACK after that leaves nothing in flight.
    #[test]
    fn a_write_in_a_lost_packet_stays_unacknowledged_until_resent_and_acknowledged() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut cubic = Arc::new(FlooredCubicFactory::new(0)).build(t0, 1200);
        let unacked = |controller: &dyn Controller, written| {
            controller.clone_box().into_any().downcast::<FlooredCubic>().map(|c| c.unacknowledged(written)).unwrap()
        };
        cubic.on_sent(at(2), 100, 1); // P, carrying the write of 1 ms
        cubic.on_sent(at(3), 100, 2); // Q1
        cubic.on_sent(at(4), 100, 3); // Q2
        cubic.on_end_acks(at(10), 200, true, Some(2)); // ACK(Q1): P and Q2 in flight
        cubic.on_congestion_event(at(10), at(2), false, 100); // P declared lost, its data queued again
        cubic.on_end_acks(at(10), 0, true, Some(3)); // ACK(Q2): nothing in flight, app_limited from before
        assert!(unacked(&*cubic, at(1)), "the write's data waits to be sent again");
        cubic.on_sent(at(11), 100, 4); // R, the write's data again
        assert!(unacked(&*cubic, at(1)), "sent again, not acknowledged");
        cubic.on_end_acks(at(20), 0, true, Some(4));
        assert!(!unacked(&*cubic, at(1)), "acknowledged");
    }
}
