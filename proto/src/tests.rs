//! Round-trip property tests for every message type, and the framing rules.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

use crate::*;

/// Proptest strategy for `Bytes` fields.
pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

/// Encodes `msg`, then decodes it back from every split of the bytes into two deliveries.
fn round_trip<M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: &M) -> Result<(), TestCaseError> {
    let wire = codec().encode_to_vec(msg).unwrap().freeze();
    let mut whole = BytesMut::from(&wire[..]);
    let decoded = codec().decode::<M>(&mut whole).unwrap();
    prop_assert_eq!(decoded.as_ref(), Some(msg));
    prop_assert!(whole.is_empty());
    // Partial input never errors and never consumes; the rest completes the frame.
    for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
        let mut buf = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(codec().decode::<M>(&mut buf).unwrap(), None);
        prop_assert_eq!(buf.len(), cut);
        buf.extend_from_slice(&wire[cut..]);
        let decoded = codec().decode::<M>(&mut buf).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(msg));
    }
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(msg in any::<Request>()) { round_trip(&msg)?; }

    #[test]
    fn server_messages_round_trip(msg in any::<ServerMsg>()) { round_trip(&msg)?; }

    #[test]
    fn room_frames_round_trip(msg in any::<RoomFrame>()) { round_trip(&msg)?; }

    #[test]
    fn limits_round_trip(msg in any::<Limits>()) { round_trip(&msg)?; }

    #[test]
    fn error_codes_round_trip(code in any::<ErrorCode>()) { round_trip(&code)?; }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let small = FrameCodec::new(300);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = small.decode::<Request>(&mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = small.decode::<ServerMsg>(&mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = small.decode::<RoomFrame>(&mut buf);
        let _ = room::message_sender(&bytes);
    }

    #[test]
    fn the_sender_of_any_room_frame_is_read_as_the_full_decode_sees_it(msg in any::<RoomFrame>()) {
        let frame = codec().encode_to_vec(&msg).unwrap();
        let expected = match &msg {
            RoomFrame::Event(RoomEvent { kind: EventKind::Message { sender, client_msg_id, .. }, .. }) => {
                Some((sender.as_str(), *client_msg_id))
            }
            _ => None,
        };
        prop_assert_eq!(room::message_sender(&frame), expected);
    }

    #[test]
    fn several_frames_in_one_buffer(msgs in proptest::collection::vec(any::<Request>(), 1..8)) {
        let mut buf = BytesMut::new();
        for msg in &msgs { codec().encode(msg, &mut buf).unwrap(); }
        for msg in &msgs {
            let decoded = codec().decode::<Request>(&mut buf).unwrap();
            prop_assert_eq!(decoded.as_ref(), Some(msg));
        }
        prop_assert_eq!(codec().decode::<Request>(&mut buf).unwrap(), None);
    }
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let codec = FrameCodec::new(1024);
    // Announces 1 GiB - 1; only the 4-byte prefix is present.
    let mut buf = BytesMut::from(&[0xbf, 0xff, 0xff, 0xff][..]);
    assert_eq!(codec.decode::<Request>(&mut buf), Err(DecodeError::FrameTooLarge { len: 0x3fff_ffff, max: 1024 }));
    assert!(buf.capacity() < 1024, "nothing was reserved for the announced body");
}

/// A frame within the limit is buffered as its bytes arrive: its length prefix alone reserves 4 KiB, then the buffer
/// grows with what arrived, so a peer cannot have the reader hold `max_frame` bytes per stream by sending a few
/// (64 KiB from the first byte: a default-size frame whole, for 4 bytes).
#[test]
fn a_length_prefix_alone_does_not_reserve_the_whole_frame() {
    let codec = FrameCodec::new(16 << 20);
    let body = vec![7u8; 10 << 20];
    let mut frame = BytesMut::new();
    varint::encode(body.len() as u64, &mut frame).unwrap();
    let prefix = frame.len();
    frame.extend_from_slice(&body);
    // A default-size frame announced, nothing of it sent.
    let mut announced = BytesMut::new();
    varint::encode(65_536, &mut announced).unwrap();
    assert_eq!(FrameCodec::new(65_536).next_frame(&mut announced), Ok(None));
    assert!(announced.capacity() <= 8 << 10, "reserved {} bytes for 3", announced.capacity());
    let mut buf = BytesMut::from(&frame[..prefix]);
    assert_eq!(codec.next_frame(&mut buf), Ok(None));
    assert!(buf.capacity() <= 8 << 10, "reserved {} bytes for a prefix", buf.capacity());
    // The rest arriving in pieces still makes the whole frame.
    for piece in frame[prefix..].chunks(100_000) {
        assert_eq!(codec.next_frame(&mut buf), Ok(None));
        buf.extend_from_slice(piece);
    }
    assert_eq!(codec.next_frame(&mut buf).unwrap().as_deref(), Some(&body[..]));
}

#[test]
fn trailing_bytes_are_an_error() {
    let ping = Request { req_id: 1, body: RequestBody::Ping { client_time_us: 2 } };
    let body = postcard::to_allocvec(&ping).unwrap();
    let mut frame = BytesMut::new();
    varint::encode(body.len() as u64 + 2, &mut frame).unwrap();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(&[0, 0]);
    assert_eq!(codec().decode::<Request>(&mut frame), Err(DecodeError::TrailingData { extra: 2, len: body.len() + 2 }));
}

#[test]
fn encode_refuses_frames_above_the_limit() {
    let post = Request {
        req_id: 1,
        body: RequestBody::Post(Post { room: "r".into(), client_msg_id: 1, body: Bytes::from(vec![0u8; 100]) }),
    };
    assert!(matches!(FrameCodec::new(50).encode_to_vec(&post), Err(EncodeError::FrameTooLarge { max: 50, .. })));
}

#[test]
fn hello_version_is_readable_whatever_follows_it() {
    let hello = Request {
        req_id: 300,
        body: RequestBody::Hello(Hello { version: 77, agent: "x".into(), name: None, token: None }),
    };
    let body = postcard::to_allocvec(&hello).unwrap();
    assert_eq!(frame::peek_hello(&body), Some(frame::HelloPrefix { req_id: 300, version: 77 }));
    // A future Hello with different later fields still shows its version.
    assert_eq!(frame::peek_hello(&[0x05, 0x00, 0x02, 0xff, 0xff, 0xff]).map(|h| h.version), Some(2));
    let ping = postcard::to_allocvec(&Request { req_id: 1, body: RequestBody::Ping { client_time_us: 0 } }).unwrap();
    assert_eq!(frame::peek_hello(&ping), None);
}
