//! Baseline: cost of write(4 KiB) + fdatasync on a plain file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::{fresh_dir, med_range, pct_ms, Ctx, REPS};
use crate::store::Result;

const N: usize = 200;

pub fn run(ctx: &Ctx) -> Result<()> {
    let dir = ctx.dir("fsync");
    let block = vec![0xA5u8; 4096];
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("append 4 KiB + fdatasync (file grows)", vec![], vec![]),
        (
            "overwrite 4 KiB in place + fdatasync (preallocated)",
            vec![],
            vec![],
        ),
    ];
    for _ in 0..REPS {
        fresh_dir(&dir)?;
        // Append: like a log whose size changes with every write.
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("append.bin"))?;
        let mut lat = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            lat.push(t.elapsed());
        }
        push(&mut rows[0], &lat);

        // Overwrite: file written and synced up front, then rewritten block by block.
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("overwrite.bin"))?;
        for i in 0..N {
            f.write_all_at(&block, (i * 4096) as u64)?;
        }
        f.sync_all()?;
        let mut lat = Vec::with_capacity(N);
        for i in 0..N {
            let t = Instant::now();
            f.write_all_at(&block, (i * 4096) as u64)?;
            f.sync_data()?;
            lat.push(t.elapsed());
        }
        push(&mut rows[1], &lat);
    }
    std::fs::remove_dir_all(&dir)?;

    println!(
        "### 1. fsync baseline ({N} × write 4 KiB + fdatasync, {REPS} runs: median (min–max))\n"
    );
    println!("| pattern | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (name, p50, p99) in &rows {
        println!("| {name} | {} | {} |", med_range(p50, 2), med_range(p99, 2));
    }
    println!();
    Ok(())
}

fn push(row: &mut (&str, Vec<f64>, Vec<f64>), lat: &[Duration]) {
    row.1.push(pct_ms(lat, 50.0));
    row.2.push(pct_ms(lat, 99.0));
}
