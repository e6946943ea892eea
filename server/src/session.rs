//! The control stream's state machine, without sockets or clocks: Hello first (version check, token, identity),
//! then requests, each checked against the token's grants and answered exactly once. The connection code feeds it decoded requests and the time, and sends
//! what it returns.

use std::sync::Arc;

use quiver_proto::{
    ErrorCode, Failure, Hello, Join, Limits, Post, Reply, Request, RequestBody, ServerMsg, Welcome, PROTOCOL_VERSION,
};

use crate::auth::{Auth, ChannelRight, Grant, KeyId, RoomRight};

/// What the connection must do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this reply; the session goes on.
    Reply(ServerMsg),
    /// Send this reply, then close the connection with `code`.
    ReplyAndClose(ServerMsg, ErrorCode, String),
    /// A valid room request from an admitted client: the connection carries it out (hub and streams) and replies.
    Room {
        /// The request's id.
        req_id: u64,
        /// The client's identity.
        identity: String,
        /// What to do.
        request: RoomRequest,
    },
    /// A valid tick request from an admitted client: the connection carries it out and replies.
    Tick {
        /// The request's id.
        req_id: u64,
        /// What to do.
        request: TickRequest,
    },
}

impl Step {
    /// Whether this is a room Join.
    pub fn is_join(&self) -> bool {
        matches!(self, Step::Room { request: RoomRequest::Join(_), .. })
    }
}

/// Tick channel requests that passed the session's checks (channel name within limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickRequest {
    /// Receive a channel's ticks.
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// Stop receiving them.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Claim the right to publish.
    Publish {
        /// Channel name.
        channel: String,
        /// Requested maximum tick age.
        max_age_ms: Option<u32>,
    },
    /// Give up a claim.
    Unpublish {
        /// Channel name.
        channel: String,
    },
}

/// Room requests that passed the session's checks (names and body within limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRequest {
    /// Join, optionally resuming.
    Join(Join),
    /// Leave.
    Leave {
        /// Room name.
        room: String,
    },
    /// Post a message.
    Post(Post),
    /// Read history.
    History {
        /// Room name.
        room: String,
        /// After this seq.
        since: Option<u64>,
        /// At most this many.
        limit: u32,
    },
}

#[derive(Debug)]
enum State {
    AwaitingHello,
    /// Admitted; `grant` is `None` on an anonymous server (everything allowed), and so is `key`, the id of the
    /// key that verified the token.
    Open {
        identity: String,
        grant: Option<Grant>,
        key: Option<KeyId>,
        version: u32,
    },
}

/// One client's control session.
#[derive(Debug)]
pub struct ControlSession {
    session_id: u64,
    limits: Limits,
    /// What Hello is checked with (let go of once it was: a reload's new keys are checked by `readmitted`).
    auth: Option<Arc<Auth>>,
    state: State,
}

impl ControlSession {
    /// A session awaiting Hello, admitting clients as `auth` says.
    pub fn new(session_id: u64, limits: Limits, auth: Arc<Auth>) -> Self {
        ControlSession { session_id, limits, auth: Some(auth), state: State::AwaitingHello }
    }

    /// The token keys were reloaded before Hello: Hello is checked with `auth`.
    pub fn use_keys(&mut self, auth: Arc<Auth>) {
        if matches!(self.state, State::AwaitingHello) {
            self.auth = Some(auth);
        }
    }

    /// The protocol version the session speaks, once Hello succeeded.
    pub fn version(&self) -> Option<u32> {
        match &self.state {
            State::Open { version, .. } => Some(*version),
            State::AwaitingHello => None,
        }
    }

    /// The identity the client was admitted with, once Hello succeeded.
    pub fn identity(&self) -> Option<&str> {
        match &self.state {
            State::Open { identity, .. } => Some(identity),
            State::AwaitingHello => None,
        }
    }

    /// Whether this session, once welcomed, is still admitted by `auth`, the token verifier after a reload of the
    /// keys: not when the key that verified its token was removed (`TokenInvalid`), nor when it was admitted without
    /// a token and `auth` now requires one (`TokenRequired`). A session awaiting Hello is checked at Hello.
    pub fn readmitted(&self, auth: &Auth) -> Result<(), Failure> {
        match &self.state {
            State::Open { key, .. } => auth.readmits(*key),
            State::AwaitingHello => Ok(()),
        }
    }

    /// When the client's token expires (µs since the Unix epoch); the session ends then.
    pub fn expires_us(&self) -> Option<u64> {
        match &self.state {
            State::Open { grant: Some(grant), .. } => Some(grant.exp.saturating_mul(1_000_000)),
            _ => None,
        }
    }

