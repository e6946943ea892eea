//! Retention: delete the oldest half of a room's 10,000 messages; is the space given back?

use std::time::Instant;

use super::{as_posts, body, du, fresh_dir, med_range, Ctx, REPS};
use crate::store::{self, HistoryStore, Result, Spec};

pub const SPECS: &[Spec] = &[Spec::RedbImmediate, Spec::FjallSyncAll, Spec::SqliteFull];
const ROOM: u64 = 7;
const MESSAGES: u64 = 10_000;
const VALUE_LEN: usize = 1024;

fn append(st: &mut dyn HistoryStore, seqs: std::ops::Range<u64>) -> Result<()> {
    let seqs: Vec<u64> = seqs.collect();
    for chunk in seqs.chunks(1000) {
        let owned: Vec<_> = chunk
            .iter()
            .map(|&s| (ROOM, s, body(ROOM, s, VALUE_LEN)))
            .collect();
        st.append_batch(&as_posts(&owned))?;
    }
    st.sync()
}

#[derive(Default)]
struct Row {
    del_ms: Vec<f64>,
    compact_ms: Vec<f64>,
    before: Vec<f64>,
    after_delete: Vec<f64>,
    after_compact: Vec<f64>,
    after_reopen: Vec<f64>,
    reuse: Vec<f64>,
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn run(ctx: &Ctx, only: Option<&[Spec]>) -> Result<()> {
    let mut rows = Vec::new();
    for &spec in SPECS {
        if only.is_some_and(|o| !o.contains(&spec)) {
            continue;
        }
        let dir = ctx.dir(&format!("retention-{}", spec.name().replace(':', "-")));
        let mut row = Row::default();
        for _ in 0..REPS {
            // Pass A: delete, then compact.
            fresh_dir(&dir)?;
            let mut st = store::open(spec, &dir)?;
            append(st.as_mut(), 0..MESSAGES)?;
            row.before.push(mb(du(&dir).1));
            let t = Instant::now();
            st.delete_before(ROOM, MESSAGES / 2)?;
            row.del_ms.push(t.elapsed().as_secs_f64() * 1e3);
            row.after_delete.push(mb(du(&dir).1));
            let t = Instant::now();
            st.compact()?;
            row.compact_ms.push(t.elapsed().as_secs_f64() * 1e3);
            row.after_compact.push(mb(du(&dir).1));
            let first = st.range(ROOM, 0, 1)?;
            if first.first().map(|m| m.0) != Some(MESSAGES / 2)
                || st.last_seq(ROOM)? != Some(MESSAGES - 1)
            {
                return Err(format!("{spec}: wrong contents after delete+compact").into());
            }
            drop(st);
            // Some space is only given back lazily (fjall deletes obsolete table files and its
            // journal later): reopen, and measure again.
            drop(store::open(spec, &dir)?);
            row.after_reopen.push(mb(du(&dir).1));

            // Pass B: delete, then write 5,000 new messages without compaction: is freed space reused?
            fresh_dir(&dir)?;
            let mut st = store::open(spec, &dir)?;
            append(st.as_mut(), 0..MESSAGES)?;
            st.delete_before(ROOM, MESSAGES / 2)?;
            append(st.as_mut(), MESSAGES..MESSAGES + MESSAGES / 2)?;
            row.reuse.push(mb(du(&dir).1));
            drop(st);
        }
        std::fs::remove_dir_all(&dir)?;
        eprintln!("  retention {spec} done");
        rows.push((spec, row));
    }

    println!("### 6. Retention: one room of 10,000 × 1 KiB, delete the oldest 5,000 (durable), then compact ({REPS} runs: median (min–max); sizes = allocated MiB on disk)\n");
    println!("| engine | delete ms | size before | after delete | compact ms | after compact | after compact + close/reopen | no compact, +5,000 new messages instead |");
    println!("|---|---|---|---|---|---|---|---|");
    for (spec, r) in rows {
        println!(
            "| {spec} | {} | {} | {} | {} | {} | {} | {} |",
            med_range(&r.del_ms, 1),
            med_range(&r.before, 1),
            med_range(&r.after_delete, 1),
            med_range(&r.compact_ms, 0),
            med_range(&r.after_compact, 1),
            med_range(&r.after_reopen, 1),
            med_range(&r.reuse, 1)
        );
    }
    println!();
    Ok(())
}
