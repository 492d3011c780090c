//! Running one case: a timed process streaming the backlog through its slot.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::util::{child_pids, log_tail, send_signal};
use pgagent_tests::Garage;
use tempfile::TempDir;

use super::Backlog;
use crate::measure::{parse_time_output, process_vm_hwm_kib, Usage, TIME_BIN, TIME_FORMAT};
use crate::walcache::is_segment_name;

/// Longest a case may take before it is declared stuck.
const CASE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a process may take to exit once the backlog is durable (pgagent: after SIGTERM).
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `status.json` is read. The daemon rewrites it every second, which bounds the
/// timing error of the pgagent cases.
const POLL: Duration = Duration::from_millis(20);

/// A process running under GNU time, with its output in a scratch directory.
struct Timed {
    time: Child,
    dir: TempDir,
    started: Instant,
}

impl Timed {
    /// Spawns `time -q -f TIME_FORMAT -o usage.txt <program> <args>` with `env`.
    fn spawn(program: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Timed> {
        let dir = tempfile::Builder::new()
            .prefix("pgagent-bench-")
            .tempdir()
            .context("create scratch directory")?;
        let mut cmd = Command::new(TIME_BIN);
        cmd.args(["-q", "-f", TIME_FORMAT, "-o"])
            .arg(dir.path().join("usage.txt"))
            .arg(program)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout.log"))?)
            .stderr(fs::File::create(dir.path().join("stderr.log"))?);
        // Nothing from the caller's environment (`PGAGENT_*`, libpq's `PG*`) may configure
        // the process under test.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("PG")) {
                cmd.env_remove(name);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let started = Instant::now();
        let time = cmd
            .spawn()
            .with_context(|| format!("spawn {TIME_BIN} (install the `time` package)"))?;
        Ok(Timed { time, dir, started })
    }

    /// Pid of the measured process (GNU time's only child).
    fn target_pid(&mut self) -> anyhow::Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(&pid) = child_pids(self.time.id()).first() {
                return Ok(pid);
            }
            if self.time.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("process did not start\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.time.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to exit and returns GNU time's report.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<Usage> {
        let deadline = Instant::now() + timeout;
        while self.time.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.time.kill();
                bail!("process still running after {timeout:?}\n{}", self.output());
            }
            std::thread::sleep(POLL);
        }
        let path = self.dir.path().join("usage.txt");
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let usage = parse_time_output(&text)?;
        if !usage.succeeded() {
            bail!("process failed ({usage:?})\n{}", self.output());
        }
        Ok(usage)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            log_tail(&self.dir.path().join("stdout.log"), 4096),
            log_tail(&self.dir.path().join("stderr.log"), 8192)
        )
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if !self.exited() {
            if let Ok(pid) = self.target_pid() {
                let _ = send_signal(pid, "KILL");
            }
            let _ = self.time.wait();
        }
    }
}

/// The baseline: `pg_receivewal -D <dir> --slot <slot> --no-loop -E <end>` (PostgreSQL docs,
/// "pg_receivewal"), uncompressed, connecting over TCP as `trust_user`. Durable when it exits:
/// it fsyncs each segment as it completes it. Returns the wall time and usage after checking
/// that the directory holds the whole backlog.
pub fn run_pg_receivewal(b: &Backlog, slot: &str) -> anyhow::Result<(Duration, Usage)> {
    let out = tempfile::Builder::new()
        .prefix("pgagent-bench-receivewal-")
        .tempdir()?;
    let end = b.end.to_string();
    let conninfo = b.pg.conninfo(pgagent_tests::pg::TRUST_USER);
    let out_dir = out
        .path()
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 temp path"))?;
    let mut timed = Timed::spawn(
        &b.pg.bin_dir().join("pg_receivewal"),
        &[
            "-D",
            out_dir,
            "--slot",
            slot,
            "--no-loop",
            "-E",
            &end,
            "-d",
            &conninfo,
            "-w",
        ],
        &[],
    )?;
    let usage = timed.wait(CASE_TIMEOUT)?;
    let wall = timed.started.elapsed();
    let (_, got) = segment_files(out.path())?;
    if got < b.bytes() {
        bail!(
            "pg_receivewal wrote {got} bytes of complete segments, the backlog is {}",
            b.bytes()
        );
    }
    Ok((wall, usage))
}

