//! Group commit: one writer commits every batch in one transaction; durable modes fsync per batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{as_posts, fresh_dir, med_range, pct_ms, wchar, Ctx, Traffic, REPS, ROOMS};
use crate::store::{self, Result, Spec};

const VALUE_LEN: usize = 64;
const WARMUP_BATCHES: usize = 5;

/// Durable configurations: measured at every batch size.
pub const DURABLE: &[Spec] = &[
    Spec::RedbImmediate,
    Spec::Redb2pc,
    Spec::RedbQuickRepair,
    Spec::FjallSyncAll,
    Spec::FjallSyncData,
    Spec::SqliteFull,
];
/// "Written, not synced" configurations: measured at batch 100.
pub const BUFFERED: &[Spec] = &[
    Spec::RedbNone,
    Spec::FjallBuffer,
    Spec::SqliteNormal,
    Spec::SqliteOff,
];
pub const BATCHES: &[usize] = &[1, 10, 100, 1000];

fn batches_for(size: usize) -> usize {
    if size >= 1000 {
        100
    } else {
        200
    }
}

struct Run {
    posts_per_s: f64,
    p50: f64,
    p99: f64,
    kib_per_batch: f64,
}

fn one_run(ctx: &Ctx, spec: Spec, batch: usize) -> Result<Run> {
    let dir = ctx.dir(&format!("commit-{}", spec.name().replace(':', "-")));
    fresh_dir(&dir)?;
    let mut st = store::open(spec, &dir)?;
    let mut traffic = Traffic::new(ROOMS, VALUE_LEN);
    let n = batches_for(batch);
    let mut lat = Vec::with_capacity(n);
    let mut written = 0;
    for i in 0..WARMUP_BATCHES + n {
        let owned = traffic.batch(batch);
        let posts = as_posts(&owned);
        let w = wchar();
        let t = Instant::now();
        st.append_batch(&posts)?;
        if i >= WARMUP_BATCHES {
            lat.push(t.elapsed());
            written += wchar() - w;
        }
    }
    drop(st);
    std::fs::remove_dir_all(&dir)?;
    let busy: Duration = lat.iter().sum();
    Ok(Run {
        posts_per_s: (n * batch) as f64 / busy.as_secs_f64(),
        p50: pct_ms(&lat, 50.0),
        p99: pct_ms(&lat, 99.0),
        kib_per_batch: written as f64 / n as f64 / 1024.0,
    })
}

pub fn run(ctx: &Ctx, only: Option<&[Spec]>) -> Result<()> {
    let mut plan: Vec<(Spec, usize)> = Vec::new();
    for &spec in DURABLE {
        for &b in BATCHES {
            plan.push((spec, b));
        }
    }
    for &spec in BUFFERED {
        plan.push((spec, 100));
    }
    if let Some(only) = only {
        plan.retain(|(s, _)| only.contains(s));
    }
    // Repetitions are interleaved so a noisy minute hits every configuration a little.
    let mut results: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    for _ in 0..REPS {
        for (i, &(spec, b)) in plan.iter().enumerate() {
            let r = one_run(ctx, spec, b)?;
            eprintln!(
                "  commit {spec} batch {b}: {:.0} posts/s p50 {:.2} ms p99 {:.2} ms",
                r.posts_per_s, r.p50, r.p99
            );
            results.entry((i, b)).or_default().push(r);
        }
    }

    println!(
        "### 2. Group commit, 64 B values, 100 rooms round-robin ({REPS} runs: median (min–max))\n"
    );
    println!("Per-batch commit latency = `append_batch` (write + commit + sync in durable modes). posts/s = posts / time spent committing. KiB written = bytes passed to write syscalls per batch (payload: 80 B × batch).\n");
    println!("| config | durable per batch | batch | posts/s | commit p50 ms | commit p99 ms | KiB written per batch |");
    println!("|---|---|---|---|---|---|---|");
    for (i, &(spec, b)) in plan.iter().enumerate() {
        let runs = &results[&(i, b)];
        let pps: Vec<f64> = runs.iter().map(|r| r.posts_per_s).collect();
        let p50: Vec<f64> = runs.iter().map(|r| r.p50).collect();
        let p99: Vec<f64> = runs.iter().map(|r| r.p99).collect();
        let kib: Vec<f64> = runs.iter().map(|r| r.kib_per_batch).collect();
        println!(
            "| {spec} | {} | {b} | {} | {} | {} | {:.1} |",
            if spec.durable() { "yes" } else { "no" },
            med_range(&pps, 0),
            med_range(&p50, 2),
            med_range(&p99, 2),
            super::median(&kib)
        );
    }
    println!();
    Ok(())
}

