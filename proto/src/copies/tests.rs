//! The copy datagram codec and the copy queue, without IO.

use super::*;
use crate::{EventKind, FrameCodec, RoomEvent, RoomFrame};
use proptest::prelude::*;

fn frame(seq: u64) -> Bytes {
    let kind = EventKind::Message { sender: "a".into(), client_msg_id: seq, body: Bytes::from_static(b"hi") };
    let event = RoomFrame::Event(RoomEvent { seq, time_us: 1, kind });
    FrameCodec::new(1024).encode_to_vec(&event).unwrap().freeze()
}

#[test]
fn a_room_copy_round_trips_to_the_stream_frames() {
    let frames = [frame(7), frame(8)];
    let mut out = Vec::new();
    encode_room(3, 9, &frames, &mut out).unwrap();
    assert_eq!(out.len(), room_header_len(3, 9) + frames.iter().map(Bytes::len).sum::<usize>());
    assert!(is_copy(&out));
    let Copy::Room { slot, first, frames: bodies } = Copy::decode(&Bytes::from(out), 1024).unwrap() else {
        panic!("not a room copy")
    };
    assert_eq!((slot, first, bodies.len()), (3, 9, 2));
    for (body, whole) in bodies.iter().zip(&frames) {
        assert_eq!(&whole[1..], &body[..], "the body is the stream frame without its length");
        let decoded: RoomFrame = crate::frame::decode_body(body).unwrap();
        assert!(matches!(decoded, RoomFrame::Event(_)));
    }
}

#[test]
fn a_post_copy_round_trips() {
    let mut out = Vec::new();
    encode_posts(1, &[frame(1)], &mut out).unwrap();
    assert_eq!(out.len(), posts_header_len(1) + frame(1).len());
    assert!(matches!(Copy::decode(&Bytes::from(out), 1024), Ok(Copy::Posts { first: 1, frames }) if frames.len() == 1));
}

#[test]
fn bad_copies_are_named() {
    let decode = |bytes: &[u8]| Copy::decode(&Bytes::copy_from_slice(bytes), 16);
    assert!(!is_copy(crate::PROBE), "the probe is not a copy");
    assert!(!is_copy(&[5, 0, 0]), "a tick is not a copy");
    assert_eq!(decode(&[5, 0, 0, 1]), Err(CopyError::NotACopy));
    assert_eq!(decode(&[0, 2, 1]), Err(CopyError::UnknownKind(2)));
    assert_eq!(decode(&[0, 0, 1]), Err(CopyError::Truncated("the first position")));
    assert_eq!(decode(&[0, 1, 1]), Err(CopyError::FrameCount(0)));
    assert_eq!(decode(&[0, 1, 1, 3, 1]), Err(CopyError::Truncated("a frame")));
    assert_eq!(decode(&[0, 1, 1, 17]), Err(CopyError::FrameTooLarge { len: 17, max: 16 }));
    let mut many = vec![0, 1, 1];
    many.extend(std::iter::repeat_n([1u8, 0], MAX_COPY_FRAMES + 1).flatten());
    assert_eq!(decode(&many), Err(CopyError::FrameCount(MAX_COPY_FRAMES + 1)));
}

const MS: Duration = Duration::from_millis(1);

fn queue(max_copies: u8) -> CopyQueue {
    CopyQueue::new(max_copies, MS, 5 * MS)
}

#[test]
fn a_queue_packs_consecutive_frames_and_sends_each_copy_when_due_then_forgets_them() {
    let t0 = Instant::now();
    let mut queue = queue(2);
    queue.observe(0, 0);
    queue.observe(100, 10); // 10 % loss: two copies
    queue.push(CopyTarget::Room(1), 5, frame(1), Some(t0));
    queue.push(CopyTarget::Room(1), 6, frame(2), Some(t0));
    queue.push(CopyTarget::Posts, 3, frame(3), Some(t0));
    queue.push(CopyTarget::Room(1), 8, frame(4), Some(t0)); // not consecutive: a datagram of its own
    queue.push(CopyTarget::Room(2), 1, Bytes::from(vec![0; 2000]), Some(t0)); // never fits: stream only
    let round = |queue: &mut CopyQueue, at: Instant| -> Vec<Copy> {
        queue.take(at, 1200).iter().map(|d| Copy::decode(d, 4096).unwrap()).collect()
    };
    assert!(round(&mut queue, t0).is_empty(), "not before the first delay: the stream frame goes alone");
    assert_eq!(queue.next_due(t0), Some(MS));
    for at in [t0 + MS, t0 + 6 * MS] {
        let copies = round(&mut queue, at);
        assert_eq!(copies.len(), 3, "{copies:?}");
        assert!(matches!(&copies[0], Copy::Room { slot: 1, first: 5, frames } if frames.len() == 2));
        assert!(matches!(&copies[1], Copy::Posts { first: 3, frames } if frames.len() == 1));
        assert!(matches!(&copies[2], Copy::Room { slot: 1, first: 8, frames } if frames.len() == 1));
        if at == t0 + MS {
            assert!(round(&mut queue, at + 4 * MS).is_empty(), "the next copy waits for the spacing");
            assert_eq!(queue.next_due(at + 4 * MS), Some(MS));
        }
    }
    assert!(queue.is_empty(), "two copies, then nothing");
    assert_eq!(queue.next_due(t0), None);
    let mut off = self::queue(0);
    off.push(CopyTarget::Posts, 1, frame(1), Some(t0));
    assert!(off.is_empty(), "copies off: nothing queued");
}

