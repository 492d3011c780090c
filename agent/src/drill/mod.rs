//! `pgagent drill`: prove that the store restores, by restoring it and starting the copy.
//!
//! 1. [`scratch`]: a directory of its own under `drill.dir` (never PGDATA or inside it);
//!    what a drill that crashed left there is removed first.
//! 2. [`crate::restore::restore`] into it, from a clone of a local snapshot or
//!    from the bucket, set up to recover to the target through `pgagent fetch`.
//! 3. [`server`]: a throwaway PostgreSQL of the backup's major version on a private unix
//!    socket (no TCP), `archive_mode = off`, small memory settings, as the PostgreSQL OS
//!    user when run as root; it recovers and promotes.
//! 4. Checks ([`checks`]), connected as the role [`role`] chooses (`drill.user`, else the
//!    copy's bootstrap superuser): the point reached against the newest WAL in the store (a
//!    recovery that ended early, the failure a drill exists to catch, fails it), connect,
//!    databases, tables, `pg_amcheck`, `drill.check_sql`.
//! 5. The server is stopped and the scratch directory removed (unless `--keep`); the
//!    [`DrillReport`] is what `pgagent drill` prints and records in the store. A stop
//!    (the daemon stopping, or SIGTERM/SIGINT to `pgagent drill`) cuts the drill short at
//!    any step and still does this.

pub mod checks;
pub mod pgbin;
pub mod report;
pub mod role;
pub mod scratch;
pub mod server;

use std::time::{Instant, SystemTime};

use pgagent_protocol::Lsn;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SnapshotRestoreMode};
use crate::restore::{self, RecoveryTarget, RestoreFrom, RestoreRequest};
pub use report::{Check, DrillReport, Reached};

/// What `pgagent drill` was asked.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// A backup id, or `None`/`latest` for the newest that can reach the target.
    pub backup: Option<String>,
    /// Which tiers may serve.
    pub from: RestoreFrom,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Leave the scratch directory in place.
    pub keep: bool,
    /// The `restore_command` the restored server uses (`<pgagent> [--config …] fetch %f %p`).
    pub restore_command: String,
}

/// A recovery that ends more than this many bytes before the end of the WAL in the store
/// (to the end of the WAL) fails the drill: one record can end past the last byte
/// stored, but not a megabyte.
pub const MAX_BEHIND_STORE: u64 = 1 << 20;

/// Runs a drill per `req` and returns its report; a failed step is a failed check in the
/// report, not an error.
///
/// Once `stop` is cancelled (the daemon is stopping, or `pgagent drill` got a signal), the
/// step running is cut short (a restore from the bucket, recovery, a check; a restore that
/// may clone a snapshot runs to its end), the server is stopped and the scratch directory
/// removed, so nothing outlives the process.
///
/// Errors: only what prevents a drill from starting or being reported: a scratch directory
/// that is PGDATA or inside it, or cannot be made.
pub async fn drill(
    cfg: &Config,
    req: &DrillRequest,
    stop: &CancellationToken,
) -> anyhow::Result<DrillReport> {
    let started_at = SystemTime::now();
    let begun = Instant::now();
    let id = drill_id(started_at);
    let in_dataset = snapshot_layout(cfg, req);
    let scratch = scratch::Scratch::create(cfg, &id, in_dataset.as_deref()).await?;
    let mut report = report::begin(&id, started_at, req);

    // A drill never rolls back the live datasets: a snapshot comes back as a clone.
    let mut drill_cfg = cfg.clone();
    drill_cfg.raw.zfs.restore_mode = SnapshotRestoreMode::Clone;
    let restore_req = RestoreRequest {
        pgdata: scratch.pgdata(),
        backup: req.backup.clone(),
        target: req.target.clone(),
        action: "promote".to_string(),
        force: false,
        delta: false,
        restore_command: req.restore_command.clone(),
        from: req.from,
        owner: scratch.owner(),
    };
    let restoring = restore::restore(&drill_cfg, &restore_req);
    let restored = if req.from == RestoreFrom::Bucket || cfg.raw.zfs.datasets.is_empty() {
        tokio::select! {
            r = restoring => r,
            () = stop.cancelled() => {
                report.fail("restore", STOPPING);
                return finish(report, scratch, req.keep, begun).await;
            }
        }
    } else {
        // A clone takes seconds, and one cut short could stay mounted in the scratch
        // directory without the marker naming it: a restore that may clone runs to its end.
        restoring.await
    };
    report.restore_seconds = begun.elapsed().as_secs_f64();
    match restored {
        Ok(served) => {
            scratch.note_clone(served.clone_dataset.as_deref());
            report.tier = Some(served.tier.to_string());
            report.source = Some(served.source.clone());
            report.pass("restore", served.source);
        }
        Err(e) => {
            report.fail("restore", format!("{e:#}"));
            return finish(report, scratch, req.keep, begun).await;
        }
    }

    if stop.is_cancelled() {
        report.fail("start", "not started: pgagent is stopping");
        return finish(report, scratch, req.keep, begun).await;
    }
    let deadline = Instant::now() + cfg.raw.drill.timeout.saturating_sub(begun.elapsed());
    let server = match server::Throwaway::start(cfg, &scratch).await {
        Ok(s) => s,
        Err(e) => {
            report.fail("start", format!("{e:#}"));
            return finish(report, scratch, req.keep, begun).await;
        }
    };
    report.pg_bin_dir = Some(server.bin_dir().display().to_string());
    // Whatever step runs when `stop` comes (recovery, a check's psql or pg_amcheck, which
    // are killed when dropped), the server is stopped and the copy removed.
    let stopped = tokio::select! {
        () = recover_and_check(cfg, req, &server, deadline, stop, &mut report) => false,
        () = stop.cancelled() => true,
    };
    if stopped {
        report.fail("interrupted", STOPPING);
    }
    server.stop().await;
    finish(report, scratch, req.keep, begun).await
}

