//! Every latency-relevant transport setting, chosen on purpose and explained here, in one place: the server builds
//! its transport with [`server_transport`], the client with [`client_transport`], so both ends agree.

use std::{sync::Arc, time::Duration};

use quinn::{AckFrequencyConfig, MtuDiscoveryConfig, TransportConfig, VarInt};
use quiver_proto::Limits;

use crate::probe::ProbeTiming;

/// Idle connections are closed after this long without any packet. Keep-alives (below) keep live ones open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A PING every 8 s keeps NAT bindings and the idle timer alive on quiet connections, and a live server's answer
/// comes well within the client's 12 s `dead_server_after` (was 5 s: 8 s cut the idle server's CPU at 10,000
/// connections by a third, docs/benchmarks.md; Chrome's QUIC pings every 15 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(8);
/// quinn starts with 333 ms (RFC 9002's default) before it has an RTT sample; the first loss then waits ~1 s.
/// 100 ms still covers most real paths and recovers a lost first flight three times sooner.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Datagrams waiting in quinn for the congestion window. quinn's default is 1 MiB, which on a slow path holds
/// seconds of stale ticks; ticks are conflated (latest wins) before they reach quinn, so quinn only needs about
/// a packet burst's worth. Revisited with the tick fan-out's measurements.
pub const DATAGRAM_SEND_BUFFER: usize = 16 * 1024;
/// Asked of the peer through the ACK-frequency extension: acknowledge within 1 ms instead of quinn's fixed 25 ms.
/// Measured here (BASELINES.md): at 5 % loss a ping-pong's p99 falls from 54 ms to 6.7 ms, for +18 % on the
/// loss-free median. Sparse chat traffic is exactly the case where loss detection waits on ACKs.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(1);
/// After writing reliable data, a probe datagram this much later acts as a tail-loss probe ([`crate::probe`]):
/// a lost last packet is then found in ~1–2 ms + RTT instead of at the next message or quinn's ≥25 ms PTO. This
/// delay is for paths that lost packets lately; on others the probe waits until the write's ACK is overdue
/// ([`crate::probe::ProbeTiming`]), and no probe goes for a write already acknowledged.
pub const TAIL_PROBE_DELAY: Duration = Duration::from_millis(1);
/// The congestion window never falls below this (quinn's initial window at a 1,200-byte MTU): at random loss
/// Cubic's 2-packet minimum congestion-blocks a stream of small real-time packets ([`crate::congestion`]).
pub const CONGESTION_WINDOW_FLOOR: u64 = 10 * 1200;
/// Redundant delivery (rooms joined with `redundant`): each room frame and post also goes as up to this many
/// datagram copies, the first one right after the stream write's packet (in a packet of its own, so that one loss
/// does not take both; it stands for the write's tail probe), the next ones [`COPY_SPACING`] apart. How many, of this maximum, follows the loss each end
/// observes on its path (`quiver_proto::copies::CopyQueue`): one on a clean path, three at 10 % loss, where a
/// message then waits for a retransmission only when four packets in a row are lost (docs/transport.md,
/// "Redundant delivery").
pub const COPIES: u8 = 3;
/// Between two rounds of copies: far enough apart that a short burst of loss does not take both.
pub const COPY_SPACING: Duration = Duration::from_millis(5);
/// When copies are on but the tail probe is off, the first copies go this long after the write.
pub const FIRST_COPY_DELAY: Duration = Duration::from_millis(1);
/// Path MTU discovery: off. The server's paths and Quiver's clients keep QUIC's guaranteed 1,200-byte UDP payload,
/// so a tick that fits a Quiver client's datagrams fits every subscriber's (browsers' and the WebSocket lane's
/// 1,200 bytes too) and the largest tick does not change with the path. Quiver's traffic is small messages, where a larger MTU saves nothing; what
/// discovery costs is about five padded probes each way per connection, which the receiver parses one PADDING byte
/// at a time: in alternating runs, a full handshake took the server 628–760 µs of CPU with it on and 540–563 µs
/// without, handshakes per second rose ×1.14–1.34, and each connection holds 2.3 KB less (docs/benchmarks.md,
/// "10,000 idle connections"). Bulk replays pay about 17 % more packets than at 1,452 bytes; `Some(bytes)`
/// searches up to that payload size. Peers are not asked to stay at 1,200 bytes (`max_udp_payload_size` stays at
/// quinn's 1,472: without UDP GRO quinn's receive buffers are that size per datagram, and Chromium sends 1,250-byte
/// Initial packets): a peer that discovers its own path may publish larger ticks, which reach the subscribers
/// whose paths carry them and are dropped as too large for the others
/// (`quiver_ticks_dropped_total{reason="too_large"}`).
pub const MTU_DISCOVERY: Option<u16> = None;
/// UDP socket buffers. Linux's default 208 KiB receive buffer overflows with ~64 handshakes in flight
/// (BASELINES.md); the kernel caps the request at `net.core.{r,w}mem_max`, and the server logs what it got.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The latency-relevant transport settings both ends use, selectable as a whole so that benchmarks can compare
/// them in one run. [`TransportTuning::quiver`] is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// A name for reports.
    pub name: &'static str,
    /// Ask the peer (ACK-frequency extension) to acknowledge within this delay; `None` leaves quinn's 25 ms.
    pub max_ack_delay: Option<Duration>,
    /// Packets received out of order before an immediate ACK (with the ACK-frequency request).
    pub reordering_threshold: u32,
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// PING interval on quiet connections; `None` for none.
    pub keep_alive: Option<Duration>,
    /// Bytes of datagrams quinn may hold waiting for the congestion window.
    pub datagram_send_buffer: usize,
    /// Send a probe datagram this long after writing reliable data (a tail-loss probe); `None` for none.
    pub tail_probe: Option<Duration>,
    /// Floor under Cubic's congestion window, in bytes; `None` for quinn's plain Cubic.
    pub congestion_floor: Option<u64>,
    /// Datagram copies per room frame and post in redundant rooms, at most (fewer on a path with less loss); 0
    /// turns redundant delivery off (a server then grants it to nobody).
    pub copies: u8,
    /// Time between rounds of copies.
    pub copy_spacing: Duration,
    /// Path MTU discovery up to this UDP payload size; `None`: none, every path stays at 1,200 bytes.
    pub mtu_discovery: Option<u16>,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning::quiver()
    }
}

