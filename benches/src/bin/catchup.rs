//! Catch-up of a WAL backlog: `pg_receivewal` against `pgagent run` (file:// and S3).
//!
//! ```text
//! cargo build --release -p pgagent
//! cargo run --release -p pgagent-benches --bin catchup
//! ```
//!
//! Environment: `BENCH_WAL_GIB` (backlog, default 2), `BENCH_RUNS` (runs per case, default 2;
//! the fastest is reported), `BENCH_CASES` (`abcde`; `d` and `e` are `b` and `c` on an
//! encrypted store), `BENCH_COMPRESSION_LEVEL` (pgagent's zstd level, default its own 3), `PGAGENT_BIN` (default `target/release/pgagent`), and the
//! harness's `PGAGENT_TEST_PG_BIN`, `PGAGENT_TEST_GARAGE`.
//! Prints progress on stderr and the results as markdown on stdout.

use pgagent_benches::catchup::{self, AgentTarget, Case, Settings};
use pgagent_benches::report::{best_runs, markdown_table, CaseResult};
use pgagent_tests::Garage;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let slots: Vec<String> = (1..=settings.runs)
        .flat_map(|run| settings.cases.iter().map(move |c| c.slot(run)))
        .collect();
    let garage = if settings.cases.iter().any(|c| c.is_s3()) {
        Some(Garage::start()?)
    } else {
        None
    };
    let backlog = catchup::prepare(settings.backlog_bytes, &slots)?;
    eprintln!(
        "backlog: {} .. {} = {} bytes ({} segments)",
        backlog.start,
        backlog.end,
        backlog.bytes(),
        backlog.segments()
    );

    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for run in 1..=settings.runs {
        for &case in &settings.cases {
            let slot = case.slot(run);
            eprintln!("run {run}: {} (slot {slot})", case.label());
            let (wall, usage) = match case {
                Case::PgReceivewal => catchup::run_pg_receivewal(&backlog, &slot)?,
                _ => {
                    let target = match &garage {
                        Some(g) if case.is_s3() => AgentTarget::Garage(g),
                        _ => AgentTarget::File,
                    };
                    let prefix = format!("catchup-{run}-{}", case.letter());
                    let passphrase = case.passphrase();
                    let r = catchup::run_pgagent(
                        &backlog,
                        &slot,
                        &settings.pgagent_bin,
                        target,
                        &prefix,
                        passphrase.as_deref(),
                    )?;
                    eprintln!(
                        "  status.json confirmed at {:.2} s; shutdown after SIGTERM: {:.2} s; VmHWM before SIGTERM: {} KiB",
                        r.confirmed.as_secs_f64(),
                        r.stop.as_secs_f64(),
                        r.hwm_before_stop_kib
                            .map_or_else(|| "?".to_owned(), |k| k.to_string())
                    );
                    if let Some((raw, stored)) = r.stored {
                        ratios.push((raw, stored));
                    }
                    (r.wall, r.usage)
                }
            };
            let result = CaseResult {
                case: case.label().to_owned(),
                run,
                wall,
                bytes: backlog.bytes(),
                usage,
            };
            eprintln!(
                "  {:.1} s, {:.0} MB/s, CPU {:.1} s, peak RSS {:.1} MiB",
                wall.as_secs_f64(),
                result.mb_per_second(),
                usage.cpu_seconds(),
                usage.max_rss_kib as f64 / 1024.0
            );
            results.push(result);
        }
    }

    println!(
        "## Catch-up of a {:.2} GiB WAL backlog\n",
        backlog.bytes() as f64 / f64::from(1u32 << 30)
    );
    println!("Machine: {}\n", pgagent_benches::machine());
    println!("Fastest of {} run(s) per case:\n", settings.runs);
    println!(
        "{}",
        markdown_table(&best_runs(&results), Case::PgReceivewal.label())
    );
    println!("All runs:\n");
    let all: Vec<&CaseResult> = results.iter().collect();
    println!("{}", markdown_table(&all, Case::PgReceivewal.label()));
    if let Some(&(raw, stored)) = ratios.first() {
        println!(
            "Compression (file:// store): {raw} raw bytes of segments stored in {stored} bytes, ratio {:.2}:1",
            raw as f64 / stored as f64
        );
    }
    Ok(())
}