/// What a drill cut short by `stop` says.
const STOPPING: &str = "pgagent is stopping: the drill was cut short";

/// Waits for `server` to recover and promote, then runs the checks, recording each step.
async fn recover_and_check(
    cfg: &Config,
    req: &DrillRequest,
    server: &server::Throwaway,
    deadline: Instant,
    stop: &CancellationToken,
    report: &mut DrillReport,
) {
    let replay_begun = Instant::now();
    let recovered = server.wait_promoted(deadline, stop).await;
    report.replay_seconds = Some(replay_begun.elapsed().as_secs_f64());
    match recovered {
        Ok(reached) => {
            report.pass(
                "recovery",
                format!(
                    "promoted after replaying WAL up to {}{}",
                    reached.lsn,
                    reached
                        .last_commit
                        .as_deref()
                        .map(|t| format!(", last commit {t}"))
                        .unwrap_or_default()
                ),
            );
            report.reached = Some(reached);
            checks::run_all(cfg, req, server, report).await;
        }
        Err(e) if e.is::<server::LoginRefused>() => {
            // Recovery ended (the server accepts connections); the login is what failed.
            report.pass("recovery", "the server accepts connections");
            report.fail("connect", format!("{e:#}"));
        }
        Err(e) => report.fail("recovery", format!("{e:#}")),
    }
}

/// Where the data directory sits inside its dataset in the newest local snapshot (e.g.
/// `data`), when a snapshot may serve: a clone is mounted so that the data directory lands
/// where the restore is asked to put it.
fn snapshot_layout(cfg: &Config, req: &DrillRequest) -> Option<String> {
    if req.from == RestoreFrom::Bucket || cfg.raw.zfs.datasets.is_empty() {
        return None;
    }
    let zfs = crate::zfs::Zfs::new(&cfg.raw.zfs.command);
    let local = crate::zfs::snapshots::local_snapshots(&zfs, &cfg.raw.zfs.datasets).ok()?;
    let record = local.iter().rev().find_map(|s| s.record.as_ref().ok())?;
    record.pgdata_in_dataset().map(str::to_string)
}

/// Stops timing, removes the scratch directory unless `keep`, and returns the report.
async fn finish(
    mut report: DrillReport,
    scratch: scratch::Scratch,
    keep: bool,
    begun: Instant,
) -> anyhow::Result<DrillReport> {
    report.duration_seconds = begun.elapsed().as_secs_f64();
    report.finished_at = crate::times::rfc3339(SystemTime::now());
    if keep {
        report.kept = Some(scratch.dir().display().to_string());
    } else if let Err(e) = scratch.remove().await {
        tracing::warn!("drill {}: the scratch directory stays: {e:#}", report.id);
    }
    report.passed = report.checks.iter().all(|c| c.passed);
    Ok(report)
}

/// A drill id: its start time to the millisecond, `YYYYMMDDTHHMMSS.mmmZ`, sortable and
/// distinct for drills started one after the other (a drill lasts seconds).
pub fn drill_id(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y%m%dT%H%M%S%.3fZ")
        .to_string()
}

/// One value from the live server (`postgres.conninfo`), or `None` when it does not answer
/// within 5 s: a drill runs whether or not the server is up (it is often down when one
/// restores), so what it asks the server is only ever extra.
async fn ask_live(cfg: &Config, sql: &str) -> Option<String> {
    let asked = async {
        let conn = crate::server::conn_config(cfg, "pgagent drill").ok()?;
        let mut session = pgagent_protocol::SqlSession::connect(&conn).await.ok()?;
        let value = session.query_one(sql).await.ok();
        let _ = session.close().await;
        value
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), asked)
        .await
        .ok()
        .flatten()
}

/// How far `reached` is behind `end`, in bytes (0 when at or past it).
pub fn behind(reached: Lsn, end: Lsn) -> u64 {
    end.0.saturating_sub(reached.0)
}
