//! Admission's decisions, without sockets or clocks.

use super::*;

fn limits(total: u32, per_ip: u32, rate: u32) -> Limits {
    Limits {
        max_connections: total,
        max_connections_per_ip: per_ip,
        new_connections_per_s_per_ip: rate,
        ..Limits::default()
    }
}

/// At most `unvalidated` unvalidated handshakes in all; no other bound.
fn bounds(unvalidated: u32) -> HandshakeBounds {
    HandshakeBounds {
        unvalidated,
        unvalidated_per_ip: u32::MAX,
        unvalidated_per_s: u32::MAX,
        over_limit: u32::MAX,
        awaiting_hello: u32::MAX,
        per_network: u32::MAX,
        per_network_per_s: u32::MAX,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn keys_are_ipv4_or_an_ipv6_slash_64() {
    assert_eq!(SourceKey::of(ip("::ffff:10.0.0.1")), SourceKey::of(ip("10.0.0.1")));
    assert_eq!(SourceKey::of(ip("2001:db8:1:2:aaaa::1")), SourceKey::of(ip("2001:db8:1:2:bbbb::2")));
    assert_ne!(SourceKey::of(ip("2001:db8:1:2::1")), SourceKey::of(ip("2001:db8:1:3::1")));
    assert_eq!(SourceKey::of(ip("2001:db8:1:2:aaaa::1")).to_string(), "2001:db8:1:2::/64");
    assert_eq!(SourceKey::of(ip("10.0.0.1")).to_string(), "10.0.0.1");
}

#[test]
fn per_source_and_total_counts() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(3, 2, 1000), bounds(1000), t0);
    assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Admit);
    // Unvalidated attempts hold at most half an address's count: the second validates first.
    assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Retry(Overload::Handshakes));
    assert_eq!(admission.decide(ip("10.0.0.1"), true, t0), Decision::Admit);
    // The third from one address: first proven real, then told why.
    assert_eq!(admission.decide(ip("10.0.0.1"), false, t0), Decision::Retry(Overload::PerIp));
    let Decision::TooMany(Overload::PerIp, reason) = admission.decide(ip("10.0.0.1"), true, t0) else {
        panic!("not refused")
    };
    assert!(reason.contains("max_connections_per_ip (2)") && reason.contains("10.0.0.1"), "{reason}");
    assert_eq!(admission.decide(ip("10.0.0.2"), false, t0), Decision::Admit);
    let Decision::TooMany(Overload::Total, reason) = admission.decide(ip("10.0.0.3"), true, t0) else {
        panic!("not refused")
    };
    assert!(reason.contains("max_connections (3)"), "{reason}");
    assert_eq!(admission.open(), 3);
    admission.release(ip("10.0.0.1"));
    assert_eq!(admission.decide(ip("10.0.0.3"), true, t0), Decision::Admit);
    // Releasing more than was admitted changes nothing.
    for _ in 0..5 {
        admission.release(ip("10.0.0.9"));
        admission.release(ip("10.0.0.2"));
    }
    assert_eq!(admission.open(), 2);
}

/// One network (here an IPv6 /48, each connection from a /64 of its own, under every per-address limit) holds at
/// most `max_connections_per_network`; the next is told why, other networks are served, and a connection that
/// ends gives its network's place back. Before, a /48's 65,536 /64s could take every one of `max_connections`.
#[test]
fn one_network_holds_at_most_its_share() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds { per_network: 40, ..bounds(1000) };
    let mut admission = Admission::new(&limits(10_000, 256, 1000), bounds, t0);
    let host = |n: u32| ip(&format!("2001:db8:7:{n:x}::1"));
    for n in 0..40 {
        assert_eq!(admission.decide(host(n), true, t0), Decision::Admit, "{n}");
    }
    let Decision::TooMany(Overload::PerIp, reason) = admission.decide(host(40), true, t0) else {
        panic!("the network's 41st was taken")
    };
    assert!(reason.contains("2001:db8:7::/48 is at budget.max_connections_per_network (40)"), "{reason}");
    assert_eq!(admission.decide(ip("2001:db8:8::1"), true, t0), Decision::Admit, "another /48");
    assert_eq!(admission.decide(ip("203.0.113.1"), true, t0), Decision::Admit, "an IPv4 network");
    admission.release(host(3));
    assert_eq!(admission.decide(host(41), true, t0), Decision::Admit, "its place given back");
}

