//! QUIC variable-length integers (RFC 9000 §16): the length prefix of stream frames and the fields of the tick
//! datagram header. Two high bits of the first byte give the encoded length (1, 2, 4 or 8 bytes).

use bytes::BufMut;

/// Largest value a QUIC varint can hold: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// A value above [`MAX`] cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit a QUIC varint (max 2^62-1)")]
pub struct VarintTooLarge(pub u64);

/// Number of bytes `value` takes once encoded.
pub fn encoded_len(value: u64) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Appends `value` to `buf`.
pub fn encode(value: u64, buf: &mut impl BufMut) -> Result<(), VarintTooLarge> {
    match encoded_len(value) {
        _ if value > MAX => return Err(VarintTooLarge(value)),
        1 => buf.put_u8(value as u8),
        2 => buf.put_u16(0x4000 | value as u16),
        4 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
    Ok(())
}

/// Reads a varint at the start of `bytes`: `Some((value, bytes consumed))`, or `None` when `bytes` is shorter than
/// the encoding announced by its first byte (or empty).
pub fn decode(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let raw = bytes.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for byte in &raw[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 §A.1 sample encodings.
        let cases: [(&[u8], u64); 4] = [
            (&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c], 151_288_809_941_952_652),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode(bytes), Some((value, bytes.len())));
            let mut out = Vec::new();
            encode(value, &mut out).unwrap();
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn short_input_is_none() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0x40]), None);
        assert_eq!(decode(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn too_large_is_refused() {
        assert_eq!(encode(MAX + 1, &mut Vec::new()), Err(VarintTooLarge(MAX + 1)));
    }

    proptest! {
        #[test]
        fn round_trip(value in 0..=MAX) {
            let mut out = Vec::new();
            encode(value, &mut out).unwrap();
            prop_assert_eq!(out.len(), encoded_len(value));
            prop_assert_eq!(decode(&out), Some((value, out.len())));
        }
    }
}
