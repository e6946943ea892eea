//! Arbitrary bytes as a tick datagram; a decoded header re-encodes to the same prefix length.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quiver_proto::TickHeader;

fuzz_target!(|data: &[u8]| {
    let datagram = Bytes::copy_from_slice(data);
    if let Ok((header, payload)) = TickHeader::decode(&datagram) {
        let mut out = Vec::new();
        header.encode(&mut out).expect("decoded fields are varints");
        assert!(out.len() + payload.len() <= data.len());
        let (again, _) = TickHeader::decode(&Bytes::from(out)).expect("re-encoded header decodes");
        assert_eq!(again, header);
    }
});
