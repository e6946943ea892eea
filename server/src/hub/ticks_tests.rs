//! The tick hub without sockets: seqs, fan-out snapshots, channel lifetimes and budgets, max ages.

use super::*;

#[derive(Debug, Default)]
struct Record(Mutex<Vec<(u64, u64, Option<u64>)>>);

impl TickSink for Record {
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>, _: &mut TickDatagrams) {
        self.0.lock().unwrap().push((channel_id, tick.seq, max_age_us));
    }
}

fn offer(fanout: Option<Fanout>) -> u64 {
    let fanout = fanout.expect("a claimed channel");
    let seq = fanout.tick.seq;
    fanout.offer();
    seq
}

#[test]
fn a_fanouts_datagrams_share_one_allocation_and_decode_to_the_tick() {
    use quiver_proto::TickHeader;
    let payload = Bytes::from_static(b"price 101.25");
    let tick = Tick { seq: 70_000, sent_time_us: 1_700_000_000_000_000, received_us: 0, payload: payload.clone() };
    let mut datagrams = TickDatagrams::new(3);
    let ids = [1u64, 300, 5_000_000_000, 7];
    let out: Vec<Bytes> = ids.iter().map(|id| datagrams.datagram(*id, &tick).unwrap()).collect();
    for (id, datagram) in ids.iter().zip(&out) {
        let (header, body) = TickHeader::decode(datagram).unwrap();
        assert_eq!((header.channel_id, header.seq, header.sent_time_us), (*id, tick.seq, tick.sent_time_us));
        assert_eq!(body, payload);
        let mut expected = BytesMut::new();
        TickHeader { channel_id: *id, seq: tick.seq, sent_time_us: tick.sent_time_us }.encode(&mut expected).unwrap();
        expected.put_slice(&payload);
        assert_eq!(datagram, &expected.freeze(), "the wire layout of TickHeader::encode");
    }
    // The planned datagrams sit side by side in one buffer.
    let (first, third) = (out[0].as_ptr() as usize, out[2].as_ptr() as usize);
    assert_eq!(third - first, out[0].len() + out[1].len(), "contiguous in one allocation");
    let too_large = Tick { seq: u64::MAX, ..tick.clone() };
    assert!(TickDatagrams::new(1).datagram(1, &too_large).is_none());
    let too_late = Tick { sent_time_us: u64::MAX, ..tick.clone() };
    assert!(TickDatagrams::new(1).datagram(1, &too_late).is_none());
    // A large fan-out: buffers of PER_BUFFER datagrams, so one held datagram keeps at most that many alive.
    let mut datagrams = TickDatagrams::new(100);
    let out: Vec<Bytes> = (0..100).map(|id| datagrams.datagram(id, &tick).unwrap()).collect();
    let starts: Vec<usize> = out.iter().map(|d| d.as_ptr() as usize).collect();
    let new_buffers = starts.windows(2).zip(&out).filter(|(w, d)| w[1] != w[0] + d.len()).count();
    assert_eq!(new_buffers, 100 / TickDatagrams::PER_BUFFER, "a new buffer every PER_BUFFER datagrams");
}

/// A tick kept by a subscriber (waiting in its conflation slot, or in flight) holds its payload alone, not the
/// buffer it was read from: quinn reads a batch of datagrams (GRO, up to ~64 KiB) into one allocation, and a tick cut
/// from it kept the whole batch alive for as long as it waited.
#[test]
fn a_kept_tick_holds_its_payload_not_the_buffer_it_was_read_from() {
    #[derive(Debug, Default)]
    struct Keep(Mutex<Vec<Tick>>);
    impl TickSink for Keep {
        fn offer(&self, _: u64, tick: Tick, _: Option<u64>, _: &mut TickDatagrams) {
            self.0.lock().unwrap().push(tick);
        }
    }
    let hub = LocalTicks::default();
    let keep = Arc::new(Keep::default());
    hub.subscribe("prices", 1, keep.clone()).unwrap();
    hub.claim("prices", None).unwrap();
    let batch = Bytes::from(vec![7u8; 65_536]);
    offer(hub.publish("prices", 0, 0, batch.slice(100..112)));
    assert_eq!(keep.0.lock().unwrap()[0].payload, batch.slice(100..112));
    assert!(batch.is_unique(), "the batch is held by the waiting tick");
}

