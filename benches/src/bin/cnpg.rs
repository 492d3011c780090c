//! The CloudNativePG instance sidecar under load: how long `WAL.Archive` takes for a segment
//! the stream already stored (what CNPG's instance manager waits for at each
//! `archive_command`, its own process start excluded), and the sidecar's resident memory
//! while it streams a pgbench load into Garage.
//!
//! ```text
//! cargo build --release -p pgagent
//! PGAGENT_BIN=target/release/pgagent cargo run --release -p pgagent-benches --bin cnpg
//! ```
//!
//! Environment: `BENCH_SECONDS` (load duration, default 60), `BENCH_ROUNDS` (archive calls
//! per segment, default 50), `BENCH_UPLOAD_CONCURRENCY` (the sidecar's
//! `store.upload_concurrency`, default pgagent's), and the harness's `PGAGENT_BIN`, `PGAGENT_TEST_PG_BIN`,
//! `PGAGENT_TEST_GARAGE`. Prints progress on stderr and the results as markdown on stdout.

use std::path::Path;
use std::time::{Duration, Instant};

use pgagent_cnpgi::wal::wal_client::WalClient;
use pgagent_cnpgi::wal::WalArchiveRequest;
use pgagent_tests::cnpg::{slot_active, unix_channel, Pod};
use pgagent_tests::load::Load;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (VmRSS, VmHWM) of `pid`, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let seconds = env_u64("BENCH_SECONDS", 60);
    let rounds = env_u64("BENCH_ROUNDS", 50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let garage = Garage::start()?;
    let pg = PgServer::start(PgOptions::default())?;
    // The benchmark calls WAL.Archive itself: no archive_command, no stand-in.
    let pod = Pod::new("pg-1", "pg-1", Path::new("/bin/false"));
    let mut env = pod.env(&pg, &garage.store_url("cnpg-bench"), &garage.s3_env());
    env.retain(|(k, _)| *k != "PGAGENT_LOG");
    env.push(("PGAGENT_LOG", "warn".into()));
    if let Ok(n) = std::env::var("BENCH_UPLOAD_CONCURRENCY") {
        env.push(("PGAGENT_STORE_UPLOAD_CONCURRENCY", n));
    }
    let sidecar = pod.start("instance", &env);
    runtime.block_on(pod.scrape());
    anyhow::ensure!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            slot_active(&pg)
        }),
        "the sidecar did not start streaming"
    );
    eprintln!("pgbench -i -s 10");
    pg.pgbench_init(10)?;
    let first = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")?;
    eprintln!("pgbench -c 4 for {seconds} s");
    let load = Load::start(&pg, &["-c", "4"])?;
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        rss.push(memory_kib(sidecar.pid()).0);
        std::thread::sleep(Duration::from_millis(200));
    }
    load.stop(&pg)?;
    let (_, peak) = memory_kib(sidecar.pid());
    let last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")?;

    // Every segment the stream stored, archived `rounds` times, a new connection each call
    // (the instance manager is a new process each time).
    let names: Vec<String> = std::fs::read_dir(pg.data_dir().join("pg_wal"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.as_str() <= last.as_str() && n.as_str() >= first.as_str())
        .collect();
    let socket = pod.socket();
    let cluster = pod.cluster();
    let mut micros = Vec::new();
    runtime.block_on(async {
        // The last segment may still be on its way: the first round waits for it.
        for _ in 0..rounds {
            for name in &names {
                let t0 = Instant::now();
                WalClient::new(unix_channel(&socket))
                    .archive(WalArchiveRequest {
                        cluster_definition: cluster.clone(),
                        source_file_name: format!("pg_wal/{name}"),
                        ..Default::default()
                    })
                    .await?;
                micros.push(t0.elapsed().as_micros() as u64);
            }
        }
        anyhow::Ok(())
    })?;
    // The first call of each segment in the first round may have waited for the stream.
    let steady: Vec<u64> = micros.iter().skip(names.len()).copied().collect();
    let mut sorted = if steady.is_empty() {
        micros.clone()
    } else {
        steady
    };
    sorted.sort_unstable();
    rss.sort_unstable();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| segments streamed under `pgbench -c 4` for {seconds} s | {} |",
        names.len()
    );
    println!(
        "| `WAL.Archive` of a streamed segment, calls | {} |",
        sorted.len()
    );
    for (label, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)] {
        println!(
            "| `WAL.Archive` {label} | {:.2} ms |",
            percentile(&sorted, p) as f64 / 1000.0
        );
    }
    println!(
        "| sidecar RSS while streaming the load, median | {:.1} MiB |",
        percentile(&rss, 50.0) as f64 / 1024.0
    );
    println!(
        "| sidecar RSS while streaming the load, highest 200 ms sample | {:.1} MiB |",
        percentile(&rss, 100.0) as f64 / 1024.0
    );
    println!(
        "| sidecar RSS, peak since start (VmHWM, `pgbench -i` included) | {:.1} MiB |",
        peak as f64 / 1024.0
    );
    Ok(())
}