/// Where a pgagent case stores WAL.
#[derive(Debug, Clone, Copy)]
pub enum AgentTarget<'a> {
    /// A `file://` store in a scratch directory.
    File,
    /// The Garage bucket, under a prefix of its own.
    Garage(&'a Garage),
}

/// What a pgagent run measured.
#[derive(Debug, Clone, Copy)]
pub struct PgagentRun {
    /// Spawn until every segment of the backlog had left staging (uploaded, see
    /// [`run_pgagent`]).
    pub wall: Duration,
    /// Spawn until `status.json`, rewritten every second, showed `uploaded_lsn >= end`.
    pub confirmed: Duration,
    /// GNU time's report over the whole life of the process, shutdown included.
    pub usage: Usage,
    /// `VmHWM` sampled just before SIGTERM, KiB.
    pub hwm_before_stop_kib: Option<u64>,
    /// Shutdown time after SIGTERM.
    pub stop: Duration,
    /// `(raw, stored)` bytes of the complete segments in a `file://` store.
    pub stored: Option<(u64, u64)>,
}

/// `pgagent run` with `slot` into `target`, with the daemon's defaults (compression level 3,
/// upload concurrency 8, two compress threads; `BENCH_COMPRESSION_LEVEL` overrides the level;
/// with `passphrase`, the store is encrypted) and the metrics listener off.
///
/// The daemon removes a staged segment only once its object is durable in the store, so the
/// backlog is durable when staging, polled every 20 ms, holds no segment below the end LSN
/// after having held the last one. That is the time reported: `status.json`, the daemon's
/// public account, is rewritten only every second, so timing it would add up to a second.
/// It must then show `uploaded_lsn >= end`; then SIGTERM, and the daemon must exit with
/// status 0.
pub fn run_pgagent(
    b: &Backlog,
    slot: &str,
    pgagent: &Path,
    target: AgentTarget<'_>,
    prefix: &str,
    passphrase: Option<&str>,
) -> anyhow::Result<PgagentRun> {
    let work = tempfile::Builder::new()
        .prefix("pgagent-bench-agent-")
        .tempdir()?;
    let staging = work.path().join("staging");
    let store_dir = work.path().join("store");
    let mut env = vec![
        (
            "PGAGENT_POSTGRES_CONNINFO",
            b.pg.conninfo(pgagent_tests::pg::REPL_USER),
        ),
        ("PGAGENT_POSTGRES_SLOT", slot.to_owned()),
        ("PGAGENT_STAGING_DIR", path_str(&staging)?),
        ("PGAGENT_METRICS_LISTEN", String::new()),
        ("PGAGENT_LOG", "warn".to_owned()),
    ];
    if let Ok(level) = std::env::var("BENCH_COMPRESSION_LEVEL") {
        env.push(("PGAGENT_WAL_COMPRESSION_LEVEL", level));
    }
    if let Some(p) = passphrase {
        env.push((crate::PASSPHRASE_ENV, p.to_owned()));
    }
    match target {
        AgentTarget::File => {
            env.push((
                "PGAGENT_STORE_URL",
                format!("file://{}", path_str(&store_dir)?),
            ));
        }
        AgentTarget::Garage(g) => {
            env.push(("PGAGENT_STORE_URL", g.store_url(prefix)));
            env.extend(g.s3_env());
        }
    }
    let mut timed = Timed::spawn(pgagent, &["run"], &env)?;
    let pid = timed.target_pid()?;
    let deadline = timed.started + CASE_TIMEOUT;
    let end_segno = b.end.0 / b.seg_bytes;
    let mut reached_last = false;
    let mut drained_scans = 0;
    let wall = loop {
        let segnos = staged_segnos(&staging.join("wal"), b.seg_bytes);
        reached_last |= segnos.iter().any(|&s| s + 1 >= end_segno);
        let drained = segnos.iter().all(|&s| s >= end_segno);
        // Two scans in a row: a readdir racing the rename of the last `.partial` could
        // miss it once.
        drained_scans = if reached_last && drained {
            drained_scans + 1
        } else {
            0
        };
        if drained_scans == 2 {
            break timed.started.elapsed();
        }
        if timed.exited() || Instant::now() > deadline {
            bail!(
                "pgagent stopped or stalled before uploading up to {}\n{}",
                b.end,
                timed.output()
            );
        }
        std::thread::sleep(POLL);
    };
    // The daemon's own account must agree before it is stopped.
    while uploaded_lsn(&staging).is_none_or(|l| l < b.end) {
        if timed.exited() || Instant::now() > deadline {
            bail!(
                "staging drained but status.json never showed uploaded_lsn >= {}\n{}",
                b.end,
                timed.output()
            );
        }
        std::thread::sleep(POLL);
    }
    let confirmed = timed.started.elapsed();
    let hwm_before_stop_kib = process_vm_hwm_kib(pid);
    let stopping = Instant::now();
    send_signal(pid, "TERM")?;
    let usage = timed.wait(EXIT_TIMEOUT)?;
    let stop = stopping.elapsed();
    let stored = match target {
        AgentTarget::File => Some(stored_segments(&store_dir.join("wal"), b.seg_bytes)?),
        AgentTarget::Garage(_) => None,
    };
    if let Some((raw, _)) = stored {
        if raw < b.bytes() {
            bail!(
                "the store holds {raw} bytes of segments, the backlog is {}",
                b.bytes()
            );
        }
    }
    Ok(PgagentRun {
        wall,
        confirmed,
        usage,
        hwm_before_stop_kib,
        stop,
        stored,
    })
}