    /// Checks a request against the token's grants, after its name: a name over `max_name` is `BadRequest`
    /// whatever the grants say, and never repeated in a refusal (a name of nearly a frame echoed in one made a
    /// reply too large to send, so the request got none).
    fn permitted(&self, body: &RequestBody) -> Result<(), Failure> {
        let State::Open { grant: Some(grant), identity, .. } = &self.state else { return Ok(()) };
        let (allowed, what, name) = match body {
            RequestBody::Join(join) => (grant.may_room(&join.room, RoomRight::Join), "join room", &join.room),
            RequestBody::History { room, .. } => {
                (grant.may_room(room, RoomRight::Join), "read the history of room", room)
            }
            RequestBody::Post(post) => (grant.may_room(&post.room, RoomRight::Post), "post to room", &post.room),
            RequestBody::Subscribe { channel } => {
                (grant.may_channel(channel, ChannelRight::Subscribe), "subscribe to channel", channel)
            }
            RequestBody::Publish { channel, .. } => {
                (grant.may_channel(channel, ChannelRight::Publish), "publish on channel", channel)
            }
            _ => return Ok(()),
        };
        check_name(name, self.limits.max_name as usize)?;
        if allowed {
            Ok(())
        } else {
            Err(Failure::new(
                ErrorCode::PermissionDenied,
                format!("the token of {identity} does not allow to {what} {name}"),
            ))
        }
    }

    /// Handles one request received at `now_us` (server clock, µs since the Unix epoch).
    pub fn on_request(&mut self, request: Request, now_us: u64) -> Step {
        let req_id = request.req_id;
        let reply = |result| ServerMsg::Reply { req_id, result };
        if let Err(failure) = self.permitted(&request.body) {
            return Step::Reply(reply(Err(failure)));
        }
        match (&self.state, request.body) {
            (State::AwaitingHello, RequestBody::Hello(hello)) => match self.admit(&hello, now_us) {
                Ok(welcome) => Step::Reply(reply(Ok(Reply::Welcome(welcome)))),
                Err(failure) => refuse(req_id, failure),
            },
            (State::AwaitingHello, _) => {
                refuse(req_id, Failure::new(ErrorCode::HelloRequired, "the first request must be Hello"))
            }
            (State::Open { .. }, RequestBody::Hello(_)) => {
                refuse(req_id, Failure::new(ErrorCode::HelloRequired, "Hello was already received"))
            }
            (State::Open { .. }, RequestBody::Ping { client_time_us }) => {
                Step::Reply(reply(Ok(Reply::Pong { client_time_us, server_time_us: now_us })))
            }
            (
                State::Open { identity, .. },
                body @ (RequestBody::Join(_)
                | RequestBody::Leave { .. }
                | RequestBody::Post(_)
                | RequestBody::History { .. }),
            ) => match self.room_request(body) {
                Ok(request) => Step::Room { req_id, identity: identity.clone(), request },
                Err(failure) => Step::Reply(reply(Err(failure))),
            },
            (State::Open { .. }, RequestBody::Subscribe { channel }) => {
                self.tick_request(req_id, channel, |channel| TickRequest::Subscribe { channel })
            }
            (State::Open { .. }, RequestBody::Unsubscribe { channel }) => {
                self.tick_request(req_id, channel, |channel| TickRequest::Unsubscribe { channel })
            }
            (State::Open { .. }, RequestBody::Publish { channel, max_age_ms }) => {
                self.tick_request(req_id, channel, |channel| TickRequest::Publish { channel, max_age_ms })
            }
            // Version 4 has no Unpublish: its subscription and claim of a channel share one id, which a claim made
            // again after an Unpublish would take once more, so that a late datagram of the first claim could pass
            // for one of the second (whose seqs start over).
            (State::Open { version, .. }, RequestBody::Unpublish { .. }) if *version < UNPUBLISH_SINCE => {
                Step::Reply(reply(Err(Failure::new(
                    ErrorCode::Unsupported,
                    format!("Unpublish needs protocol version {UNPUBLISH_SINCE}; this session speaks {version}"),
                ))))
            }
            (State::Open { .. }, RequestBody::Unpublish { channel }) => {
                self.tick_request(req_id, channel, |channel| TickRequest::Unpublish { channel })
            }
        }
    }

    /// Answer to a first frame that does not decode but announces another protocol version.
    pub fn refuse_version(req_id: u64, version: u32) -> Step {
        refuse(req_id, version_failure(version))
    }

