//! A drill from start to finish ([`drill`]), and the same recorded in the store with the
//! alert hook run when it failed ([`run_and_record`]): what `pgagent drill` and the
//! daemon's `drill.schedule` call.

use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::report::{self, drill_id, DrillReport};
use super::request::DrillRequest;
use super::{checks, scratch, server};
use crate::config::{Config, SnapshotRestoreMode};
use crate::restore::{self, RestoreFrom, RestoreRequest};
use crate::store::drills;

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
        raw: false,
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
            report.stores = served.stores.clone();
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

/// Runs a drill, records its report in the store (a failure to record is logged: the
/// report is still returned), and runs `alerts.on_failure` when a check failed (with
/// `PGAGENT_EVENT_REASON=drill`, see [`crate::alerts::drill_hook_env`]).
///
/// Errors: as [`drill`] (with `stop`); a drill cut short by `stop` (not recorded,
/// no hook).
pub async fn run_and_record(
    cfg: &Config,
    req: &DrillRequest,
    stop: &CancellationToken,
) -> anyhow::Result<DrillReport> {
    let report = drill(cfg, req, stop).await?;
    if stop.is_cancelled() {
        // Cut short by a stop, not a verdict on the store: neither recorded nor alerted.
        anyhow::bail!(
            "drill {} interrupted: pgagent is stopping (its server is stopped)",
            report.id
        );
    }
    match cfg.as_of() {
        // A drill of the store as of a past time (after an attack) reads only.
        Some(t) => tracing::info!(
            "drill {} is not recorded: the store is read as of {}",
            report.id,
            humantime::format_rfc3339_seconds(t)
        ),
        None => match record(cfg, &report).await {
            Ok(()) => tracing::info!("recorded as drills/{}.json", report.id),
            Err(e) => tracing::error!("drill {} is not recorded in the store: {e:#}", report.id),
        },
    }
    let hook = &cfg.raw.alerts.on_failure;
    if !report.passed && !hook.is_empty() {
        crate::alerts::run_hook(
            hook.clone(),
            crate::alerts::drill_hook_env(&report),
            cfg.raw.alerts.hook_timeout,
        )
        .await;
    }
    Ok(report)
}

/// Writes the report to `drills/<id>.json`, sealed with the store's key; with several
/// stores read as one, into each of them (a store that fails is named, the others still
/// get it).
async fn record(cfg: &Config, report: &DrillReport) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for spec in &cfg.stores {
        let one = cfg.for_store(spec);
        let put = async {
            let store = crate::store::open(&one).await?;
            let cipher = crate::store::read_cipher(store.as_ref(), &one).await?;
            drills::put_record(store.as_ref(), cipher.as_ref(), report).await
        };
        if let Err(e) = put.await {
            if cfg.stores.len() == 1 {
                return Err(e);
            }
            failed.push(format!("store {}: {e:#}", spec.name));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(failed.join("; ")))
    }
}
