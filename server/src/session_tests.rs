//! The control stream's state machine, driven without sockets.

use super::*;

fn hello(version: u32, name: Option<&str>) -> Request {
    Request {
        req_id: 1,
        body: RequestBody::Hello(Hello { version, agent: "test".into(), name: name.map(Into::into), token: None }),
    }
}

fn failure_code(step: &Step) -> Option<ErrorCode> {
    match step {
        Step::Reply(ServerMsg::Reply { result: Err(f), .. })
        | Step::ReplyAndClose(ServerMsg::Reply { result: Err(f), .. }, _, _) => Some(f.code),
        _ => None,
    }
}

#[test]
fn hello_then_ping() {
    let mut session = ControlSession::new(0xabc, Limits::default(), Arc::new(Auth::Anonymous));
    let Step::Reply(ServerMsg::Reply { req_id: 1, result: Ok(Reply::Welcome(welcome)) }) =
        session.on_request(hello(PROTOCOL_VERSION, Some("alice")), 5)
    else {
        panic!("no welcome")
    };
    assert_eq!((welcome.session_id, welcome.server_time_us, welcome.identity.as_str()), (0xabc, 5, "alice"));
    assert_eq!(welcome.limits, Limits::default());
    let step = session.on_request(Request { req_id: 2, body: RequestBody::Ping { client_time_us: 9 } }, 10);
    let pong = Reply::Pong { client_time_us: 9, server_time_us: 10 };
    assert_eq!(step, Step::Reply(ServerMsg::Reply { req_id: 2, result: Ok(pong) }));
}

#[test]
fn anonymous_identity_comes_from_the_session_id() {
    let mut session = ControlSession::new(0x10, Limits::default(), Arc::new(Auth::Anonymous));
    session.on_request(hello(PROTOCOL_VERSION, None), 0);
    assert_eq!(session.identity(), Some("anon-0000000000000010"));
}

/// Version 4 (before Unpublish) is still admitted, and told it speaks 4; version 3 is not.
#[test]
fn the_previous_version_is_admitted_and_told_so() {
    let mut session = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
    let step = session.on_request(hello(quiver_proto::OLDEST_PROTOCOL_VERSION, None), 0);
    let Step::Reply(ServerMsg::Reply { result: Ok(Reply::Welcome(welcome)), .. }) = step else {
        panic!("not welcomed: {step:?}")
    };
    assert_eq!(welcome.version, quiver_proto::OLDEST_PROTOCOL_VERSION);
    let mut older = ControlSession::new(2, Limits::default(), Arc::new(Auth::Anonymous));
    let step = older.on_request(hello(quiver_proto::OLDEST_PROTOCOL_VERSION - 1, None), 0);
    assert!(matches!(step, Step::ReplyAndClose(_, ErrorCode::UnsupportedVersion, _)), "{step:?}");
}

/// A version-4 session cannot Unpublish (version 4 has none, and its claims share their channel's
/// subscription id, which a claim made again would reuse); a version-5 session can.
#[test]
fn unpublish_is_refused_to_a_version_4_session() {
    let unpublish = Request { req_id: 2, body: RequestBody::Unpublish { channel: "prices".into() } };
    let mut old = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
    old.on_request(hello(4, None), 0);
    let step = old.on_request(unpublish.clone(), 0);
    let Step::Reply(ServerMsg::Reply { req_id: 2, result: Err(failure) }) = step else {
        panic!("not refused: {step:?}")
    };
    assert_eq!(failure.code, ErrorCode::Unsupported);
    assert!(failure.message.contains("speaks 4"), "{}", failure.message);
    let mut current = ControlSession::new(2, Limits::default(), Arc::new(Auth::Anonymous));
    current.on_request(hello(5, None), 0);
    let step = current.on_request(unpublish, 0);
    let expected = TickRequest::Unpublish { channel: "prices".into() };
    assert_eq!(step, Step::Tick { req_id: 2, request: expected });
}

