//! The backlog: a cluster whose slots retain a known range of real WAL.

use std::time::Instant;

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::{PgOptions, PgServer};

/// `max_replication_slots` and `max_wal_senders` of the benchmark cluster.
pub const MAX_SLOTS: usize = 25;

/// pgbench scale per GiB of target backlog for the initial load (`pgbench -i`). A scale unit
/// is 100,000 `pgbench_accounts` rows, about 16 MB of WAL with its index; 40 per GiB makes
/// the load about 60 % of the backlog, and transaction runs write the rest.
const SCALE_PER_GIB: f64 = 40.0;

/// Seconds of each pgbench transaction run while topping up the backlog.
const TOP_UP_SECONDS: &str = "10";

/// A running cluster and the WAL range its benchmark slots retain.
#[derive(Debug)]
pub struct Backlog {
    /// The cluster (stopped when dropped).
    pub pg: PgServer,
    /// First byte to stream: the start of the segment holding the slots' `restart_lsn`
    /// (where `pg_receivewal` and `pgagent` both begin).
    pub start: Lsn,
    /// End of the backlog, a segment boundary (just past a `pg_switch_wal()`).
    pub end: Lsn,
    /// `wal_segment_size` in bytes.
    pub seg_bytes: u64,
}

impl Backlog {
    /// Bytes of WAL from [`Backlog::start`] to [`Backlog::end`].
    pub fn bytes(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Whole segments in the backlog.
    pub fn segments(&self) -> u64 {
        self.bytes() / self.seg_bytes
    }
}

/// Starts a cluster, creates `slots` (physical, reserving WAL) and writes at least
/// `target_bytes` of WAL after them: `pgbench -i` at a scale sized to the target, then
/// checkpoint + 10 s pgbench runs (dense with full-page images after each checkpoint) until the
/// target is reached, then a checkpoint and `pg_switch_wal()` so the backlog ends on a segment
/// boundary with no background writes left to compete with the cases.
///
/// The cluster keeps WAL only for the slots: `wal_keep_size = 0`, `max_wal_size` large and
/// `checkpoint_timeout = 1d`, so no checkpoint happens while a case runs.
pub fn prepare(target_bytes: u64, slots: &[String]) -> anyhow::Result<Backlog> {
    if slots.len() > MAX_SLOTS {
        bail!(
            "{} slots requested, the cluster allows {MAX_SLOTS}",
            slots.len()
        );
    }
    let pg = PgServer::start(PgOptions {
        wal_keep_size: "0".to_owned(),
        extra_conf: vec![
            "max_wal_size = '64GB'".to_owned(),
            "checkpoint_timeout = '1d'".to_owned(),
            "shared_buffers = '256MB'".to_owned(),
            // Only speeds up the generation; the WAL written is the same.
            "synchronous_commit = off".to_owned(),
            format!("max_replication_slots = {MAX_SLOTS}"),
            format!("max_wal_senders = {MAX_SLOTS}"),
        ],
        ..PgOptions::default()
    })?;
    let seg_bytes: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()
        .context("wal_segment_size")?;
    for slot in slots {
        pg.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ))?;
    }
    let restart = lsn(&pg.psql(&format!(
        "SELECT min(restart_lsn) FROM pg_replication_slots WHERE slot_name IN ({})",
        slots
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?)?;
    let start = Lsn(restart.0 - restart.0 % seg_bytes);

    let began = Instant::now();
    let scale = ((target_bytes as f64 / f64::from(1u32 << 30)) * SCALE_PER_GIB)
        .round()
        .max(1.0) as u32;
    eprintln!("generating WAL: pgbench -i -s {scale}");
    pg.pgbench_init(scale)?;
    loop {
        let written = current(&pg)?.0 - start.0;
        eprintln!(
            "  {:.0} MiB of WAL after {:.0} s",
            written as f64 / f64::from(1u32 << 20),
            began.elapsed().as_secs_f64()
        );
        if written >= target_bytes {
            break;
        }
        pg.psql("CHECKPOINT")?;
        pg.pgbench(&["-c", "2", "-j", "2", "-T", TOP_UP_SECONDS])?;
    }
    pg.psql("CHECKPOINT")?;
    let switched = lsn(&pg.switch_wal()?)?;
    let end = Lsn(switched.0.div_ceil(seg_bytes) * seg_bytes);
    Ok(Backlog {
        pg,
        start,
        end,
        seg_bytes,
    })
}

fn current(pg: &PgServer) -> anyhow::Result<Lsn> {
    lsn(&pg.current_wal_lsn()?)
}

fn lsn(text: &str) -> anyhow::Result<Lsn> {
    text.parse()
        .with_context(|| format!("expected an LSN, PostgreSQL returned {text:?}"))
}
