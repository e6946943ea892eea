//! Whatever decodes must re-encode and decode to the same message (decode → encode → decode).
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quiver_proto::{FrameCodec, Request, RoomFrame, ServerMsg};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<M: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) {
    let codec = FrameCodec::new(4096);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = codec.decode::<M>(&mut buf) {
        let mut wire = codec.encode_to_vec(&msg).expect("a decoded message re-encodes within the same limit");
        let again = codec.decode::<M>(&mut wire).expect("re-encoded message decodes");
        assert_eq!(again.as_ref(), Some(&msg));
        assert!(wire.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Request>(data);
    round_trip::<ServerMsg>(data);
    round_trip::<RoomFrame>(data);
});