/// `probe SPEC BATCH N DIR`: open a fresh store in DIR and commit N batches (for strace).
pub fn probe(spec: Spec, batch: usize, n: usize, dir: &std::path::Path) -> Result<()> {
    fresh_dir(dir)?;
    let mut st = store::open(spec, dir)?;
    let mut traffic = Traffic::new(ROOMS, VALUE_LEN);
    for _ in 0..n {
        let owned = traffic.batch(batch);
        st.append_batch(&as_posts(&owned))?;
    }
    Ok(())
}

/// Durable configurations measured under sustained load.
pub const SUSTAINED: &[Spec] = &[
    Spec::RedbImmediate,
    Spec::RedbQuickRepair,
    Spec::FjallSyncAll,
    Spec::SqliteFull,
];
const SUSTAINED_BATCHES: usize = 2000;
const SUSTAINED_VALUE_LEN: usize = 1024;

/// Sustained group commit: 2,000 durable batches of 100 × 1 KiB (~200 MB) into one store, so the
/// tail includes fjall's memtable flushes/compactions, redb's file growth, SQLite's checkpoints.
pub fn sustained(ctx: &Ctx, only: Option<&[Spec]>) -> Result<()> {
    let specs: Vec<Spec> = SUSTAINED
        .iter()
        .copied()
        .filter(|s| only.is_none_or(|o| o.contains(s)))
        .collect();
    let mut res: BTreeMap<usize, Vec<[f64; 5]>> = BTreeMap::new();
    for _ in 0..REPS {
        for (i, &spec) in specs.iter().enumerate() {
            let dir = ctx.dir(&format!("sustained-{}", spec.name().replace(':', "-")));
            fresh_dir(&dir)?;
            let mut st = store::open(spec, &dir)?;
            let mut traffic = Traffic::new(ROOMS, SUSTAINED_VALUE_LEN);
            let mut lat = Vec::with_capacity(SUSTAINED_BATCHES);
            for _ in 0..SUSTAINED_BATCHES {
                let owned = traffic.batch(100);
                let posts = as_posts(&owned);
                let t = Instant::now();
                st.append_batch(&posts)?;
                lat.push(t.elapsed());
            }
            drop(st);
            std::fs::remove_dir_all(&dir)?;
            let busy: Duration = lat.iter().sum();
            let r = [
                (SUSTAINED_BATCHES * 100) as f64 / busy.as_secs_f64(),
                pct_ms(&lat, 50.0),
                pct_ms(&lat, 99.0),
                pct_ms(&lat, 99.9),
                pct_ms(&lat, 100.0),
            ];
            eprintln!(
                "  sustained {spec}: {:.0} posts/s p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
                r[0], r[1], r[2], r[3], r[4]
            );
            res.entry(i).or_default().push(r);
        }
    }
    println!("### 2b. Sustained group commit: {SUSTAINED_BATCHES} durable batches of 100 × 1 KiB (~200 MB) into one store ({REPS} runs: median (min–max))\n");
    println!("| config | posts/s | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (i, spec) in specs.iter().enumerate() {
        let col = |k: usize| res[&i].iter().map(|r| r[k]).collect::<Vec<f64>>();
        println!(
            "| {spec} | {} | {} | {} | {} | {} |",
            med_range(&col(0), 0),
            med_range(&col(1), 2),
            med_range(&col(2), 2),
            med_range(&col(3), 2),
            med_range(&col(4), 1)
        );
    }
    println!();
    Ok(())
}
