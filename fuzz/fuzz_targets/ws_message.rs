//! Arbitrary bytes as a WebSocket message of the fallback's mapping (`quiver_proto::ws`): decoding never panics,
//! and a decoded message re-encodes to bytes that decode to the same message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quiver_proto::ws::WsMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = WsMessage::decode(Bytes::copy_from_slice(data)) {
        let again = WsMessage::decode(message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
});
