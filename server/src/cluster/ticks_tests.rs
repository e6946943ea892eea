//! The cluster tick relay's wire format across versions.

use super::*;

/// The version before sent no `received_us`: its ticks are taken (undated), and it takes ours (it reads the
/// fields it knows and ignores the last): a rolling upgrade keeps ticks crossing both ways.
#[test]
fn relayed_ticks_cross_between_this_version_and_the_one_before() {
    #[derive(serde::Serialize)]
    struct Before<'a> {
        origin: &'a str,
        sent_time_us: u64,
        max_age_us: Option<u64>,
        payload: &'a [u8],
    }
    let old =
        postcard::to_allocvec(&Before { origin: "a", sent_time_us: 7, max_age_us: Some(50), payload: b"xy" }).unwrap();
    let (tick, dated) = Relayed::decode(&old).unwrap();
    assert_eq!(
        (tick.origin.as_str(), tick.sent_time_us, tick.max_age_us, &tick.payload[..]),
        ("a", 7, Some(50), &b"xy"[..])
    );
    assert!(!dated);
    let new = Relayed {
        origin: "b".into(),
        sent_time_us: 8,
        max_age_us: None,
        payload: b"z".to_vec(),
        received_us: 1_800_000_000_000_000,
    };
    let bytes = postcard::to_allocvec(&new).unwrap();
    let (tick, dated) = Relayed::decode(&bytes).unwrap();
    assert!(dated && tick.received_us == new.received_us && tick.payload == b"z");
    let read_before: RelayedBefore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((read_before.origin.as_str(), read_before.sent_time_us, &read_before.payload[..]), ("b", 8, &b"z"[..]));
}
