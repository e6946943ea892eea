//! The store on a real fjall database in a temporary directory: what is committed comes back after a reopen,
//! pages and retention cut where they should, group commit shares batches, and a damaged store is refused.

use std::sync::atomic::Ordering;

use super::*;

/// A post as the hub stores it: the encoded event, from "ann" with a body of 10 bytes of `seq`.
fn event(seq: u64, time_us: u64, client_msg_id: u64) -> Bytes {
    let kind = quiver_proto::EventKind::Message {
        sender: "ann".into(),
        client_msg_id,
        body: Bytes::from(vec![seq as u8; 10]),
    };
    let frame = quiver_proto::RoomFrame::Event(quiver_proto::RoomEvent { seq, time_us, kind });
    quiver_proto::FrameCodec::new(1 << 20).encode_to_vec(&frame).unwrap().freeze()
}

/// Bytes of a frame of [`event`] for small seqs, times and ids (one byte each).
pub(super) fn frame_len() -> u64 {
    event(1, 1, 101).len() as u64
}

pub(super) fn append(id: u64, seq: u64, time_us: u64) -> Op {
    Op::Append(Append { id, seq, time_us, frame: event(seq, time_us, 100 + seq) })
}

pub(super) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Creates room `r` (id from the store) with `n` messages of [`event`] at times 1..=n, client_msg_id 100 + seq.
pub(super) fn filled(store: &Store, n: u64) -> u64 {
    let id = store.allocate_room_id();
    let mut last = store.submit(Op::Create { name: "r".into(), id, epoch: 7 });
    for seq in 1..=n {
        last = store.submit(append(id, seq, seq));
    }
    block_on(last.wait()).unwrap();
    id
}

#[test]
fn what_is_committed_comes_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    assert_eq!(store.load_room("r", 0, u64::MAX, 100).unwrap(), None);
    let id = filled(&store, 5);
    drop(store);
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let room = store.load_room("r", 10, u64::MAX, 100).unwrap().expect("stored");
    assert_eq!((room.id, room.epoch, room.last_seq, room.first_seq, room.first_time_us), (id, 7, 5, 1, Some(1)));
    assert_eq!(room.extent, Extent { messages: 5, bytes: 5 * frame_len() });
    assert_eq!(room.dedupe.len(), 5);
    assert_eq!(room.dedupe[0], ("ann".to_string(), 101, 1, 1), "oldest first");
    assert!(store.allocate_room_id() > id, "room ids are never reused");
    let page = store.page(id, 2, 5, 10, usize::MAX).unwrap();
    assert_eq!(page.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(page.frames[0].frame, event(3, 3, 103));
    assert!(!page.more);
}

#[test]
fn the_dedupe_window_loads_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    filled(&store, 10);
    let room = store.load_room("r", 10, 3, 100).unwrap().unwrap();
    assert_eq!(room.dedupe.iter().map(|e| e.2).collect::<Vec<_>>(), [7, 8, 9, 10], "time >= 10 - 3");
    let room = store.load_room("r", 10, u64::MAX, 2).unwrap().unwrap();
    assert_eq!(room.dedupe.iter().map(|e| e.2).collect::<Vec<_>>(), [9, 10], "the newest 2");
}

#[test]
fn older_format_stores_are_read_and_marked_format_3() {
    for older in OLDER_FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        filled(&store, 3);
        store.keyspaces.meta.insert("format", older).unwrap();
        drop(store);
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        assert_eq!(store.keyspaces.meta.get("format").unwrap().as_deref(), Some(FORMAT));
        assert_eq!(store.load_room("r", 3, u64::MAX, 100).unwrap().unwrap().last_seq, 3);
    }
}

