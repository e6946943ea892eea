//! store-eval: embedded-store candidates for Quiver's durable room history.
//!
//! cargo run --release -- <bench> [--only spec,spec] [--data DIR] [--keep]
//!   benches: fsync | commit | sustained | read | open | crash | retention | all | smoke
//!   (scripts/syscalls.sh counts fsyncs per commit with strace, via `store-eval probe`)
//!   specs:   redb:immediate redb:2pc redb:quick-repair redb:none
//!            fjall:sync-all fjall:sync-data fjall:buffer
//!            sqlite:full sqlite:normal sqlite:off

mod bench;
mod engines;
mod store;

use std::path::PathBuf;
use std::time::Instant;

use bench::Ctx;
use store::{Result, Spec, ALL_SPECS};

fn usage() -> ! {
    eprintln!(
        "usage: store-eval <fsync|commit|sustained|read|open|crash|retention|all|smoke> [--only SPEC,SPEC] [--data DIR] [--keep]\n\
         specs: {}",
        ALL_SPECS.iter().map(|s| s.name()).collect::<Vec<_>>().join(" ")
    );
    std::process::exit(2)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };

    // Child processes (spawned by the benches).
    match cmd.as_str() {
        "open-child" => {
            return bench::open::open_child(
                Spec::parse(&args[1])?,
                args[2].as_ref(),
                args[3].parse()?,
            )
        }
        "crash-once-child" => {
            return bench::open::crash_once_child(
                Spec::parse(&args[1])?,
                args[2].as_ref(),
                args[3].parse()?,
            )
        }
        "crash-child" => {
            return bench::crash::crash_child(Spec::parse(&args[1])?, args[2].as_ref())
        }
        // For scripts/syscalls.sh: N batches of B posts into a fresh store, nothing else.
        "probe" => {
            return bench::commit::probe(
                Spec::parse(&args[1])?,
                args[2].parse()?,
                args[3].parse()?,
                args[4].as_ref(),
            )
        }
        _ => {}
    }

    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut only: Option<Vec<Spec>> = None;
    let mut keep = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = it.next().unwrap_or_else(|| usage()).into(),
            "--only" => {
                only = Some(
                    it.next()
                        .unwrap_or_else(|| usage())
                        .split(',')
                        .map(Spec::parse)
                        .collect::<Result<_>>()?,
                )
            }
            "--keep" => keep = true,
            _ => usage(),
        }
    }
    std::fs::create_dir_all(&data)?;
    let ctx = Ctx {
        data,
        exe: std::env::current_exe()?,
    };
    let only = only.as_deref();

    let t = Instant::now();
    match cmd.as_str() {
        "fsync" => bench::fsync::run(&ctx)?,
        "commit" => bench::commit::run(&ctx, only)?,
        "sustained" => bench::commit::sustained(&ctx, only)?,
        "read" => bench::read::run(&ctx, only)?,
        "open" => bench::open::run(&ctx, only, keep)?,
        "crash" => bench::crash::run(&ctx, only)?,
        "retention" => bench::retention::run(&ctx, only)?,
        "smoke" => smoke(&ctx)?,
        "all" => {
            bench::fsync::run(&ctx)?;
            bench::commit::run(&ctx, only)?;
            bench::commit::sustained(&ctx, only)?;
            bench::read::run(&ctx, only)?;
            bench::open::run(&ctx, only, keep)?;
            bench::crash::run(&ctx, only)?;
            bench::retention::run(&ctx, only)?;
        }
        _ => usage(),
    }
    eprintln!("{cmd}: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Quick functional check of every spec against the trait contract.
fn smoke(ctx: &Ctx) -> Result<()> {
    for &spec in ALL_SPECS {
        let dir = ctx.dir(&format!("smoke-{}", spec.name().replace(':', "-")));
        bench::fresh_dir(&dir)?;
        {
            let mut st = store::open(spec, &dir)?;
            assert_eq!(st.last_seq(3)?, None);
            let owned: Vec<_> = (0..50u64)
                .flat_map(|s| {
                    [
                        (3u64, s, bench::body(3, s, 64)),
                        (4, s, bench::body(4, s, 64)),
                    ]
                })
                .collect();
            st.append_batch(&bench::as_posts(&owned))?;
            st.sync()?;
            assert_eq!(st.last_seq(3)?, Some(49));
            assert_eq!(st.last_seq(5)?, None);
            let page = st.range(3, 10, 5)?;
            assert_eq!(
                page.iter().map(|m| m.0).collect::<Vec<_>>(),
                vec![10, 11, 12, 13, 14]
            );
            assert_eq!(page[0].1, bench::body(3, 10, 64));
            st.delete_before(3, 20)?;
            assert_eq!(st.range(3, 0, 1)?[0].0, 20);
            assert_eq!(st.range(4, 0, 1)?[0].0, 0);
            st.compact()?;
            assert_eq!(st.range(3, 0, 100)?.len(), 30);
        }
        // Reopen: everything still there.
        let st = store::open(spec, &dir)?;
        assert_eq!(st.last_seq(3)?, Some(49));
        assert_eq!(st.range(4, 0, 1000)?.len(), 50);
        drop(st);
        std::fs::remove_dir_all(&dir)?;
        println!("smoke {spec}: ok");
    }
    Ok(())
}
