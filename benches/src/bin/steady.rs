//! What streaming costs under a light, steady load, and the RPO of lone commits.
//!
//! ```text
//! cargo build --release -p pgagent
//! cargo run --release -p pgagent-benches --bin steady
//! ```
//!
//! Environment: `BENCH_LOAD_SECONDS` (pgbench `-T`, default 60), `BENCH_RATE` (pgbench `-R`,
//! default 20), `BENCH_SCALE` (`pgbench -i -s`, default 1), `BENCH_WARMUP_SECONDS`
//! (unthrottled pgbench after the checkpoint, default 20), `BENCH_WINDOW_OFFSET_MIB` (where
//! in its segment the window starts, default 8), `BENCH_TRICKLE` (lone commits timed after
//! the load, default 10), `BENCH_PARTIAL_INTERVAL_SECONDS` (the daemon's
//! `wal.partial_interval`, default its own 1 s), `PGAGENT_BIN` (default
//! `target/release/pgagent`), and the harness's `PGAGENT_TEST_PG_BIN`, `PGAGENT_TEST_GARAGE`,
//! `PGAGENT_TEST_KEEP=1`.
//! Prints progress on stderr and the results as markdown on stdout.

use pgagent_benches::replay::sys;
use pgagent_benches::steady::report::markdown_table;
use pgagent_benches::steady::{scenario, Settings};
use pgagent_tests::Garage;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    sys::scrub_pgagent_env();
    let garage = Garage::start()?;
    let o = scenario::run(&settings, &garage)?;
    let f = &o.figures;

    println!(
        "## Steady load: pgbench -R {} -c 1 for {} s (scale {}, {} s warm-up), then {} lone commits\n",
        settings.rate,
        settings.load.as_secs(),
        settings.scale,
        settings.warmup.as_secs(),
        settings.trickle
    );
    println!("Machine: {}\n", pgagent_benches::machine());
    println!("{}", markdown_table(f));
    println!(
        "Window: {:.1} s from the start of pgbench until the bucket held all its WAL; \
         {} to {} ({} bytes; the window started {:.2} MiB into a {} MiB segment); \
         {} transactions.",
        f.window.as_secs_f64(),
        o.start,
        o.end,
        f.wal_bytes,
        (o.start.0 % o.seg_bytes) as f64 / f64::from(1u32 << 20),
        o.seg_bytes >> 20,
        o.transactions
            .map_or_else(|| "?".to_owned(), |t| t.to_string())
    );
    println!(
        "Uploaded over the window: {:.0} raw bytes compressed, {:.0} bytes stored, {:.0} PUTs \
         (counted by {}); wal.partial_interval = {:?}.",
        f.uploaded.raw_bytes,
        f.uploaded.stored_bytes,
        f.uploaded.puts,
        f.uploaded.put_source.describe(),
        f.partial_interval
    );
    if !f.uploaded.requests.is_empty() {
        let ops: Vec<String> = f
            .uploaded
            .requests
            .iter()
            .map(|(op, n)| format!("{op} {n:.0}"))
            .collect();
        println!(
            "Store requests over the window (pgagent_store_requests_total): {}.",
            ops.join(", ")
        );
    }
    if !o.commits.is_empty() {
        let each: Vec<String> = o
            .commits
            .iter()
            .map(|c| format!("{:.2}", c.rpo.as_secs_f64()))
            .collect();
        println!(
            "Trickle, seconds from each commit to its WAL durable in the bucket: {}.",
            each.join(", ")
        );
    }
    Ok(())
}