/// One network (an IPv6 /48, each attempt from a /64 of its own, under every per-address rate) begins at most
/// `new_connections_per_s_per_network` connections a second (a burst of two seconds'): beyond it validated
/// attempts are refused and unvalidated ones, which leave half the burst to the validated, get a Retry. Before, a
/// /48's 65,536 /64s each had a rate of their own: the server ran handshakes as fast as they were asked for.
#[test]
fn one_network_begins_at_most_its_rate_of_connections() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds { per_network_per_s: 10, ..bounds(1000) };
    let mut admission = Admission::new(&limits(10_000, 256, 1000), bounds, t0);
    let host = |net: u32, n: u32| ip(&format!("2001:db8:{net:x}:{n:x}::1"));
    for n in 0..20 {
        assert_eq!(admission.decide(host(7, n), true, t0), Decision::Admit, "{n}");
    }
    assert_eq!(admission.decide(host(7, 20), true, t0), Decision::Refuse(Overload::Rate), "the burst is spent");
    assert_eq!(admission.decide(host(7, 21), false, t0), Decision::Retry(Overload::Rate));
    assert_eq!(admission.decide(host(8, 0), true, t0), Decision::Admit, "another /48");
    let t1 = t0 + Duration::from_secs(1);
    for n in 30..40 {
        assert_eq!(admission.decide(host(7, n), true, t1), Decision::Admit, "a second later: {n}");
    }
    assert_eq!(admission.decide(host(7, 40), true, t1), Decision::Refuse(Overload::Rate));
    // Unvalidated attempts (forgeable) take a network's rate down to half its burst, no further.
    for n in 0..10 {
        assert_eq!(admission.decide(host(9, n), false, t0), Decision::Admit, "{n}");
    }
    assert_eq!(admission.decide(host(9, 10), false, t0), Decision::Retry(Overload::Rate));
    for n in 11..21 {
        assert_eq!(admission.decide(host(9, n), true, t0), Decision::Admit, "validated: {n}");
    }
}

/// Forged addresses, each new (under every per-address limit): at most `max_unvalidated` of their handshakes
/// run at once, the rest get a Retry (storing nothing), and a validated client is served meanwhile.
#[test]
fn handshakes_from_unvalidated_addresses_are_bounded_in_all() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(10_000, 256, 100), bounds(3), t0);
    let forged = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
    for i in 0..3 {
        assert_eq!(admission.decide(forged(i), false, t0), Decision::Admit);
    }
    let tracked = admission.tracked_sources();
    for i in 3..1_000 {
        assert_eq!(admission.decide(forged(i), false, t0), Decision::Retry(Overload::Handshakes));
    }
    assert_eq!(admission.tracked_sources(), tracked, "a Retry stores nothing");
    assert_eq!(admission.decide(ip("192.0.2.7"), true, t0), Decision::Admit, "validated: not bounded by it");
    assert_eq!((admission.open(), admission.unvalidated_handshakes()), (4, 3));
    // A handshake done (completed or failed) makes room for the next unvalidated attempt.
    admission.handshake_done(forged(0));
    assert_eq!(admission.decide(forged(1_000), false, t0), Decision::Admit);
    assert_eq!(admission.decide(forged(1_001), false, t0), Decision::Retry(Overload::Handshakes));
    for i in 0..10 {
        admission.handshake_done(forged(i));
    }
    assert_eq!(admission.unvalidated_handshakes(), 0);
}

