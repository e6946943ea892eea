//! Open / recovery time of a ~1 GB store, measured from a fresh process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::read::{load, read_pages};
use super::{drop_caches, du, fresh_dir, med_range, mib, Ctx, REPS, ROOMS};
use crate::store::{self, Result, Spec};

const MESSAGES: u64 = 1_000_000;
const VALUE_LEN: usize = 1024;
const PAGES_AFTER_OPEN: usize = 1000;

/// Store built with the first spec; after-crash opens measured for each crash spec.
pub const PLAN: &[(Spec, &[Spec])] = &[
    (
        Spec::RedbImmediate,
        &[Spec::RedbImmediate, Spec::RedbQuickRepair],
    ),
    (Spec::FjallSyncAll, &[Spec::FjallSyncAll]),
    (Spec::SqliteFull, &[Spec::SqliteFull]),
];

#[derive(Default)]
struct Samples {
    ready: Vec<f64>,
    open: Vec<f64>,
    query: Vec<f64>,
    page_p50: Vec<f64>,
    page_p99: Vec<f64>,
}

impl Samples {
    fn row(&self, engine: &str, case: &str) -> String {
        let pages = if self.page_p50.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{} / {}",
                med_range(&self.page_p50, 2),
                med_range(&self.page_p99, 2)
            )
        };
        format!(
            "| {engine} | {case} | **{}** | {} | {} | {pages} |",
            med_range(&self.ready, 0),
            med_range(&self.open, 0),
            med_range(&self.query, 1)
        )
    }
}

/// Spawn `open-child`; returns when it has exited. Ready time measured here, from spawn.
fn spawn_open(ctx: &Ctx, spec: Spec, dir: &Path, pages: usize, s: &mut Samples) -> Result<()> {
    let t0 = Instant::now();
    let mut child = Command::new(&ctx.exe)
        .args([
            "open-child",
            spec.name(),
            &dir.to_string_lossy(),
            &pages.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().expect("piped"));
    for line in out.lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"ready") => {
                s.ready.push(t0.elapsed().as_secs_f64() * 1e3);
                s.open.push(f[1].parse()?);
                s.query.push(f[2].parse()?);
            }
            Some(&"pages") => {
                s.page_p50.push(f[1].parse()?);
                s.page_p99.push(f[2].parse()?);
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("open-child {spec} failed: {status}").into());
    }
    Ok(())
}

/// Child: open, answer last_seq for every room, report, optionally read pages.
pub fn open_child(spec: Spec, dir: &Path, pages: usize) -> Result<()> {
    let t = Instant::now();
    let st = store::open(spec, dir)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for room in 0..ROOMS {
        if st.last_seq(room)?.is_none() {
            return Err(format!("room {room} empty after open").into());
        }
    }
    let query_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("ready {open_ms:.3} {query_ms:.3}");
    if pages > 0 {
        let (p50, p99) = read_pages(st.as_ref(), 7, MESSAGES / ROOMS, VALUE_LEN, pages)?;
        println!("pages {p50:.4} {p99:.4}");
    }
    Ok(())
}

/// Room the crash writer appends to (kept out of the 100 measured rooms, emptied after each run).
const SCRATCH_ROOM: u64 = 1_000_000;
/// Batches (of 100 × 1 KiB) the crash writer commits before it is killed: ~60 MiB, just under
/// fjall's default 64 MiB memtable, i.e. about the most journal fjall can have to replay.
const CRASH_BATCHES: usize = 600;

