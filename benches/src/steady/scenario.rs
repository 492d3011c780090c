//! The steady-load run: cluster, bucket and daemon, the load window, the trickle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::load::Load;
use pgagent_tests::sql::SqlClient;
use pgagent_tests::{free_addr, wait_until, Garage, PgOptions, PgServer};

use super::metrics::Counters;
use super::report::Figures;
use super::trickle::{self, server_lsn, wait_flushed, Commit};
use super::{transactions_processed, Settings};
use crate::replay::agent::Streamer;

/// Key prefix in the bucket.
const PREFIX: &str = "steady";
/// How long the bucket may take to catch up with the server.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a trickle commit may take to be durable before the run fails.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at finding a moment when no WAL is written between two reads.
const SETTLE_ATTEMPTS: usize = 20;
/// How long filling a segment to the window's offset may take.
const FILL_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The figures the report judges.
    pub figures: Figures,
    /// Where the load window started and ended.
    pub start: Lsn,
    /// See `start`.
    pub end: Lsn,
    /// `wal_segment_size`, bytes.
    pub seg_bytes: u64,
    /// Transactions pgbench reported.
    pub transactions: Option<u64>,
    /// The trickle's commits.
    pub commits: Vec<Commit>,
}

/// Runs the scenario of [`super`] against `garage`.
///
/// Errors: a server or the daemon fails, the bucket does not catch up, or the daemon does
/// not stop cleanly.
pub fn run(settings: &Settings, garage: &Garage) -> anyhow::Result<Outcome> {
    let pg = PgServer::start(PgOptions::default())?;
    let seg_bytes: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()
        .context("wal_segment_size")?;
    let work = tempfile::Builder::new()
        .prefix("pgagent-steady-")
        .tempdir()
        .context("create the benchmark's directory")?;
    let metrics_addr = free_addr()?;
    let mut env = garage.s3_env();
    env.push(("PGAGENT_METRICS_LISTEN", metrics_addr.to_string()));
    if let Some(interval) = settings.partial_interval {
        env.push((
            "PGAGENT_WAL_PARTIAL_INTERVAL",
            format!("{}s", interval.as_secs()),
        ));
    }
    eprintln!(
        "pgagent run → Garage, wal.partial_interval = {:?}, /metrics on {metrics_addr}",
        settings.effective_partial_interval()
    );
    let streamer = Streamer::start(
        &settings.pgagent_bin,
        &pg,
        &garage.store_url(PREFIX),
        &env,
        work.path(),
    )?;
    if !wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        Counters::scrape(metrics_addr).is_ok()
    }) {
        Counters::scrape(metrics_addr).context("the daemon's /metrics")?;
    }
    let mut sql = SqlClient::superuser(&pg)?;

    eprintln!("pgbench -i -s {}", settings.scale);
    pg.pgbench_init(settings.scale)?;
    pg.psql("CHECKPOINT")?;
    if !settings.warmup.is_zero() {
        let warmup = settings.warmup.as_secs().to_string();
        eprintln!("warm-up: pgbench -n -c 2 -j 2 -T {warmup}");
        pg.pgbench(&["-n", "-c", "2", "-j", "2", "-T", &warmup])?;
    }
    trickle::create_table(&mut sql)?;
    fill_segment_to(&pg, &mut sql, seg_bytes, settings.window_offset)?;
    let (start, before) = settled(&mut sql, metrics_addr)?;
    eprintln!(
        "bucket caught up at {start} ({:.1} MiB into its segment)",
        (start.0 % seg_bytes) as f64 / f64::from(1u32 << 20)
    );

    let load = settings.load.as_secs().to_string();
    let rate = settings.rate.to_string();
    eprintln!("pgbench -n -R {rate} -c 1 -T {load}");
    let began = Instant::now();
    let out = pg.pgbench(&["-n", "-R", &rate, "-c", "1", "-T", &load])?;
    let (end, after) = settled(&mut sql, metrics_addr)?;
    let window = began.elapsed();
    let uploaded = after.since(&before)?;
    let transactions = transactions_processed(&out);
    eprintln!(
        "window {:.1} s: {} bytes of WAL, {} transactions; {:.0} raw bytes compressed, \
         {:.0} stored, {:.0} PUTs ({})",
        window.as_secs_f64(),
        end.0 - start.0,
        transactions.map_or_else(|| "?".to_owned(), |t| t.to_string()),
        uploaded.raw_bytes,
        uploaded.stored_bytes,
        uploaded.puts,
        uploaded.put_source.describe()
    );

    let gap = settings.trickle_gap();
    eprintln!(
        "trickle: {} single-row commits, {gap:?} apart",
        settings.trickle
    );
    let commits = trickle::run(&mut sql, settings.trickle, gap, COMMIT_TIMEOUT)?;
    streamer.stop()?;
    if pgagent_tests::util::keep_temp_dirs() {
        eprintln!("keeping {}", work.keep().display());
    }
    Ok(Outcome {
        figures: Figures {
            wal_bytes: end.0 - start.0,
            window,
            uploaded,
            partial_interval: settings.effective_partial_interval(),
            trickle_rpo: commits.iter().map(|c| c.rpo).collect(),
        },
        start,
        end,
        seg_bytes,
        transactions,
        commits,
    })
}

/// Switches to a new segment, then runs unthrottled pgbench until the insert position is
/// `offset` bytes into it (overshooting by what 50 ms of pgbench writes).
///
/// Errors: `offset` is not inside a segment, or pgbench does not get there in time.
fn fill_segment_to(
    pg: &PgServer,
    sql: &mut SqlClient,
    seg_bytes: u64,
    offset: u64,
) -> anyhow::Result<()> {
    if offset >= seg_bytes {
        bail!("a window offset of {offset} bytes is not inside a {seg_bytes}-byte segment");
    }
    pg.switch_wal()?;
    if offset == 0 {
        return Ok(());
    }
    eprintln!(
        "filling the new segment to {} MiB with pgbench -n -c 2 -j 2",
        offset >> 20
    );
    let load = Load::start(pg, &["-c", "2", "-j", "2"])?;
    let mut position = Ok(Lsn::INVALID);
    let reached = wait_until(FILL_TIMEOUT, Duration::from_millis(50), || {
        position = server_lsn(sql, "pg_current_wal_insert_lsn");
        position
            .as_ref()
            .map_or(true, |l| l.0 % seg_bytes >= offset)
    });
    load.stop(pg)?;
    let position = position?;
    if !reached {
        bail!("pgbench did not reach {offset} bytes into the segment within {FILL_TIMEOUT:?} (at {position})");
    }
    Ok(())
}

/// Waits until the bucket holds all WAL written so far, and returns that end of WAL with the
/// upload counters read while no further WAL was written (the LSN is read again after the
/// scrape and must not have moved): the counters then cover exactly the WAL before the LSN.
fn settled(sql: &mut SqlClient, metrics: SocketAddr) -> anyhow::Result<(Lsn, Counters)> {
    for _ in 0..SETTLE_ATTEMPTS {
        let lsn = server_lsn(sql, "pg_current_wal_lsn")?;
        wait_flushed(sql, lsn, SETTLE_TIMEOUT)?;
        let counters = Counters::scrape(metrics)?;
        if server_lsn(sql, "pg_current_wal_lsn")? == lsn {
            return Ok((lsn, counters));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("WAL kept being written: no quiet moment in {SETTLE_ATTEMPTS} attempts")
}
