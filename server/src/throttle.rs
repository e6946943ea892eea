//! A connection's control-request rates, without sockets or clocks: every request counts against
//! `requests_per_s`, a Post, a Join and a Leave also against `posts_per_s` (each sends an event to every member of
//! its room: a connection joining and leaving a room in a loop sent its members presence events at
//! `requests_per_s`, 5,000 a second, and with them each Join's copy of the member list, under the room's lock). A request over a rate is answered `RateLimited` and the
//! connection goes on; a peer that keeps sending regardless (more than `FLOOD_BURSTS` bursts refused within a
//! second) gets its last refusal and is closed with `RateLimited`.

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
    requests_per_s: u32,
    posts_per_s: u32,
    stats: Arc<ServerStats>,
}

impl ControlThrottle {
    /// Full buckets for a connection starting at `now`.
    pub fn new(limits: &Limits, stats: Arc<ServerStats>, now: Instant) -> Self {
        ControlThrottle {
            requests: RateLimit::new(limits.requests_per_s, now),
            posts: RateLimit::new(limits.posts_per_s, now),
            requests_per_s: limits.requests_per_s,
            posts_per_s: limits.posts_per_s,
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
                let what = "posts, joins and leaves";
                (self.posts.check(now), what, self.posts_per_s, &self.stats.posts_rate_limited)
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

    /// Joins and leaves send their room's members an event each, as a post does: they count against `posts_per_s`
    /// (a connection joining and leaving in a loop sent presence events at `requests_per_s`).
    #[test]
    fn joins_and_leaves_count_as_room_events() {
        let t0 = Instant::now();
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { requests_per_s: 1000, posts_per_s: 2, ..Limits::default() };
        let mut throttle = ControlThrottle::new(&limits, stats.clone(), t0);
        let join = |req_id| Request {
            req_id,
            body: RequestBody::Join(quiver_proto::Join { room: "r".into(), since: None, redundant: false }),
        };
        let leave = |req_id| Request { req_id, body: RequestBody::Leave { room: "r".into() } };
        for i in 0..2 {
            assert_eq!(code(&throttle.check(&join(2 * i), t0)), None);
            assert_eq!(code(&throttle.check(&leave(2 * i + 1), t0)), None);
        }
        assert_eq!(code(&throttle.check(&join(4), t0)), Some((ErrorCode::RateLimited, false)));
        assert_eq!(code(&throttle.check(&post(5), t0)), Some((ErrorCode::RateLimited, false)), "one bucket");
        assert_eq!(code(&throttle.check(&ping(6), t0)), None, "other requests still go");
        assert_eq!(stats.snapshot().posts_rate_limited, 2);
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
