//! Byte-exact test vectors for other implementations of the protocol (the browser client in `server/web/` reads
//! them in its node tests): every variant of every wire type with edge values, each as
//! `{ name, kind, hex, value }`.
//!
//! - `kind`: `Request`, `ServerMsg`, `RoomFrame` (stream frames), `Tick` (a datagram), `RoomCopy` (a room copy
//!   datagram of redundant delivery, `quiver_proto::copies`; its value `{ slot, first, frames }`, each frame's value
//!   as a `RoomFrame`'s) or `WsMessage` (a message of the WebSocket mapping, `quiver_proto::ws`).
//! - `hex`: the whole stream frame as [`FrameCodec`] writes it (QUIC varint length ‖ postcard body), or the whole
//!   tick datagram (header ‖ payload).
//! - `value`: `serde_json::to_value` of the message (externally tagged enums, `null` for `None`, byte strings as
//!   arrays) with every number turned into a decimal string, so that u64 values survive JavaScript's
//!   `JSON.parse`, and object keys sorted. A tick's value is `{ channel_id, seq, sent_time_us, payload }`.
//!
//! The checked-in `server/web/test/vectors.json` must equal what this test generates; after a deliberate change
//! of the wire format, regenerate it with `QUIVER_WRITE_VECTORS=1 cargo test -p quiver-proto --test vectors`.

use std::{collections::BTreeMap, fmt::Debug};

use bytes::{Bytes, BytesMut};
use quiver_proto::{
    varint, ws::WsMessage, ErrorCode, EventKind, Failure, FrameCodec, Hello, HistoryPage, Join, Joined, Limits,
    Position, Post, Reply, Request, RequestBody, RoomEvent, RoomFrame, ServerMsg, TickHeader, Welcome,
    PROTOCOL_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

/// Where the vectors live, relative to this crate.
const VECTORS_PATH: &str = "../server/web/test/vectors.json";

/// The file: a little context, then the vectors in a stable order.
#[derive(Serialize)]
struct VectorFile {
    generated_by: &'static str,
    protocol_version: u32,
    max_frame: u32,
    /// The wire's named bounds, by the browser client's names for them (its copies are checked against these).
    constants: BTreeMap<&'static str, usize>,
    vectors: Vec<Vector>,
}

#[derive(Serialize)]
struct Vector {
    name: String,
    kind: &'static str,
    hex: String,
    value: Value,
}

fn codec() -> FrameCodec {
    FrameCodec::new(Limits::default().max_frame as usize)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `value` with every number as a decimal string and every object's keys in sorted order (whatever map type
/// serde_json was built with).
fn stringify_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.into_iter().map(stringify_numbers).collect()),
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, stringify_numbers(v))).collect::<Map<_, _>>())
        }
        other => other,
    }
}

/// Collects vectors, checking each one decodes back to the value it was made from.
#[derive(Default)]
struct Vectors(Vec<Vector>);

impl Vectors {
    fn frame<M>(&mut self, kind: &'static str, name: &str, msg: M)
    where
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let wire =
            codec().encode_to_vec(&msg).unwrap_or_else(|err| panic!("{name}: cannot encode {msg:?}: {err}")).freeze();
        let mut buf = BytesMut::from(&wire[..]);
        let decoded = codec().decode::<M>(&mut buf).unwrap_or_else(|err| panic!("{name}: does not decode: {err}"));
        assert_eq!(decoded.as_ref(), Some(&msg), "{name}: decodes to another value");
        assert!(buf.is_empty(), "{name}: bytes left after the frame");
        let value = serde_json::to_value(&msg).unwrap_or_else(|err| panic!("{name}: no JSON: {err}"));
        self.push(kind, name, &wire, stringify_numbers(value));
    }

    fn request(&mut self, name: &str, req_id: u64, body: RequestBody) {
        self.frame("Request", name, Request { req_id, body });
    }

    fn server(&mut self, name: &str, msg: ServerMsg) {
        self.frame("ServerMsg", name, msg);
    }