/// Unvalidated attempts take an address's rate down to half its burst; beyond, they get a Retry, and validated ones
/// take the rest. Before, unvalidated attempts (which anyone can forge with the address) could take it all.
#[test]
fn over_the_rate_unvalidated_attempts_get_a_retry_and_validated_ones_take_what_is_left() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(1000, 1000, 10), bounds(1000), t0); // burst 20
    let a = ip("192.0.2.7");
    for _ in 0..10 {
        assert_eq!(admission.decide(a, false, t0), Decision::Admit);
    }
    assert_eq!(admission.decide(a, false, t0), Decision::Retry(Overload::Rate), "half the burst is for validated");
    for _ in 0..10 {
        assert_eq!(admission.decide(a, true, t0), Decision::Admit);
    }
    assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::Rate), "validated, but nothing left");
    // A spoofed flood of unvalidated attempts does not use up the refill...
    for i in 0..1000 {
        assert_eq!(admission.decide(a, false, t0 + Duration::from_micros(i * 100)), Decision::Retry(Overload::Rate));
    }
    // ...so a real client that comes back validated gets it.
    assert_eq!(admission.decide(a, true, t0 + Duration::from_millis(150)), Decision::Admit);
    // Other addresses are not affected.
    assert_eq!(admission.decide(ip("192.0.2.8"), false, t0), Decision::Admit);
    // Once the bucket is full again (2 s at 10/s from empty), no more Retry.
    assert_eq!(admission.decide(a, false, t0 + Duration::from_secs(3)), Decision::Admit);
}

#[test]
fn idle_entries_are_swept_and_refused_attempts_store_nothing() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(100, 100, 10), bounds(1000), t0);
    for i in 0..50u8 {
        assert_eq!(admission.decide(IpAddr::from([10, 0, 0, i]), false, t0), Decision::Admit);
        admission.release(IpAddr::from([10, 0, 0, i]));
    }
    assert_eq!(admission.decide(ip("10.0.1.1"), false, t0), Decision::Admit);
    assert_eq!(admission.tracked_sources(), 51);
    // One token each was taken: refilled within 100 ms at 10/s. The next decision sweeps.
    admission.decide(ip("10.0.1.2"), false, t0 + Duration::from_secs(2));
    assert_eq!(admission.tracked_sources(), 2, "only the addresses with open connections");
    // At the total limit, unvalidated attempts from new addresses leave no entry behind.
    let mut full = Admission::new(&limits(1, 1, 10), bounds(1000), t0);
    full.decide(ip("10.0.0.1"), true, t0);
    for i in 0..200u8 {
        assert_eq!(full.decide(IpAddr::from([10, 1, 0, i]), false, t0), Decision::Retry(Overload::Total));
    }
    assert_eq!(full.tracked_sources(), 1);
}

#[test]
fn attempts_closed_for_a_count_take_from_the_rate() {
    // Each costs a handshake, so a validated peer at its count cannot make the server do them without end.
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(1000, 1, 5), bounds(1000), t0); // burst 10
    let a = ip("198.51.100.1");
    assert_eq!(admission.decide(a, true, t0), Decision::Admit);
    for _ in 0..9 {
        assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
    }
    assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::Rate));
    assert_eq!(admission.open(), 1);
}

