//! Benchmarks. Each prints markdown tables; every measurement is repeated `REPS` times and the
//! median of the repetitions is reported.

pub mod commit;
pub mod crash;
pub mod fsync;
pub mod open;
pub mod read;
pub mod retention;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::Result;

pub const REPS: usize = 3;
pub const ROOMS: u64 = 100;

/// Where benches put their stores, and how to re-exec ourselves for child processes.
pub struct Ctx {
    pub data: PathBuf,
    pub exe: PathBuf,
}

impl Ctx {
    pub fn dir(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }
}

/// splitmix64: small, deterministic, good enough for picking rooms and filling values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The encoded message for (room, seq): the key, then pseudo-random (incompressible) bytes
/// derived from it, so a reader can verify any message it gets back.
pub fn body(room: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&room.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    let mut rng = Rng::new(room.wrapping_mul(0x1000_0000_01B3) ^ seq);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Posts arriving round-robin over `rooms` rooms, each room with its own seq counter.
pub struct Traffic {
    next_seq: Vec<u64>,
    next_room: u64,
    value_len: usize,
}

pub type OwnedPost = (u64, u64, Vec<u8>);

impl Traffic {
    pub fn new(rooms: u64, value_len: usize) -> Self {
        Traffic {
            next_seq: vec![0; rooms as usize],
            next_room: 0,
            value_len,
        }
    }
    pub fn batch(&mut self, n: usize) -> Vec<OwnedPost> {
        (0..n)
            .map(|_| {
                let room = self.next_room;
                self.next_room = (self.next_room + 1) % self.next_seq.len() as u64;
                let seq = self.next_seq[room as usize];
                self.next_seq[room as usize] += 1;
                (room, seq, body(room, seq, self.value_len))
            })
            .collect()
    }
}

pub fn as_posts(batch: &[OwnedPost]) -> Vec<crate::store::Post<'_>> {
    batch
        .iter()
        .map(|(r, s, b)| (*r, *s, b.as_slice()))
        .collect()
}

/// Nearest-rank percentile, in milliseconds.
pub fn pct_ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1].as_secs_f64() * 1e3
}

pub fn median(vals: &[f64]) -> f64 {
    let mut v = vals.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// "median (min–max)" of the repetitions.
pub fn med_range(vals: &[f64], digits: usize) -> String {
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} ({:.d$}–{:.d$})", median(vals), lo, hi, d = digits)
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
pub fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                let (a, b) = du(&e.path());
                apparent += a;
                allocated += b;
            } else {
                apparent += md.len();
                allocated += md.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    Ok(())
}

/// Flush dirty pages and drop the page cache (needs root). Returns false if not permitted.
pub fn drop_caches() -> bool {
    // SAFETY-free: sync(2) via the coreutils binary keeps us libc-free.
    let _ = std::process::Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Bytes this process has passed to write-like syscalls so far (`wchar` in /proc/self/io).
pub fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: ").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}
