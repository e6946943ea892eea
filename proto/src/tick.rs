//! The tick datagram: `varint channel_id || varint seq || varint sent_time_us || payload`, QUIC varints, no length
//! prefix (the datagram's end is the payload's end). A tick costs 3 to 24 header bytes.

use bytes::{BufMut, Bytes};

use crate::varint;

/// The probe datagram: one zero byte. Too short to be a tick (a header is at least 3 bytes), it carries nothing
/// and every receiver ignores it; endpoints send it shortly after reliable data so that the peer's ACK exposes a
/// lost tail packet early (a tail-loss probe). It is not empty because Chromium stops delivering WebTransport
/// datagrams to the page after an HTTP datagram with an empty payload (measured with Chromium 156).
pub const PROBE: &[u8] = &[0];

/// True for the [`PROBE`] datagram.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram == PROBE
}

/// The header in front of every tick payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickHeader {
    /// Channel id assigned by the server on this connection (Subscribe / Publish reply).
    pub channel_id: u64,
    /// Publisher → server: the publisher's own counter. Server → subscriber: the channel's monotonic seq.
    pub seq: u64,
    /// When the tick was sent by its original publisher, µs since the Unix epoch.
    pub sent_time_us: u64,
}

/// Why a datagram is not a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The datagram ended inside the header.
    #[error("datagram ends inside the tick header ({field})")]
    Truncated {
        /// The field that was cut.
        field: &'static str,
    },
    /// A header field is above 2^62-1.
    #[error(transparent)]
    TooLarge(#[from] varint::VarintTooLarge),
}

/// The largest datagram every path carries: what a QUIC packet of QUIC's guaranteed 1,200-byte UDP payload holds
/// for a DATAGRAM frame on the worst path: 1,200 − 1 (short header) − 20 (the longest connection ID) − 4 (the
/// longest packet number) − 16 (AEAD tag) − 9 (the frame's type and length), less 2 for WebTransport's session
/// prefix. Quiver's clients publish no larger tick on any path, the WebSocket lane included (which itself carries
/// up to 1,200 B), so that a tick one subscriber gets reaches every subscriber, whatever its path.
pub const MAX_PORTABLE_DATAGRAM: usize = 1_200 - 1 - 20 - 4 - 16 - 9 - 2;

impl TickHeader {
    /// Largest encoded header, in bytes.
    pub const MAX_LEN: usize = 24;

    /// The largest tick payload a client publishes: [`MAX_PORTABLE_DATAGRAM`] less the largest header.
    pub const MAX_PORTABLE_PAYLOAD: usize = MAX_PORTABLE_DATAGRAM - TickHeader::MAX_LEN;

    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        varint::encoded_len(self.channel_id) + varint::encoded_len(self.seq) + varint::encoded_len(self.sent_time_us)
    }

    /// Appends the header to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), DatagramError> {
        varint::encode(self.channel_id, buf)?;
        varint::encode(self.seq, buf)?;
        varint::encode(self.sent_time_us, buf)?;
        Ok(())
    }

    /// Splits a datagram into its header and payload.
    pub fn decode(datagram: &Bytes) -> Result<(TickHeader, Bytes), DatagramError> {
        let mut at = 0;
        let mut field = |name: &'static str| -> Result<u64, DatagramError> {
            let (value, len) = varint::decode(&datagram[at..]).ok_or(DatagramError::Truncated { field: name })?;
            at += len;
            Ok(value)
        };
        let header =
            TickHeader { channel_id: field("channel_id")?, seq: field("seq")?, sent_time_us: field("sent_time_us")? };
        Ok((header, datagram.slice(at..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(channel_id in 0..=varint::MAX, seq in 0..=varint::MAX, sent in 0..=varint::MAX,
                      payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let header = TickHeader { channel_id, seq, sent_time_us: sent };
            let mut buf = Vec::new();
            header.encode(&mut buf).unwrap();
            prop_assert_eq!(buf.len(), header.encoded_len());
            buf.extend_from_slice(&payload);
            let (decoded, rest) = TickHeader::decode(&Bytes::from(buf)).unwrap();
            prop_assert_eq!(decoded, header);
            prop_assert_eq!(&rest[..], &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = TickHeader::decode(&Bytes::from(bytes));
        }
    }

    #[test]
    fn truncation_names_the_field() {
        assert_eq!(TickHeader::decode(&Bytes::new()), Err(DatagramError::Truncated { field: "channel_id" }));
        assert_eq!(
            TickHeader::decode(&Bytes::from_static(&[1, 2])),
            Err(DatagramError::Truncated { field: "sent_time_us" })
        );
        assert_eq!(TickHeader::decode(&Bytes::from_static(&[1, 0x80])), Err(DatagramError::Truncated { field: "seq" }));
    }
}