/// Initials forged with a real client's address (an off-path attacker cannot answer a Retry): at most
/// `unvalidated_per_ip` of them are charged to it; the rest, and the client's own first attempt meanwhile, get
/// a Retry, and the client, back validated, is served. Before, each forged attempt took a slot of the address's
/// count and a token of its rate until its handshake timed out: a few hundred locked the address out.
#[test]
fn initials_forged_with_a_real_address_do_not_lock_it_out() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds {
        unvalidated: 256,
        unvalidated_per_ip: 4,
        unvalidated_per_s: 500,
        over_limit: 64,
        awaiting_hello: 1024,
        per_network: u32::MAX,
        per_network_per_s: u32::MAX,
    };
    let mut admission = Admission::new(&limits(10_000, 16, 10), bounds, t0); // burst 20
    let victim = ip("203.0.113.9");
    for _ in 0..4 {
        assert_eq!(admission.decide(victim, false, t0), Decision::Admit);
    }
    for i in 0..1_000 {
        let now = t0 + Duration::from_millis(i);
        assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Handshakes));
    }
    // The real client: a Retry too, then served once it comes back with the token, as often as its count and
    // rate allow (the forged four took 4 of its 16 slots and 4 of its 20 tokens).
    let now = t0 + Duration::from_secs(1);
    assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Handshakes));
    for _ in 0..12 {
        assert_eq!(admission.decide(victim, true, now), Decision::Admit);
    }
    assert_eq!((admission.open(), admission.unvalidated_handshakes()), (16, 4));
    // A forged handshake that times out makes room for one more unvalidated attempt from there (once the rate
    // has refilled past half its burst: below it, unvalidated attempts validate first).
    admission.handshake_done(victim);
    admission.release(victim);
    assert_eq!(admission.decide(victim, false, now), Decision::Retry(Overload::Rate), "8 of 20 tokens left");
    let later = now + Duration::from_secs(2);
    assert_eq!(admission.decide(victim, false, later), Decision::Admit);
    assert_eq!(admission.decide(victim, false, later), Decision::Retry(Overload::Handshakes));
    // Other addresses are not affected.
    assert_eq!(admission.decide(ip("203.0.113.10"), false, now), Decision::Admit);
}

/// With `max_connections_per_ip` at or below `unvalidated_per_ip`, Initials forged with a client's address hold at
/// most half of its count (and of its network's): the client, validated by its Retry, still gets in. Before, four
/// forged Initials took all four places of an address at `max_connections_per_ip = 4`, renewed every handshake
/// timeout, and the client was refused `TooManyConnections` for as long.
#[test]
fn forged_initials_hold_at_most_half_an_address_or_networks_count() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds {
        unvalidated: 256,
        unvalidated_per_ip: 4,
        unvalidated_per_s: 500,
        over_limit: 64,
        awaiting_hello: 1024,
        per_network: 8,
        per_network_per_s: u32::MAX,
    };
    let mut admission = Admission::new(&limits(10_000, 4, 100), bounds, t0);
    let victim = ip("203.0.113.9");
    for _ in 0..2 {
        assert_eq!(admission.decide(victim, false, t0), Decision::Admit);
    }
    for _ in 0..10 {
        assert_eq!(admission.decide(victim, false, t0), Decision::Retry(Overload::Handshakes));
    }
    assert_eq!(admission.decide(victim, true, t0), Decision::Admit, "the real client, validated, gets in");
    assert_eq!(admission.decide(victim, true, t0), Decision::Admit);
    // A network's count: forged Initials spread over its addresses hold at most half of it (two more here, then
    // four in all of its eight), and real clients of the network still get in.
    assert_eq!(admission.decide(ip("203.0.113.10"), false, t0), Decision::Admit);
    assert_eq!(admission.decide(ip("203.0.113.11"), false, t0), Decision::Admit);
    assert_eq!(admission.decide(ip("203.0.113.12"), false, t0), Decision::Retry(Overload::Handshakes));
    assert_eq!(admission.decide(ip("203.0.113.12"), true, t0), Decision::Admit);
    // A forged handshake that times out gives its place back.
    admission.handshake_done(ip("203.0.113.10"));
    admission.release(ip("203.0.113.10"));
    assert_eq!(admission.decide(ip("203.0.113.13"), false, t0), Decision::Admit);
}

