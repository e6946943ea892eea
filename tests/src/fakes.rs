//! Scripted servers for the client's tests: quinn endpoints that speak just enough of the protocol to put the
//! client in one situation (a server that finishes its control stream, goes mute, sends streams late or breaks
//! the protocol on a room stream).

use std::time::Duration;

use quiver_proto::Limits;

mod clock;
mod early_tick;
mod flapping;
mod hostile;
mod leave;
mod stopped;
mod wire;
pub use clock::slow_clock_pongs;
pub use early_tick::tick_before_subscribed;
pub use flapping::welcomes_then_closes;
pub use hostile::{garbage_after_welcome, unfinished_frames};
pub use leave::refuses_each_first_release;
pub use stopped::stops_reading_after_welcome;
use wire::{joined_empty, violation};
pub use wire::{next_request, welcome};

/// A server that answers each connection's Hello with a Welcome, then finishes the control stream and leaves the
/// connection open: what a graceful close looks like until the server's close arrives, and, here, forever. Counts the
/// connections it accepted.
///
/// With `close`, each connection is closed 20 ms after its Welcome instead, as by a server in a crash loop.
async fn after_welcome(
    endpoint: quinn::Endpoint,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    close: bool,
) {
    use quiver_proto::{FrameCodec, Reply, Request, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION};
    while let Some(incoming) = endpoint.accept().await {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = FrameCodec::new(Limits::default().max_frame as usize);
            let mut inbound = bytes::BytesMut::new();
            let req_id = loop {
                match codec
                    .decode::<Request>(&mut inbound)
                    .unwrap_or_else(|err| violation(format!("a malformed request: {err}")))
                {
                    Some(Request { req_id, body: RequestBody::Hello(_) }) => break req_id,
                    Some(other) => violation(format!("expected a Hello first: {other:?}")),
                    None => match recv.read_chunk(usize::MAX, true).await {
                        Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                        _ => return,
                    },
                }
            };
            let welcome = Welcome {
                version: PROTOCOL_VERSION,
                session_id: 1,
                server_time_us: 0,
                identity: "finisher".into(),
                limits: Limits::default(),
            };
            let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Welcome(welcome)) };
            send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
            if close {
                tokio::time::sleep(Duration::from_millis(20)).await;
                conn.close(0u32.into(), b"crashed");
                return;
            }
            send.finish().unwrap();
            conn.closed().await;
        });
    }
}

/// A fake server ([`after_welcome`]) on 127.0.0.1 with a dev certificate in a temporary data directory: the
/// directory (for the client's trust), its address, and the count of connections it accepted.
pub fn fake_server(close: bool) -> (tempfile::TempDir, String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (dir, endpoint, addr) = fake_endpoint();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(after_welcome(endpoint, accepted.clone(), close));
    (dir, addr, accepted)
}

/// A quinn server endpoint on 127.0.0.1 with a dev certificate in a temporary data directory: the directory (for
/// the client's trust), the endpoint and its address.
pub fn fake_endpoint() -> (tempfile::TempDir, quinn::Endpoint, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
    let tickets = quiver_transport::tls::session_tickets(|| {}).unwrap();
    let tuning = quiver_transport::TransportTuning::default();
    let config =
        quiver_transport::tls::server_config(cert.chain, cert.key, &Limits::default(), &tuning, &tickets).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    (dir, endpoint, addr)
}