/// Segment numbers of the files (complete or `.partial`) in staging's `wal/` directory.
fn staged_segnos(wal_dir: &Path, seg_bytes: u64) -> Vec<u64> {
    fs::read_dir(wal_dir)
        .map(|entries| {
            entries
                .filter_map(|e| segno_of_file(e.ok()?.file_name().to_str()?, seg_bytes))
                .collect()
        })
        .unwrap_or_default()
}

/// The segment number of a segment file name, with or without `.partial`: the name is
/// timeline, log and segment as 8 hex digits each, and a log holds `2^32 / seg_bytes`
/// segments (`XLogFromFileName` in `src/include/access/xlog_internal.h`).
pub fn segno_of_file(name: &str, seg_bytes: u64) -> Option<u64> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    if !is_segment_name(name) || seg_bytes == 0 {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * (0x1_0000_0000 / seg_bytes) + seg)
}

/// `uploaded_lsn` from `<staging>/status.json`, `None` while there is none.
fn uploaded_lsn(staging: &Path) -> Option<Lsn> {
    let text = fs::read(staging.join("status.json")).ok()?;
    let status: serde_json::Value = serde_json::from_slice(&text).ok()?;
    status.get("uploaded_lsn")?.as_str()?.parse().ok()
}

/// Number and total size of the complete segment files in `dir`.
fn segment_files(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut count, mut total) = (0, 0);
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_segment_name) {
            total += entry.metadata()?.len();
            count += 1;
        }
    }
    Ok((count, total))
}

/// `(raw, stored)` bytes of the segment objects in a `file://` store's `wal/` directory: raw is
/// one segment size per object, stored is the envelope size on disk.
fn stored_segments(wal_dir: &Path, seg_bytes: u64) -> anyhow::Result<(u64, u64)> {
    let (objects, stored) = segment_files(wal_dir)?;
    Ok((objects * seg_bytes, stored))
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_numbers_from_file_names() {
        let seg = 16 << 20;
        assert_eq!(segno_of_file("000000010000000000000003", seg), Some(3));
        assert_eq!(
            segno_of_file("00000001000000020000000A.partial", seg),
            Some(2 * 256 + 10)
        );
        assert_eq!(
            segno_of_file("000000010000000100000000", 1 << 20),
            Some(4096)
        );
        assert_eq!(segno_of_file("00000002.history", seg), None);
        assert_eq!(segno_of_file("000000010000000000000003.tmp", seg), None);
    }
}