/// Connections over a count are admitted only to be closed with `TooManyConnections` once their handshake is
/// done, holding no slot meanwhile: at most `over_limit` such handshakes run at once, the rest are refused.
#[test]
fn handshakes_over_a_count_are_bounded_in_all() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds {
        unvalidated: 256,
        unvalidated_per_ip: 4,
        unvalidated_per_s: 500,
        over_limit: 2,
        awaiting_hello: 1024,
        per_network: u32::MAX,
        per_network_per_s: u32::MAX,
    };
    let mut admission = Admission::new(&limits(1_000, 1, 1_000), bounds, t0);
    let a = ip("198.51.100.1");
    assert_eq!(admission.decide(a, true, t0), Decision::Admit);
    for _ in 0..2 {
        assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
    }
    assert_eq!(admission.decide(a, true, t0), Decision::Refuse(Overload::PerIp));
    assert_eq!(admission.over_limit_handshakes(), 2);
    admission.over_limit_done();
    assert!(matches!(admission.decide(a, true, t0), Decision::TooMany(Overload::PerIp, _)));
    assert_eq!(admission.open(), 1);
}

/// At `max_connections`, a validated newcomer closes a connection not welcomed yet (the longest waiting, by the
/// awaiting table's rule) rather than being refused: with `max_connections` set below `max_awaiting_hello`,
/// silent connections would otherwise hold every slot. Welcomed connections are never closed for it, and a
/// forged (unvalidated) newcomer closes nothing.
#[test]
fn at_max_connections_a_validated_newcomer_takes_the_place_of_one_not_welcomed() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(3, 3, 1_000), bounds(1_000), t0);
    let silent: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
    let mut tickets = Vec::new();
    for (i, token) in silent.iter().enumerate() {
        let from = ip(&format!("198.51.100.{}", i + 1));
        assert_eq!(admission.decide(from, true, t0), Decision::Admit);
        tickets.push(admission.awaiting_hello().enter(from, token.clone()).0);
    }
    let newcomer = ip("203.0.113.7");
    assert_eq!(admission.decide(newcomer, false, t0), Decision::Retry(Overload::Total), "forged: closes nothing");
    assert!(silent.iter().all(|token| !token.is_cancelled()));
    assert_eq!(admission.decide(newcomer, true, t0), Decision::Admit);
    assert!(silent[0].is_cancelled() && !silent[1].is_cancelled(), "the longest waiting made room");
    assert!(!admission.awaiting_hello().contains(tickets[0]));
    // The other two are welcomed: nothing left to close, so the next is refused as before.
    for ticket in &tickets[1..] {
        assert!(admission.awaiting_hello().leave(*ticket));
    }
    assert!(matches!(admission.decide(ip("203.0.113.8"), true, t0), Decision::TooMany(Overload::Total, _)));
    assert!(!silent[1].is_cancelled() && !silent[2].is_cancelled());
}

/// While the connections awaiting Hello fill their table, an attempt from an address not validated (an Initial
/// anyone can forge) gets a Retry: admitted, it would close one of them to make room, or hold a slot of
/// `max_connections` outside the table, where no validated newcomer could take it back. A validated one is admitted.
#[test]
fn unvalidated_attempts_get_a_retry_while_the_awaiting_table_is_full() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds { awaiting_hello: 1, ..bounds(1000) };
    let mut admission = Admission::new(&limits(100, 100, 1000), bounds, t0);
    let (_ticket, evicted) = admission.awaiting_hello().enter(ip("10.0.0.1"), CancellationToken::new());
    assert!(evicted.is_none());
    assert_eq!(admission.decide(ip("10.0.0.2"), false, t0), Decision::Retry(Overload::Handshakes));
    assert_eq!(admission.decide(ip("10.0.0.2"), true, t0), Decision::Admit);
    assert!(admission.awaiting_hello().enter_if_room(ip("10.0.0.3"), CancellationToken::new()).is_none());
}

