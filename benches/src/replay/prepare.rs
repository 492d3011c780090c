//! Preparing once what every case replays: a base backup, the WAL written after it in the
//! bucket, the same WAL in a local directory and in a pgBackRest repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgagent_protocol::{segment_file_name, Lsn, SegNo, WalFileName, WalSegmentSize};
use pgagent_tests::{Garage, OsUser, PgOptions, PgServer};
use tempfile::TempDir;

use super::agent::{FetchConfig, FetchTuning, Streamer};
use super::logscan::backup_start;
use super::pgbackrest::{self, PgBackRest};
use super::sys::{self, chown_tree, command_as, path_str, run_checked, shared_tempdir, user_dir};
use super::Settings;

/// Garage prefix the WAL is streamed into.
pub const PREFIX: &str = "replay";

/// pgbench scale per GiB of WAL for the initial load, as in the catch-up benchmark: the
/// load writes about 60 % of the target, transaction runs the rest.
const SCALE_PER_GIB: f64 = 40.0;
/// Seconds of each pgbench transaction run while topping up.
const TOP_UP_SECONDS: &str = "10";
/// Longest wait for the daemon to upload everything.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Server settings of the primary and of every recovering cluster.
pub fn server_conf() -> Vec<String> {
    vec![
        "max_wal_size = '64GB'".to_owned(),
        "checkpoint_timeout = '1d'".to_owned(),
        "shared_buffers = '256MB'".to_owned(),
    ]
}

/// Everything the cases share. Dropping it removes the files.
#[derive(Debug)]
pub struct Prepared {
    /// Root of the benchmark's files (mode 0755, so the PostgreSQL OS user can traverse it).
    pub work: TempDir,
    /// The base backup (`pg_basebackup -X none -c fast`), owned by the PostgreSQL OS user.
    pub base: PathBuf,
    /// The WAL files for the `cp` case, readable by the PostgreSQL OS user.
    pub archive: PathBuf,
    /// The files recovery must restore, in order: the segments from the one holding the
    /// backup's start LSN, then the partial segment the bucket holds after them, if any.
    pub files: Vec<String>,
    /// `wal_segment_size`, bytes.
    pub seg_bytes: u64,
    /// Complete segment objects in the bucket and their bytes (zstd envelopes), from
    /// `pgagent list wal --json`.
    pub stored: (u64, u64),
    /// The pgBackRest stanza holding the same files, or why there is none.
    pub pgbackrest: Result<PgBackRest, String>,
    /// The OS user PostgreSQL and `restore_command` run as.
    pub user: Option<OsUser>,
}

impl Prepared {
    /// Bytes of WAL the cases restore (one segment size per file).
    pub fn wal_bytes(&self) -> u64 {
        self.files.len() as u64 * self.seg_bytes
    }
}

/// Prepares the WAL: a primary streamed by `pgagent run` into `garage` under [`PREFIX`], a
/// base backup, at least `settings.wal_bytes` of pgbench WAL after it, a local copy of the
/// files and, when pgBackRest is available, a pgBackRest repository holding them.
///
/// Errors: any step failing, or the bucket not holding every segment.
pub fn prepare(settings: &Settings, garage: &Garage) -> anyhow::Result<Prepared> {
    let user = sys::pg_user()?;
    let work = shared_tempdir("pgagent-bench-replay-")?;
    let base = work.path().join("base");
    let archive = work.path().join("archive");
    let primary = start_primary(settings.wal_bytes)?;
    let seg_bytes: u64 = primary
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()
        .context("wal_segment_size")?;
    let seg = WalSegmentSize::new(seg_bytes).context("wal_segment_size")?;
    let (start_file, end) = stream_wal(
        settings,
        &primary,
        garage,
        work.path(),
        seg_bytes,
        user.as_ref(),
    )?;

    let Some(WalFileName::Segment { tli, segno: first }) = WalFileName::parse(&start_file, seg)
    else {
        bail!("backup_label names {start_file:?}, not a segment");
    };
    let mut files: Vec<String> = (first.0..end.0 / seg_bytes)
        .map(|n| segment_file_name(tli, SegNo(n), seg))
        .collect();
    user_dir(&archive, user.as_ref())?;
    copy_segments(&primary.data_dir().join("pg_wal"), &archive, &files)?;
    let prep = FetchConfig::write(
        &work.path().join("prep-fetch"),
        garage,
        &garage.store_url(PREFIX),
        FetchTuning::idle(Duration::from_secs(1)),
        user.as_ref(),
    )?;
    let tail = segment_file_name(tli, SegNo(end.0 / seg_bytes), seg);
    if fetch_tail(&settings.pgagent_bin, &prep, &tail, &archive, user.as_ref())? {
        files.push(tail);
    }
    chown_tree(&archive, user.as_ref())?;
    let stored = stored_segments(&settings.pgagent_bin, &prep, files.len())?;
    eprintln!(
        "WAL: {} files from {} ({} MiB); the bucket holds {} segments in {} bytes",
        files.len(),
        files[0],
        (files.len() as u64 * seg_bytes) >> 20,
        stored.0,
        stored.1
    );
    let pgbackrest = fill_pgbackrest(
        &work.path().join("pgbackrest"),
        &primary,
        &archive,
        &files,
        user.as_ref(),
    )?;
    Ok(Prepared {
        work,
        base,
        archive,
        files,
        seg_bytes,
        stored,
        pgbackrest,
        user,
    })
}

