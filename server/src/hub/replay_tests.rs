//! A durable room's replay that cannot deliver what it promised (a damaged record, a stored frame over a lowered
//! `max_frame`): the joiner is dropped to rejoin unrecovered, never sent live frames after a gap.

use quiver_proto::{Limits, Position};

use super::{
    durable_tests::{join, open, post, post_long_messages},
    tests::Collect,
    *,
};
use crate::{
    store::{Durability, Store},
    Budget,
};

/// A replay that cannot read the history it promised (`recovered: true`) used to stop, log, and let the held live
/// frames follow: the member saw a gap it was told was not there. The joiner is now dropped from the room (as a slow
/// consumer), and its rejoin is told it missed messages: the history up to the replay's end is taken for unreadable.
#[tokio::test]
async fn a_replay_that_cannot_read_its_history_drops_the_joiner_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let hub = LocalRooms::durable(Limits::default(), Budget::default(), store.clone());
    let member = Collect::new(usize::MAX);
    let epoch = join(&hub, "r", None, &member).await.joined.epoch; // keeps the room in memory
    for id in 1..=6 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    store.damage_message("r", 3);
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &out).await;
    assert!(joining.joined.recovered, "the room holds 1..=6, as far as it knows");
    post(&hub, "r", "bob", 7, 10).await.1.flush(); // live: held behind the replay
    joining.replay.expect("a replay").run().await;
    assert!(out.kicked(), "dropped, to rejoin");
    assert_eq!(out.message_seqs(), Vec::<u64>::new(), "no live frame after a replay cut short");
    // The rejoin from where it stood: not recovered, and no replay into the same damaged record.
    let again = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &again).await;
    assert!(!joining.joined.recovered, "told it missed messages");
    assert_eq!(joining.joined.replay_from, 7);
    joining.replay.expect("a replay").run().await;
    assert!(!again.kicked());
    assert_eq!(again.message_seqs(), [7]);
    post(&hub, "r", "bob", 8, 10).await.1.flush();
    assert_eq!(again.message_seqs(), [7, 8]);
    let page = hub.history("r", None, 10, usize::MAX, 20).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [7, 8], "History skips it too");
}

/// Stored messages over a `max_frame` lowered since would break the client's connection (it decodes with the
/// Welcome's limit), and it would reconnect into the same replay for as long as they are retained.
#[tokio::test]
async fn a_replay_never_sends_a_stored_frame_over_max_frame() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), Limits::default(), Budget::default());
    let member = Collect::new(usize::MAX);
    let epoch = join(&hub, "r", None, &member).await.joined.epoch;
    post_long_messages(&hub).await;
    drop(hub);
    let hub = open(dir.path(), Limits { max_frame: 200, ..Limits::default() }, Budget::default());
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &out).await;
    assert!(joining.joined.recovered);
    joining.replay.expect("a replay").run().await;
    assert!(out.kicked(), "dropped, to rejoin");
    assert_eq!(out.message_seqs(), Vec::<u64>::new(), "no frame over max_frame");
    let again = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &again).await;
    assert!(!joining.joined.recovered && joining.joined.replay_from == 4, "{:?}", joining.joined);
}

/// A memory room of 600 messages (a member keeps it), and a join of it from seq 0, told it was recovered: the hub,
/// the room's epoch, the joiner's outbox and its joining.
async fn joined_from_the_start_of_600(limits: Limits) -> (LocalRooms, u64, Arc<Collect>, Joining) {
    let hub = LocalRooms::new(limits, Budget::default());
    let member = Collect::new(usize::MAX);
    let epoch = join(&hub, "r", None, &member).await.joined.epoch;
    for id in 1..=600 {
        post(&hub, "r", "bob", id, 10).await.1.flush();
    }
    let out = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 0 }), &out).await;
    assert!(joining.joined.recovered);
    (hub, epoch, out, joining)
}

/// A memory room's replay is paged too: a join queued the whole history it asked for (up to
/// `history_max_messages` frames, outside the member's live bound, and held past retention for as long as the member
/// did not read), so a client joining big rooms and never reading pinned each room's history once per join.
#[tokio::test]
async fn a_memory_rooms_replay_is_queued_a_page_at_a_time() {
    let (hub, epoch, out, joining) = joined_from_the_start_of_600(Limits::default()).await;
    assert_eq!(joining.joined.replay_from, 1);
    assert_eq!(out.message_seqs(), (1..=256).collect::<Vec<_>>(), "one page at once");
    post(&hub, "r", "bob", 601, 10).await.1.flush(); // live: held behind the replay
    assert_eq!(out.message_seqs().len(), 256);
    joining.replay.expect("the rest to page").run().await;
    assert!(!out.kicked());
    assert_eq!(out.message_seqs(), (1..=601).collect::<Vec<_>>(), "each once, in order, the live one last");
    // Nothing to page: a short replay goes at once, as before.
    let short = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 590 }), &short).await;
    assert!(joining.replay.is_none());
    assert_eq!(short.message_seqs(), (591..=601).collect::<Vec<_>>());
}

/// The next page is read only once the join's first page was written out: with a reader that takes nothing, the
/// replay holds that one page (the second was read and queued at once behind the join's, two pages per room).
#[tokio::test]
async fn a_memory_replays_next_page_waits_for_the_first_to_be_written() {
    let (_hub, _epoch, out, joining) = joined_from_the_start_of_600(Limits::default()).await;
    out.take_nothing();
    let replay = tokio::spawn(joining.replay.expect("the rest to page").run());
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(out.message_seqs().len(), 256, "only the join's page while nothing is written");
    out.written_out();
    replay.await.unwrap();
    assert_eq!(out.message_seqs(), (1..=600).collect::<Vec<_>>());
}

/// History trimmed away under a paged memory replay: the joiner, told it was recovered, is dropped to rejoin (and
/// learn that it missed messages), never sent the rest after a gap.
#[tokio::test]
async fn a_memory_replay_whose_messages_were_trimmed_drops_the_joiner() {
    let limits = Limits { history_max_messages: 600, ..Limits::default() };
    let (hub, epoch, out, joining) = joined_from_the_start_of_600(limits).await;
    for id in 601..=900 {
        post(&hub, "r", "bob", id, 10).await.1.flush(); // 1..=300 retired meanwhile
    }
    joining.replay.expect("a replay").run().await;
    assert!(out.kicked(), "dropped, to rejoin");
    assert_eq!(out.message_seqs(), (1..=256).collect::<Vec<_>>(), "nothing after the gap, live or replayed");
    let again = Collect::new(usize::MAX);
    let joining = join(&hub, "r", Some(Position { epoch, seq: 256 }), &again).await;
    assert!(!joining.joined.recovered, "told it missed messages");
}