#[test]
fn kept_entries_are_packed_in_runs_read_after_older_single_entries_and_deleted_a_run_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = filled(&store, 400);
    let kept = |seq| Remembered { seq, time_us: seq, client_msg_id: 100 + seq, identity: "ann".into() };
    // A store of format 2 kept the entries of 1..=9 one per key.
    for seq in 1..10u64 {
        let value = [&seq.to_be_bytes()[..], &(100 + seq).to_be_bytes(), b"ann"].concat();
        store.keyspaces.dedupe.insert(key(id, seq), value).unwrap();
    }
    let room = Record { name: "r".into(), epoch: 7, last_seq: 400 };
    let keep: Vec<_> = (10..310).map(kept).collect();
    let _ = store.submit(Op::TrimMessages { id, from: 1, before: 310, room: room.clone(), keep });
    block_on(store.retention_barrier().wait()).unwrap();
    let run_keys = || {
        let keys = store.keyspaces.dedupe_runs.range(key(id, 0)..=key(id, u64::MAX));
        keys.map(|guard| seq_of(&guard.key().unwrap()).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run_keys(), [137, 265, 309], "300 entries, 128 to a run, keyed by their last seq");
    let entries = store.keyspaces.messages.range(key(id, 0)..=key(id, u64::MAX));
    assert_eq!(entries.count(), 91, "messages 310..=400 left");
    let seqs = |max| {
        let room = store.load_room("r", 400, u64::MAX, max).unwrap().unwrap();
        for (identity, client_msg_id, seq, time_us) in &room.dedupe {
            assert_eq!((identity.as_str(), *client_msg_id, *time_us), ("ann", 100 + seq, *seq));
        }
        room.dedupe.iter().map(|e| e.2).collect::<Vec<_>>()
    };
    assert_eq!(seqs(1000), (1..=400).collect::<Vec<_>>(), "single entries, runs, then messages");
    assert_eq!(seqs(200), (201..=400).collect::<Vec<_>>(), "cut inside a run");
    assert_eq!(seqs(395), (6..=400).collect::<Vec<_>>(), "cut among the single entries");
    // The window moved past 200: the single entries and the first run go, the run holding 200 stays whole.
    let _ = store.submit(Op::TrimDedupe { id, from: 0, before: 201, room });
    block_on(store.retention_barrier().wait()).unwrap();
    assert_eq!(run_keys(), [265, 309]);
    assert!(store.keyspaces.dedupe.is_empty().unwrap());
    assert_eq!(seqs(1000), (138..=400).collect::<Vec<_>>());
}

#[test]
fn posts_do_not_rewrite_the_room_record_and_the_last_seq_is_the_newest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = filled(&store, 5);
    drop(store);
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let record = store.keyspaces.rooms.get("r").unwrap().unwrap();
    assert_eq!(u64_at(&record, 16), Some(0), "the record as created: one write per room, not per post");
    let loaded = store.load_room("r", 5, u64::MAX, 100).unwrap().unwrap();
    assert_eq!((loaded.id, loaded.last_seq, loaded.first_seq, loaded.extent.messages), (id, 5, 1, 5));
    // The messages deleted, the posts 4 and 5 kept as dedupe entries (the window remembered them): the deletion
    // recorded the last seq.
    let kept = |seq| Remembered { seq, time_us: seq, client_msg_id: 100 + seq, identity: "ann".into() };
    let room = Record { name: "r".into(), epoch: 7, last_seq: 5 };
    let _ = store.submit(Op::TrimMessages { id, from: 1, before: 6, room, keep: vec![kept(4), kept(5)] });
    block_on(store.retention_barrier().wait()).unwrap();
    drop(store);
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let record = store.keyspaces.rooms.get("r").unwrap().unwrap();
    assert_eq!(u64_at(&record, 16), Some(5));
    let loaded = store.load_room("r", 5, u64::MAX, 100).unwrap().unwrap();
    assert_eq!((loaded.last_seq, loaded.first_seq, loaded.extent.messages), (5, 6, 0));
    assert_eq!(loaded.dedupe, [("ann".to_string(), 104, 4, 4), ("ann".to_string(), 105, 5, 5)]);
}