/// A server that lets a room's first stream come late: it answers Join, Leave and Join again of one room before
/// anything of the first Join's stream leaves, then sends both streams, the first one's Open first. (React's
/// StrictMode joins, leaves and joins at once; a lost packet delays a stream the same way.)
pub async fn late_first_stream(endpoint: quinn::Endpoint) {
    use quiver_proto::{EventKind, FrameCodec, Joined, Reply, Request, RequestBody, RoomEvent, RoomFrame, ServerMsg};
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let frame = |frame: &RoomFrame| codec.encode_to_vec(frame).unwrap().freeze();
    let event = |seq, kind| RoomFrame::Event(RoomEvent { seq, time_us: 0, kind });
    let joined = |req_id, last_seq| Joined {
        room: "r".into(),
        epoch: 1,
        recovered: true,
        replay_from: last_seq + 1,
        last_seq,
        members: vec!["ann".into()],
        req_id,
    };
    let (mut inbound, mut first) = (bytes::BytesMut::new(), None);
    loop {
        let Some(Request { req_id, body }) = next_request(&codec, &mut inbound, &mut recv).await else { return };
        let reply = match body {
            RequestBody::Hello(_) => welcome("ann"),
            RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
            RequestBody::Leave { room } => Reply::Left { room },
            RequestBody::Join(_) if first.is_none() => {
                // The stream is opened (its id taken) but nothing of it is sent yet.
                first = Some((req_id, conn.open_uni().await.unwrap()));
                Reply::Joined(joined(req_id, 4))
            }
            RequestBody::Join(_) => {
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Joined(joined(req_id, 5))) };
                send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
                let (first_req, mut stream) = first.take().unwrap();
                let ann = EventKind::MemberJoined { member: "ann".into() };
                let left = EventKind::MemberLeft { member: "ann".into() };
                let posted = EventKind::Message { sender: "bob".into(), client_msg_id: 5, body: "early".into() };
                for f in
                    [RoomFrame::Open(joined(first_req, 4)), event(4, ann.clone()), event(5, posted), event(5, left)]
                {
                    stream.write_all(&frame(&f)).await.unwrap();
                }
                stream.finish().unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await; // the first stream's Open is read first
                let mut second = conn.open_uni().await.unwrap();
                let posted = EventKind::Message { sender: "bob".into(), client_msg_id: 6, body: "later".into() };
                for f in [RoomFrame::Open(joined(req_id, 5)), event(5, ann), event(6, posted)] {
                    second.write_all(&frame(&f)).await.unwrap();
                }
                continue;
            }
            other => violation(format!("unexpected request {other:?}")),
        };
        let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
        send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
    }
}

/// A server that answers Hello and then nothing (a hung process that still holds its connections), or, with
/// `pings`, nothing but Pings (a server whose store or broker hangs); `welcomed` is told once the Welcome is
/// written. Returns when the connection is closed.
pub async fn mute_after_welcome(endpoint: quinn::Endpoint, welcomed: tokio::sync::oneshot::Sender<()>, pings: bool) {
    use quiver_proto::{FrameCodec, Reply, Request, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION};
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let (mut inbound, mut welcomed) = (bytes::BytesMut::new(), Some(welcomed));
    loop {
        match codec
            .decode::<Request>(&mut inbound)
            .unwrap_or_else(|err| violation(format!("a malformed request: {err}")))
        {
            Some(Request { req_id, body: RequestBody::Hello(_) }) => {
                let limits = Limits::default();
                let welcome = Welcome {
                    version: PROTOCOL_VERSION,
                    session_id: 1,
                    server_time_us: 0,
                    identity: "m".into(),
                    limits,
                };
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Welcome(welcome)) };
                send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
                let _ = welcomed.take().map(|welcomed| welcomed.send(()));
            }
            Some(Request { req_id, body: RequestBody::Ping { client_time_us } }) if pings => {
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Pong { client_time_us, server_time_us: 0 }) };
                send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
            }
            Some(_) => {} // never answered
            None => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => inbound.extend_from_slice(&chunk.bytes),
                // (The connection's close, not its control stream's end: a client that only reset the stream and
                // kept the connection would hold it, which is what the tests using this look for.)
                _ => return drop(conn.closed().await),
            },
        }
    }
}

/// What [`broken_room_stream`] saw, by connection (numbered from 1 in accept order).
#[derive(Debug)]
pub enum Seen {
    /// A Join, with its `since`.
    Join(usize, Option<quiver_proto::Position>),
    /// The connection ended, with this code and reason.
    Closed(usize, quiver_proto::ErrorCode, String),
}

