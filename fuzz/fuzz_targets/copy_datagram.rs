//! Arbitrary bytes as a copy datagram of redundant delivery (`quiver_proto::copies`): decoding never panics, a
//! decoded copy re-encodes to bytes that decode to the same copy, and reading a stored frame's sender
//! (`room::message_sender`, how the store reads its dedupe window back) never panics on any bytes.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use quiver_proto::copies::{encode_posts, encode_room, Copy};

/// A frame body with its length prefix again, as the encoders take frames.
fn framed(body: &Bytes) -> Bytes {
    let mut out = BytesMut::new();
    quiver_proto::varint::encode(body.len() as u64, &mut out).expect("a frame's length is a varint");
    out.put_slice(body);
    out.freeze()
}

fuzz_target!(|data: &[u8]| {
    let _ = quiver_proto::room::message_sender(data);
    let datagram = Bytes::copy_from_slice(data);
    let Ok(copy) = Copy::decode(&datagram, 65_536) else { return };
    let mut again = BytesMut::new();
    match &copy {
        Copy::Room { slot, first, frames } => {
            let frames: Vec<Bytes> = frames.iter().map(framed).collect();
            frames.iter().for_each(|frame| drop(quiver_proto::room::message_sender(frame)));
            encode_room(*slot, *first, &frames, &mut again).expect("decoded fields are varints");
        }
        Copy::Posts { first, frames } => {
            let frames: Vec<Bytes> = frames.iter().map(framed).collect();
            encode_posts(*first, &frames, &mut again).expect("decoded fields are varints");
        }
    }
    assert_eq!(Copy::decode(&again.freeze(), 65_536), Ok(copy));
});