#[test]
fn a_post_writes_only_its_message_and_the_window_comes_from_messages_then_kept_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = filled(&store, 10);
    assert!(store.keyspaces.dedupe.is_empty().unwrap(), "no dedupe entry per post");
    assert!(store.keyspaces.dedupe_runs.is_empty().unwrap(), "no dedupe entry per post");
    let kept = |seq| Remembered { seq, time_us: seq, client_msg_id: 100 + seq, identity: "ann".into() };
    let room = Record { name: "r".into(), epoch: 7, last_seq: 10 };
    let _ = store.submit(Op::TrimMessages { id, from: 1, before: 5, room, keep: vec![kept(3), kept(4)] });
    // A format 1 store also holds an entry for a retained message: read once, from the message.
    store
        .keyspaces
        .dedupe
        .insert(key(id, 8), [&8u64.to_be_bytes()[..], &108u64.to_be_bytes(), b"ann"].concat())
        .unwrap();
    block_on(store.retention_barrier().wait()).unwrap();
    let seqs = |now, window, max| {
        let room = store.load_room("r", now, window, max).unwrap().unwrap();
        for (identity, client_msg_id, seq, time_us) in &room.dedupe {
            assert_eq!((identity.as_str(), *client_msg_id, *time_us), ("ann", 100 + seq, *seq));
        }
        room.dedupe.iter().map(|e| e.2).collect::<Vec<_>>()
    };
    assert_eq!(seqs(10, u64::MAX, 100), [3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(seqs(10, 6, 100), [4, 5, 6, 7, 8, 9, 10], "time >= 10 - 6");
    assert_eq!(seqs(10, 2, 100), [8, 9, 10]);
    assert_eq!(seqs(10, u64::MAX, 7), [4, 5, 6, 7, 8, 9, 10], "the newest 7");
    assert_eq!(seqs(10, u64::MAX, 3), [8, 9, 10]);
}

#[test]
fn group_commit_shares_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = store.allocate_room_id();
    let mut commits = vec![store.submit(Op::Create { name: "r".into(), id, epoch: 1 })];
    for seq in 1..=2_000 {
        commits.push(store.submit(append(id, seq, seq)));
    }
    block_on(async {
        for commit in commits {
            commit.wait().await.unwrap();
        }
    });
    let stats = store.writer_stats();
    assert_eq!(stats.appends.load(Ordering::Relaxed), 2_000);
    let batches = stats.commits.load(Ordering::Relaxed);
    assert!(batches < 2_000, "posts handed over together are committed together ({batches} commits)");
    assert_eq!(store.load_room("r", 0, u64::MAX, 10).unwrap().unwrap().last_seq, 2_000);
}

/// The room id counter is kept beside the room records too, and the larger copy wins at open: fjall flushes each
/// keyspace on its own, and after a lost journal the records could be newer than `meta`'s counter, which then
/// handed a recorded room's id to a new room (their keys merged).
#[test]
fn the_room_id_counter_is_never_behind_the_recorded_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = filled(&store, 1);
    let copy = store.keyspaces.rooms.get(super::ROOM_COUNTER_KEY).unwrap().expect("the copy beside the records");
    assert_eq!(u64_at(&copy, 0), Some(id + 1));
    // `meta`'s counter as of an older flush.
    store.keyspaces.meta.insert("next_room_id", 1u64.to_be_bytes()).unwrap();
    store.keyspaces.db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop(store);
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    assert!(store.allocate_room_id() > id, "a recorded room's id is not handed out again");
    // The copy is no room: the walk over rooms does not see it.
    assert_eq!(store.aged_rooms(None, 10, 10, u64::MAX, |_| false).unwrap().names, ["r"]);
}

#[test]
fn the_walk_for_aged_rooms_goes_on_from_its_cursor_and_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Os).unwrap();
    let mut last = None;
    for (name, time_us) in [("a", 1), ("b", 100), ("c", 2), ("d", 0)] {
        let id = store.allocate_room_id();
        let _ = store.submit(Op::Create { name: name.into(), id, epoch: 1 });
        if name != "d" {
            last = Some(store.submit(append(id, 1, time_us)));
        }
    }
    block_on(last.unwrap().wait()).unwrap();
    let step = |cursor: Option<&str>| store.aged_rooms(cursor.map(str::as_bytes), 2, 9, 50, |_| false).unwrap();
    let first = step(None);
    assert_eq!((first.names, first.cursor), (vec!["a".to_string()], Some(b"b".to_vec())), "b is young");
    let second = step(Some("b"));
    assert_eq!((second.names, second.cursor), (vec!["c".to_string()], Some(b"d".to_vec())), "d holds nothing");
    assert_eq!(step(Some("d")), AgedRooms { names: vec![], cursor: None }, "the end: start over");
    let skipping_a = store.aged_rooms(None, 4, 9, 50, |name| name == "a").unwrap();
    assert_eq!(skipping_a.names, ["c"], "rooms in memory are the sweep's");
    let one = store.aged_rooms(None, 4, 1, 50, |_| false).unwrap();
    assert_eq!((one.names, one.cursor), (vec!["a".to_string()], Some(b"a".to_vec())), "stops at the one named");
}

#[test]
fn a_store_of_another_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    filled(&store, 3);
    store.keyspaces.meta.insert("format", "quiver-store 99").unwrap();
    drop(store);
    let err = Store::open(dir.path(), Durability::Fsync).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("quiver-store 99") && message.contains(".damaged"), "{message}");
}

/// A store with room `r` (3,000 messages, flushed to a table file), closed.
fn flushed(dir: &Path) {
    let store = Store::open(dir, Durability::Fsync).unwrap();
    filled(&store, 3_000);
    store.keyspaces.messages.rotate_memtable_and_wait().unwrap();
}

