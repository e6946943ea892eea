//! Arbitrary bytes as a stream of frames of each message type: any result but a panic is fine.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quiver_proto::{FrameCodec, Request, RoomFrame, ServerMsg};
use serde::de::DeserializeOwned;

fn drain<M: DeserializeOwned>(data: &[u8]) {
    let codec = FrameCodec::new(4096);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode::<M>(&mut buf) {}
}

fuzz_target!(|data: &[u8]| {
    drain::<Request>(data);
    drain::<ServerMsg>(data);
    drain::<RoomFrame>(data);
    let _ = quiver_proto::frame::peek_hello(data);
});