/// Unvalidated handshakes that end at once (an Initial from a forged address that closes itself after its
/// ClientHello) give their place back as soon as they took it: bounded in progress only, they were admitted as fast
/// as they came, each a TLS flight signed, and no Retry was sent. At most `unvalidated_per_s` begin a second.
#[test]
fn unvalidated_handshakes_that_end_at_once_are_bounded_a_second() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds { unvalidated_per_s: 100, ..bounds(3) };
    let mut admission = Admission::new(&limits(100_000, 100, 100), bounds, t0);
    let forged = |i: u32| IpAddr::from((0xc633_6400u32 + i).to_be_bytes()); // 198.51.100.0 and on
    let mut admitted = 0;
    for i in 0..10_000 {
        if admission.decide(forged(i), false, t0) == Decision::Admit {
            admitted += 1;
            admission.handshake_done(forged(i));
            admission.release(forged(i));
        }
    }
    assert_eq!(admitted, 100, "one second's burst, then a Retry each");
    assert_eq!(admission.tracked_sources(), 100, "nothing stored for the attempts over it");
    assert_eq!(admission.decide(ip("192.0.2.1"), true, t0), Decision::Admit, "validated: not bounded by it");
    let later = t0 + Duration::from_millis(100);
    assert_eq!(admission.decide(forged(20_000), false, later), Decision::Admit, "refilled: 10 in 100 ms");
    let none = HandshakeBounds { unvalidated_per_s: 0, ..bounds };
    let mut admission = Admission::new(&limits(100_000, 100, 100), none, t0);
    assert_eq!(admission.decide(forged(0), false, t0), Decision::Retry(Overload::Handshakes), "0: always validate");
}

/// Initials forged with a client's address that end at once (each gives its place among the address's unvalidated
/// handshakes back) take at most half the address's rate: the client, validated, is served. Before, they spent its
/// whole burst and the client was refused.
#[test]
fn forged_initials_that_end_at_once_leave_half_an_addresss_rate() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(100_000, 100, 100), bounds(3), t0); // burst 200
    let victim = ip("203.0.113.9");
    let mut admitted = 0;
    for _ in 0..1_000 {
        if admission.decide(victim, false, t0) == Decision::Admit {
            admitted += 1;
            admission.handshake_done(victim);
            admission.release(victim);
        }
    }
    assert_eq!(admitted, 100);
    assert_eq!(admission.decide(victim, true, t0), Decision::Admit, "the client, validated");
}

/// An address at its own count is told so when the server is at `max_connections` too: the reason (and the counter)
/// is `max_connections_per_ip`, not `max_connections`, which an operator might otherwise raise for nothing.
#[test]
fn an_address_at_its_own_count_is_blamed_on_it_when_the_server_is_full_too() {
    let t0 = Instant::now();
    let mut admission = Admission::new(&limits(2, 1, 100), bounds(1000), t0);
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    assert_eq!(admission.decide(a, true, t0), Decision::Admit);
    assert_eq!(admission.decide(b, true, t0), Decision::Admit);
    match admission.decide(a, true, t0) {
        Decision::TooMany(Overload::PerIp, reason) => assert!(reason.contains("max_connections_per_ip"), "{reason}"),
        other => panic!("expected the address's own count, got {other:?}"),
    }
    match admission.decide(ip("192.0.3.1"), true, t0) {
        Decision::TooMany(Overload::Total, reason) => assert!(reason.contains("max_connections (2)"), "{reason}"),
        other => panic!("expected the server's count, got {other:?}"),
    }
}

/// An attempt refused for anything else (here: its address over the part of its rate unvalidated attempts may take)
/// takes nothing of the second's budget for unvalidated handshakes: one address's flood does not send every
/// newcomer elsewhere a Retry.
#[test]
fn attempts_refused_otherwise_take_none_of_the_seconds_unvalidated_handshakes() {
    let t0 = Instant::now();
    let bounds = HandshakeBounds { unvalidated_per_s: 10, ..bounds(1000) };
    let mut admission = Admission::new(&limits(1000, 1000, 2), bounds, t0); // burst 4: 2 for unvalidated
    let a = ip("192.0.2.7");
    let admitted = (0..100).filter(|_| admission.decide(a, false, t0) == Decision::Admit).count();
    assert_eq!(admitted, 2);
    let others = (0..20u8).filter(|i| admission.decide(IpAddr::from([198, 51, 100, *i]), false, t0) == Decision::Admit);
    assert_eq!(others.count(), 8, "the second's 10, less the address's 2");
}
