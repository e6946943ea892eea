//! A connection's state: its rooms, subscriptions and claims, without hubs or sockets.

use super::*;

fn state(limits: Limits) -> ConnectionState<()> {
    ConnectionState::new(limits)
}

fn code<T: std::fmt::Debug>(result: Result<T, Failure>) -> ErrorCode {
    result.unwrap_err().code
}

#[test]
fn rooms_are_joined_once_and_at_most_max_rooms() {
    let mut s = state(Limits { max_rooms: 2, ..Limits::default() });
    let _ = s.may_join("a").unwrap();
    s.joined("a".into(), 1, (), Hold::none());
    assert_eq!(code(s.may_join("a")), ErrorCode::AlreadyJoined);
    s.joined("b".into(), 2, (), Hold::none());
    assert_eq!(code(s.may_join("c")), ErrorCode::TooManyRooms);
    assert_eq!(s.leave("a").unwrap().subscriber, 1);
    assert_eq!(code(s.leave("a")), ErrorCode::NotJoined);
    let _ = s.may_join("c").unwrap();
}

#[test]
fn a_kick_forgets_only_the_subscription_it_names() {
    let mut s = state(Limits::default());
    s.joined("a".into(), 1, (), Hold::none());
    assert!(s.kicked("a", |j| j.subscriber == 7).is_none(), "another subscription (replaced by a rejoin)");
    assert!(s.kicked("b", |_| true).is_none(), "not joined");
    assert!(s.kicked("a", |j| j.subscriber == 1).is_some());
    assert!(s.room("a").is_none());
    let _ = s.may_join("a").unwrap();
}

#[test]
fn a_refused_subscribe_or_claim_allocates_nothing() {
    let mut s = state(Limits { max_subscriptions: 1, max_publish_channels: 1, ..Limits::default() });
    assert_eq!(s.subscribe("x", |_| Ok(10)), Ok(1));
    assert_eq!(s.subscribe("x", |_| panic!("subscribed twice")), Ok(1), "idempotent");
    for i in 0..1000 {
        assert_eq!(code(s.subscribe(&format!("y{i}"), |_| panic!("over the limit"))), ErrorCode::TooManySubscriptions);
    }
    assert_eq!(
        s.claim("p", Some(5), |_| Ok(())),
        Ok(Claim { channel_id: 2, max_age_us: Some(5000), new: true, previous_max_age_us: None })
    );
    assert_eq!(code(s.claim("q", None, |_| panic!("over the limit"))), ErrorCode::TooManyChannels);
    assert_eq!(s.claims().allocated, 3, "refusals took no ids");
    assert_eq!(s.channel_names(), 2);
}

#[test]
fn a_hub_refusal_records_nothing_and_unsubscribed_names_are_forgotten() {
    let mut s = state(Limits::default());
    let full = |_| Err(Failure::new(ErrorCode::ServerFull, "full"));
    for i in 0..1000 {
        assert_eq!(code(s.subscribe(&format!("n{i}"), full)), ErrorCode::ServerFull);
        assert_eq!(
            code(s.claim(&format!("p{i}"), None, |_| Err(Failure::new(ErrorCode::ServerFull, "")))),
            ErrorCode::ServerFull
        );
    }
    assert_eq!((s.claims().allocated, s.channel_names()), (1, 0), "ids start at 1");
    for i in 0..1000 {
        let id = s.subscribe(&format!("c{i}"), |_| Ok(1)).unwrap();
        assert_eq!(id, i + 1, "a new id each time");
        s.unsubscribe(&format!("c{i}")).unwrap();
    }
    assert_eq!(s.channel_names(), 0, "subscribe/unsubscribe churn keeps no names");
}

