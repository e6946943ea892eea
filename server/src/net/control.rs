//! A connection's control stream: Hello first (within the handshake timeout), then each request answered in order,
//! the replies of posts waiting for their commit, kicks, a token's expiry and a reload of the keys, until the peer
//! leaves, breaks the protocol, or the server shuts down (`connection.rs` sets the connection up around it).

use std::sync::Arc;

use bytes::BytesMut;
use quiver_proto::{ErrorCode, FrameCodec, ServerMsg};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    hub::RoomHub,
    net::{
        admit::{make_room, Slot},
        close::{control_stream_closed, control_stream_gone, refuse},
        copies,
        dispatch::{Answer, Connection},
        now_us,
        replies::{encode, flush_and_close, going_away, Replies, POSTS_IN_FLIGHT},
        requests::next_step,
        wire::{Wire, WireError},
    },
    post_copies::PostCopies,
    session::{ControlSession, RoomRequest, Step},
    stats::{bump, ServerStats},
    throttle::ControlThrottle,
    ServerConfig,
};

/// The token verifier, watched for reloads, and for steps of the wall clock (`clock::watch_sessions`): either makes
/// the session check itself again, its token's expiry included.
type Keys = tokio::sync::watch::Receiver<Arc<crate::auth::Auth>>;

/// Serves the control stream; returns why the connection ended (for the log). The connection is closed on return.
///
/// Not an `async fn`: an async fn's future keeps each argument twice (the argument, and the local it is moved into),
/// about 280 bytes here in every idle connection's task; an `async move` block keeps what it captures once.
pub(super) fn control<'a, R: RoomHub>(
    conn: &'a Wire,
    config: &'a ServerConfig,
    stats: &'a Arc<ServerStats>,
    connection: &'a mut Connection<R>,
    session: ControlSession,
    (hello_deadline, started, slot, keys): (Instant, std::time::Instant, &'a mut Slot, Keys),
    shutdown: &'a CancellationToken,
) -> impl std::future::Future<Output = String> + 'a {
    let (mut session, mut keys) = (session, keys);
    async move {
        let timeout_ms = config.limits.handshake_timeout_ms;
        let (mut send, mut recv) = tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(err) => return format!("closed before opening the control stream: {err}"),
            },
            () = tokio::time::sleep_until(hello_deadline) => {
                stats.refused(ErrorCode::HandshakeTimeout);
                conn.close(ErrorCode::HandshakeTimeout, &format!("no Hello within {timeout_ms} ms"));
                return "handshake timeout".into();
            }
            () = shutdown.cancelled() => match slot.made_room() {
                true => return make_room(conn, config, stats, slot),
                false => return going_away(conn, None).await,
            },
        };
        // On a task of its own, not in this loop: the loop can wait long outside its select (a reply the client does
        // not read), and an extra stream must be refused at once, before quinn buffers a stream window's worth of it.
        let (refusing, refused) = (conn.clone(), stats.clone());
        // Cancelled once it closed the connection: this loop then serves nothing more (over WebTransport the close is
        // a capsule, and the connection stays open for a few round trips after it, where the loop went on taking
        // posts and joins).
        let violated = CancellationToken::new();
        let violation = violated.clone();
        let _refuse = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            if let Some(what) = refusing.other_stream().await {
                tracing::info!("client opened {what}");
                refused.refused(ErrorCode::ProtocolViolation);
                let reason = format!("clients open one stream, the control stream, not {what}");
                refusing.close(ErrorCode::ProtocolViolation, &reason);
                violation.cancel();
            }
        }));
        let mut throttle = ControlThrottle::new(&config.limits, stats.clone(), Instant::now().into_std());
        let codec = FrameCodec::new(config.limits.max_frame as usize);
        let mut inbound = BytesMut::new();
        let mut outbound = BytesMut::new();
        // A token's `exp` ends the session: the client reconnects with a fresh token (docs/security.md). One timer,
        // armed once after Hello, not a new one per request.
        let expiry = tokio::time::sleep_until(hello_deadline);
        tokio::pin!(expiry);
        // When the frame waiting in `inbound` began (after Hello it must complete within the frame timeout).
        let frame_timeout = config.budget.frame_timeout();
        let mut partial_since: Option<Instant> = None;
        let mut post_copies = PostCopies::default();
        let copied = connection.take_post_copies();
        // Replies waiting for a post's commit, and the request held back meanwhile (`Replies::may_run`).
        let mut replies = Replies::default();
        let mut deferred: Option<Step> = None;
        // Whole requests left in `inbound` because the replies so far reached the high-water mark: served once those
        // are written, without waiting for more input, and nothing more is read meanwhile (QUIC's flow control then
        // holds the client back, and its FIN is seen only once its requests are served).
        let mut more_inbound = false;
        // False once the server's side of the keys is gone (nothing more can be reloaded).
        let mut reloadable = true;
        // Hello served, and the connection counted as welcomed.
        let mut welcomed = false;
        loop {
            if violated.is_cancelled() {
                return "closed: the client opened a stream besides its control stream".into();
            }
            let awaiting_hello = session.identity().is_none();
            let partial_deadline = partial_since.map_or(hello_deadline, |since| since + frame_timeout);
            let expires = connection.arm_expiry(&session, expiry.as_mut());
            // On the wall clock, as `exp` is: the timer's runs behind it after the machine slept (`EXPIRY_LOOK`).
            let expired = connection.token_expired();
            tokio::select! {
                () = async { if !expired { expiry.as_mut().await } }, if expires => {
                    if !connection.token_expired() {
                        // The timer only looked at the wall clock: it looks again later.
                        if let Some(at) = connection.next_expiry_look() {
                            expiry.as_mut().reset(at);
                        }
                        continue;
                    }
                    bump(&stats.sessions_expired);
                    // A close with a code, as every refusal (`quiver_refusals_total{code="TokenExpired"}` counted only
                    // the Hellos refused for it until 2026-12-07, not the sessions it ended), but not a token refused
                    // (`quiver_tokens_refused_total`: the Hellos', counted once more as a session's end until then).
                    stats.closed_with(ErrorCode::TokenExpired);
                    // Nothing more is delivered or taken from here on (rooms left, subscriptions and claims ended, the
                    // datagram and room-stream tasks stopped): a session does not outlive its token while the posts
                    // already taken are answered (within the frame timeout), which could take seconds.
                    Box::pin(connection.close(now_us(), frame_timeout)).await;
                    replies.finish(&codec, stats, &mut outbound, frame_timeout).await;
                    let why = "the access token expired";
                    answer_deferred(deferred.take(), &replies, (&codec, stats), &mut outbound, why);
                    // Flushed even when nothing is left to encode: replies written just before (a Join refused at the
                    // expiry) would otherwise be dropped by the close.
                    let reason = "the access token expired; reconnect with a fresh one";
                    flush_and_close(conn, &mut send, &outbound, ErrorCode::TokenExpired, reason).await;
                    return "token expired".into();
                }
                // A reload of the keys: the session checks itself again (a connection accepted just before the reload,
                // welcomed by the keys it started with, too).
                changed = keys.changed(), if reloadable && !awaiting_hello => {
                    let auth = keys.borrow_and_update().clone();
                    reloadable = changed.is_ok();
                    if let (true, Err(failure)) = (reloadable, session.readmitted(&auth)) {
                        stats.refused(failure.code);
                        Box::pin(connection.close(now_us(), frame_timeout)).await;
                        replies.finish(&codec, stats, &mut outbound, frame_timeout).await;
                        let why = "the key of this session's token is no longer trusted";
                        answer_deferred(deferred.take(), &replies, (&codec, stats), &mut outbound, why);
                        flush_and_close(conn, &mut send, &outbound, failure.code, &failure.message).await;
                        return failure.message;
                    }
                    // Or the wall clock stepped: the timer, on the monotonic clock, looks at it again from now (at the
                    // loop's top, a token the step expired is found expired, and the expiry branch closes at once).
                    if let Some(at) = connection.next_expiry_look() {
                        expiry.as_mut().reset(at);
                    }
                }
                () = violated.cancelled() => {}
                () = replies.next(&codec, stats, &mut outbound), if replies.waiting() => {}
                () = std::future::ready(()), if more_inbound => {}
                chunk = recv.read_chunk(), if deferred.is_none() && !more_inbound => match chunk {
                    Ok(Some(chunk)) => inbound.extend_from_slice(&chunk),
                    Ok(None) if inbound.is_empty() => {
                        // The posts already taken (waiting for their commit) are answered first (within the frame
                        // timeout): every request gets its reply.
                        replies.finish(&codec, stats, &mut outbound, frame_timeout).await;
                        // Flushed even when nothing is left to encode: replies written just before (requests in the
                        // FIN's own chunk) would otherwise be dropped by the close.
                        flush_and_close(conn, &mut send, &outbound, ErrorCode::NoError, "control stream finished").await;
                        return "client finished the control stream".into();
                    }
                    Ok(None) => {
                        let reason = format!(
                            "the client finished its control stream inside a frame ({} bytes of it sent)",
                            inbound.len()
                        );
                        return control_stream_closed(conn, stats, reason);
                    }
                    Err(err @ (WireError::Closed(..) | WireError::SessionGone)) => {
                        return Box::pin(control_stream_gone(conn, stats, err)).await;
                    }
                    Err(WireError::Stream(code)) => {
                        let reason = format!("the client reset its control stream (code {code})");
                        return control_stream_closed(conn, stats, reason);
                    }
                    Err(err) => return control_stream_closed(conn, stats, format!("control stream: {err}")),
                },
                stopped = send.stopped() => {
                    let reason = match stopped {
                        Ok(Some(code)) => format!("the client stopped reading its control stream (code {code})"),
                        Ok(None) => "the control stream ended".to_string(),
                        Err(err) => return Box::pin(control_stream_gone(conn, stats, err)).await,
                    };
                    return control_stream_closed(conn, stats, reason);
                }
                () = tokio::time::sleep_until(hello_deadline), if awaiting_hello => {
                    stats.refused(ErrorCode::HandshakeTimeout);
                    conn.close(ErrorCode::HandshakeTimeout, &format!("no Hello within {timeout_ms} ms"));
                    return "handshake timeout".into();
                }
                () = tokio::time::sleep_until(partial_deadline), if !awaiting_hello && partial_since.is_some() => {
                    let reason = format!(
                        "a control frame begun {} ms ago is still incomplete ({} bytes received)",
                        frame_timeout.as_millis(),
                        inbound.len()
                    );
                    return refuse(conn, stats, ErrorCode::FrameTimeout, reason);
                }
                kicked = connection.next_kicked() => {
                    if let Some(msg) = Box::pin(connection.kick(kicked, now_us())).await {
                        encode(&codec, &msg, &mut outbound);
                    }
                }
                // Not while a request is held back: a copy must not sequence a later post before it. Not once the token
                // expired either (the expiry branch, ready too, may lose `select!`'s draw): no post after `exp`. Not
                // beyond `POSTS_IN_FLIGHT` posts sequenced and unanswered (the stream's own bound): copies, each
                // answered by a request that only joins its waiting reply, would otherwise start commits without one.
                // Nor once a stream was opened beside the control stream, or the keys were reloaded, until the loop's
                // own branches closed or checked the session again (as for the stream's requests).
                Some(copy) = async { Some(copied.as_ref()?.pop().await) },
                    if !awaiting_hello && deferred.is_none()
                        && !(copies_gated(&violated, &keys, reloadable) || connection.token_expired())
                        && replies.posts_in_flight() + post_copies.early() < POSTS_IN_FLIGHT => {
                    // The precondition was checked when the `select!` began: the expiry may have passed since (its
                    // branch, ready too, lost the draw), a stream been opened beside or the keys reloaded. The copy is
                    // dropped then; its request is served (or refused) as the session stands after those branches.
                    if !(copies_gated(&violated, &keys, reloadable) || connection.token_expired()) {
                        // (The frame being received is not read meanwhile: its timer is put off by the wait.)
                        let began = Instant::now();
                        let room = POSTS_IN_FLIGHT.saturating_sub(replies.posts_in_flight() + post_copies.early());
                        let flood =
                            copies::on_post_copy(connection, &mut session, &mut throttle, &mut post_copies, copy, room);
                        let (flood, wrote) =
                            replies.meanwhile(Box::pin(flood), (&codec, stats), (&mut outbound, &mut send)).await;
                        if wrote {
                            connection.probe().sent();
                        }
                        if let Some(since) = partial_since.as_mut() {
                            *since += began.elapsed();
                        }
                        if let Some((code, reason)) = flood {
                            // Closed as a flood on the stream is: the replies waiting (posts of earlier copies,
                            // sequenced and delivered) answered first, then the close with its reason (the refused
                            // copy's own request has not come in on the stream: no reply of its own). They were
                            // dropped by a close at once.
                            stats.refused(code);
                            replies.finish(&codec, stats, &mut outbound, frame_timeout).await;
                            flush_and_close(conn, &mut send, &outbound, code, &reason).await;
                            return format!("refused: {reason}");
                        }
                    }
                }
                () = shutdown.cancelled() => {
                    if slot.made_room() {
                        return make_room(conn, config, stats, slot);
                    }
                    replies.finish(&codec, stats, &mut outbound, frame_timeout).await;
                    let why = "the server is shutting down";
                    answer_deferred(deferred.take(), &replies, (&codec, stats), &mut outbound, why);
                    return Box::pin(going_away(conn, Some((&mut send, outbound)))).await;
                }
            }
            let mut completed = false;
            more_inbound = false;
            loop {
                // Welcomed as soon as its Hello is served, before the requests pipelined behind it in the same chunk
                // are (they may wait: a Join for a stream, a store's commit), not after the whole chunk: from here on
                // no newer connection closes it to make room, and those requests are served in the protocol version
                // it speaks. One closed to make room before its Hello was served is closed as such, unwelcomed.
                if !welcomed {
                    if let Some(identity) = session.identity() {
                        welcomed = true;
                        slot.welcomed();
                        if slot.made_room() {
                            return make_room(conn, config, stats, slot);
                        }
                        connection.speaks(session.version().unwrap_or(quiver_proto::PROTOCOL_VERSION));
                        tracing::Span::current().record("identity", identity);
                        stats.handshake.observe_since(started);
                        bump(&stats.handshakes);
                    }
                }
                // Replies are written before more requests are served: a burst of small requests with large replies
                // (History) must not buffer more than about a frame per connection.
                if outbound.len() >= codec.max_frame() {
                    more_inbound = !inbound.is_empty() || deferred.is_some();
                    break;
                }
                // Armed as soon as Hello is served (a Join in Hello's own chunk stops at the expiry too). Nothing more is
                // served once the token expired on the wall clock: the loop's expiry branch, ready then, closes.
                if connection.arm_expiry(&session, expiry.as_mut()) && connection.token_expired() {
                    more_inbound = !inbound.is_empty() || deferred.is_some();
                    break;
                }
                // A stream opened beside the control stream, or a reload of the keys once welcomed: the loop's own
                // branches close or check the session before anything more is served (a chunk ready together with
                // either may have won the `select!`'s draw).
                let reloaded = || reloadable && keys.has_changed().unwrap_or(false);
                if violated.is_cancelled() || (session.identity().is_some() && reloaded()) {
                    more_inbound = !inbound.is_empty() || deferred.is_some();
                    break;
                }
                // Keys reloaded since the connection arrived: its Hello is checked with the new ones.
                if session.identity().is_none() && keys.has_changed().unwrap_or(false) {
                    session.use_keys(keys.borrow_and_update().clone());
                }
                let step = match deferred.take() {
                    Some(step) => step,
                    None => match next_step(
                        &codec,
                        &mut inbound,
                        &mut session,
                        &mut throttle,
                        &mut post_copies,
                        (&mut replies, &mut completed),
                    ) {
                        Ok(Some(step)) => step,
                        Ok(None) => break,
                        Err((code, reason)) => {
                            stats.refused(code);
                            conn.close(code, &reason);
                            return format!("protocol error: {reason}");
                        }
                    },
                };
                if !replies.may_run(&step) {
                    deferred = Some(step);
                    break;
                }
                // A Join that may wait for a left room's stream to end (`Connection::at_stream_limit`) waits with the
                // replies (and kicks) before it written: the client may hold its left room until the Left reply.
                if step.is_join() && connection.at_stream_limit() {
                    for kicked in connection.pending_kicks(now_us()).await {
                        encode(&codec, &kicked, &mut outbound);
                    }
                    if !outbound.is_empty() {
                        (deferred, more_inbound) = (Some(step), true);
                        break;
                    }
                }
                completed = true;
                let msg = match step {
                    Step::Reply(msg) => msg,
                    Step::ReplyAndClose(msg, code, reason) => {
                        stats.reply(&msg);
                        encode(&codec, &msg, &mut outbound);
                        flush_and_close(conn, &mut send, &outbound, code, &reason).await;
                        return format!("refused: {reason}");
                    }
                    Step::Room { req_id, identity, request } => {
                        for kicked in connection.pending_kicks(now_us()).await {
                            encode(&codec, &kicked, &mut outbound);
                        }
                        let result = match request {
                            RoomRequest::Post(post) => {
                                // (Its room may have to be loaded from the store: the replies before it go on.)
                                let posting = Box::pin(connection.post(&identity, post, now_us()));
                                let (posted, wrote) =
                                    replies.meanwhile(posting, (&codec, stats), (&mut outbound, &mut send)).await;
                                if wrote {
                                    connection.probe().sent();
                                }
                                match posted {
                                    Ok(Answer::Now(reply)) => Ok(reply),
                                    Ok(Answer::Later(reply)) => {
                                        replies.later(async move { ServerMsg::Reply { req_id, result: reply.await } });
                                        continue;
                                    }
                                    Err(failure) => Err(failure),
                                }
                            }
                            request => Box::pin(connection.room(&identity, (req_id, request), now_us())).await,
                        };
                        ServerMsg::Reply { req_id, result }
                    }
                    Step::Tick { req_id, request } => ServerMsg::Reply { req_id, result: connection.tick(request) },
                };
                if let Some(msg) = replies.ready(msg) {
                    stats.reply(&msg);
                    encode(&codec, &msg, &mut outbound);
                }
            }
            // The timer runs from the start of the frame now waiting: a client pipelining whole frames is never timed
            // out, whatever its reads' boundaries.
            partial_since = match (inbound.is_empty() || deferred.is_some() || more_inbound, completed, partial_since) {
                (true, _, _) => None, // nothing partial, or a whole request held back by the server itself
                (false, true, _) | (false, false, None) => Some(Instant::now()),
                (false, false, since) => since,
            };
            shrink_if_empty(&mut inbound);
            if !outbound.is_empty() {
                // A client that stops reading its replies must not hold this loop (and with it the token's expiry and
                // shutdown) for as long as it keeps the connection alive: it has `frame_timeout` to take them.
                let written = tokio::select! {
                    written = send.write_all(&outbound) => written,
                    () = tokio::time::sleep(frame_timeout) => {
                        let reason = format!(
                            "the client did not read its control-stream replies ({} bytes) within {} ms",
                            outbound.len(),
                            frame_timeout.as_millis()
                        );
                        // A breach of `frame_timeout_ms` as a half-sent request is (its close code says whose side).
                        crate::stats::bump(&stats.frame_timeouts);
                        return refuse(conn, stats, ErrorCode::SlowConsumer, reason);
                    }
                };
                match written {
                    Ok(()) => {}
                    Err(err @ (WireError::Closed(..) | WireError::SessionGone)) => {
                        return Box::pin(control_stream_gone(conn, stats, err)).await;
                    }
                    Err(err) => {
                        let reason = format!("the client stopped reading its control stream ({err})");
                        return control_stream_closed(conn, stats, reason);
                    }
                }
                connection.probe().sent();
                outbound.clear();
                shrink_if_empty(&mut outbound);
            }
        }
    }
}

