//! Every file in `tests/malformed/` is a stream's bytes that must give exactly the error its header names.
//! Format: `# <what>`, `# decode-as: request|server|room`, `# expect: <error>`, then hex (spaces allowed).

use bytes::BytesMut;
use quiver_proto::{DecodeError, FrameCodec, Limits, Request, RoomFrame, ServerMsg};

fn outcome<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> &'static str {
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let mut buf = BytesMut::from(bytes);
    match codec.decode::<M>(&mut buf) {
        Ok(Some(_)) => "decoded",
        Ok(None) => "partial",
        Err(DecodeError::FrameTooLarge { .. }) => "frame-too-large",
        Err(DecodeError::Malformed(_)) => "malformed",
        Err(DecodeError::TrailingData { .. }) => "trailing-data",
        Err(_) => "other",
    }
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex digit"))
        .collect()
}

#[test]
fn every_malformed_input_gives_its_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("malformed dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{} lacks '# {key}:'", path.display()))
                .trim()
                .to_string()
        };
        let body: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        let bytes = hex(&body);
        let got = match header("decode-as").as_str() {
            "request" => outcome::<Request>(&bytes),
            "server" => outcome::<ServerMsg>(&bytes),
            "room" => outcome::<RoomFrame>(&bytes),
            other => panic!("{}: unknown decode-as {other}", path.display()),
        };
        assert_eq!(got, header("expect"), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} malformed inputs found");
}