/// A server whose first connection breaks the protocol on a room stream: a Join of room `r` gets a stream with the
/// room's message 1, then a frame whose body is no room frame. A later connection's Join gets the messages after its
/// `since`, up to message 2.
pub async fn broken_room_stream(endpoint: quinn::Endpoint, seen: tokio::sync::mpsc::UnboundedSender<Seen>) {
    let mut number = 0;
    while let Some(incoming) = endpoint.accept().await {
        number += 1;
        tokio::spawn(broken_room_stream_connection(incoming, number, seen.clone()));
    }
}

async fn broken_room_stream_connection(
    incoming: quinn::Incoming,
    number: usize,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
) {
    use quiver_proto::{
        EventKind, FrameCodec, Joined, Reply, Request, RequestBody, RoomEvent, RoomFrame, ServerMsg, Welcome,
        PROTOCOL_VERSION,
    };
    let Ok(conn) = incoming.await else { return };
    let watched = (conn.clone(), seen.clone());
    tokio::spawn(async move {
        let (code, reason) = quiver_transport::close::describe(&watched.0.closed().await);
        let _ = watched.1.send(Seen::Closed(number, code, reason));
    });
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let message = |seq, body: &str| {
        let kind = EventKind::Message { sender: "ann".into(), client_msg_id: seq, body: body.to_string().into() };
        codec.encode_to_vec(&RoomFrame::Event(RoomEvent { seq, time_us: 0, kind })).unwrap()
    };
    let mut inbound = bytes::BytesMut::new();
    loop {
        let Some(Request { req_id, body }) = next_request(&codec, &mut inbound, &mut recv).await else { return };
        let reply = match body {
            RequestBody::Hello(_) => Reply::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                session_id: number as u64,
                server_time_us: 0,
                identity: "ann".into(),
                limits: Limits::default(),
            }),
            RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
            RequestBody::Join(join) => {
                let _ = seen.send(Seen::Join(number, join.since));
                let last_seq = join.since.map_or(0, |since| since.seq);
                let joined = Joined {
                    room: join.room,
                    epoch: 7,
                    recovered: true,
                    replay_from: last_seq + 1,
                    last_seq,
                    members: vec!["ann".into()],
                    req_id,
                };
                let mut stream = conn.open_uni().await.unwrap();
                stream.write_all(&codec.encode_to_vec(&RoomFrame::Open(joined.clone())).unwrap()).await.unwrap();
                if number == 1 {
                    stream.write_all(&message(1, "first")).await.unwrap();
                    // A one-byte frame whose body names no RoomFrame variant (postcard's variant index 127).
                    stream.write_all(&[0x01, 0x7f]).await.unwrap();
                } else {
                    for seq in last_seq + 1..=2 {
                        stream.write_all(&message(seq, "later")).await.unwrap();
                    }
                }
                Reply::Joined(joined)
            }
            other => violation(format!("unexpected request {other:?}")),
        };
        let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
        send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.unwrap();
    }
}