#[test]
fn a_claims_max_age_tightens_on_a_repeat_and_is_released_with_it() {
    let mut s = state(Limits::default());
    let first = s.claim("c", Some(50), |_| Ok(())).unwrap();
    assert_eq!((first.max_age_us, first.new), (Some(50_000), true));
    let again = s.claim("c", Some(20), |_| panic!("claimed twice")).unwrap();
    assert_eq!((again.previous_max_age_us, again.max_age_us, again.new), (Some(50_000), Some(20_000), false));
    let looser = s.claim("c", Some(90), |_| panic!("claimed twice")).unwrap();
    assert_eq!((looser.previous_max_age_us, looser.max_age_us), (Some(20_000), Some(20_000)), "never loosened");
    s.claim("d", None, |_| Ok(())).unwrap();
    let zero = s.claim("e", Some(0), |_| panic!("a max age of 0 claimed")).unwrap_err();
    assert_eq!(zero.code, ErrorCode::BadRequest, "{zero:?}");
    let mut released = s.close().claims;
    released.sort();
    assert_eq!(released, [(Arc::from("c"), Some(20_000)), (Arc::from("d"), None)]);
}

#[test]
fn subscriptions_and_claims_have_ids_of_their_own_never_reused() {
    let mut s = state(Limits::default());
    assert_eq!(s.subscribe("prices", |id| Ok(100 + id)), Ok(1));
    assert_eq!(s.subscribe("prices", |_| panic!("subscribed twice")), Ok(1), "idempotent");
    assert_eq!(s.claim("prices", None, |_| Ok(())).unwrap().channel_id, 2);
    assert!(!s.claim("prices", Some(1), |_| panic!("claimed twice")).unwrap().new);
    assert_eq!(s.claim("other", None, |_| Ok(())).unwrap().channel_id, 3);
    assert_eq!(s.channel_names(), 2);
    let (claims, now) = (s.claims(), Instant::now());
    assert_eq!(claims.lookup(2, now), ClaimLookup::Claimed(Arc::from("prices")));
    assert_eq!(claims.lookup(1, now), ClaimLookup::NotClaimed, "the subscription's id");
    assert_eq!(claims.lookup(7, now), ClaimLookup::Unknown);
    assert_eq!(s.unsubscribe("prices"), Ok((1, 101)));
    assert_eq!(code(s.unsubscribe("prices")), ErrorCode::NotJoined);
    assert_eq!(code(s.unsubscribe("never")), ErrorCode::NotJoined);
    assert_eq!(s.subscribe("prices", |id| Ok(200 + id)), Ok(4), "subscribed again: a new id");
    assert_eq!(s.claim("prices", None, |_| panic!("claimed twice")).unwrap().channel_id, 2, "the claim stays");
    let release = s.close();
    assert!(release.rooms.is_empty());
    assert_eq!(release.subscriptions.len(), 1);
    assert_eq!(release.claims.len(), 2);
}

#[test]
fn subscribed_but_not_claimed_is_told_apart_from_unknown() {
    let mut s = state(Limits::default());
    s.subscribe("a", |_| Ok(1)).unwrap();
    let now = Instant::now();
    assert_eq!(s.claims().lookup(1, now), ClaimLookup::NotClaimed);
    assert_eq!(s.claims().lookup(2, now), ClaimLookup::Unknown);
    assert_eq!(s.claims().lookup(0, now), ClaimLookup::Unknown, "0 is never a channel");
    assert_eq!(s.history_budget(), 65_536 - 128 - 64, "max_frame less the reply's own fields (max_name + 64)");
}

/// A claim given up frees its place under `max_publish_channels` and takes its max age along; its id is never
/// given out again, not even to the next claim of the same channel (whose seqs start over: a late datagram of
/// the old claim must not be taken for one of the new).
#[test]
fn an_unclaim_frees_its_place_and_its_id_is_never_reused() {
    let mut s = state(Limits { max_publish_channels: 2, ..Limits::default() });
    let (now, after) = (Instant::now(), Instant::now() + UNPUBLISH_GRACE);
    assert_eq!(s.claim("match.1", Some(5), |_| Ok(())).unwrap().channel_id, 1);
    assert_eq!(s.claim("match.2", None, |_| Ok(())).unwrap().channel_id, 2);
    assert_eq!(code(s.claim("match.3", None, |_| panic!("over the limit"))), ErrorCode::TooManyChannels);
    assert_eq!(s.unclaim("match.1", now), Ok((1, Some(5_000))));
    assert_eq!(code(s.unclaim("match.1", now)), ErrorCode::NotJoined);
    assert_eq!(code(s.unclaim("never", now)), ErrorCode::NotJoined);
    assert_eq!(s.claims().lookup(1, after), ClaimLookup::NotClaimed, "its datagrams are dropped after the grace");
    assert_eq!(s.claim("match.3", None, |_| Ok(())).unwrap().channel_id, 3, "a new id, in its place");
    // Subscribed and claimed: the subscription goes on, and a new claim gets a new id.
    assert_eq!(s.subscribe("match.2", |id| Ok(100 + id)), Ok(4));
    assert_eq!(s.unclaim("match.2", now), Ok((2, None)));
    assert_eq!(s.claims().lookup(2, after), ClaimLookup::NotClaimed);
    assert_eq!(s.claim("match.2", None, |_| Ok(())).unwrap().channel_id, 5);
    let release = s.close();
    assert_eq!(release.claims.len(), 2);
    assert_eq!(release.subscriptions.len(), 1);
}