/// What an empty control-stream buffer may keep of the room it once needed: one large request or reply (a Hello at
/// `max_frame`, a History page) left its capacity for the connection's life, 64 to 128 KiB per idle connection
/// that anyone could leave behind with one frame (a review's find).
const KEPT_BUFFER: usize = 8 * 1024;

/// The request held back (`deferred`) as the connection ends (the server's shutdown, the token's expiry, a key
/// reload): a reply it has already is sent, and a room or tick request not served yet is refused `Unavailable`
/// (`why`; clients retry it once reconnected), as a request still waiting inside the connection is
/// (`dispatch::ending`). It got no reply before: only the replies waiting for their commits were answered. Not when
/// some of those are still unanswered (`replies.finish` gave up on a stalled store): replies go in request order,
/// and a later one before them would break it.
fn answer_deferred(
    deferred: Option<Step>,
    replies: &Replies,
    (codec, stats): (&FrameCodec, &ServerStats),
    out: &mut BytesMut,
    why: &str,
) {
    if replies.waiting() {
        return;
    }
    let msg = match deferred {
        None => return,
        Some(Step::Reply(msg) | Step::ReplyAndClose(msg, ..)) => msg,
        Some(Step::Room { req_id, .. } | Step::Tick { req_id, .. }) => {
            let failure = quiver_proto::Failure::new(ErrorCode::Unavailable, format!("{why}; retry once reconnected"));
            ServerMsg::Reply { req_id, result: Err(failure) }
        }
    };
    stats.reply(&msg);
    encode(codec, &msg, out);
}

/// Lets go of `buf`'s memory when it is empty and holds more than [`KEPT_BUFFER`].
fn shrink_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEPT_BUFFER {
        *buf = BytesMut::new();
    }
}

/// Whether a post copy must wait: a stream was opened beside the control stream (`violated`), or the keys were
/// reloaded (`keys` changed, while `reloadable`), and the loop's own branches have not closed or checked the
/// session again yet; a request on the stream waits for the same.
fn copies_gated(violated: &CancellationToken, keys: &Keys, reloadable: bool) -> bool {
    violated.is_cancelled() || (reloadable && keys.has_changed().unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emptied buffer that once held a large frame lets its memory go; a small one, or one with bytes in it,
    /// keeps what it has.
    #[test]
    fn an_emptied_buffer_lets_a_large_capacity_go() {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&[1; 100]);
        shrink_if_empty(&mut buf);
        assert!(buf.capacity() >= 64 * 1024, "bytes in it: kept");
        buf.clear();
        shrink_if_empty(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let mut small = BytesMut::with_capacity(KEPT_BUFFER);
        shrink_if_empty(&mut small);
        assert_eq!(small.capacity(), KEPT_BUFFER);
    }
}