/// A server whose first Join of room `r` is answered together with a `Kicked` for it with `code`, its stream reset
/// with it: for `SlowConsumer` both in one write (the kick arrives before the client's join has taken its reply),
/// for another code 200 ms after the reply. Later Joins are answered with a stream carrying one message, `after the
/// kick`. Each Join's `req_id` goes to `joins`.
pub async fn kicked_with_its_join(
    endpoint: quinn::Endpoint,
    joins: tokio::sync::mpsc::UnboundedSender<u64>,
    code: quiver_proto::ErrorCode,
) {
    use quiver_proto::{
        ErrorCode, EventKind, FrameCodec, Reply, Request, RequestBody, RoomEvent, RoomFrame, ServerMsg,
    };
    let Some(incoming) = endpoint.accept().await else { return };
    let conn = incoming.await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let codec = FrameCodec::new(Limits::default().max_frame as usize);
    let encode = |msg: &ServerMsg| codec.encode_to_vec(msg).unwrap();
    let joined = |req_id| joined_empty("r", req_id);
    let (mut inbound, mut first) = (bytes::BytesMut::new(), true);
    let mut streams = Vec::new(); // kept open until the connection ends
    loop {
        let Some(Request { req_id, body }) = next_request(&codec, &mut inbound, &mut recv).await else { return };
        let reply = match body {
            RequestBody::Hello(_) => welcome("ann"),
            RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
            RequestBody::Leave { room } => Reply::Left { room },
            RequestBody::Join(_) => {
                let _ = joins.send(req_id);
                let mut stream = conn.open_uni().await.unwrap();
                stream.write_all(&codec.encode_to_vec(&RoomFrame::Open(joined(req_id))).unwrap()).await.unwrap();
                let reply = ServerMsg::Reply { req_id, result: Ok(Reply::Joined(joined(req_id))) };
                if std::mem::take(&mut first) {
                    let kicked = ServerMsg::Kicked { room: Some("r".into()), code, reason: "dropped".into() };
                    let mut both = encode(&reply);
                    if code != ErrorCode::SlowConsumer {
                        // (Another kick comes once the join is answered.)
                        send.write_all(&both).await.unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        both.clear();
                    }
                    both.extend_from_slice(&encode(&kicked));
                    send.write_all(&both).await.unwrap();
                    let _ = stream.reset(code.to_u32().into());
                } else {
                    send.write_all(&encode(&reply)).await.unwrap();
                    let kind =
                        EventKind::Message { sender: "bob".into(), client_msg_id: 1, body: "after the kick".into() };
                    let event = RoomFrame::Event(RoomEvent { seq: 1, time_us: 0, kind });
                    stream.write_all(&codec.encode_to_vec(&event).unwrap()).await.unwrap();
                    streams.push(stream);
                }
                continue;
            }
            other => violation(format!("unexpected request {other:?}")),
        };
        send.write_all(&encode(&ServerMsg::Reply { req_id, result: Ok(reply) })).await.unwrap();
    }
}