fn refused(dir: &Path, damage: impl FnOnce(&Path)) -> String {
    damage(&dir.join(STORE_DIR));
    match Store::open(dir, Durability::Fsync) {
        Err(err @ StoreError::Damaged { .. }) => err.to_string(),
        Err(other) => panic!("refused, but not as damaged: {other}"),
        Ok(store) => panic!("a damaged store opened: room r = {:?}", store.load_room("r", 0, 0, 0)),
    }
}

fn tables(store: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![store.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.parent().is_some_and(|p| p.ends_with("tables")) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_truncated_or_lost_file_is_refused_not_wiped() {
    let damages = [
        "truncated table",
        "lost journal",
        "journal overwritten",
        "lost version",
        "lost keyspace",
        "lost current",
        "lost map",
        "lost map's current",
    ];
    for damage in damages {
        let dir = tempfile::tempdir().unwrap();
        flushed(dir.path());
        let messages_table =
            tables(&dir.path().join(STORE_DIR)).iter().map(|t| t.metadata().unwrap().len()).max().unwrap();
        let message = refused(dir.path(), |store| match damage {
            "truncated table" => {
                let table = tables(store).into_iter().max_by_key(|t| t.metadata().unwrap().len()).unwrap();
                let len = table.metadata().unwrap().len();
                std::fs::OpenOptions::new().write(true).open(table).unwrap().set_len(len / 2).unwrap();
            }
            "lost journal" => std::fs::remove_file(store.join("0.jnl")).unwrap(),
            "journal overwritten" => {
                use std::io::{Seek, Write};
                let mut journal = std::fs::OpenOptions::new().write(true).open(store.join("0.jnl")).unwrap();
                journal.seek(std::io::SeekFrom::Start(100)).unwrap();
                journal.write_all(&[0x5a; 64]).unwrap();
            }
            "lost keyspace" => {
                // The messages' keyspace (the one with the largest table), folder and all.
                let table = tables(store).into_iter().max_by_key(|t| t.metadata().unwrap().len()).unwrap();
                std::fs::remove_dir_all(table.parent().unwrap().parent().unwrap()).unwrap();
            }
            "lost current" => {
                // The messages' keyspace folder keeps its tables but loses its `current` file.
                let table = tables(store).into_iter().max_by_key(|t| t.metadata().unwrap().len()).unwrap();
                std::fs::remove_file(table.parent().unwrap().parent().unwrap().join("current")).unwrap();
            }
            // fjall's own keyspace (0), its map of keyspace names to folders: without it every other keyspace is
            // unreferenced, and fjall deleted them all at open (the store then opened empty).
            "lost map" => std::fs::remove_dir_all(store.join("keyspaces/0")).unwrap(),
            "lost map's current" => std::fs::remove_file(store.join("keyspaces/0/current")).unwrap(),
            _ => std::fs::write(store.join("version"), b"").unwrap(),
        });
        assert!(message.contains("damaged") && message.contains("mv "), "{damage}: {message}");
        assert!(dir.path().join(STORE_DIR).exists(), "{damage}: nothing wiped");
        // And the next start too (a service manager restarts a server that exited): the refusal changed nothing
        // that would let it open.
        let again = refused(dir.path(), |_| ());
        assert!(again.contains("damaged"), "{damage}, started again: {again}");
        if ["lost current", "lost map", "lost map's current"].contains(&damage) {
            let largest = tables(&dir.path().join(STORE_DIR)).into_iter().map(|t| t.metadata().unwrap().len()).max();
            assert_eq!(largest, Some(messages_table), "the messages' table is still there: {message}");
        }
    }
}

#[test]
fn a_journal_cut_under_flushed_messages_is_refused_or_never_reuses_a_seq() {
    for cut in [16 << 10, 64 << 10, 128 << 10] {
        let dir = tempfile::tempdir().unwrap();
        flushed(dir.path());
        // Cut the journal inside the room's records: the flushed table keeps messages past what the journal says
        // of the room (the id counter, the format marker, its dedupe entries). Refused at open where those
        // checks see it; otherwise the room goes on after its newest stored message, whatever the record says.
        let journal = dir.path().join(STORE_DIR).join("0.jnl");
        std::fs::OpenOptions::new().write(true).open(journal).unwrap().set_len(cut).unwrap();
        match Store::open(dir.path(), Durability::Fsync) {
            Err(err) => assert!(err.to_string().contains("damaged"), "cut at {cut}: {err}"),
            Ok(store) => {
                let room = store.load_room("r", 0, 0, 0).unwrap().unwrap();
                assert_eq!(room.last_seq, 3_000, "cut at {cut}: the newest flushed message");
            }
        }
    }
}

#[test]
fn a_backlog_over_a_batch_commits_in_order_in_several_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = store.allocate_room_id();
    let (go, hold) = std::sync::mpsc::channel();
    let mut commits = vec![store.submit(Op::Hold(std::sync::Mutex::new(hold), std::sync::Mutex::new(None)))];
    commits.push(store.submit(Op::Create { name: "r".into(), id, epoch: 1 }));
    for seq in 1..=10_000 {
        commits.push(store.submit(append(id, seq, seq)));
    }
    drop(go); // the writer goes on: everything queued meanwhile is one backlog
    block_on(async {
        for commit in commits {
            commit.wait().await.unwrap();
        }
    });
    let batches = store.writer_stats().commits.load(Ordering::Relaxed);
    assert!((3..10).contains(&batches), "10,001 jobs in batches of at most 4,096: {batches}");
    assert_eq!(store.load_room("r", 0, 0, 0).unwrap().unwrap().last_seq, 10_000);
}

#[test]
fn a_store_thread_that_panics_fails_every_commit_instead_of_leaving_it_waiting() {
    if !cfg!(debug_assertions) {
        return; // the panic below is a debug assertion
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Fsync).unwrap();
    let id = store.allocate_room_id();
    let (go, hold) = std::sync::mpsc::channel();
    let _ = store.submit(Op::Hold(std::sync::Mutex::new(hold), std::sync::Mutex::new(None)));
    let queued = store.submit(append(id, 1, 1));
    // A deletion whose record does not cover what it deletes: the retention thread's debug assertion panics on it.
    let room = Record { name: "r".into(), epoch: 1, last_seq: 1 };
    let bad = store.submit(Op::TrimMessages { id, from: 1, before: 10, room, keep: Vec::new() });
    let later_deletion = store.retention_barrier();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let failed = |commit: Commit| {
        runtime.block_on(async {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), commit.wait()).await;
            outcome.expect("a commit waited forever").expect_err("committed after the panic").to_string()
        })
    };
    for commit in [bad, later_deletion] {
        let err = failed(commit);
        assert!(err.contains("writer stopped"), "{err}");
    }
    assert!(store.writer_stats().failed.load(Ordering::Relaxed));
    // The writer, held meanwhile, acknowledges nothing any more either: the panic left the store in doubt.
    drop(go);
    for commit in [queued, store.submit(append(id, 2, 2))] {
        let err = failed(commit);
        assert!(err.contains("another store thread failed"), "{err}");
    }
}