impl TransportTuning {
    /// Quiver's choice (the constants above).
    pub fn quiver() -> Self {
        TransportTuning {
            name: "quiver",
            max_ack_delay: Some(MAX_ACK_DELAY),
            reordering_threshold: 1,
            initial_rtt: INITIAL_RTT,
            keep_alive: Some(KEEP_ALIVE),
            datagram_send_buffer: DATAGRAM_SEND_BUFFER,
            tail_probe: Some(TAIL_PROBE_DELAY),
            congestion_floor: Some(CONGESTION_WINDOW_FLOOR),
            copies: COPIES,
            copy_spacing: COPY_SPACING,
            mtu_discovery: MTU_DISCOVERY,
        }
    }

    /// Quiver's choice without the on-demand tail probe (the "before" of the probe's measurement).
    pub fn no_probe() -> Self {
        TransportTuning { name: "no-probe", tail_probe: None, ..TransportTuning::quiver() }
    }

    /// quinn 0.11's defaults for everything tuned here (the "before").
    pub fn quinn_defaults() -> Self {
        TransportTuning {
            name: "quinn-defaults",
            max_ack_delay: None,
            reordering_threshold: 1,
            initial_rtt: Duration::from_millis(333),
            keep_alive: None,
            datagram_send_buffer: 1024 * 1024,
            tail_probe: None,
            congestion_floor: None,
            copies: COPIES,
            copy_spacing: COPY_SPACING,
            mtu_discovery: Some(QUINN_MTU_DISCOVERY),
        }
    }

    /// Quiver's choice with quinn's plain Cubic (the "before" of the window floor's measurement).
    pub fn no_floor() -> Self {
        TransportTuning { name: "no-floor", congestion_floor: None, ..TransportTuning::quiver() }
    }

    /// Quiver's choice plus a PING every millisecond, a tail-loss probe whether or not anything was sent
    /// (BASELINES.md: p99 at 5 % loss 6.7 → 4.45 ms, at +30 % loss-free p50 and ~1,000 extra packets/s each way).
    pub fn tail_probe() -> Self {
        TransportTuning { name: "tail-probe", keep_alive: Some(Duration::from_millis(1)), ..TransportTuning::quiver() }
    }

    /// When the probe timer fires after a write: the tail-probe delay, or (copies on, probe off) the first copy's.
    pub fn probe_timer(&self) -> Option<Duration> {
        self.tail_probe.or((self.copies > 0).then_some(FIRST_COPY_DELAY))
    }

