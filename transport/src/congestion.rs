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
//! The controller also keeps what the tail probe asks before it sends ([`unacknowledged`]): whether anything sent
//! may still be unacknowledged. quinn tells a controller every packet it sends and, after each ACK, the bytes still
//! in flight; it has no other public view of them.

use std::{any::Any, sync::Arc, time::Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Cubic whose window never drops below `floor` bytes (0: plain Cubic), and which knows whether anything sent
/// may still be unacknowledged.
pub struct FlooredCubic {
    inner: Box<dyn Controller>,
    floor: u64,
    /// Bytes in flight after the last ACK processed.
    in_flight_at_ack: u64,
    /// A packet was sent since (quinn reports ACK-only packets too: counted, so this may say yes when only an ACK
    /// left, never no when data did).
    sent_since_ack: bool,
}

impl std::fmt::Debug for FlooredCubic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlooredCubic").field("window", &self.inner.window()).field("floor", &self.floor).finish()
    }
}

impl Controller for FlooredCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.sent_since_ack = true;
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        (self.in_flight_at_ack, self.sent_since_ack) = (in_flight, false);
        self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
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
        Box::new(FlooredCubic { inner, floor: self.floor, in_flight_at_ack: 0, sent_since_ack: false })
    }
}

impl FlooredCubic {
    /// Whether anything ACK-eliciting sent may still be unacknowledged (or lost and not yet declared so).
    pub fn unacknowledged(&self) -> bool {
        self.sent_since_ack || self.in_flight_at_ack > 0
    }
}

/// Whether anything `quic` sent may still be unacknowledged: true unless its controller is a [`FlooredCubic`] that
/// knows everything sent was acknowledged.
pub fn unacknowledged(quic: &quinn::Connection) -> bool {
    quic.congestion_state().into_any().downcast::<FlooredCubic>().map_or(true, |cubic| cubic.unacknowledged())
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

    /// What the tail probe asks: after a packet is sent something is unacknowledged until an ACK leaves none in
    /// flight; a copy of the controller (quinn hands out copies) says the same.
    #[test]
    fn it_knows_whether_anything_sent_is_unacknowledged() {
        let now = Instant::now();
        let build = || Arc::new(FlooredCubicFactory::new(0)).build(now, 1200);
        let unacked = |controller: Box<dyn Controller>| match controller.into_any().downcast::<FlooredCubic>() {
            Ok(cubic) => cubic.unacknowledged(),
            Err(_) => panic!("not a FlooredCubic"),
        };
        assert!(!unacked(build()), "nothing sent yet");
        let mut cubic = build();
        cubic.on_sent(now, 100, 1);
        assert!(unacked(cubic.clone_box()));
        cubic.on_end_acks(now, 100, true, Some(0));
        assert!(unacked(cubic.clone_box()), "an ACK that leaves bytes in flight");
        cubic.on_end_acks(now, 0, true, Some(1));
        assert!(!unacked(cubic.clone_box()), "all acknowledged");
        assert_eq!(cubic.window(), build().window(), "floor 0: plain Cubic");
    }
}
