//! The fan-out's workload, the same for both transports: ticks and chat sent on schedule, their send times kept,
//! and each arrival at a subscriber timed against them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use quiver_client::latency::LatencyRecorder;
use tokio::time::Instant;

use super::{cpu::Spent, report::FanoutSide, FanoutConfig};
use crate::bench::{
    namespaces,
    series::{parse, payload, Schedule, RELIABLE_DRAIN_CAP},
};
use crate::sync::lock;

/// Send times of the measured messages and what arrived, for one side of a fan-out run.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    tick_origins: HashMap<u64, Instant>,
    chat_origins: HashMap<u64, Instant>,
    /// Of the origins, those the sender never sent (it fell too far behind): counted lost, not waited for.
    ticks_unsent: u64,
    chat_unsent: u64,
    tick_latency: LatencyRecorder,
    chat_latency: LatencyRecorder,
    ticks: u64,
    chat: u64,
    stale: u64,
    /// Ticks that arrived and were let go of by a subscription's backlog (its reader fell behind).
    superseded: u64,
    /// Every tick and chat arrival of the run, warm-up included: the deliveries the server's CPU time paid for.
    arrivals: u64,
    /// Of `arrivals`, the ticks: what `stale` (counted by the subscriptions over the whole run, warm-up included)
    /// is a share of.
    tick_arrivals: u64,
    /// The messages each subscriber received (warm-up's too): a copy (the link emulator's `duplicate_pct`; raw UDP
    /// does not drop copies) counts once, so delivered % never passes 100 nor hides a loss, and a delivery is
    /// counted for CPU per delivery once. A bit per message index and subscriber: a set of every delivery (its
    /// rehash, at half a million of them, under this lock every receiver takes) grew past a gigabyte in a long run.
    seen: HashMap<(u32, Kind), Vec<u64>>,
    /// The newest tick (by publish index) each subscriber got: one older arriving after it is stale, in every
    /// series alike (a Quiver subscription drops such a tick before the bench sees it; raw UDP and bare quinn
    /// handed it on, and it was measured, the slowest arrivals in their percentiles only).
    newest_tick: HashMap<u32, u64>,
}

pub(super) type SharedRecorder = Arc<Mutex<Recorder>>;

/// A tick or chat message, as a fan-out receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Tick,
    Chat,
}

impl Recorder {
    /// Subscriber `who` received `payload`, a message of `kind`.
    pub(super) fn received(recorder: &SharedRecorder, who: u32, kind: Kind, payload: &[u8]) {
        let now = Instant::now();
        let Some((_, i)) = parse(payload) else { return };
        let mut r = lock(recorder);
        let r = &mut *r;
        // A copy (the link emulator duplicates after the server sent: raw UDP's receivers see it, quinn drops it)
        // is not a delivery the server paid for: counted once, so raw UDP's CPU per delivery is not divided by more
        // deliveries than it made.
        if !first_time(r.seen.entry((who, kind)).or_default(), i) {
            return;
        }
        r.arrivals += 1;
        if kind == Kind::Tick {
            let newest = r.newest_tick.entry(who).or_insert(i);
            if i < *newest {
                r.stale += 1; // arrived after a newer one: paid for by the server, not measured
                return;
            }
            *newest = i;
            r.tick_arrivals += 1;
        }
        let (origins, latency, count) = match kind {
            Kind::Tick => (&r.tick_origins, &mut r.tick_latency, &mut r.ticks),
            Kind::Chat => (&r.chat_origins, &mut r.chat_latency, &mut r.chat),
        };
        if let Some(origin) = origins.get(&i) {
            latency.record(now - *origin);
            *count += 1;
        }
    }

    /// `count` ticks a subscriber dropped as stale (after a newer one): deliveries the server paid for, as a
    /// baseline's stale arrivals are.
    pub(super) fn stale_dropped(recorder: &SharedRecorder, count: u64) {
        let mut r = lock(recorder);
        r.stale += count;
        r.arrivals += count;
    }

    /// `count` ticks a subscription's backlog let go of, its reader behind: neither delivered nor measured, but
    /// sent (the server's CPU per delivery counts them).
    pub(super) fn superseded(recorder: &SharedRecorder, count: u64) {
        let mut r = lock(recorder);
        r.superseded += count;
        r.arrivals += count;
    }

    /// Every chat message (and, when they are reliable, every tick) reached every subscriber.
    fn reliable_complete(recorder: &SharedRecorder, subscribers: u32, ticks_reliable: bool) -> bool {
        let r = lock(recorder);
        let n = u64::from(subscribers);
        let chat_done = r.chat >= (r.chat_origins.len() as u64 - r.chat_unsent) * n;
        chat_done && (!ticks_reliable || r.ticks >= (r.tick_origins.len() as u64 - r.ticks_unsent) * n)
    }

