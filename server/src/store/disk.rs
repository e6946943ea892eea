//! The disk floor: posts are refused while the filesystem holding the store has less free space than
//! `Budget::disk_min_free_bytes`, so that the server's own writes never fill the disk. A full disk fails the store's
//! commits, after which nothing is acknowledged until a restart (`writer.rs`); refusing posts a little earlier, with
//! `ServerFull`, keeps the server serving everything else (joins, history, ticks, retention's deletions) and lets
//! posts through again by itself once retention or the operator frees space. The sweep looks at the free space
//! once per interval ([`Store::check_disk`]); a post only reads a flag.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use super::Store;

/// Posts resume once the free space is this fraction of the floor above it (a sixteenth: 64 MiB at the default
/// 1 GiB), so that a disk hovering at the floor does not switch posts on and off every sweep.
const RESUME_ABOVE_DIVISOR: u64 = 16;

/// What the floor last saw.
#[derive(Debug)]
pub struct DiskFloor {
    /// Free bytes at the last check (`u64::MAX` before the first, or where the platform cannot tell).
    free: AtomicU64,
    /// The floor the last check applied.
    floor: AtomicU64,
    full: AtomicBool,
    /// Posts and new rooms refused for it so far.
    refused: AtomicU64,
    /// The free space could not be read (warned once; the last state holds meanwhile).
    unreadable: AtomicBool,
}

impl Default for DiskFloor {
    fn default() -> Self {
        DiskFloor {
            free: AtomicU64::new(u64::MAX),
            floor: AtomicU64::new(0),
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            unreadable: AtomicBool::new(false),
        }
    }
}

/// A change the last check made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// Posts are refused from now on.
    Full,
    /// Posts are accepted again.
    Resumed,
}

impl DiskFloor {
    /// Takes in `free` bytes (`None`: unknown, never full) against `floor` (0: off).
    pub fn observe(&self, free: Option<u64>, floor: u64) -> Change {
        self.free.store(free.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.floor.store(floor, Ordering::Relaxed);
        let full = match free {
            Some(free) if floor > 0 => match self.full.load(Ordering::Relaxed) {
                true => free < floor.saturating_add(floor / RESUME_ABOVE_DIVISOR),
                false => free < floor,
            },
            _ => false,
        };
        let was_full = self.full.swap(full, Ordering::Relaxed);
        match (was_full, full) {
            (false, true) => Change::Full,
            (true, false) => Change::Resumed,
            _ => Change::None,
        }
    }

    /// Why a post (or a new room) is refused now, counting it; `None` when they are accepted.
    pub fn refuse(&self) -> Option<String> {
        if !self.full.load(Ordering::Relaxed) {
            return None;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let free = match self.free_bytes() {
            Some(free) => format!("{} MiB free", free >> 20),
            None => "free space unknown".to_string(),
        };
        let floor = self.floor.load(Ordering::Relaxed);
        Some(format!(
            "the server's disk is nearly full ({free}, under disk_min_free_bytes {} MiB): new posts and rooms are \
             refused until space is freed; retry later",
            floor >> 20
        ))
    }

    /// Whether posts are refused now.
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The free space could not be read: unknown from now on (the gauge says -1, not the last reading), the
    /// floor's state kept.
    fn unknown(&self) {
        self.free.store(u64::MAX, Ordering::Relaxed);
    }

    /// Free bytes at the last check, if known.
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&free| free != u64::MAX)
    }

    /// Posts and new rooms refused for it so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Store {
    /// Looks at the free space of the store's filesystem against `floor` bytes (0: off), logging a change.
    /// A free space that cannot be read leaves the state as it was (and is warned of once).
    pub fn check_disk(&self, floor: u64) -> Change {
        let free = match floor {
            0 => None,
            _ => match free_bytes(self.path()) {
                Ok(free) => {
                    self.disk.unreadable.store(false, Ordering::Relaxed);
                    Some(free)
                }
                Err(err) => {
                    self.disk.unknown();
                    if !self.disk.unreadable.swap(true, Ordering::Relaxed) {
                        let path = self.path().display();
                        tracing::warn!(%err, %path, "cannot read the free space of the store's disk; the floor keeps its last state");
                    }
                    return Change::None;
                }
            },
        };
        let change = self.disk.observe(free, floor);
        let (free_mib, floor_mib) = (free.unwrap_or(0) >> 20, floor >> 20);
        match change {
            Change::Full => tracing::warn!(
                free_mib,
                floor_mib,
                path = %self.path().display(),
                "the room store's disk is under budget.disk_min_free_bytes: posts are refused (ServerFull) until \
                 space is freed"
            ),
            Change::Resumed => {
                tracing::info!(free_mib, floor_mib, "the room store's disk has space again: posts resume")
            }
            Change::None => {}
        }
        change
    }

    /// The disk floor's state.
    pub fn disk(&self) -> &DiskFloor {
        &self.disk
    }
}

