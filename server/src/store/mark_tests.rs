//! The open mark: epochs renewed only after the machine went down under `os`.

use std::{path::Path, sync::atomic::Ordering};

use crate::store::{tests::filled, Durability, Store};

/// Opens the store in `dir` with `durability` on boot `boot`; `crash` leaves it as a crash does (its open mark
/// kept), else closes it cleanly. The epoch room `r` has after that open.
fn epoch_after(dir: &Path, durability: Durability, boot: &str, crash: bool) -> u64 {
    let store = Store::open_at_boot(dir, durability, None, Some(boot)).unwrap();
    let room = store.load_room("r", 0, u64::MAX, 100).unwrap().expect("stored");
    store.open_mark.crash.store(crash, Ordering::Relaxed);
    room.epoch
}

/// Under `os` a post acknowledged in the machine's last moments may be lost with it (a power cut, a kernel crash):
/// the room's last seq comes back lower, and its next posts would get seqs members saw with other messages, in the
/// same epoch. Found from the open mark left by a server of another boot: every room starts a new epoch (history
/// and seqs kept). A process crash (same boot), a clean close, or a crash under `fsync` keep the epoch.
#[test]
fn after_the_machine_went_down_under_os_every_room_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-a")).unwrap();
        filled(&store, 5);
        store.open_mark.crash.store(true, Ordering::Relaxed);
    }
    assert_eq!(epoch_after(dir.path(), Durability::Os, "boot-a", true), 7, "a process crash: the same boot");
    let renewed = epoch_after(dir.path(), Durability::Os, "boot-b", false);
    assert_ne!(renewed, 7, "the machine went down under os: a new epoch");
    let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-c")).unwrap();
    let room = store.load_room("r", 0, u64::MAX, 100).unwrap().unwrap();
    assert_eq!((room.epoch, room.last_seq, room.extent.messages), (renewed, 5, 5), "closed cleanly: kept");
    store.open_mark.crash.store(true, Ordering::Relaxed);
    drop(store);
    // The os server crashed with its machine; the next one runs with fsync, and crashes with its machine too.
    let under_fsync = epoch_after(dir.path(), Durability::Fsync, "boot-d", true);
    assert_ne!(under_fsync, renewed, "os left its mark: renewed");
    assert_eq!(epoch_after(dir.path(), Durability::Os, "boot-e", false), under_fsync, "fsync's crash loses nothing");
}

/// A second SIGTERM exits at once (`process::exit`: no destructor runs, so no clean close). Under `os` that left
/// the open mark, and a reboot of the machine afterwards renewed every room's epoch although nothing was lost. The
/// store is sealed first now: nothing more is acknowledged, what was written is synced, and the mark removed.
#[test]
fn an_os_store_sealed_for_exit_keeps_its_epochs_across_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-a")).unwrap();
        let id = filled(&store, 5);
        store.seal_for_exit();
        let late = store.submit(crate::store::tests::append(id, 6, 6));
        let refused = crate::store::tests::block_on(late.wait());
        assert!(refused.is_err(), "nothing is acknowledged once sealed: {refused:?}");
        // The process exits: no destructor runs.
        store.open_mark.crash.store(true, Ordering::Relaxed);
    }
    let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-b")).unwrap();
    let room = store.load_room("r", 0, u64::MAX, 100).unwrap().expect("stored");
    assert_eq!((room.epoch, room.last_seq), (7, 5), "sealed before the exit: the reboot kept the epoch");
}

/// Room records are renewed in batches of a bounded size (a store that saw millions of room names renewed them in
/// one batch in memory): every room of more than one batch gets its new epoch.
#[test]
fn a_renewal_of_more_rooms_than_one_batch_renews_every_room() {
    let dir = tempfile::tempdir().unwrap();
    let rooms = super::RENEWAL_BATCH + 3;
    {
        let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-a")).unwrap();
        let mut last = None;
        for i in 0..rooms {
            let id = store.allocate_room_id();
            last = Some(store.submit(crate::store::Op::Create { name: format!("room-{i}").into(), id, epoch: 7 }));
        }
        crate::store::tests::block_on(last.unwrap().wait()).unwrap();
        store.open_mark.crash.store(true, Ordering::Relaxed);
    }
    let store = Store::open_at_boot(dir.path(), Durability::Os, None, Some("boot-b")).unwrap();
    let kept = (0..rooms)
        .filter(|i| store.load_room(&format!("room-{i}"), 0, u64::MAX, 100).unwrap().expect("stored").epoch == 7)
        .count();
    assert_eq!(kept, 0, "rooms left in their old epoch");
}
