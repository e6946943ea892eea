//! A connection's control-request rates, without sockets or clocks: every request counts against
//! `requests_per_s`, a Post also against `posts_per_s`, and a Join or a Leave against a rate of its own,
//! `posts_per_s` or `max_rooms` + 1 a second, whichever is more ([`membership_rate`]): each sends an event to every
//! member of its room, and a connection joining and leaving a room in a loop sent its members presence events at
//! `requests_per_s`, 5,000 a second, each Join copying the member list under the room's lock. Not the posts' own
//! bucket: a client rejoining all its rooms at a reconnect would then have its paced posts refused (its pacer counts
//! posts only), or, with a low `posts_per_s`, be closed as a flood at every reconnect (the diff review's find). A
//! request over a rate is answered `RateLimited` and the connection goes on; a peer that keeps sending regardless
//! (more than `FLOOD_BURSTS` bursts refused within a second) gets its last refusal and is closed with `RateLimited`.

use std::{sync::Arc, time::Instant};

use quiver_proto::{ErrorCode, Failure, Limits, Request, RequestBody, ServerMsg};

use crate::{
    rate::{RateLimit, Verdict},
    session::Step,
    stats::{bump, ServerStats},
};

/// One connection's request and post rates.
#[derive(Debug)]
pub struct ControlThrottle {
    requests: RateLimit,
    posts: RateLimit,
    memberships: RateLimit,
    requests_per_s: u32,
    posts_per_s: u32,
    memberships_per_s: u32,
    stats: Arc<ServerStats>,
}

impl ControlThrottle {
    /// Full buckets for a connection starting at `now`.
    pub fn new(limits: &Limits, stats: Arc<ServerStats>, now: Instant) -> Self {
        ControlThrottle {
            requests: RateLimit::new(limits.requests_per_s, now),
            posts: RateLimit::new(limits.posts_per_s, now),
            memberships: RateLimit::new(membership_rate(limits), now),
            requests_per_s: limits.requests_per_s,
            posts_per_s: limits.posts_per_s,
            memberships_per_s: membership_rate(limits),
            stats,
        }
    }

    /// `None`: serve `request`. `Some(step)`: send this refusal instead (and close, if the step says so).
    pub fn check(&mut self, request: &Request, now: Instant) -> Option<Step> {
        let (verdict, what, rate, counter) = match self.requests.check(now) {
            Verdict::Allow if matches!(request.body, RequestBody::Post(_)) => {
                (self.posts.check(now), "posts", self.posts_per_s, &self.stats.posts_rate_limited)
            }
            Verdict::Allow if matches!(request.body, RequestBody::Join(_) | RequestBody::Leave { .. }) => {
                let rate = self.memberships_per_s;
                (self.memberships.check(now), "joins and leaves", rate, &self.stats.posts_rate_limited)
            }
            Verdict::Allow => return None,
            verdict => (verdict, "requests", self.requests_per_s, &self.stats.requests_rate_limited),
        };
        if verdict == Verdict::Allow {
            return None;
        }
        bump(counter);
        let message = format!("over {rate} {what}/s on this connection; slow down");
        let reply =
            ServerMsg::Reply { req_id: request.req_id, result: Err(Failure::new(ErrorCode::RateLimited, message)) };
        if verdict == Verdict::Close {
            bump(&self.stats.floods_closed);
            let reason = format!("kept sending {what} far over {rate}/s after being refused");
            return Some(Step::ReplyAndClose(reply, ErrorCode::RateLimited, reason));
        }
        Some(Step::Reply(reply))
    }
}

