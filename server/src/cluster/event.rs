//! Room events as the scripts publish and store them. A published event is
//! `<epoch> <seq> <op> <time_us> <kind><rest>`: the header in decimal (the scripts build it; Lua cannot write a
//! 64-bit integer in binary), then `M` and the message (postcard: sender, client_msg_id, body), or `J` / `L` and
//! the identity that joined or left. `op` numbers every published event of the room (messages and presence);
//! `seq` numbers messages only, as in the protocol. Stream entries hold the same message payload with its `op`
//! and time. Everything from Redis is decoded with errors, never panics: a broker is a peer too.

use bytes::Bytes;
use quiver_proto::{EventKind, RoomEvent};

/// Why bytes from Redis are not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed room event from the broker: {0}")]
pub(super) struct EventError(&'static str);

/// One event of a room's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Published {
    /// The room's epoch.
    pub epoch: u64,
    /// The room's op count after this event.
    pub op: u64,
    /// The event (a presence event carries the seq of the last message before it).
    pub event: RoomEvent,
}

/// The payload of a message: what the post script stores and publishes after `M`.
pub(super) fn message_payload(sender: &str, client_msg_id: u64, body: &Bytes) -> Vec<u8> {
    // Serialising strings and bytes cannot fail. Sized up front (two length prefixes and a varint of at most 10
    // bytes each): one allocation per post.
    let room = Vec::with_capacity(sender.len() + body.len() + 30);
    postcard::to_extend(&(sender, client_msg_id, body.as_ref()), room).unwrap_or_default()
}

/// A message event from its stream entry or published payload.
pub(super) fn message(seq: u64, time_us: u64, payload: &[u8]) -> Result<RoomEvent, EventError> {
    let (sender, client_msg_id, body): (String, u64, Vec<u8>) =
        postcard::from_bytes(payload).map_err(|_| EventError("message payload does not decode"))?;
    Ok(RoomEvent { seq, time_us, kind: EventKind::Message { sender, client_msg_id, body: Bytes::from(body) } })
}

fn number(field: Option<&[u8]>) -> Result<u64, EventError> {
    let field = field.ok_or(EventError("header too short"))?;
    std::str::from_utf8(field).ok().and_then(|s| s.parse().ok()).ok_or(EventError("header field is not a number"))
}

/// Parses a published event.
pub(super) fn parse(bytes: &[u8]) -> Result<Published, EventError> {
    let mut parts = bytes.splitn(5, |b| *b == b' ');
    let epoch = number(parts.next())?;
    let seq = number(parts.next())?;
    let op = number(parts.next())?;
    let time_us = number(parts.next())?;
    let rest = parts.next().ok_or(EventError("no event after the header"))?;
    let (&kind, rest) = rest.split_first().ok_or(EventError("empty event"))?;
    let identity = || String::from_utf8(rest.to_vec()).map_err(|_| EventError("identity is not UTF-8"));
    let event = match kind {
        b'M' if seq == 0 => return Err(EventError("a message with seq 0")),
        b'M' => message(seq, time_us, rest)?,
        b'J' => RoomEvent { seq, time_us, kind: EventKind::MemberJoined { member: identity()? } },
        b'L' => RoomEvent { seq, time_us, kind: EventKind::MemberLeft { member: identity()? } },
        _ => return Err(EventError("unknown event kind")),
    };
    Ok(Published { epoch, op, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_garbage_is_an_error() {
        let mut bytes = b"17 4 9 1700000000000001 M".to_vec();
        bytes.extend(message_payload("ann", 5, &Bytes::from_static(b"hi there")));
        let parsed = parse(&bytes).unwrap();
        assert_eq!(
            (parsed.epoch, parsed.op, parsed.event.seq, parsed.event.time_us),
            (17, 9, 4, 1_700_000_000_000_001)
        );
        assert!(matches!(parsed.event.kind, EventKind::Message { ref sender, client_msg_id: 5, ref body }
            if sender == "ann" && body.as_ref() == b"hi there"));
        let joined = parse(b"17 4 10 5 Jbob smith").unwrap();
        assert_eq!(joined.event.kind, EventKind::MemberJoined { member: "bob smith".into() });
        for bad in [
            &b""[..],
            b"1 2 3",
            b"1 2 3 4 ",
            b"1 2 x 4 J",
            b"1 2 3 4 Q",
            b"1 2 3 4 M\xff",
            b"1 2 3 4 L\xff",
            b"1 0 3 4 M",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