    /// The probe timer's schedule ([`ProbeTiming`]): [`TransportTuning::probe_timer`] on a path that lost packets
    /// lately, else the time by which the ACK of the last write is overdue (the peer's ACK delay: the one asked
    /// for, or quinn's 25 ms). `None`: no probe timer.
    pub fn probe_timing(&self) -> Option<ProbeTiming> {
        let ack_delay = self.max_ack_delay.unwrap_or(QUINN_MAX_ACK_DELAY);
        self.probe_timer().map(|delay| ProbeTiming::new(delay, ack_delay))
    }

    /// The names [`TransportTuning::named`] knows.
    pub const NAMES: &'static [&'static str] = &["quiver", "no-probe", "no-floor", "quinn-defaults", "tail-probe"];

    /// The tuning called `name` (one of [`TransportTuning::NAMES`]).
    pub fn named(name: &str) -> Result<Self, UnknownTuning> {
        match name {
            "quiver" => Ok(TransportTuning::quiver()),
            "quinn-defaults" => Ok(TransportTuning::quinn_defaults()),
            "tail-probe" => Ok(TransportTuning::tail_probe()),
            "no-probe" => Ok(TransportTuning::no_probe()),
            "no-floor" => Ok(TransportTuning::no_floor()),
            other => Err(UnknownTuning(other.to_string())),
        }
    }
}

/// A tuning name [`TransportTuning::named`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport tuning {0:?}; tunings: quiver, no-probe, no-floor, quinn-defaults, tail-probe")]
pub struct UnknownTuning(pub String);

/// Transport settings shared by both ends.
fn common(tuning: &TransportTuning) -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT.as_millis() as u32).into()))
        .keep_alive_interval(tuning.keep_alive)
        .initial_rtt(tuning.initial_rtt)
        .datagram_send_buffer_size(tuning.datagram_send_buffer)
        .mtu_discovery_config(tuning.mtu_discovery.map(|max| {
            let mut mtu = MtuDiscoveryConfig::default();
            mtu.upper_bound(max);
            mtu
        }));
    // Always ours (floor 0 is plain Cubic): it also tells the tail probe whether anything is unacknowledged.
    let floor = tuning.congestion_floor.unwrap_or(0);
    config.congestion_controller_factory(Arc::new(crate::congestion::FlooredCubicFactory::new(floor)));
    if let Some(delay) = tuning.max_ack_delay {
        let mut ack = AckFrequencyConfig::default();
        ack.max_ack_delay(Some(delay)).reordering_threshold(VarInt::from_u32(tuning.reordering_threshold));
        config.ack_frequency_config(Some(ack));
    }
    config
}

/// The server's transport. Native clients open only the control stream; browsers need one more bidirectional
/// stream (the CONNECT request, then the control stream) and three unidirectional ones (HTTP/3 control, QPACK
/// encoder and decoder; RFC 9114 §6.2 asks for at least three). The limits are per endpoint, before ALPN is
/// known, so they are the browser's; a native client opening any stream besides the control stream is closed
/// with `ProtocolViolation`. Room streams are opened by the server.
///
/// What a client may send before the server reads it is bounded ([`server_receive_windows`]), and so is what the
/// server keeps unacknowledged for a client ([`SERVER_SEND_WINDOW`]): quinn's defaults (1.25 MB per stream, no
/// bound per connection; 10 MB unacknowledged) let any client make the server hold megabytes while it was busy
/// elsewhere (its replies unread, a room stream not granted), per connection.
pub fn server_transport(limits: &Limits, tuning: &TransportTuning) -> Arc<TransportConfig> {
    let mut config = common(tuning);
    config.keep_alive_interval(server_keep_alive(tuning.keep_alive));
    config.max_concurrent_bidi_streams(VarInt::from_u32(2)).max_concurrent_uni_streams(VarInt::from_u32(3));
    let (stream, connection) = server_receive_windows(limits);
    config
        .stream_receive_window(VarInt::from_u32(stream))
        .receive_window(VarInt::from_u32(connection))
        .send_window(SERVER_SEND_WINDOW)
        .datagram_receive_buffer_size(Some(SERVER_DATAGRAM_RECEIVE_BUFFER));
    Arc::new(config)
}

/// Bytes a client may have sent on one stream, and on all its streams, that the server has not read: two of the
/// largest frames on a stream (one being read, the next arriving), at least 64 KiB, and the control stream's and
/// a browser's CONNECT and HTTP/3 streams' together on the connection. 128 KiB and 256 KiB with the default
/// 64 KiB frames, against quinn's 1.25 MB per stream.
pub fn server_receive_windows(limits: &Limits) -> (u32, u32) {
    let stream = limits.max_frame.saturating_mul(2).max(64 * 1024);
    (stream, stream.saturating_mul(2))
}