/// A server whose connection drops under the first Join, the first Subscribe, the first Publish and the first
/// History it is sent (each closes the connection it came on, unanswered, as a server that crashed); those sent
/// again, on the next connections, are answered: a Join with a stream carrying one message, `after the drop`, a
/// History with that message. Every request but Hello and Ping goes to `seen`, with the number of the connection
/// it came on (from 0). How the connection goes: [`Dropped`].
pub async fn drops_each_first_request(
    endpoint: quinn::Endpoint,
    seen: tokio::sync::mpsc::UnboundedSender<(usize, quiver_proto::RequestBody)>,
    how: Dropped,
) {
    use std::sync::{Arc, Mutex};

    use quiver_proto::{EventKind, FrameCodec, HistoryPage, Reply, RequestBody, RoomEvent, RoomFrame, ServerMsg};
    let dropped = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut connections = 0..;
    while let Some(incoming) = endpoint.accept().await {
        let (number, dropped, seen) = (connections.next().unwrap_or(0), dropped.clone(), seen.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = FrameCodec::new(Limits::default().max_frame as usize);
            let message = RoomEvent {
                seq: 1,
                time_us: 0,
                kind: EventKind::Message { sender: "bob".into(), client_msg_id: 1, body: "after the drop".into() },
            };
            let mut inbound = bytes::BytesMut::new();
            let mut streams = Vec::new(); // kept open until the connection ends
            while let Some(quiver_proto::Request { req_id, body }) = next_request(&codec, &mut inbound, &mut recv).await
            {
                if !matches!(body, RequestBody::Hello(_) | RequestBody::Ping { .. }) {
                    let _ = seen.send((number, body.clone()));
                    let kind = std::mem::discriminant(&body);
                    if dropped.lock().unwrap().insert(kind) {
                        if how == Dropped::Refused {
                            let code = quiver_proto::ErrorCode::Unavailable;
                            let why = "the server is shutting down; retry once reconnected";
                            let failure = quiver_proto::Failure::new(code, why);
                            let refused = ServerMsg::Reply { req_id, result: Err(failure) };
                            let _ = send.write_all(&codec.encode_to_vec(&refused).unwrap()).await;
                        }
                        if how != Dropped::Unanswered {
                            let code = quiver_proto::ErrorCode::GoingAway;
                            let away = ServerMsg::GoAway { code, reason: "draining".into() };
                            let _ = send.write_all(&codec.encode_to_vec(&away).unwrap()).await;
                            let _ = send.finish();
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        conn.close(0u32.into(), b"crashed");
                        return;
                    }
                }
                let reply = match body {
                    RequestBody::Hello(_) => welcome("ann"),
                    RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
                    RequestBody::Join(join) => {
                        let joined = joined_empty(&join.room, req_id);
                        let mut stream = conn.open_uni().await.unwrap();
                        for frame in [RoomFrame::Open(joined.clone()), RoomFrame::Event(message.clone())] {
                            stream.write_all(&codec.encode_to_vec(&frame).unwrap()).await.unwrap();
                        }
                        streams.push(stream);
                        Reply::Joined(joined)
                    }
                    RequestBody::Subscribe { channel } => Reply::Subscribed { channel, channel_id: 1 },
                    RequestBody::Publish { channel, .. } => Reply::Publishing { channel, channel_id: 2 },
                    RequestBody::History { room, .. } => {
                        Reply::History(HistoryPage { room, epoch: 1, messages: vec![message.clone()], more: false })
                    }
                    other => violation(format!("unexpected request {other:?}")),
                };
                let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
                if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// How [`drops_each_first_request`] lets a connection go under a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Closed, the request unanswered, as by a server that crashed.
    Unanswered,
    /// As a draining server's: GoAway, its control stream finished, and the connection closed 300 ms later.
    Draining,
    /// As a draining server's that still held the request: refused `Unavailable` ("retry once reconnected"), then
    /// as [`Dropped::Draining`].
    Refused,
}

/// A server whose connections are numbered from 0, each welcomed with that number plus one as its session id:
/// connection 0 answers its Pings and is closed a second after its Welcome (as by a crash), connection 1 is closed at
/// its first Ping (while the client measures its clock), and the later ones answer their Pings for good.
pub async fn closes_at_a_clock_ping(endpoint: quinn::Endpoint) {
    use quiver_proto::{FrameCodec, Reply, RequestBody, ServerMsg};
    let mut connections = 0u64..;
    while let Some(incoming) = endpoint.accept().await {
        let number = connections.next().unwrap_or(0);
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let codec = FrameCodec::new(Limits::default().max_frame as usize);
            if number == 0 {
                let conn = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    conn.close(0u32.into(), b"crashed");
                });
            }
            let mut inbound = bytes::BytesMut::new();
            while let Some(quiver_proto::Request { req_id, body }) = next_request(&codec, &mut inbound, &mut recv).await
            {
                let reply = match body {
                    RequestBody::Hello(_) => {
                        let Reply::Welcome(mut welcome) = welcome("ann") else { unreachable!() };
                        welcome.session_id = number + 1;
                        Reply::Welcome(welcome)
                    }
                    RequestBody::Ping { .. } if number == 1 => return conn.close(0u32.into(), b"crashed at a ping"),
                    RequestBody::Ping { client_time_us } => Reply::Pong { client_time_us, server_time_us: 0 },
                    other => violation(format!("unexpected request {other:?}")),
                };
                let reply = ServerMsg::Reply { req_id, result: Ok(reply) };
                if send.write_all(&codec.encode_to_vec(&reply).unwrap()).await.is_err() {
                    return;
                }
            }
        });
    }
}