#[test]
fn wrong_version_is_refused_naming_both_versions() {
    let mut session = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
    let step = session.on_request(hello(PROTOCOL_VERSION + 1, None), 0);
    let Step::ReplyAndClose(ServerMsg::Reply { result: Err(failure), .. }, ErrorCode::UnsupportedVersion, _) = step
    else {
        panic!("not refused: {step:?}")
    };
    assert!(failure.message.contains(&format!("version {}", PROTOCOL_VERSION + 1)), "{}", failure.message);
    assert!(failure.message.contains(&format!("speaks {PROTOCOL_VERSION}")), "{}", failure.message);
    assert_eq!(session.identity(), None);
}

#[test]
fn requests_before_hello_and_second_hello_are_refused() {
    let mut session = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
    let ping = Request { req_id: 3, body: RequestBody::Ping { client_time_us: 0 } };
    assert_eq!(failure_code(&session.on_request(ping, 0)), Some(ErrorCode::HelloRequired));
    session.on_request(hello(PROTOCOL_VERSION, None), 0);
    let again = session.on_request(hello(PROTOCOL_VERSION, None), 0);
    assert!(matches!(again, Step::ReplyAndClose(_, ErrorCode::HelloRequired, _)));
}

#[test]
fn bad_names_are_refused() {
    for name in ["", "a\nb", &"x".repeat(200)] {
        let mut session = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
        let step = session.on_request(hello(PROTOCOL_VERSION, Some(name)), 0);
        assert_eq!(failure_code(&step), Some(ErrorCode::BadRequest), "{name:?}");
    }
}

#[test]
fn identities_are_bounded_by_max_identity_not_max_name() {
    let max = Limits::MAX_IDENTITY as usize;
    let short_names = Limits { max_name: 8, ..Limits::default() };
    let mut session = ControlSession::new(1, short_names.clone(), Arc::new(Auth::Anonymous));
    session.on_request(hello(PROTOCOL_VERSION, Some(&"x".repeat(max))), 0);
    assert_eq!(session.identity().map(str::len), Some(max));
    let mut session = ControlSession::new(1, short_names, Arc::new(Auth::Anonymous));
    let step = session.on_request(hello(PROTOCOL_VERSION, Some(&"x".repeat(max + 1))), 0);
    let Step::ReplyAndClose(ServerMsg::Reply { result: Err(failure), .. }, ErrorCode::BadRequest, _) = step else {
        panic!("not refused: {step:?}")
    };
    assert!(failure.message.contains(&format!("at most {max} bytes")), "{}", failure.message);
}

#[test]
fn tick_requests_are_checked_then_handed_to_the_connection() {
    let mut session = ControlSession::new(1, Limits::default(), Arc::new(Auth::Anonymous));
    session.on_request(hello(PROTOCOL_VERSION, None), 0);
    let step = session.on_request(Request { req_id: 4, body: RequestBody::Subscribe { channel: "c".into() } }, 0);
    assert_eq!(step, Step::Tick { req_id: 4, request: TickRequest::Subscribe { channel: "c".into() } });
    let step = session.on_request(Request { req_id: 5, body: RequestBody::Unsubscribe { channel: "".into() } }, 0);
    assert_eq!(failure_code(&step), Some(ErrorCode::BadRequest));
}

#[test]
fn room_requests_are_checked_then_handed_to_the_connection() {
    let limits = Limits { max_body: 4, ..Limits::default() };
    let mut session = ControlSession::new(1, limits, Arc::new(Auth::Anonymous));
    session.on_request(hello(PROTOCOL_VERSION, Some("ann")), 0);
    let post = |body: &'static [u8]| Request {
        req_id: 5,
        body: RequestBody::Post(Post { room: "r".into(), client_msg_id: 1, body: bytes::Bytes::from_static(body) }),
    };
    assert_eq!(failure_code(&session.on_request(post(b"12345"), 0)), Some(ErrorCode::BodyTooLarge));
    let step = session.on_request(post(b"1234"), 0);
    assert!(matches!(step, Step::Room { req_id: 5, ref identity, request: RoomRequest::Post(_) } if identity == "ann"));
    let bad_room = Request { req_id: 6, body: RequestBody::Leave { room: String::new() } };
    assert_eq!(failure_code(&session.on_request(bad_room, 0)), Some(ErrorCode::BadRequest));
}
