//! Replay of archived WAL through `restore_command`: `cp` (the floor), `pgagent fetch` from
//! Garage with 0, ~20 and ~100 ms added per request, and `pgbackrest archive-get` (async);
//! then the wall time of single calls on a segment that is ready locally.
//!
//! ```text
//! cargo build --release -p pgagent
//! cargo run --release -p pgagent-benches --bin replay
//! ```
//!
//! Environment: `BENCH_WAL_GIB` (WAL after the base backup, default 1), `BENCH_RUNS` (runs
//! per case, default 1; the fastest is reported), `BENCH_CASES` (`abcde`), `BENCH_CALLS`
//! (timed single calls per command, default 12), `PGAGENT_BIN` (default
//! `target/release/pgagent`), and the harness's `PGAGENT_TEST_PG_BIN`, `PGAGENT_TEST_GARAGE`,
//! `PGAGENT_TEST_KEEP=1` (keep the clusters, Garage's data and the benchmark's files: base
//! backup, archive, each case's configuration, fetch server and pgBackRest logs).
//! Prints progress on stderr and the results as markdown on stdout.

use std::time::Duration;

use pgagent_benches::replay::cases::{run_case, CaseRun};
use pgagent_benches::replay::latency::first_byte_time;
use pgagent_benches::replay::percall::{self, PerCall};
use pgagent_benches::replay::report::{fastest, ms, percall_table, ratio_table, replay_table};
use pgagent_benches::replay::{self, sys, Case, Prepared, Settings};
use pgagent_tests::{Garage, Proxy, ProxyMode};

/// Samples of the first-byte probe per path.
const PROBES: usize = 9;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    sys::scrub_pgagent_env();
    let garage = Garage::start()?;
    let prepared = replay::prepare(&settings, &garage)?;
    let probes = probe_proxy(&garage)?;

    let mut runs: Vec<CaseRun> = Vec::new();
    for run in 1..=settings.runs {
        for &case in &settings.cases {
            if case == Case::PgBackRest {
                if let Err(why) = &prepared.pgbackrest {
                    eprintln!("run {run}: skipping {}: {why}", case.label());
                    continue;
                }
            }
            eprintln!("run {run}: {}", case.label());
            let redo_end = runs.first().map(|r| r.replay.redo_done);
            let r = run_case(case, run, &prepared, &settings, &garage, redo_end)?;
            eprintln!(
                "  {:.2} s, {} files restored, redo done at {}{}",
                r.replay.wall.as_secs_f64(),
                r.replay.segments().len(),
                r.replay.redo_done,
                r.fetch.map_or(String::new(), |f| format!(
                    ", prefetch hits {} misses {}",
                    f.prefetch_hits, f.prefetch_misses
                ))
            );
            runs.push(r);
        }
    }
    eprintln!("per-call timing, {} calls each", settings.calls);
    let per_call = percall::measure(&prepared, &settings, &garage)?;

    print_setup(&prepared, &probes);
    println!("Fastest of {} run(s) per case:\n", settings.runs);
    println!("{}", replay_table(&fastest(&runs), prepared.seg_bytes));
    if settings.runs > 1 {
        println!("Each case against `cp` in the same run:\n");
        println!("{}", ratio_table(&runs));
        println!("All runs:\n");
        let all: Vec<&CaseRun> = runs.iter().collect();
        println!("{}", replay_table(&all, prepared.seg_bytes));
    }
    print_per_call(&per_call);
    if pgagent_tests::util::keep_temp_dirs() {
        eprintln!("keeping {}", prepared.work.keep().display());
    }
    Ok(())
}

/// First-byte times of a small request to Garage: direct, and through the proxy with each
/// delay the cases use.
fn probe_proxy(garage: &Garage) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut out = vec![(
        "direct".to_owned(),
        first_byte_time(garage.s3_addr(), PROBES)?,
    )];
    for case in [Case::Pgagent20, Case::Pgagent100] {
        let Some(delay) = case.proxy_delay() else {
            continue;
        };
        let proxy = Proxy::start(garage.s3_addr());
        proxy.set_mode(ProxyMode::Delay(delay));
        out.push((
            format!("proxy, Delay({} ms)", delay.as_millis()),
            first_byte_time(proxy.addr(), PROBES)?,
        ));
    }
    Ok(out)
}

fn print_setup(p: &Prepared, probes: &[(String, Duration)]) {
    let segments = p.files.len() as u64;
    println!(
        "## Recovery replay of {} WAL files ({} MiB)\n",
        segments,
        p.wal_bytes() >> 20
    );
    println!("Machine: {}\n", pgagent_benches::machine());
    let (objects, stored) = p.stored;
    println!(
        "WAL: {} files from {} to {}; the bucket holds {} complete segments in {} bytes \
         (mean {:.0} KiB per segment, {:.1}:1, zstd level 3){}\n",
        segments,
        p.files[0],
        p.files[p.files.len() - 1],
        objects,
        stored,
        stored as f64 / 1024.0 / objects.max(1) as f64,
        (objects * p.seg_bytes) as f64 / stored.max(1) as f64,
        match &p.pgbackrest {
            Ok(pgbr) => format!("; pgBackRest repository {} bytes", pgbr.repo_bytes()),
            Err(why) => format!("; pgBackRest: {why}"),
        }
    );
    println!("Small request (connect, `GET /`, first byte of the answer), median of {PROBES}:\n");
    println!("| path | first byte (ms) | added (ms) |\n| --- | ---: | ---: |");
    let direct = probes.first().map_or(Duration::ZERO, |p| p.1);
    for (path, t) in probes {
        println!(
            "| {path} | {:.1} | {:.1} |",
            ms(*t),
            ms(t.saturating_sub(direct))
        );
    }
    println!();
}

fn print_per_call(pc: &PerCall) {
    println!("Single calls on a segment that is ready locally:\n");
    println!("{}", percall_table(&pc.rows));
    println!(
        "First `pgagent fetch` (starts the restore-mode server, reads the segment from the \
         bucket): {:.1} ms.",
        ms(pc.pgagent_first)
    );
    if let Some(s) = pc.pgagent_summary {
        println!(
            "Fetch server summary: served {}, prefetch hits {}, misses {}.",
            s.served, s.prefetch_hits, s.prefetch_misses
        );
    }
}
