//! The vectors themselves: every variant of every wire type, with edge values (names, bodies, numbers, limits).

use super::*;

const NON_ASCII: &str = "Zoë 名前 🚀";
/// A byte order mark first (a UTF-8 decoder must keep it) and a NUL inside.
const BOM_NUL: &str = "\u{feff}a\u{0}b";

fn string_of(len: usize) -> String {
    "x".repeat(len)
}

fn body(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

fn all_byte_values() -> Bytes {
    (0..=255u8).collect::<Vec<u8>>().into()
}

fn limits_edges() -> Limits {
    Limits {
        max_frame: u32::MAX,
        max_body: 0,
        max_name: 127,
        max_rooms: 128,
        max_subscriptions: 16383,
        max_publish_channels: 16384,
        room_queue_bytes: 2_097_151,
        handshake_timeout_ms: 2_097_152,
        history_max_messages: 268_435_455,
        history_max_age_s: 268_435_456,
        gap_replay: 1,
        dedupe_window_s: 255,
        dedupe_max_entries: 256,
        max_connections: 65_535,
        max_connections_per_ip: 65_536,
        new_connections_per_s_per_ip: 2,
        requests_per_s: u32::MAX - 1,
        posts_per_s: 129,
        ticks_per_s: 16_385,
    }
}

fn message(seq: u64, time_us: u64, sender: &str, client_msg_id: u64, bytes: Bytes) -> RoomEvent {
    RoomEvent { seq, time_us, kind: EventKind::Message { sender: sender.into(), client_msg_id, body: bytes } }
}

pub(super) fn requests(v: &mut Vectors) {
    let hello = |version, agent: &str, name: Option<&str>, token: Option<&str>| {
        RequestBody::Hello(Hello {
            version,
            agent: agent.into(),
            name: name.map(Into::into),
            token: token.map(Into::into),
        })
    };
    v.request("hello_web", 0, hello(PROTOCOL_VERSION, "quiver-web/0.1", None, None));
    v.request("hello_named", 1, hello(PROTOCOL_VERSION, "quiver-web/0.1", Some(NON_ASCII), Some("t0k3n")));
    v.request("hello_version_0_empty_strings", 127, hello(0, "", Some(""), Some("")));
    v.request("hello_version_max", 128, hello(u32::MAX, BOM_NUL, None, Some(&string_of(128))));

    let join = |room: &str, since| RequestBody::Join(Join { room: room.into(), since, redundant: false });
    v.request("join_fresh", 2, join("lobby", None));
    v.request("join_since_start", 16383, join("lobby", Some(Position { epoch: 0, seq: 0 })));
    v.request("join_since_max", 16384, join(NON_ASCII, Some(Position { epoch: u64::MAX, seq: u64::MAX })));
    v.request("join_since_mid", u64::from(u32::MAX), join("", Some(Position { epoch: 1 << 62, seq: 128 })));

    v.request("leave", 3, RequestBody::Leave { room: "lobby".into() });
    v.request("leave_empty_name", u64::MAX, RequestBody::Leave { room: String::new() });
    // A frame above 16383 bytes: a 4-byte QUIC varint length prefix.
    v.request("leave_long_name", 4, RequestBody::Leave { room: string_of(16384) });

    let post =
        |room: &str, client_msg_id, bytes| RequestBody::Post(Post { room: room.into(), client_msg_id, body: bytes });
    v.request("post_text", 5, post("lobby", 4_611_686_018_427_387_904, body("héllo".as_bytes())));
    v.request("post_empty_body", 6, post("lobby", 0, Bytes::new()));
    v.request("post_max_msg_id", 7, post(NON_ASCII, u64::MAX, body(&[0, 1, 127, 128, 255])));
    v.request("post_every_byte", 8, post("r", 16384, all_byte_values()));

    v.request("subscribe", 9, RequestBody::Subscribe { channel: "demo.ticks".into() });
    v.request("subscribe_non_ascii", 10, RequestBody::Subscribe { channel: NON_ASCII.into() });
    v.request("unsubscribe", 11, RequestBody::Unsubscribe { channel: "demo.ticks".into() });
    v.request("unsubscribe_empty", 12, RequestBody::Unsubscribe { channel: String::new() });

    let publish = |channel: &str, max_age_ms| RequestBody::Publish { channel: channel.into(), max_age_ms };
    v.request("publish_no_max_age", 13, publish("demo.ticks", None));
    v.request("publish_max_age_0", 14, publish("demo.ticks", Some(0)));
    v.request("publish_max_age_128", 15, publish("p", Some(128)));
    v.request("publish_max_age_max", 16, publish(BOM_NUL, Some(u32::MAX)));

    v.request("ping_0", 17, RequestBody::Ping { client_time_us: 0 });
    v.request("ping_now", 18, RequestBody::Ping { client_time_us: 1_767_225_600_123_456 });
    v.request("ping_max", 19, RequestBody::Ping { client_time_us: u64::MAX });

    let history = |room: &str, since, limit| RequestBody::History { room: room.into(), since, limit };
    v.request("history_all", 20, history("lobby", None, 0));
    v.request("history_since_0", 21, history("lobby", Some(0), 127));
    v.request("history_since_max", 22, history(NON_ASCII, Some(u64::MAX), u32::MAX));
    v.request("unpublish", 40, RequestBody::Unpublish { channel: "match.17".into() });
}

pub(super) fn replies(v: &mut Vectors) {
    let welcome = |version, session_id, server_time_us, identity: &str, limits| {
        Ok(Reply::Welcome(Welcome { version, session_id, server_time_us, identity: identity.into(), limits }))
    };
    v.reply("welcome", 0, welcome(PROTOCOL_VERSION, 42, 1_767_225_600_000_000, "guest-1", Limits::default()));
    v.reply("welcome_edges", 0, welcome(u32::MAX, u64::MAX, 0, NON_ASCII, limits_edges()));
    let zero = Limits {
        max_frame: 0,
        max_body: 0,
        max_name: 0,
        max_rooms: 0,
        max_subscriptions: 0,
        max_publish_channels: 0,
        room_queue_bytes: 0,
        handshake_timeout_ms: 0,
        history_max_messages: 0,
        history_max_age_s: 0,
        gap_replay: 0,
        dedupe_window_s: 0,
        dedupe_max_entries: 0,
        max_connections: 0,
        max_connections_per_ip: 0,
        new_connections_per_s_per_ip: 0,
        requests_per_s: 0,
        posts_per_s: 0,
        ticks_per_s: 0,
    };
    v.reply("welcome_zero", 127, welcome(0, 0, u64::MAX, "", zero));

    // The reply repeats its Join's req_id (as the room stream's Open frame does).
    let joined = |req_id, room: &str, epoch, recovered, replay_from, last_seq, members: &[&str]| {
        Ok(Reply::Joined(Joined {
            room: room.into(),
            epoch,
            recovered,
            replay_from,
            last_seq,
            members: members.iter().map(|m| m.to_string()).collect(),
            req_id,
        }))
    };
    v.reply("joined_fresh", 2, joined(2, "lobby", 9_876_543_210, false, 1, 0, &["guest-1"]));
    let members = &["ann", NON_ASCII, "", BOM_NUL];
    v.reply("joined_recovered", 128, joined(128, "lobby", u64::MAX, true, 16384, 16383, members));
    v.reply("joined_no_members", 16384, joined(16384, "", 0, false, u64::MAX, u64::MAX, &[]));

    v.reply("left", 3, Ok(Reply::Left { room: "lobby".into() }));
    v.reply("left_non_ascii", u64::MAX, Ok(Reply::Left { room: NON_ASCII.into() }));
    v.reply("posted", 5, Ok(Reply::Posted { room: "lobby".into(), seq: 1, duplicate: false }));
    v.reply("posted_duplicate", 6, Ok(Reply::Posted { room: "lobby".into(), seq: u64::MAX, duplicate: true }));
    v.reply("subscribed", 9, Ok(Reply::Subscribed { channel: "demo.ticks".into(), channel_id: 1 }));
    v.reply("subscribed_id_max", 10, Ok(Reply::Subscribed { channel: NON_ASCII.into(), channel_id: u64::MAX }));
    v.reply("unsubscribed", 11, Ok(Reply::Unsubscribed { channel: "demo.ticks".into() }));
    v.reply("publishing", 13, Ok(Reply::Publishing { channel: "demo.ticks".into(), channel_id: 63 }));
    v.reply("publishing_id_64", 14, Ok(Reply::Publishing { channel: "p".into(), channel_id: 64 }));
    v.reply("pong", 17, Ok(Reply::Pong { client_time_us: 0, server_time_us: 1_767_225_600_000_001 }));
    v.reply("pong_max", 19, Ok(Reply::Pong { client_time_us: u64::MAX, server_time_us: u64::MAX }));
    v.reply("unpublished", 40, Ok(Reply::Unpublished { channel: "match.17".into() }));

    let page = |room: &str, epoch, messages, more| {
        Ok(Reply::History(HistoryPage { room: room.into(), epoch, messages, more }))
    };
    v.reply("history_empty", 20, page("nowhere", 0, vec![], false));
    let messages = vec![
        message(1, 1_767_225_600_000_000, "ann", 7, body(b"hi")),
        message(2, 1_767_225_600_000_500, NON_ASCII, u64::MAX, Bytes::new()),
        message(u64::MAX, u64::MAX, "", 0, body("ü🚀".as_bytes())),
    ];
    v.reply("history_page_more", 21, page("lobby", 12_345, messages, true));

    for &code in ErrorCode::ALL {
        let name = format!("reply_err_{}", code.name().replace(' ', "_"));
        v.reply(&name, u64::from(code.to_u32()), Err(Failure::new(code, format!("{code}"))));
    }
    v.reply("reply_err_unknown_1000", 30, Err(Failure::new(ErrorCode::Unknown(1000), "")));
    v.reply("reply_err_unknown_max", 31, Err(Failure::new(ErrorCode::Unknown(u32::MAX), NON_ASCII)));
}

pub(super) fn pushes(v: &mut Vectors) {
    v.server("go_away", ServerMsg::GoAway { code: ErrorCode::GoingAway, reason: "server shutting down".into() });
    v.server("go_away_unknown_code", ServerMsg::GoAway { code: ErrorCode::Unknown(128), reason: String::new() });
    v.server(
        "kicked_room",
        ServerMsg::Kicked { room: Some("lobby".into()), code: ErrorCode::PermissionDenied, reason: "bye".into() },
    );
    v.server(
        "kicked_connection",
        ServerMsg::Kicked { room: None, code: ErrorCode::Unknown(16384), reason: NON_ASCII.into() },
    );
    v.server("error_push", ServerMsg::Error(Failure::new(ErrorCode::ProtocolViolation, "undecodable frame")));
    v.server("error_push_no_error", ServerMsg::Error(Failure::new(ErrorCode::NoError, "")));
}

pub(super) fn room_frames(v: &mut Vectors) {
    v.room(
        "open",
        RoomFrame::Open(Joined {
            room: "lobby".into(),
            epoch: 9_876_543_210,
            recovered: true,
            replay_from: 7,
            last_seq: 10,
            members: vec!["ann".into(), "bob".into()],
            req_id: 2,
        }),
    );
    v.room(
        "open_edges",
        RoomFrame::Open(Joined {
            room: String::new(),
            epoch: 0,
            recovered: false,
            replay_from: 0,
            last_seq: 0,
            members: vec![],
            req_id: 0,
        }),
    );
    v.room(
        "open_epoch_max",
        RoomFrame::Open(Joined {
            room: NON_ASCII.into(),
            epoch: u64::MAX,
            recovered: true,
            replay_from: u64::MAX,
            last_seq: u64::MAX,
            members: vec![NON_ASCII.into()],
            req_id: u64::MAX,
        }),
    );
    v.room("message", RoomFrame::Event(message(1, 1_767_225_600_000_000, "ann", 7, body(b"hello"))));
    v.room("message_empty", RoomFrame::Event(message(0, 0, "", 0, Bytes::new())));
    v.room("message_max", RoomFrame::Event(message(u64::MAX, u64::MAX, BOM_NUL, u64::MAX, body(&[0xff, 0xfe]))));
    v.room("message_body_127", RoomFrame::Event(message(127, 128, NON_ASCII, 16383, body(&[b'a'; 127]))));
    v.room("message_body_128", RoomFrame::Event(message(128, 16384, "bob", 16384, body(&[b'b'; 128]))));
    let presence = |seq, kind| RoomFrame::Event(RoomEvent { seq, time_us: 1_767_225_600_000_000, kind });
    v.room("member_joined", presence(3, EventKind::MemberJoined { member: "bob".into() }));
    v.room("member_joined_non_ascii", presence(0, EventKind::MemberJoined { member: NON_ASCII.into() }));
    v.room("member_left", presence(u64::MAX, EventKind::MemberLeft { member: "bob".into() }));
    v.room("member_left_empty", presence(16383, EventKind::MemberLeft { member: String::new() }));
    v.room("copies", RoomFrame::Copies { slot: 1 });
    v.room("copies_slot_max", RoomFrame::Copies { slot: u64::MAX });
}

pub(super) fn room_copies(v: &mut Vectors) {
    let event = |seq| RoomFrame::Event(message(seq, 1_767_225_600_000_000, "ann", seq, body(b"hi")));
    v.room_copy("room_copy_one", 1, 2, vec![event(1)]);
    v.room_copy("room_copy_three", 63, 16_383, vec![event(7), event(8), event(9)]);
    let max = varint::MAX;
    v.room_copy("room_copy_max_slot_and_position", max, max, vec![event(u64::MAX)]);
}

pub(super) fn ticks(v: &mut Vectors) {
    let max = varint::MAX;
    v.tick("tick_zero_empty", 0, 0, 0, &[]);
    v.tick("tick_text_number", 1, 1, 1_767_225_600_000_000, b"0.5");
    v.tick("tick_u16_le", 3, 2, 1_767_225_600_016_666, &[0x00, 0x80]);
    v.tick("tick_1_byte_fields", 63, 63, 63, &[1]);
    v.tick("tick_2_byte_fields", 64, 16383, 64, &[]);
    v.tick("tick_4_byte_fields", 16384, 1_073_741_823, 16384, b"{}");
    v.tick("tick_8_byte_fields", 1_073_741_824, max, max, &[0xff; 8]);
    v.tick("tick_every_byte", 1, 128, 127, &all_byte_values());
}

pub(super) fn websocket(v: &mut Vectors) {
    let hello = codec().encode_to_vec(&Request {
        req_id: 0,
        body: RequestBody::Hello(Hello {
            version: PROTOCOL_VERSION,
            agent: "quiver-web/0.1".into(),
            name: None,
            token: None,
        }),
    });
    let hello = hello.unwrap_or_else(|err| panic!("{err}")).freeze();
    v.ws("ws_control_hello", WsMessage::Control(hello));
    v.ws("ws_control_empty", WsMessage::Control(Bytes::new()));
    v.ws("ws_stream_1", WsMessage::Stream { id: 1, bytes: Bytes::from_static(&[3, 0, 1, 2]) });
    v.ws("ws_stream_2_byte_id", WsMessage::Stream { id: 64, bytes: Bytes::from_static(b"x") });
    v.ws("ws_finish", WsMessage::Finish { id: 1 });
    v.ws("ws_reset_slow_consumer", WsMessage::Reset { id: 16_384, code: ErrorCode::SlowConsumer });
    v.ws("ws_stop_slow_consumer", WsMessage::Stop { id: 2, code: ErrorCode::SlowConsumer });
    let mut tick = Vec::new();
    TickHeader { channel_id: 1, seq: 2, sent_time_us: 3 }.encode(&mut tick).unwrap_or_else(|err| panic!("{err}"));
    tick.extend_from_slice(b"0.5");
    v.ws("ws_datagram_tick", WsMessage::Datagram(Bytes::from(tick)));
    v.ws("ws_close_going_away", WsMessage::Close { code: ErrorCode::GoingAway, reason: "server shutting down".into() });
    v.ws("ws_close_non_ascii", WsMessage::Close { code: ErrorCode::Unknown(1000), reason: NON_ASCII.into() });
}