#[test]
fn seqs_are_per_channel_and_every_subscriber_gets_each_tick() {
    let hub = LocalTicks::default();
    let (a, b) = (Arc::new(Record::default()), Arc::new(Record::default()));
    let sub_a = hub.subscribe("prices", 1, a.clone()).unwrap();
    hub.subscribe("prices", 9, b.clone()).unwrap();
    hub.claim("prices", None).unwrap();
    hub.claim("other", None).unwrap();
    assert_eq!(offer(hub.publish("prices", 0, 0, Bytes::new())), 1);
    assert_eq!(offer(hub.publish("other", 0, 0, Bytes::new())), 1);
    hub.set_max_age("prices", None, 500);
    assert_eq!(offer(hub.publish("prices", 0, 0, Bytes::new())), 2);
    assert!(hub.unsubscribed("prices", sub_a));
    assert!(!hub.unsubscribed("prices", sub_a), "ended already: said so (the cluster counts interest on it)");
    hub.unsubscribe("prices", sub_a);
    offer(hub.publish("prices", 0, 0, Bytes::new()));
    assert_eq!(*a.0.lock().unwrap(), [(1, 1, None), (1, 2, Some(500))]);
    assert_eq!(*b.0.lock().unwrap(), [(9, 1, None), (9, 2, Some(500)), (9, 3, Some(500))]);
}

/// A channel's max age is the smallest its publishers ask for now: one that left takes its own with it.
#[test]
fn a_publishers_max_age_leaves_with_its_claim() {
    let hub = LocalTicks::default();
    let a = Arc::new(Record::default());
    hub.subscribe("c", 1, a.clone()).unwrap();
    let max_age = |hub: &LocalTicks| hub.publish("c", 0, 0, Bytes::new()).unwrap().max_age_us;
    hub.claim("c", Some(1_000)).unwrap();
    hub.claim("c", Some(50_000)).unwrap();
    assert_eq!(max_age(&hub), Some(1_000));
    hub.release("c", Some(1_000));
    assert_eq!(max_age(&hub), Some(50_000), "the strict publisher left");
    hub.set_max_age("c", Some(50_000), 20_000);
    assert_eq!(max_age(&hub), Some(20_000));
    hub.claim("c", None).unwrap();
    hub.release("c", Some(20_000));
    assert_eq!(max_age(&hub), None, "the publisher left has asked for none");
}

#[test]
fn a_fanout_is_a_snapshot_taken_when_the_seq_was_stamped() {
    let hub = LocalTicks::default();
    let a = Arc::new(Record::default());
    hub.claim("c", None).unwrap();
    let fanout = hub.publish("c", 0, 0, Bytes::new()).unwrap();
    hub.subscribe("c", 0, a.clone()).unwrap();
    assert_eq!((fanout.tick.seq, fanout.subscribers.len()), (1, 0), "a later subscriber is not offered it");
    let fanout = hub.publish("c", 0, 0, Bytes::new()).unwrap();
    assert_eq!(fanout.subscribers.len(), 1);
}

/// A subscriber whose ticks go through a latest-wins slot, as the network layer's sink does.
#[derive(Debug, Default)]
struct Slots(Mutex<crate::hub::conflate::Conflation>, Mutex<Vec<(u64, crate::hub::conflate::Offered)>>);

impl TickSink for Slots {
    fn offer(&self, channel_id: u64, tick: Tick, max_age_us: Option<u64>, _: &mut TickDatagrams) {
        let seq = tick.seq;
        let offered = self.0.lock().unwrap().offer(channel_id, tick, max_age_us, true);
        self.1.lock().unwrap().push((seq, offered));
    }

    fn open(&self, channel_id: u64, last_seq: u64) {
        self.0.lock().unwrap().open(channel_id, last_seq);
    }
}