    fn reply(&mut self, name: &str, req_id: u64, result: Result<Reply, Failure>) {
        self.server(name, ServerMsg::Reply { req_id, result });
    }

    fn room(&mut self, name: &str, frame: RoomFrame) {
        self.frame("RoomFrame", name, frame);
    }

    fn ws(&mut self, name: &str, msg: WsMessage) {
        let wire = msg.encode();
        assert_eq!(WsMessage::decode(wire.clone()).as_ref(), Ok(&msg), "{name}: decodes to another value");
        let value = match &msg {
            WsMessage::Control(bytes) => serde_json::json!({ "Control": bytes.to_vec() }),
            WsMessage::Stream { id, bytes } => serde_json::json!({ "Stream": { "id": id, "bytes": bytes.to_vec() } }),
            WsMessage::Finish { id } => serde_json::json!({ "Finish": { "id": id } }),
            WsMessage::Reset { id, code } => serde_json::json!({ "Reset": { "id": id, "code": code.to_u32() } }),
            WsMessage::Stop { id, code } => serde_json::json!({ "Stop": { "id": id, "code": code.to_u32() } }),
            WsMessage::Datagram(bytes) => serde_json::json!({ "Datagram": bytes.to_vec() }),
            WsMessage::Close { code, reason } => {
                serde_json::json!({ "Close": { "code": code.to_u32(), "reason": reason } })
            }
        };
        self.push("WsMessage", name, &wire, stringify_numbers(value));
    }

    fn tick(&mut self, name: &str, channel_id: u64, seq: u64, sent_time_us: u64, payload: &[u8]) {
        let header = TickHeader { channel_id, seq, sent_time_us };
        let mut datagram = Vec::new();
        header.encode(&mut datagram).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(datagram.len(), header.encoded_len(), "{name}");
        datagram.extend_from_slice(payload);
        let (decoded, rest) =
            TickHeader::decode(&Bytes::from(datagram.clone())).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(decoded, header, "{name}: header decodes to another value");
        assert_eq!(&rest[..], payload, "{name}: payload differs");
        let value = serde_json::json!({
            "channel_id": channel_id, "seq": seq, "sent_time_us": sent_time_us, "payload": payload,
        });
        self.push("Tick", name, &datagram, stringify_numbers(value));
    }

    /// A room copy datagram of `frames`, at positions from `first` of the room stream with `slot`.
    fn room_copy(&mut self, name: &str, slot: u64, first: u64, frames: Vec<RoomFrame>) {
        let wire: Vec<Bytes> = frames
            .iter()
            .map(|frame| codec().encode_to_vec(frame).unwrap_or_else(|err| panic!("{name}: {err}")).freeze())
            .collect();
        let mut datagram = Vec::new();
        quiver_proto::copies::encode_room(slot, first, &wire, &mut datagram)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let decoded =
            quiver_proto::copies::Copy::decode(&Bytes::from(datagram.clone()), Limits::default().max_frame as usize)
                .unwrap_or_else(|err| panic!("{name}: does not decode: {err}"));
        let quiver_proto::copies::Copy::Room { slot: s, first: f, frames: bodies } = decoded else {
            panic!("{name}: decodes to a post copy")
        };
        assert_eq!((s, f, bodies.len()), (slot, first, frames.len()), "{name}");
        let values: Vec<Value> = frames.iter().map(|frame| serde_json::to_value(frame).unwrap_or_default()).collect();
        let value = serde_json::json!({ "slot": slot, "first": first, "frames": values });
        self.push("RoomCopy", name, &datagram, stringify_numbers(value));
    }

    fn push(&mut self, kind: &'static str, name: &str, wire: &[u8], value: Value) {
        assert!(!self.0.iter().any(|v| v.name == name), "two vectors named {name}");
        self.0.push(Vector { name: name.to_string(), kind, hex: hex(wire), value });
    }
}

#[path = "vectors/cases.rs"]
mod cases;
#[path = "shared/registry.rs"]
mod shared_registry;
use cases::{pushes, replies, requests, room_frames, ticks, websocket};

