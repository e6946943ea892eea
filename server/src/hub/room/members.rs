//! A Join's member list, cut to fit one frame.

use quiver_proto::Joined;

/// Bytes of a Join's reply and Open frame besides the room's name and member list: the other fields, the reply's
/// and frame's envelopes and the length prefix, with room to spare.
const JOINED_OVERHEAD: usize = 96;

/// Cuts `joined`'s member list to what fits one frame of `max_frame` bytes (the Join's reply and the stream's Open
/// frame carry it): a room with thousands of members would otherwise get neither, and the join no answer. Members
/// past the cut are not listed there (their later joins and leaves still come as events). The `joiner` stays listed
/// wherever it sorts (docs/protocol.md: "this client included"; until 2026-12-08 one sorting past the cut was not).
/// The list is sorted, and stays so.
pub(crate) fn fit_members(joined: &mut Joined, joiner: &str, max_frame: usize) {
    let budget = max_frame.saturating_sub(JOINED_OVERHEAD + joined.room.len());
    // A name is its bytes and a length prefix of at most 3 bytes (names are far below 2^21 bytes).
    let size = |member: &str| member.len() + 3;
    if joined.members.iter().map(|m| size(m)).sum::<usize>() <= budget {
        return;
    }
    let listed = joined.members.len();
    let own = joined.members.binary_search_by(|m| m.as_str().cmp(joiner));
    if let Ok(at) = own {
        joined.members.remove(at);
    }
    let mut used = if own.is_ok() { size(joiner) } else { 0 };
    let fitting = joined.members.iter().take_while(|m| {
        used += size(m);
        used <= budget
    });
    let fitting = fitting.count();
    joined.members.truncate(fitting);
    if own.is_ok() {
        let at = joined.members.binary_search_by(|m| m.as_str().cmp(joiner)).unwrap_or_else(|at| at);
        joined.members.insert(at, joiner.to_string());
    }
    tracing::warn!(room = %joined.room, members = listed, listed = joined.members.len(),
        "the room's member list does not fit a frame; listing the first only (and the joiner)");
}