/// A protocol-4 session's Subscribe after its Unsubscribe reuses the id its claim shares: a fan-out stamped before
/// (here still on its way when the session subscribed again) must not reach the subscriber after the newer ticks.
/// The hub opens the subscriber's slot at the channel's seq when it adds it; the slot used to start at 0 there.
#[test]
fn a_subscription_made_again_under_the_same_id_takes_nothing_stamped_before_it() {
    use crate::hub::conflate::Offered;
    let hub = LocalTicks::default();
    let slots = Arc::new(Slots::default());
    hub.claim("c", None).unwrap();
    let first = hub.subscribe("c", 5, slots.clone()).unwrap();
    let late = hub.publish("c", 0, 0, Bytes::new()).expect("claimed"); // seq 1, still to be offered
    offer(hub.publish("c", 0, 0, Bytes::new())); // seq 2
    hub.unsubscribe("c", first);
    slots.0.lock().unwrap().remove(5);
    hub.subscribe("c", 5, slots.clone()).unwrap(); // the same id
    late.offer();
    offer(hub.publish("c", 0, 0, Bytes::new())); // seq 3
    let offered: Vec<(u64, Offered)> = slots.1.lock().unwrap().drain(..).collect();
    assert!(matches!(offered[..], [(2, Offered::Send(_)), (1, Offered::Older), (3, Offered::Send(_))]), "{offered:?}");
}

/// Thousands of subscriptions coming and going on one channel (clients resubscribing after a restart): each tick
/// goes to the subscribers of its moment, in the order they subscribed, and ticks between two changes share one
/// snapshot (a tick allocates nothing). Each change once copied the whole list under the shard's lock.
#[test]
fn subscriptions_come_and_go_in_thousands_and_ticks_share_a_snapshot_between_changes() {
    let hub = LocalTicks::default();
    hub.claim("c", None).unwrap();
    let sink = Arc::new(Record::default());
    let ids: Vec<_> = (0..5_000u64).map(|n| hub.subscribe("c", n, sink.clone()).unwrap()).collect();
    let first = hub.publish("c", 0, 0, Bytes::new()).unwrap();
    let second = hub.publish("c", 0, 0, Bytes::new()).unwrap();
    assert!(Subscribers::ptr_eq(&first.subscribers, &second.subscribers), "no change, no new snapshot");
    let channel_ids: Vec<u64> = first.subscribers.iter().map(|(_, channel_id, _)| *channel_id).collect();
    assert_eq!(channel_ids, (0..5_000).collect::<Vec<_>>(), "in the order they subscribed");
    // Every other one leaves, the rest stay, and a late one joins.
    for id in ids.iter().step_by(2) {
        hub.unsubscribe("c", *id);
    }
    hub.unsubscribe("c", ids[0]);
    hub.subscribe("c", 9_999, sink.clone()).unwrap();
    let third = hub.publish("c", 0, 0, Bytes::new()).unwrap();
    let channel_ids: Vec<u64> = third.subscribers.iter().map(|(_, channel_id, _)| *channel_id).collect();
    let expected: Vec<u64> = (1..5_000).step_by(2).chain([9_999]).collect();
    assert_eq!(channel_ids, expected);
    assert_eq!(first.subscribers.len(), 5_000, "a snapshot taken before is untouched");
    for id in ids.iter().skip(1).step_by(2) {
        hub.unsubscribe("c", *id);
    }
    assert_eq!(hub.publish("c", 0, 0, Bytes::new()).unwrap().subscribers.len(), 1);
}

#[test]
fn a_channel_lives_while_used_and_the_budget_bounds_how_many() {
    let hub = LocalTicks::new(2);
    let a = Arc::new(Record::default());
    assert!(hub.publish("nobody", 0, 0, Bytes::new()).is_none(), "publishing creates nothing");
    hub.subscribe("watched", 0, a.clone()).unwrap();
    assert!(hub.publish("watched", 0, 0, Bytes::new()).is_none(), "nor stamps a channel without a publisher");
    hub.unsubscribe("watched", 1);
    let sub = hub.subscribe("x", 0, a.clone()).unwrap();
    hub.claim("y", None).unwrap();
    assert_eq!(hub.subscribe("z", 1, a.clone()).unwrap_err().code, ErrorCode::ServerFull);
    assert_eq!(hub.claim("z", None).unwrap_err().code, ErrorCode::ServerFull);
    assert!(hub.subscribe("y", 2, a.clone()).is_ok(), "an existing channel takes more subscribers");
    assert_eq!((hub.channels(), hub.refused()), (2, 2));
    hub.unsubscribe("x", sub);
    assert_eq!(hub.channels(), 1, "x had no one left");
    hub.release("y", None);
    assert_eq!(hub.channels(), 1, "y still has a subscriber");
    hub.subscribe("z", 1, a).unwrap();
    assert_eq!(hub.channels(), 2);
}