#[test]
fn a_held_frame_is_copied_only_once_released() {
    let t0 = Instant::now();
    let mut queue = queue(1);
    queue.push(CopyTarget::Room(4), 2, frame(1), None);
    queue.push(CopyTarget::Room(4), 3, frame(3), None);
    queue.push(CopyTarget::Room(5), 2, frame(2), None);
    assert!(queue.take(t0 + 10 * MS, 1200).is_empty(), "not written yet");
    assert_eq!(queue.next_due(t0), None);
    // Slot 4's stream took position 2; position 3 is still queued (flow control): its copy stays held.
    assert_eq!(queue.release(CopyTarget::Room(4), 3, t0), 1, "one frame released");
    assert_eq!(queue.next_due(t0), Some(MS));
    let copies = queue.take(t0 + MS, 1200);
    assert_eq!(copies.len(), 1);
    assert!(
        matches!(Copy::decode(&copies[0], 4096), Ok(Copy::Room { slot: 4, first: 2, ref frames }) if frames.len() == 1)
    );
    assert_eq!(queue.next_due(t0 + MS), None, "position 3 and slot 5 still held");
    assert_eq!(queue.release(CopyTarget::Room(4), 4, t0 + 2 * MS), 1);
    assert_eq!(queue.release(CopyTarget::Room(4), 4, t0 + 2 * MS), 0, "nothing held any more: the write is probed");
    let copies = queue.take(t0 + 3 * MS, 1200);
    assert!(matches!(Copy::decode(&copies[0], 4096), Ok(Copy::Room { slot: 4, first: 3, .. })));
    assert!(!queue.is_empty(), "slot 5 still held");
}

#[test]
fn copies_follow_the_observed_loss_up_to_the_maximum() {
    let mut queue = queue(3);
    assert_eq!(queue.copies(), 1, "one copy before anything is known");
    let mut sent = 0;
    let mut lost = 0;
    let mut feed = |queue: &mut CopyQueue, rate: f64, windows: u32| {
        for _ in 0..windows {
            sent += 100;
            lost += (100.0 * rate) as u64;
            queue.observe(sent, lost);
        }
    };
    feed(&mut queue, 0.0, 30);
    assert_eq!(queue.copies(), 1, "clean");
    feed(&mut queue, 0.01, 30);
    assert_eq!(queue.copies(), 1, "1 %: 10⁻⁴ with one copy");
    feed(&mut queue, 0.05, 30);
    assert_eq!(queue.copies(), 2, "5 %");
    feed(&mut queue, 0.10, 30);
    assert_eq!(queue.copies(), 3, "10 %");
    feed(&mut queue, 0.40, 30);
    assert_eq!(queue.copies(), 3, "never above the maximum");
    let t0 = Instant::now();
    queue.push(CopyTarget::Posts, 1, frame(1), Some(t0));
    let rounds = (1..20).filter(|&ms| !queue.take(t0 + ms * MS, 1200).is_empty()).count();
    assert_eq!(rounds, 3, "three copies");
    feed(&mut queue, 0.0, 30);
    assert_eq!(queue.copies(), 1, "the path cleared up");
    let mut two = self::queue(2);
    two.observe(0, 0);
    two.observe(1000, 100);
    assert_eq!((two.copies(), two.loss()), (2, 0.1), "capped at two");
}

#[test]
fn a_queue_is_bounded_and_splits_at_the_datagram_size() {
    let mut queue = queue(1);
    let t0 = Instant::now();
    for position in 0..(MAX_PENDING_COPIES as u64 + 10) {
        queue.push(CopyTarget::Room(0), position, frame(position), Some(t0));
    }
    let datagrams = queue.take(t0 + MS, 200);
    let mut next = 10;
    for datagram in &datagrams {
        assert!(datagram.len() <= 200);
        let Copy::Room { first, frames, .. } = Copy::decode(datagram, 4096).unwrap() else { panic!() };
        assert_eq!(first, next, "consecutive, oldest dropped");
        next += frames.len() as u64;
    }
    assert_eq!(next, MAX_PENDING_COPIES as u64 + 10);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Copy::decode(&Bytes::from(bytes), 32);
    }
}

/// A stalled or ended room's frames no longer take the places a healthy room's copies need: a full queue drops its
/// oldest held frame first, `forget` drops an ended stream's, and a frame too large for any datagram is not queued.
/// Before, 256 held frames of a room nobody read pushed out the next room's copy, and nothing ever removed them.
#[test]
fn held_and_ended_frames_do_not_crowd_out_live_copies() {
    let now = Instant::now();
    let mut queue = CopyQueue::new(2, Duration::from_millis(1), Duration::from_millis(5));
    queue.push(CopyTarget::Room(2), 1, frame(1), Some(now)); // written: due in 1 ms
    for position in 1..=MAX_PENDING_COPIES as u64 {
        queue.push(CopyTarget::Room(1), position, frame(position), None); // held: its stream takes nothing
    }
    let copies = queue.take(now + Duration::from_millis(1), 1_200);
    assert_eq!(copies.len(), 1, "room 2's copy, not pushed out by room 1's held frames");
    assert!(matches!(Copy::decode(&copies[0], 1024), Ok(Copy::Room { slot: 2, .. })));
    assert!(!queue.is_empty());
    queue.forget(CopyTarget::Room(1));
    assert!(queue.is_empty(), "room 1 ended: nothing of it is left");
    // A frame no datagram can carry (the last round allowed 1,200 bytes) is not queued: the stream carries it.
    let large = FrameCodec::new(1 << 20)
        .encode_to_vec(&RoomFrame::Event(RoomEvent {
            seq: 1,
            time_us: 1,
            kind: EventKind::Message { sender: "a".into(), client_msg_id: 1, body: Bytes::from(vec![0; 5_000]) },
        }))
        .unwrap()
        .freeze();
    assert!(!queue.push(CopyTarget::Room(3), 1, large, Some(now)), "not queued: said so (the write is probed)");
    assert!(queue.is_empty());
}