/// Spawn `crash-once-child`, wait until it reports its batches committed, SIGKILL it.
fn crash_writer(ctx: &Ctx, spec: Spec, dir: &Path) -> Result<()> {
    let mut child = Command::new(&ctx.exe)
        .args([
            "crash-once-child",
            spec.name(),
            &dir.to_string_lossy(),
            &CRASH_BATCHES.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    child.kill()?; // SIGKILL
    child.wait()?;
    if line.trim() != "committed" {
        return Err(format!("crash-once-child {spec}: {line:?}").into());
    }
    Ok(())
}

/// Child: open, commit `batches` durable batches of 100 × 1 KiB to the scratch room, report,
/// then hang until killed.
pub fn crash_once_child(spec: Spec, dir: &Path, batches: usize) -> Result<()> {
    let mut st = store::open(spec, dir)?;
    let mut next = st.last_seq(SCRATCH_ROOM)?.map_or(0, |s| s + 1);
    for _ in 0..batches {
        let owned: Vec<_> = (next..next + 100)
            .map(|s| (SCRATCH_ROOM, s, super::body(SCRATCH_ROOM, s, VALUE_LEN)))
            .collect();
        st.append_batch(&super::as_posts(&owned))?;
        next += 100;
    }
    st.sync()?;
    println!("committed");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Empty the scratch room again so every crash run starts from the same store size.
fn clear_scratch(spec: Spec, dir: &Path) -> Result<()> {
    let mut st = store::open(spec, dir)?;
    st.delete_before(SCRATCH_ROOM, 1 << 40)?;
    st.sync()
}

pub fn run(ctx: &Ctx, only: Option<&[Spec]>, keep: bool) -> Result<()> {
    let mut lines = Vec::new();
    let mut builds = Vec::new();
    let can_drop = drop_caches();
    for &(spec, crash_specs) in PLAN {
        if only.is_some_and(|o| !o.contains(&spec)) {
            continue;
        }
        let engine = format!("{:?}", spec.engine()).to_lowercase();
        let dir = ctx.dir(&format!("open-{engine}"));
        let marker = dir.join("LOADED");
        if !marker.exists() {
            fresh_dir(&dir)?;
            let mut st = store::open(spec, &dir)?;
            let load_s = load(st.as_mut(), MESSAGES, VALUE_LEN, 1000)?;
            drop(st);
            std::fs::write(&marker, format!("{load_s:.1}"))?;
        }
        let load_s = std::fs::read_to_string(&marker)?;
        let (apparent, allocated) = du(&dir);
        eprintln!(
            "  open {engine}: store {} MiB (apparent {} MiB), loaded in {load_s} s",
            mib(allocated),
            mib(apparent)
        );
        builds.push(format!(
            "| {engine} ({spec}, 1,000 posts/batch) | {load_s} | {} | {} |",
            mib(allocated),
            mib(apparent)
        ));

        let mut warm = Samples::default();
        let mut cold = Samples::default();
        for _ in 0..REPS {
            spawn_open(ctx, spec, &dir, 0, &mut warm)?;
        }
        if can_drop {
            for _ in 0..REPS {
                drop_caches();
                spawn_open(ctx, spec, &dir, PAGES_AFTER_OPEN, &mut cold)?;
            }
        }
        lines.push(warm.row(&engine, "clean shutdown, warm cache"));
        if can_drop {
            lines.push(cold.row(&engine, "clean shutdown, caches dropped"));
        }
        for &cspec in crash_specs {
            let mut cw = Samples::default();
            let mut cc = Samples::default();
            for _ in 0..REPS {
                crash_writer(ctx, cspec, &dir)?;
                spawn_open(ctx, cspec, &dir, 0, &mut cw)?;
                clear_scratch(cspec, &dir)?;
                if can_drop {
                    crash_writer(ctx, cspec, &dir)?;
                    drop_caches();
                    spawn_open(ctx, cspec, &dir, 0, &mut cc)?;
                    clear_scratch(cspec, &dir)?;
                }
            }
            lines.push(cw.row(
                &engine,
                &format!("SIGKILL after 60 MiB of `{cspec}` commits, warm"),
            ));
            if can_drop {
                lines.push(cc.row(
                    &engine,
                    &format!("SIGKILL after 60 MiB of `{cspec}` commits, caches dropped"),
                ));
            }
        }
        if !keep {
            std::fs::remove_dir_all(&dir)?;
        }
    }

    println!("### 4. Open / recovery of a ~1 GB store (1,000,000 × 1 KiB in 100 rooms), fresh process ({REPS} runs: median (min–max))\n");
    println!("| store | load s | disk MiB (allocated) | apparent MiB |");
    println!("|---|---|---|---|");
    for b in builds {
        println!("{b}");
    }
    println!();
    println!("ready = spawn of the process → it has opened the store and answered `last_seq` for all 100 rooms (target ≤ 2,000 ms). open/query = inside the child. Pages = 1,000 random 100-message pages read right after a cold open. Crash rows: a writer opens the store, commits 600 durable batches of 100 × 1 KiB (~60 MiB, to a scratch room, emptied again after each run), is SIGKILLed; then the fresh process opens (and recovers) the store.\n");
    println!("| engine | case | ready ms | open ms | last_seq × 100 ms | cold page p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    if !can_drop {
        println!("\n(could not write /proc/sys/vm/drop_caches: cold rows skipped)");
    }
    println!();
    Ok(())
}