    /// The run's numbers as the side `name`; `cpu` is what the server's threads and the clients spent on it.
    pub(super) fn side(recorder: &SharedRecorder, name: &str, subscribers: u32, cpu: Spent) -> FanoutSide {
        let per_delivery = |cpu: Option<Duration>, arrivals: u64| {
            cpu.filter(|_| arrivals > 0).map(|cpu| cpu.as_secs_f64() * 1e6 / arrivals as f64)
        };
        let r = lock(recorder);
        let n = u64::from(subscribers);
        let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        let (ticks_sent, chat_sent) = (r.tick_origins.len() as u64, r.chat_origins.len() as u64);
        FanoutSide {
            name: name.to_string(),
            ticks_sent,
            delivered_pct: pct(r.ticks, ticks_sent * n),
            // Both over the whole run: the subscriptions count their stale ticks from their start, warm-up included.
            stale_pct: pct(r.stale, r.tick_arrivals + r.stale),
            superseded: r.superseded,
            tick_latency: r.tick_latency.summary(),
            chat_sent,
            chat_delivered_pct: pct(r.chat, chat_sent * n),
            chat_latency: r.chat_latency.summary(),
            tick_curve: r.tick_latency.curve(),
            chat_curve: r.chat_latency.curve(),
            deliveries: r.arrivals,
            server_cpu_s: cpu.server.map(|cpu| cpu.as_secs_f64()),
            cpu_us_per_delivery: per_delivery(cpu.server, r.arrivals),
            client_cpu_us_per_delivery: per_delivery(cpu.clients, r.arrivals),
            server_ticks: None,
        }
    }
}

/// Sets bit `i` of `bits`; false when it was set already (or `i` is past any run's messages: not this bench's).
fn first_time(bits: &mut Vec<u64>, i: u64) -> bool {
    if i >= 1 << 32 {
        return false;
    }
    let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
    if word >= bits.len() {
        bits.resize(word + 1, 0);
    }
    let first = bits[word] & bit == 0;
    bits[word] |= bit;
    first
}