/// Joins and leaves a connection may send a second: `posts_per_s` (each sends its room's members an event, as a
/// post does), but at least `max_rooms` + 1, so that a client rejoining every room it may hold at once (a reconnect)
/// is never refused, let alone closed as a flood (its burst is twice that).
pub fn membership_rate(limits: &Limits) -> u32 {
    limits.posts_per_s.max(limits.max_rooms.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use quiver_proto::Post;

    use super::*;

    fn ping(req_id: u64) -> Request {
        Request { req_id, body: RequestBody::Ping { client_time_us: 0 } }
    }

    fn post(req_id: u64) -> Request {
        let post = Post { room: "r".into(), client_msg_id: req_id, body: Bytes::from_static(b"hi") };
        Request { req_id, body: RequestBody::Post(post) }
    }

    fn code(step: &Option<Step>) -> Option<(ErrorCode, bool)> {
        match step {
            None => None,
            Some(Step::Reply(ServerMsg::Reply { result: Err(f), .. })) => Some((f.code, false)),
            Some(Step::ReplyAndClose(ServerMsg::Reply { result: Err(f), .. }, close, _)) => {
                assert_eq!(f.code, *close);
                Some((f.code, true))
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn requests_over_the_rate_are_refused_then_served_again() {
        let t0 = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { requests_per_s: 10, ..Limits::default() };
        let mut throttle = ControlThrottle::new(&limits, stats.clone(), t0);
        for i in 0..20 {
            assert_eq!(code(&throttle.check(&ping(i), t0)), None, "the burst: 2 s of the rate");
        }
        let refused = throttle.check(&ping(20), t0);
        assert_eq!(code(&refused), Some((ErrorCode::RateLimited, false)));
        let Some(Step::Reply(ServerMsg::Reply { req_id: 20, result: Err(failure) })) = refused else { panic!() };
        assert!(failure.message.contains("10 requests/s"), "{}", failure.message);
        assert_eq!(code(&throttle.check(&ping(21), t0 + Duration::from_millis(100))), None);
        assert_eq!(stats.snapshot().requests_rate_limited, 1);
    }

    #[test]
    fn posts_have_their_own_rate() {
        let t0 = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { requests_per_s: 1000, posts_per_s: 2, ..Limits::default() };
        let mut throttle = ControlThrottle::new(&limits, stats.clone(), t0);
        for i in 0..4 {
            assert_eq!(code(&throttle.check(&post(i), t0)), None);
        }
        assert_eq!(code(&throttle.check(&post(4), t0)), Some((ErrorCode::RateLimited, false)));
        assert_eq!(code(&throttle.check(&ping(5), t0)), None, "other requests still go");
        assert_eq!((stats.snapshot().posts_rate_limited, stats.snapshot().requests_rate_limited), (1, 0));
    }

    /// Joins and leaves send their room's members an event each, as a post does: they have a rate of their own,
    /// `posts_per_s` or `max_rooms` + 1, whichever is more (a connection joining and leaving in a loop sent presence
    /// events at `requests_per_s`). A client rejoining every room it may hold, at once, is never refused, and its
    /// posts keep their own bucket.
    #[test]
    fn joins_and_leaves_have_a_rate_of_their_own() {
        let t0 = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { requests_per_s: 100_000, posts_per_s: 2, max_rooms: 64, ..Limits::default() };
        assert_eq!(membership_rate(&limits), 65);
        let mut throttle = ControlThrottle::new(&limits, stats.clone(), t0);
        let join = |req_id| Request {
            req_id,
            body: RequestBody::Join(quiver_proto::Join { room: "r".into(), since: None, redundant: false }),
        };
        let leave = |req_id| Request { req_id, body: RequestBody::Leave { room: "r".into() } };
        // A reconnect's rejoins, and then some: the burst is twice the rate.
        for i in 0..65 {
            assert_eq!(code(&throttle.check(&join(2 * i), t0)), None, "join {i}");
            assert_eq!(code(&throttle.check(&leave(2 * i + 1), t0)), None, "leave {i}");
        }
        assert_eq!(code(&throttle.check(&join(130), t0)), Some((ErrorCode::RateLimited, false)));
        assert_eq!(code(&throttle.check(&post(131), t0)), None, "the posts' bucket is untouched");
        assert_eq!(code(&throttle.check(&ping(132), t0)), None, "other requests still go");
        assert_eq!(stats.snapshot().posts_rate_limited, 1);
        let busy = Limits { posts_per_s: 2_000, max_rooms: 64, ..Limits::default() };
        assert_eq!(membership_rate(&busy), 2_000);
    }

    #[test]
    fn a_flood_is_closed() {
        let t0 = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { requests_per_s: 10, ..Limits::default() };
        let mut throttle = ControlThrottle::new(&limits, stats.clone(), t0);
        // Burst 20, then 4 bursts (80) refused, then closed.
        let outcomes: Vec<_> = (0..101).map(|i| code(&throttle.check(&ping(i), t0))).collect();
        assert!(outcomes[..20].iter().all(Option::is_none));
        assert!(outcomes[20..100].iter().all(|c| *c == Some((ErrorCode::RateLimited, false))));
        assert_eq!(outcomes[100], Some((ErrorCode::RateLimited, true)));
        assert_eq!(stats.snapshot().floods_closed, 1);
    }
}
