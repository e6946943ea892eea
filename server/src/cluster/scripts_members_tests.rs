//! The join script's member list against a real `redis-server`.

use super::{join, join_listing, redis};
use crate::cluster::keys::RoomKeys;

/// A join reads at most the member names asked for, the joiner's among them, and none when asked for none (a node
/// announcing its members again): before, every join read the room's whole list, O(members) in Redis' one thread.
#[test]
fn a_join_reads_at_most_the_member_names_asked_for() {
    let Some(mut redis) = redis("a_join_reads_at_most_the_member_names_asked_for") else { return };
    let keys = RoomKeys::new("crowded");
    for n in 0..50 {
        join(&mut redis, &keys, &format!("m{n:02}"), n);
    }
    for n in 50..60 {
        let me = format!("m{n:02}");
        let (members, _) = join_listing(&mut redis, &keys, (&me, n), "0", 5);
        assert_eq!(members.len(), 5, "{members:?}");
        assert!(members.contains(&me), "the joiner {me} among {members:?}");
        let unique: std::collections::HashSet<&String> = members.iter().collect();
        assert_eq!(unique.len(), 5, "{members:?}");
    }
    assert_eq!(join_listing(&mut redis, &keys, ("m00", 0), "0", 0).0, Vec::<String>::new(), "none asked for");
    assert_eq!(join(&mut redis, &keys, "m61", 61).len(), 61, "all of them, when they are fewer than asked for");
}