    fn tick_request(&self, req_id: u64, channel: String, request: impl FnOnce(String) -> TickRequest) -> Step {
        match check_name(&channel, self.limits.max_name as usize) {
            Ok(()) => Step::Tick { req_id, request: request(channel) },
            Err(failure) => Step::Reply(ServerMsg::Reply { req_id, result: Err(failure) }),
        }
    }

    fn room_request(&self, body: RequestBody) -> Result<RoomRequest, Failure> {
        let max_name = self.limits.max_name as usize;
        Ok(match body {
            RequestBody::Join(join) => {
                check_name(&join.room, max_name)?;
                RoomRequest::Join(join)
            }
            RequestBody::Leave { room } => {
                check_name(&room, max_name)?;
                RoomRequest::Leave { room }
            }
            RequestBody::Post(post) => {
                check_name(&post.room, max_name)?;
                if post.body.len() > self.limits.max_body as usize {
                    return Err(Failure::new(
                        ErrorCode::BodyTooLarge,
                        format!("body of {} bytes exceeds the limit of {}", post.body.len(), self.limits.max_body),
                    ));
                }
                RoomRequest::Post(post)
            }
            RequestBody::History { room, since, limit } => {
                check_name(&room, max_name)?;
                RoomRequest::History { room, since, limit }
            }
            other => {
                return Err(Failure::new(
                    ErrorCode::Internal,
                    format!("{} is not a room request", request_name(&other)),
                ))
            }
        })
    }

    fn admit(&mut self, hello: &Hello, now_us: u64) -> Result<Welcome, Failure> {
        if !quiver_proto::admits_version(hello.version) {
            return Err(version_failure(hello.version));
        }
        let auth = self.auth.as_deref().ok_or_else(|| Failure::new(ErrorCode::Internal, "no token verifier"))?;
        let verified = auth.verify_keyed(hello.token.as_deref(), now_us / 1_000_000)?;
        let (claims, key) = verified.map_or((None, None), |(claims, key)| (Some(claims), Some(key)));
        let identity = match (&claims, &hello.name) {
            // With tokens the identity is the token's subject (checked by `Auth::verify`), whatever Hello's name says.
            (Some(claims), _) => claims.sub.clone(),
            (None, Some(name)) => {
                // The identity rule is quiver-auth's, the one tokens' subjects follow.
                quiver_auth::check_subject(name)
                    .map_err(|err| Failure::new(ErrorCode::BadRequest, format!("name: {err}")))?;
                quiver_auth::identity(name).into_owned()
            }
            (None, None) => format!("anon-{:016x}", self.session_id),
        };
        self.state =
            State::Open { identity: identity.clone(), grant: claims.map(Grant::from), key, version: hello.version };
        self.auth = None;
        Ok(Welcome {
            version: hello.version, // the version this session speaks
            session_id: self.session_id,
            server_time_us: now_us,
            identity,
            limits: self.limits.clone(),
        })
    }
}

fn refuse(req_id: u64, failure: Failure) -> Step {
    let (code, message) = (failure.code, failure.message.clone());
    Step::ReplyAndClose(ServerMsg::Reply { req_id, result: Err(failure) }, code, message)
}

/// The protocol version that brought Unpublish (and an id of its own for each subscription and claim).
const UNPUBLISH_SINCE: u32 = 5;

fn version_failure(version: u32) -> Failure {
    Failure::new(
        ErrorCode::UnsupportedVersion,
        format!(
            "client speaks protocol version {version}; this server speaks {PROTOCOL_VERSION} (and back to {})",
            quiver_proto::OLDEST_PROTOCOL_VERSION
        ),
    )
}

/// Names (identities, rooms, channels) are 1..=max bytes of printable UTF-8.
pub fn check_name(name: &str, max: usize) -> Result<(), Failure> {
    if name.is_empty() || name.len() > max {
        return Err(Failure::new(ErrorCode::BadRequest, format!("name must be 1 to {max} bytes, got {}", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(Failure::new(ErrorCode::BadRequest, "name contains control characters"));
    }
    Ok(())
}

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Hello(_) => "Hello",
        RequestBody::Join(_) => "Join",
        RequestBody::Leave { .. } => "Leave",
        RequestBody::Post(_) => "Post",
        RequestBody::Subscribe { .. } => "Subscribe",
        RequestBody::Unsubscribe { .. } => "Unsubscribe",
        RequestBody::Publish { .. } => "Publish",
        RequestBody::Ping { .. } => "Ping",
        RequestBody::History { .. } => "History",
        RequestBody::Unpublish { .. } => "Unpublish",
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