/// Bytes the server sends a client and keeps until they are acknowledged, at most (quinn's default: 10 MB): a
/// peer that withholds its ACKs pins this much. 1 MiB still carries 10 MB/s of room traffic at 100 ms of RTT,
/// and ticks (datagrams) are not counted in it.
pub const SERVER_SEND_WINDOW: u64 = 1 << 20;

/// Bytes of a client's datagrams (ticks it publishes, copies of its posts) the server holds before reading them,
/// at most (quinn's default: 1.25 MB, counted as each datagram's payload and 32 bytes, while a datagram keeps its
/// whole received packet): beyond it quinn drops the oldest (latest wins, as for ticks everywhere). The server
/// reads them as they come, but a browser's session is read only from its CONNECT, up to `handshake_timeout_ms`
/// after the handshake: a thousand connections withholding it held 1.25 GB before. 64 KiB is some fifty of the
/// largest ticks, and more than any datagram a path carries (it is also the largest datagram frame the server
/// announces: 65,535 bytes, as before).
pub const SERVER_DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// quinn's `max_ack_delay` (RFC 9000's default), a peer's ACK delay when none is asked for.
pub const QUINN_MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// quinn's default upper bound for path MTU discovery (a 1,500-byte Ethernet MTU less IPv6 and UDP headers).
pub const QUINN_MTU_DISCOVERY: u16 = 1452;

/// The longest keep-alive interval the server derives from a client's ([`server_keep_alive`]).
pub const SERVER_KEEP_ALIVE_MAX: Duration = Duration::from_secs(10);

/// The server's keep-alive for a tuning's `keep_alive`: twice it, at most 10 s (10 s for Quiver's 8 s), so that a
/// native client's PINGs, which reset the server's timer too, always come first and the server only answers them;
/// at most 10 s so that a client that sends none still hears from the server within its 12 s `dead_server_after`;
/// never sooner than the client's, never later than half the idle timeout. With
/// equal intervals the two ends took turns, and a server PING costs it more than an answer (its own timer, a
/// loss-detection timer, the ACK to take in): idle CPU at 10,000 connections 11.2–11.6 % → 8.6–10.1 % of a core
/// (docs/benchmarks.md, "10,000 idle connections"). The server's own PINGs are for peers that send none
/// (browsers), still well within the 30 s idle timeout. Sub-second intervals are probes, not keep-alives (the `tail-probe`
/// tuning): both ends keep those as given.
pub fn server_keep_alive(keep_alive: Option<Duration>) -> Option<Duration> {
    keep_alive.map(|k| match k >= Duration::from_secs(1) {
        true => k.saturating_mul(2).min(SERVER_KEEP_ALIVE_MAX).max(k).min(IDLE_TIMEOUT / 2),
        false => k,
    })
}

/// The client's transport: the server may open one unidirectional stream per room the client can join.
pub fn client_transport(limits: &Limits, tuning: &TransportTuning) -> Arc<TransportConfig> {
    let mut config = common(tuning);
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        // +1: a room being left and rejoined overlaps its old stream's finish with the new stream.
        .max_concurrent_uni_streams(VarInt::from_u32(limits.max_rooms.saturating_add(1)));
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_keeps_alive_behind_its_clients() {
        let secs = Duration::from_secs;
        assert_eq!(server_keep_alive(Some(KEEP_ALIVE)), Some(secs(10)));
        assert_eq!(server_keep_alive(Some(secs(8))), Some(secs(10)));
        assert_eq!(server_keep_alive(Some(secs(12))), Some(secs(12)), "never sooner than the client's");
        assert_eq!(server_keep_alive(Some(secs(60))), Some(IDLE_TIMEOUT / 2), "but within the idle timeout");
        assert_eq!(server_keep_alive(Some(Duration::from_millis(1))), Some(Duration::from_millis(1)), "a probe");
        assert_eq!(server_keep_alive(None), None);
    }

    /// What a client's datagrams may hold on the server before they are read is bounded (quinn's default, 1.25 MB,
    /// held per connection while a browser withholds its CONNECT).
    #[test]
    fn the_servers_datagram_receive_buffer_is_bounded() {
        let config = format!("{:?}", server_transport(&Limits::default(), &TransportTuning::quiver()));
        assert!(config.contains("datagram_receive_buffer_size: Some(65536)"), "{config}");
    }
}