/// I/O errors that say nothing about the store's bytes (too many open files, a full disk, permissions) refuse it
/// as not openable, fixable in place; damage (bytes that do not decode, a file that ends early, a bad trailer) as
/// damaged, whose advice is to move it aside. All of them were "damaged" before: an operator following that
/// advice over a low `ulimit -n` would have lost every room.
#[test]
fn only_damage_is_reported_as_damage() {
    use std::io::{Error, ErrorKind};
    let path = Path::new("/srv/quiver/store");
    let os = |code| fjall::Error::Io(Error::from_raw_os_error(code));
    for (err, what) in [
        (os(24), "too many open files"),
        (os(28), "no space left"),
        (fjall::Error::Storage(fjall::LsmError::Io(Error::from_raw_os_error(24))), "inside the tree"),
        (fjall::Error::Io(Error::from(ErrorKind::PermissionDenied)), "permissions"),
        (fjall::Error::Locked, "locked"),
    ] {
        assert!(matches!(open_failed(path, err), StoreError::Open { .. }), "{what}");
    }
    for (err, what) in [
        (fjall::Error::Io(Error::from(ErrorKind::UnexpectedEof)), "a file that ends early"),
        (fjall::Error::Io(Error::from(ErrorKind::NotFound)), "a file of the store missing"),
        (fjall::Error::Storage(fjall::LsmError::Io(Error::from(ErrorKind::InvalidData))), "bad bytes"),
        (fjall::Error::InvalidTrailer, "a bad trailer"),
        (fjall::Error::Unrecoverable, "unrecoverable"),
    ] {
        let err = open_failed(path, err);
        assert!(matches!(err, StoreError::Damaged { .. }), "{what}: {err}");
        assert!(err.to_string().contains(".damaged"), "{what}: {err}");
    }
}

/// Two of fjall's workers spin while one compacts (`store_workers`): small machines get a third.
#[test]
fn fjall_has_at_least_three_workers_and_at_most_its_own_four() {
    assert_eq!([1, 2, 3, 4, 8, 64].map(super::store_workers), [3, 3, 3, 4, 4, 4]);
}
