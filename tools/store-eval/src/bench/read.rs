//! Page reads (range scans) on a 1,000,000-message store, plus the retention delete timed there.

use std::time::Instant;

use super::{
    as_posts, body, du, fresh_dir, med_range, mib, pct_ms, Ctx, Rng, Traffic, REPS, ROOMS,
};
use crate::store::{self, HistoryStore, Result, Spec};

pub const SPECS: &[Spec] = &[Spec::RedbImmediate, Spec::FjallSyncAll, Spec::SqliteFull];
const MESSAGES: u64 = 1_000_000;
const PAGE: usize = 100;
const PAGES: usize = 1000;

/// Load `ROOMS` × `MESSAGES/ROOMS` messages in batches of `batch`; returns seconds taken.
pub fn load(
    st: &mut dyn HistoryStore,
    messages: u64,
    value_len: usize,
    batch: usize,
) -> Result<f64> {
    let mut traffic = Traffic::new(ROOMS, value_len);
    let t = Instant::now();
    let mut left = messages as usize;
    while left > 0 {
        let n = left.min(batch);
        let owned = traffic.batch(n);
        st.append_batch(&as_posts(&owned))?;
        left -= n;
    }
    st.sync()?;
    Ok(t.elapsed().as_secs_f64())
}

/// 1000 random pages of `PAGE` consecutive messages; returns (p50, p99) ms. Verifies contents.
pub fn read_pages(
    st: &dyn HistoryStore,
    seed: u64,
    per_room: u64,
    value_len: usize,
    pages: usize,
) -> Result<(f64, f64)> {
    let mut rng = Rng::new(seed);
    let mut lat = Vec::with_capacity(pages);
    for _ in 0..pages {
        let room = rng.below(ROOMS);
        let from = rng.below(per_room - PAGE as u64 + 1);
        let t = Instant::now();
        let page = st.range(room, from, PAGE)?;
        lat.push(t.elapsed());
        if page.len() != PAGE
            || page[0].0 != from
            || page[PAGE - 1].1 != body(room, from + PAGE as u64 - 1, value_len)
        {
            return Err(format!("bad page room {room} from {from}: {} rows", page.len()).into());
        }
    }
    Ok((pct_ms(&lat, 50.0), pct_ms(&lat, 99.0)))
}

pub fn run(ctx: &Ctx, only: Option<&[Spec]>) -> Result<()> {
    let per_room = MESSAGES / ROOMS;
    let mut rows = Vec::new();
    for &spec in SPECS {
        if only.is_some_and(|o| !o.contains(&spec)) {
            continue;
        }
        let dir = ctx.dir(&format!("read-{}", spec.name().replace(':', "-")));
        fresh_dir(&dir)?;
        let mut st = store::open(spec, &dir)?;
        let load_s = load(st.as_mut(), MESSAGES, 64, 10_000)?;
        let size = du(&dir).1;
        eprintln!(
            "  read {spec}: loaded 1M × 64 B in {load_s:.1} s, {} MiB",
            mib(size)
        );
        let (mut p50, mut p99, mut del, mut last) = (vec![], vec![], vec![], vec![]);
        for rep in 0..REPS {
            let (a, b) = read_pages(st.as_ref(), 42 + rep as u64, per_room, 64, PAGES)?;
            p50.push(a);
            p99.push(b);
            // last_seq of all 100 rooms (what a reconnecting client's catch-up starts with).
            let t = Instant::now();
            for room in 0..ROOMS {
                let l = st.last_seq(room)?;
                if l != Some(per_room - 1) {
                    return Err(format!("last_seq({room}) = {l:?}").into());
                }
            }
            last.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // Retention in place (after the reads): delete the oldest half of one room per rep.
        for rep in 0..REPS {
            let room = rep as u64;
            let t = Instant::now();
            st.delete_before(room, per_room / 2)?;
            del.push(t.elapsed().as_secs_f64() * 1e3);
            let first = st.range(room, 0, 1)?;
            if first.first().map(|m| m.0) != Some(per_room / 2) {
                return Err(format!("delete_before left {:?}", first.first().map(|m| m.0)).into());
            }
        }
        drop(st);
        std::fs::remove_dir_all(&dir)?;
        rows.push((spec, load_s, size, p50, p99, last, del));
    }

    println!("### 3. Read a page: 100 consecutive messages of one room, 1,000,000 × 64 B messages in 100 rooms, warm ({PAGES} random pages per run, {REPS} runs: median (min–max))\n");
    println!("| engine | load 1M (10k/batch) s | store MiB | page p50 ms | page p99 ms | last_seq × 100 rooms ms | delete oldest 5,000 of a room's 10,000 (durable) ms |");
    println!("|---|---|---|---|---|---|---|");
    for (spec, load_s, size, p50, p99, last, del) in rows {
        println!(
            "| {spec} | {load_s:.1} | {} | {} | {} | {} | {} |",
            mib(size),
            med_range(&p50, 3),
            med_range(&p99, 3),
            med_range(&last, 2),
            med_range(&del, 1)
        );
    }
    println!();
    Ok(())
}