/// A version-4 session keeps the ids version 4 promised: a channel's subscription and claim share one.
#[test]
fn a_version_4_session_shares_a_channels_id_between_subscription_and_claim() {
    let mut s = state(Limits::default());
    s.speaks(4);
    assert_eq!(s.subscribe("prices", |id| Ok(100 + id)), Ok(1));
    assert_eq!(s.claim("prices", None, |_| Ok(())).unwrap().channel_id, 1);
    assert_eq!(s.claim("other", None, |_| Ok(())).unwrap().channel_id, 2);
    assert_eq!(s.subscribe("other", Ok), Ok(2));
    assert_eq!(s.subscribe("third", Ok), Ok(3));
    assert_eq!(s.unsubscribe("prices"), Ok((1, 101)));
    assert_eq!(s.claims().lookup(1, Instant::now()), ClaimLookup::Claimed(Arc::from("prices")), "the claim keeps it");
    assert_eq!(s.subscribe("prices", Ok), Ok(1), "claimed: the name keeps its id, as in version 4");
}

/// A claim given up still takes ticks for [`UNPUBLISH_GRACE`] (a tick sent before the Unpublish may be read after
/// it), for the channel's subscribers alone (the claim is released: `GivenUp`), then not; its place under
/// `max_publish_channels` is free at once, a claim of the channel again gets a new id, and at most
/// `max_publish_channels` given-up claims are kept (the oldest give way). Before, a tick read after the Unpublish was
/// dropped as unclaimed at once.
#[test]
fn a_claim_given_up_takes_ticks_for_its_grace_only() {
    let mut s = state(Limits { max_publish_channels: 1, ..Limits::default() });
    let id = s.claim("prices", None, |_| Ok(())).unwrap().channel_id;
    let at = Instant::now();
    assert_eq!(s.unclaim("prices", at), Ok((id, None)));
    let claims = s.claims();
    assert_eq!(claims.lookup(id, at + UNPUBLISH_GRACE / 2), ClaimLookup::GivenUp(Arc::from("prices")));
    assert_eq!(claims.lookup(id, at + UNPUBLISH_GRACE), ClaimLookup::NotClaimed);
    assert!(claims.is_claimed(id), "its newest seq is kept while it may still be read");
    let again = s.claim("prices", None, |_| Ok(())).expect("its place is free at once");
    assert_ne!(again.channel_id, id, "a new id");
    assert_eq!(s.claims().lookup(again.channel_id, at), ClaimLookup::Claimed(Arc::from("prices")));
    assert_eq!(s.unclaim("prices", at), Ok((again.channel_id, None)));
    let claims = s.claims();
    assert_eq!(claims.lookup(id, at), ClaimLookup::NotClaimed, "the oldest gave way: one kept at most");
    assert_eq!(claims.lookup(again.channel_id, at), ClaimLookup::GivenUp(Arc::from("prices")));
    s.claim("other", None, |_| Ok(())).unwrap();
    assert_eq!(s.unclaim("other", at + UNPUBLISH_GRACE).map(|(id, _)| s.claims().is_claimed(id)), Ok(true));
    assert!(!s.claims().is_claimed(again.channel_id), "a later change lets the expired grace go");
    assert_eq!(code(s.unclaim("never", at)), ErrorCode::NotJoined);
}