/// Streams the primary with `pgagent run` (staging under `<work>/agent`), takes the base
/// backup into `<work>/base`, writes the WAL, switches to a new segment and waits until the
/// bucket holds everything before it; then stops the daemon. Returns the segment holding the
/// backup's start LSN and the end of the WAL (a segment boundary).
fn stream_wal(
    settings: &Settings,
    primary: &PgServer,
    garage: &Garage,
    work: &Path,
    seg_bytes: u64,
    user: Option<&OsUser>,
) -> anyhow::Result<(String, Lsn)> {
    let agent_dir = work.join("agent");
    fs::create_dir(&agent_dir)?;
    let mut env = garage.s3_env();
    env.extend(crate::bench_passphrase().map(|p| (crate::PASSPHRASE_ENV, p)));
    let mut streamer = Streamer::start(
        &settings.pgagent_bin,
        primary,
        &garage.store_url(PREFIX),
        &env,
        &agent_dir,
    )?;
    eprintln!("base backup: pg_basebackup -X none -c fast");
    let base = work.join("base");
    base_backup(primary, &base, user)?;
    let label = fs::read_to_string(base.join("backup_label")).context("read backup_label")?;
    let (start_lsn, start_file) =
        backup_start(&label).context("no START WAL LOCATION in backup_label")?;
    generate_wal(primary, start_lsn, settings.wal_bytes)?;
    primary.psql("CHECKPOINT")?;
    let switched: Lsn = primary.switch_wal()?.parse().context("pg_switch_wal()")?;
    let end = Lsn(switched.0.div_ceil(seg_bytes) * seg_bytes);
    eprintln!("waiting for pgagent run to upload up to {end}");
    streamer.wait_uploaded(end, UPLOAD_TIMEOUT)?;
    streamer.stop()?;
    Ok((start_file, end))
}

/// The primary: WAL kept in `pg_wal` well beyond what is generated (`wal_keep_size`), so the
/// segments can be copied out once the daemon has uploaded them.
fn start_primary(wal_bytes: u64) -> anyhow::Result<PgServer> {
    let mut extra_conf = server_conf();
    // Only speeds up the generation; the WAL written is the same.
    extra_conf.push("synchronous_commit = off".to_owned());
    PgServer::start(PgOptions {
        wal_keep_size: format!("{}MB", (wal_bytes >> 20) * 2 + 1024),
        extra_conf,
        ..PgOptions::default()
    })
}

/// `pg_basebackup -D <dest> -X none -c fast` as the PostgreSQL OS user (the WAL comes from
/// the archive). `dest` is created empty and given to that user first.
fn base_backup(primary: &PgServer, dest: &Path, user: Option<&OsUser>) -> anyhow::Result<()> {
    user_dir(dest, user)?;
    let mut cmd = command_as(user, primary.bin_dir().join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dest)
        .args(["-X", "none", "-c", "fast", "-d"])
        .arg(primary.conninfo(pgagent_tests::pg::REPL_USER));
    run_checked(&mut cmd, "pg_basebackup").map(drop)
}

