//! Crash safety: a child commits batches and reports each one after `append_batch` returned; it
//! is SIGKILLed at a random moment; the store must reopen and hold every reported batch.
//!
//! SIGKILL kills the process, not the machine: the OS page cache survives, so this checks the
//! engines' recovery paths and atomicity, not what reaches the platter (power loss).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{as_posts, body, fresh_dir, Ctx, Rng};
use crate::store::{self, Result, Spec};

pub const SPECS: &[Spec] = &[
    Spec::RedbImmediate,
    Spec::RedbQuickRepair,
    Spec::FjallSyncAll,
    Spec::SqliteFull,
    Spec::RedbNone,
    Spec::FjallBuffer,
    Spec::SqliteOff,
];
const KILLS: usize = 5;
const ROOMS: u64 = 10;
const BATCH: u64 = 100;
const VALUE_LEN: usize = 64;

/// Child: append batches of 100 posts to rooms round-robin, print `C room first last` after each
/// commit returned. Never calls `sync` (buffered modes show what a process crash loses).
pub fn crash_child(spec: Spec, dir: &Path) -> Result<()> {
    let mut st = store::open(spec, dir)?;
    let mut next: Vec<u64> = (0..ROOMS)
        .map(|r| st.last_seq(r).map(|l| l.map_or(0, |s| s + 1)))
        .collect::<Result<_>>()?;
    println!("started");
    let mut k = 0u64;
    loop {
        let room = k % ROOMS;
        let first = next[room as usize];
        let owned: Vec<_> = (first..first + BATCH)
            .map(|s| (room, s, body(room, s, VALUE_LEN)))
            .collect();
        st.append_batch(&as_posts(&owned))?;
        next[room as usize] += BATCH;
        println!("C {room} {first} {}", first + BATCH - 1);
        k += 1;
    }
}

struct KillOutcome {
    reported: usize,
    missing: usize,
    opened: bool,
    intact: bool,
    open_ms: f64,
}

fn kill_once(ctx: &Ctx, spec: Spec, dir: &Path, delay: Duration) -> Result<KillOutcome> {
    let mut child = Command::new(&ctx.exe)
        .args(["crash-child", spec.name(), &dir.to_string_lossy()])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in out.lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for "started", then let it write for `delay`.
    let started = rx.recv_timeout(Duration::from_secs(60))?;
    if started != "started" {
        return Err(format!("crash-child said {started:?}").into());
    }
    std::thread::sleep(delay);
    child.kill()?; // SIGKILL
    child.wait()?;
    reader.join().ok();
    let committed: Vec<(u64, u64, u64)> = rx
        .try_iter()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .strip_prefix("C ")?
                .split(' ')
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[0], f[1], f[2]))
        })
        .collect();

    // Reopen (in this process) and check every reported batch, message by message.
    let t = Instant::now();
    let st = match store::open(spec, dir) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("    reopen failed: {e}");
            return Ok(KillOutcome {
                reported: committed.len(),
                missing: committed.len(),
                opened: false,
                intact: false,
                open_ms: 0.0,
            });
        }
    };
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut missing = 0;
    for &(room, first, last) in &committed {
        let got = st.range(room, first, (last - first + 1) as usize)?;
        let ok = got.len() as u64 == last - first + 1
            && got
                .iter()
                .enumerate()
                .all(|(i, (s, b))| *s == first + i as u64 && *b == body(room, *s, VALUE_LEN));
        if !ok {
            missing += 1;
        }
    }
    // Whatever survived must be whole batches, gap-free from seq 0, with intact bodies.
    let mut intact = true;
    for room in 0..ROOMS {
        let all = st.range(room, 0, usize::MAX)?;
        let n = all.len() as u64;
        if !n.is_multiple_of(BATCH) || st.last_seq(room)? != n.checked_sub(1) {
            intact = false;
        }
        if !all
            .iter()
            .enumerate()
            .all(|(i, (s, b))| *s == i as u64 && *b == body(room, *s, VALUE_LEN))
        {
            intact = false;
        }
    }
    Ok(KillOutcome {
        reported: committed.len(),
        missing,
        opened: true,
        intact,
        open_ms,
    })
}

pub fn run(ctx: &Ctx, only: Option<&[Spec]>) -> Result<()> {
    let mut rng = Rng::new(2024);
    println!("### 5. Crash safety: {KILLS} SIGKILLs per config at a random moment (0.3–1.5 s into writing 100-post batches)\n");
    println!("| config | durable per batch | batches reported committed | of those missing after reopen | reopened without error | surviving data whole batches, gap-free, bodies intact | reopen ms (max) |");
    println!("|---|---|---|---|---|---|---|");
    for &spec in SPECS {
        if only.is_some_and(|o| !o.contains(&spec)) {
            continue;
        }
        let dir = ctx.dir(&format!("crash-{}", spec.name().replace(':', "-")));
        fresh_dir(&dir)?;
        let (mut reported, mut missing, mut opened, mut intact, mut open_max) = (0, 0, 0, 0, 0f64);
        for _ in 0..KILLS {
            let delay = Duration::from_millis(300 + rng.below(1200));
            let o = kill_once(ctx, spec, &dir, delay)?;
            eprintln!(
                "  crash {spec}: reported {} missing {} opened {} intact {}",
                o.reported, o.missing, o.opened, o.intact
            );
            reported += o.reported;
            missing += o.missing;
            opened += o.opened as usize;
            intact += o.intact as usize;
            open_max = open_max.max(o.open_ms);
        }
        std::fs::remove_dir_all(&dir)?;
        println!(
            "| {spec} | {} | {reported} | {missing} | {opened}/{KILLS} | {intact}/{KILLS} | {open_max:.0} |",
            if spec.durable() { "yes" } else { "no" }
        );
    }
    println!();
    Ok(())
}