/// Sends ticks (`publish`) and chat messages (`post(poster, payload)`, the subscribers in turn) on schedule,
/// recording the measured ones' send times, then waits for stragglers. Called once every connection is set up:
/// over an impaired link that takes seconds for many clients, and a schedule fixed before would count the set-up
/// as latency.
pub(super) async fn drive(
    config: &FanoutConfig,
    recorder: &SharedRecorder,
    ticks_reliable: bool,
    mut publish: impl FnMut(Vec<u8>) + Send,
    mut post: impl FnMut(usize, Vec<u8>) + Send,
) {
    let start_at = Instant::now() + Duration::from_millis(200);
    let plan = |rate| Schedule::at_rate(rate, config.warmup, config.duration, start_at);
    let tick_plan = plan(config.rate);
    // No chat: an empty schedule (any interval).
    let chat_plan = if config.chat_rate > 0.0 {
        plan(config.chat_rate)
    } else {
        Schedule { start: start_at, interval: Duration::from_secs(1), count: 0, warmup: 0 }
    };
    let size = config.size;
    // A sender that fell too far behind stops (`Schedule::due`); what it did not send still counts, as sent and
    // never delivered (lost), so that delivered % and the percentiles do not leave out the worst stretch.
    // (Not waited for as stragglers: `reliable_complete` leaves them out.)
    let not_sent = |plan: &Schedule, from: u64, chat: bool| {
        let mut r = lock(recorder);
        for j in from.max(plan.warmup)..plan.count {
            let origin = plan.start + plan.interval.mul_f64(j as f64);
            if chat {
                r.chat_origins.insert(j, origin);
                r.chat_unsent += 1;
            } else {
                r.tick_origins.insert(j, origin);
                r.ticks_unsent += 1;
            }
        }
    };
    let ticks = async {
        for i in 0..tick_plan.count {
            let Some(origin) = tick_plan.due(i).await else {
                not_sent(&tick_plan, i, false);
                break;
            };
            if i >= tick_plan.warmup {
                lock(recorder).tick_origins.insert(i, origin);
            }
            publish(payload(0, i, size));
        }
    };
    let subscribers = config.subscribers as usize;
    let chat = async {
        if config.chat_rate <= 0.0 {
            return;
        }
        for i in 0..chat_plan.count {
            let Some(origin) = chat_plan.due(i).await else {
                not_sent(&chat_plan, i, true);
                break;
            };
            if i >= chat_plan.warmup {
                lock(recorder).chat_origins.insert(i, origin);
            }
            post((i % subscribers as u64) as usize, payload(0, i, 64));
        }
    };
    tokio::join!(ticks, chat);
    let drained = Instant::now();
    tokio::time::sleep(namespaces::drain(config.profile.as_ref())).await;
    // Reliable deliveries still being retransmitted are waited for (up to a cap), not counted lost.
    while !Recorder::reliable_complete(recorder, config.subscribers, ticks_reliable)
        && drained.elapsed() < RELIABLE_DRAIN_CAP
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a delivery (the link emulator duplicates packets; raw UDP keeps copies) counts once per subscriber,
    /// so a lost delivery still shows.
    #[test]
    fn a_copy_of_a_delivery_counts_once_per_subscriber() {
        let recorder = SharedRecorder::default();
        lock(&recorder).tick_origins.insert(0, Instant::now());
        let tick = payload(0, 0, 64);
        Recorder::received(&recorder, 0, Kind::Tick, &tick);
        Recorder::received(&recorder, 0, Kind::Tick, &tick); // a copy
        let side = Recorder::side(&recorder, "x", 2, Spent::default());
        assert_eq!(side.delivered_pct, 50.0, "one of two subscribers got it");
        Recorder::received(&recorder, 1, Kind::Tick, &tick);
        let side = Recorder::side(&recorder, "x", 2, Spent::default());
        assert_eq!(side.delivered_pct, 100.0);
        assert_eq!(side.deliveries, 2, "the copy is no delivery the server paid for (CPU per delivery)");
    }

    /// A publisher that fell too far behind stops sending (`Schedule::due`), and the ticks it did not send count as
    /// sent and lost: they had vanished from the counts, leaving delivered % at 100 and the worst stretch out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_a_late_publisher_never_sent_count_as_lost() {
        let config = FanoutConfig {
            subscribers: 1,
            rate: 100.0,
            size: 64,
            chat_rate: 0.0,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            profile: None,
            server: None,
            token: None,
            compare_websocket: false,
            netns: None,
            baselines: false,
        };
        let recorder = SharedRecorder::default();
        let mut first = true;
        let publish = |_| {
            if std::mem::take(&mut first) {
                // Stalled past the schedule's end and its overrun: nothing more is sent.
                std::thread::sleep(crate::bench::series::OVERRUN + Duration::from_millis(800));
            }
        };
        // Ticks counted reliable (as the WebSocket side's): the unsent ones are not waited for (15 s) either.
        let started = Instant::now();
        drive(&config, &recorder, true, publish, |_, _| {}).await;
        assert!(started.elapsed() < crate::bench::series::OVERRUN + RELIABLE_DRAIN_CAP, "{:?}", started.elapsed());
        let side = Recorder::side(&recorder, "x", 1, Spent::default());
        assert_eq!(side.ticks_sent, 50, "the measured ticks of the schedule, sent or not");
        assert_eq!(side.delivered_pct, 0.0);
    }

    /// A tick that arrives after a newer one is stale in every series, raw UDP's and bare quinn's as Quiver's (whose
    /// subscription drops it): not measured, counted stale, and a delivery the server paid for. Before, the
    /// baselines measured it (their slowest arrivals) and showed 0 % stale on a link that reordered.
    #[test]
    fn a_tick_older_than_one_received_is_stale_in_every_series() {
        let recorder = SharedRecorder::default();
        for i in 0..3 {
            lock(&recorder).tick_origins.insert(i, Instant::now());
        }
        for i in [0, 2, 1] {
            Recorder::received(&recorder, 0, Kind::Tick, &payload(0, i, 64));
        }
        Recorder::received(&recorder, 1, Kind::Tick, &payload(0, 1, 64)); // another subscriber's own order
        let side = Recorder::side(&recorder, "x", 2, Spent::default());
        assert_eq!(side.tick_latency.count, 3, "measured: 0 and 2 of the first, 1 of the second");
        assert_eq!(side.deliveries, 4);
        assert_eq!(side.stale_pct, 25.0, "1 stale of 4 arrivals");
        Recorder::stale_dropped(&recorder, 2);
        Recorder::superseded(&recorder, 1);
        assert_eq!(Recorder::side(&recorder, "x", 2, Spent::default()).deliveries, 7, "sent and paid for");
    }

    /// The stale share compares like with like: the subscriptions count stale ticks from their start, warm-up
    /// included, so they are a share of every tick that arrived, not of the measured ones (which made it read high).
    #[test]
    fn the_stale_share_is_of_every_tick_arrival() {
        let recorder = SharedRecorder::default();
        lock(&recorder).tick_origins.insert(9, Instant::now());
        for i in 0..9 {
            Recorder::received(&recorder, 0, Kind::Tick, &payload(0, i, 64)); // warm-up: not measured
        }
        Recorder::received(&recorder, 0, Kind::Tick, &payload(0, 9, 64));
        Recorder::stale_dropped(&recorder, 10);
        let side = Recorder::side(&recorder, "x", 1, Spent::default());
        assert_eq!(side.stale_pct, 50.0, "10 stale of 20 arrivals, not of 11");
    }
}