/// Writes at least `bytes` of WAL after `from`: `pgbench -i` at a scale sized to the target,
/// then `CHECKPOINT` + 10 s pgbench runs (dense with full-page images) until it is reached.
fn generate_wal(pg: &PgServer, from: Lsn, bytes: u64) -> anyhow::Result<()> {
    let began = Instant::now();
    let scale = ((bytes as f64 / f64::from(1u32 << 30)) * SCALE_PER_GIB)
        .round()
        .max(1.0) as u32;
    eprintln!("generating WAL: pgbench -i -s {scale}");
    pg.pgbench_init(scale)?;
    loop {
        let now: Lsn = pg
            .current_wal_lsn()?
            .parse()
            .context("pg_current_wal_lsn()")?;
        let written = now.0.saturating_sub(from.0);
        eprintln!(
            "  {} MiB of WAL after {:.0} s",
            written >> 20,
            began.elapsed().as_secs_f64()
        );
        if written >= bytes {
            return Ok(());
        }
        pg.psql("CHECKPOINT")?;
        pg.pgbench(&["-c", "2", "-j", "2", "-T", TOP_UP_SECONDS])?;
    }
}

/// Copies the segments `names` from `pg_wal` into `archive`; each must be there, whole.
fn copy_segments(pg_wal: &Path, archive: &Path, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let src = pg_wal.join(name);
        fs::copy(&src, archive.join(name))
            .with_context(|| format!("copy {} (wal_keep_size too small?)", src.display()))?;
    }
    Ok(())
}

/// `pgagent fetch <tail> <archive>/<tail>` for the segment after the last complete one: the
/// bucket may hold it as `.partial` (what the daemon streamed after the switch), which
/// `pgagent fetch` serves zero-padded. Putting the same bytes in the archive makes every case
/// replay the same files. Returns whether there was one.
fn fetch_tail(
    pgagent: &Path,
    config: &FetchConfig,
    tail: &str,
    archive: &Path,
    user: Option<&OsUser>,
) -> anyhow::Result<bool> {
    let out = command_as(user, pgagent)
        .arg("--config")
        .arg(&config.path)
        .args(["fetch", tail])
        .arg(archive.join(tail))
        .output()
        .context("spawn pgagent fetch")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "pgagent fetch {tail} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The complete segments in the bucket and their stored bytes (`pgagent list wal --json`),
/// after checking that it holds at least `segments - 1` of them (the last file may be a
/// partial).
fn stored_segments(
    pgagent: &Path,
    config: &FetchConfig,
    segments: usize,
) -> anyhow::Result<(u64, u64)> {
    let mut cmd = Command::new(pgagent);
    cmd.arg("--config")
        .arg(&config.path)
        .args(["list", "wal", "--json"]);
    let text = run_checked(&mut cmd, "pgagent list wal")?;
    let timelines: serde_json::Value = serde_json::from_str(&text).context("list output")?;
    let ranges = timelines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("ranges")?.as_array())
        .flatten();
    let (mut count, mut bytes) = (0, 0);
    for r in ranges {
        count += r.get("segments").and_then(|v| v.as_u64()).unwrap_or(0);
        bytes += r.get("stored_bytes").and_then(|v| v.as_u64()).unwrap_or(0);
    }
    if count + 1 < segments as u64 {
        bail!("the bucket holds {count} segments, the archive {segments} files:\n{text}");
    }
    Ok((count, bytes))
}

/// Creates the pgBackRest stanza under `dir` and pushes `files` from `archive` into it.
/// `Ok(Err(why))` when pgBackRest is not available.
fn fill_pgbackrest(
    dir: &Path,
    primary: &PgServer,
    archive: &Path,
    files: &[String],
    user: Option<&OsUser>,
) -> anyhow::Result<Result<PgBackRest, String>> {
    let bin = match pgbackrest::locate_or_install() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("skipping pgBackRest: {why}");
            return Ok(Err(why));
        }
    };
    let pgbr = PgBackRest::create(bin, dir, primary, user)?;
    eprintln!("pgbackrest archive-push of {} files", files.len());
    for name in files {
        pgbr.push(&archive.join(name))
            .with_context(|| format!("push {}", path_str(&archive.join(name)).unwrap_or(name)))?;
    }
    Ok(Ok(pgbr))
}