/// Refuses a disk floor of `floor` bytes that can never be cleared on the filesystem of the store in `data_dir` (its
/// `store` directory, where the sweep measures, else the data directory): one at or above the most an unprivileged
/// process could ever have free there (all it may write, with every used byte freed: a 1 GiB volume under the default
/// 1 GiB floor) refused every post from the first, while the server reported itself ready (a review's find). A size
/// that cannot be read passes (the floor then does not apply either).
pub(crate) fn check_floor(data_dir: &Path, floor: u64) -> Result<(), crate::ServerError> {
    let store = data_dir.join(super::STORE_DIR);
    let path = if store.is_dir() { store.as_path() } else { data_dir };
    match most_free(path) {
        Some(most) if floor > 0 && floor >= most => Err(crate::ServerError::Config {
            key: "budget.disk_min_free_bytes",
            why: format!(
                "{} MiB is not below the most the store's filesystem could ever have free ({} MiB): every post would \
                 be refused; set it lower, or 0 to turn the floor off",
                floor >> 20,
                most >> 20
            ),
        }),
        _ => Ok(()),
    }
}

/// The most an unprivileged process could have free on the filesystem holding `path`: what it may write now and
/// every byte in use (the root reserve left out). `None` when unknown.
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // the field types differ between platforms
fn most_free(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let (blocks, free, available) =
        (u64::from(stat.blocks()), u64::from(stat.blocks_free()), u64::from(stat.blocks_available()));
    let most = available.saturating_add(blocks.saturating_sub(free));
    Some(most.saturating_mul(u64::from(stat.fragment_size()))).filter(|&most| most > 0)
}

#[cfg(not(unix))]
fn most_free(_path: &Path) -> Option<u64> {
    None
}

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
#[cfg(unix)]
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Not known on this platform: the floor does not apply.
#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> std::io::Result<u64> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn posts_stop_under_the_floor_and_resume_a_sixteenth_above_it() {
        let disk = DiskFloor::default();
        assert_eq!(disk.observe(Some(2 * GIB), GIB), Change::None);
        assert_eq!(disk.refuse(), None);
        assert_eq!(disk.observe(Some(GIB - 1), GIB), Change::Full);
        let why = disk.refuse().expect("refused under the floor");
        assert!(why.contains("1023 MiB free") && why.contains("1024 MiB"), "{why}");
        assert_eq!(disk.refused(), 1);
        // Back at the floor is not enough: a sixteenth more.
        assert_eq!(disk.observe(Some(GIB), GIB), Change::None);
        assert!(disk.full());
        assert_eq!(disk.observe(Some(GIB + GIB / 16 - 1), GIB), Change::None);
        assert_eq!(disk.observe(Some(GIB + GIB / 16), GIB), Change::Resumed);
        assert_eq!(disk.refuse(), None);
        assert_eq!(disk.free_bytes(), Some(GIB + GIB / 16));
    }

    #[test]
    fn a_floor_of_zero_or_an_unknown_free_space_never_refuses() {
        let disk = DiskFloor::default();
        assert_eq!(disk.observe(Some(0), 0), Change::None);
        assert_eq!(disk.observe(None, GIB), Change::None);
        assert_eq!(disk.free_bytes(), None);
        assert_eq!(disk.observe(Some(0), GIB), Change::Full);
        // Turned off (or unreadable) while refusing: posts resume.
        assert_eq!(disk.observe(Some(0), 0), Change::Resumed);
        assert_eq!(disk.refuse(), None);
    }

    /// A free space that cannot be read keeps the floor's state, and is unknown (the gauge's -1), not the last
    /// reading (which stayed, stale, on the gauge).
    #[test]
    fn an_unreadable_free_space_is_unknown_and_keeps_the_state() {
        let disk = DiskFloor::default();
        assert_eq!(disk.observe(Some(GIB - 1), GIB), Change::Full);
        disk.unknown();
        assert_eq!(disk.free_bytes(), None);
        assert!(disk.full());
        let why = disk.refuse().expect("still refused");
        assert!(why.contains("free space unknown"), "{why}");
    }

    #[cfg(unix)]
    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let free = free_bytes(dir.path()).expect("statvfs");
        let stat = nix::sys::statvfs::statvfs(dir.path()).expect("statvfs");
        #[allow(clippy::useless_conversion)]
        let total = u64::from(stat.blocks()) * u64::from(stat.fragment_size());
        assert!(free > 0 && free <= total, "{free} free of {total}: bytes, not blocks");
        // `df` (coreutils) counts in 1 KiB blocks what an unprivileged user may use: the same within what was
        // written meanwhile.
        if let Ok(out) = std::process::Command::new("df").args(["-k", "--output=avail"]).arg(dir.path()).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(kib) = text.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()) {
                let df = kib * 1024;
                assert!(free.abs_diff(df) < 64 << 20, "statvfs {free} against df {df}");
            }
        }
    }
}