fn generate() -> String {
    let mut v = Vectors::default();
    requests(&mut v);
    replies(&mut v);
    pushes(&mut v);
    room_frames(&mut v);
    ticks(&mut v);
    cases::room_copies(&mut v);
    websocket(&mut v);
    let file = VectorFile {
        generated_by: "proto/tests/vectors.rs (QUIVER_WRITE_VECTORS=1 cargo test -p quiver-proto --test vectors)",
        protocol_version: PROTOCOL_VERSION,
        max_frame: Limits::default().max_frame,
        constants: BTreeMap::from([
            ("MAX_FRAME_CEILING", Limits::MAX_FRAME_CEILING as usize),
            ("MAX_ROOMS_CEILING", Limits::MAX_ROOMS_CEILING as usize),
            ("MAX_COPY_FRAMES", quiver_proto::copies::MAX_COPY_FRAMES),
            ("TICK_HEADER_MAX_LEN", quiver_proto::TickHeader::MAX_LEN),
            ("MAX_PORTABLE_DATAGRAM", quiver_proto::MAX_PORTABLE_DATAGRAM),
            ("WS_MAX_REASON", quiver_proto::ws::MAX_REASON),
            ("WS_MAX_CHUNK", quiver_proto::ws::MAX_CHUNK),
            ("WS_MAX_DATAGRAM", quiver_proto::ws::MAX_DATAGRAM),
        ]),
        vectors: v.0,
    };
    let mut json = serde_json::to_string_pretty(&file).unwrap_or_else(|err| panic!("vectors as JSON: {err}"));
    json.push('\n');
    json
}

#[test]
fn vectors_json_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS_PATH);
    let generated = generate();
    if std::env::var_os("QUIVER_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        return;
    }
    let regenerate = "regenerate it with `QUIVER_WRITE_VECTORS=1 cargo test -p quiver-proto --test vectors` \
                      (and check that the wire change is deliberate)";
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}; {regenerate}", path.display()));
    if stored != generated {
        let first_difference = stored
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or("at the end".to_string(), |line| format!("first at line {}", line + 1));
        panic!("{} differs from what quiver-proto generates ({first_difference}); {regenerate}", path.display());
    }
}

#[test]
fn every_variant_has_a_vector() {
    let json: Value = serde_json::from_str(&generate()).unwrap_or_else(|err| panic!("{err}"));
    let vectors = json["vectors"].as_array().cloned().unwrap_or_default();
    let tags: Vec<String> = vectors
        .iter()
        .flat_map(|v| {
            // The first-level tag (e.g. "Reply") and, for requests, replies and room events, the inner tag.
            let value = &v["value"];
            let mut found = Vec::new();
            let mut tag_of = |x: &Value| {
                if let Some(map) = x.as_object().filter(|m| m.len() == 1) {
                    found.extend(map.keys().cloned());
                }
            };
            tag_of(value);
            tag_of(&value["body"]);
            tag_of(&value["Reply"]["result"]);
            tag_of(&value["Reply"]["result"]["Ok"]);
            tag_of(&value["Event"]["kind"]);
            found
        })
        .collect();
    // Every variant of the enums the stream messages are made of, as serde sees them (a new variant needs a vector
    // here before this passes; before, a list written by hand, which a new variant left out passed).
    let registry = shared_registry::registry();
    let enums = ["RequestBody", "ServerMsg", "Result", "Reply", "RoomFrame", "EventKind"];
    let expected: Vec<String> = enums
        .iter()
        .flat_map(|name| match registry.get(*name) {
            Some(serde_reflection::ContainerFormat::Enum(variants)) => variants.values().map(|v| v.name.clone()),
            other => panic!("{name} is not an enum in the registry: {other:?}"),
        })
        .collect();
    assert!(expected.len() >= 31, "{expected:?}");
    for tag in &expected {
        assert!(tags.iter().any(|t| t == tag), "no vector for {tag}");
    }
    assert!(vectors.iter().any(|v| v["kind"] == "RoomCopy"), "no room copy vector");
    assert!(vectors.iter().any(|v| v["kind"] == "Tick"), "no tick vector");
}
