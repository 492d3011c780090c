//! The schedules `pgagent run` keeps: base backups (each store's `schedule`, by default
//! `backup.schedule`; one backup for every store due at a time, the server read once), ZFS
//! snapshots (`zfs.snapshot_schedule`) and drills (`drill.schedule`), each a cron loop
//! ([`crate::schedule::every`], [`crate::schedule::every_due`]) stopped by the shared
//! cancellation token.
//!
//! A scheduled job that fails is logged and counted; the next one is taken at its time. A
//! backup started by hand (`pgagent backup`) while a scheduled one runs is refused by the
//! backup lock, and the other way round.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use croner::Cron;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backup::take::{take_backup, BackupRequest};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::schedule::{every, every_due, parse};
use crate::zfs::take::{retention, take_snapshot};

/// Starts the configured schedules (snapshots first, then backups); returns their tasks.
///
/// Errors: a schedule that does not parse ([`ConfigError`] naming the key).
pub fn start(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    fetch_prefix: &str,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let Some(cron) =
        parse("drill.schedule", &cfg.raw.drill.schedule).map_err(|e| ConfigError(e.0))?
    {
        tracing::info!(schedule = cfg.raw.drill.schedule, "drills scheduled (UTC)");
        tasks.push(tokio::spawn(drills(
            cfg.clone(),
            cron,
            metrics.clone(),
            shutdown.clone(),
            fetch_prefix.to_string(),
        )));
    }
    if let Some(cron) = parse("zfs.snapshot_schedule", &cfg.raw.zfs.snapshot_schedule)
        .map_err(|e| ConfigError(e.0))?
    {
        tracing::info!(
            schedule = cfg.raw.zfs.snapshot_schedule,
            datasets = cfg.raw.zfs.datasets.join(","),
            "ZFS snapshots scheduled (UTC)"
        );
        tasks.push(tokio::spawn(snapshots(
            cfg.clone(),
            cron,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    let mut due_names = Vec::new();
    let mut crons = Vec::new();
    for spec in &cfg.stores {
        let key = format!("the schedule of store {}", spec.name);
        if let Some(cron) = parse(&key, &spec.schedule).map_err(|e| ConfigError(e.0))? {
            tracing::info!(
                store = spec.name,
                schedule = spec.schedule,
                "base backups scheduled (UTC)"
            );
            due_names.push(spec.name.clone());
            crons.push(cron);
        }
    }
    if !crons.is_empty() {
        tasks.push(tokio::spawn(backups(
            cfg.clone(),
            (crons, due_names),
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

/// Takes a backup at each time of the stores' schedules until `shutdown`: one backup (the
/// server read once) into every store due at that time; the crons and the names of their
/// stores go side by side.
async fn backups(
    cfg: Config,
    (crons, names): (Vec<Cron>, Vec<String>),
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    every_due(crons, "base backup", shutdown, |due| {
        let cfg = &cfg;
        let metrics = &metrics;
        let stores: Vec<String> = due.iter().map(|&i| names[i].clone()).collect();
        async move {
            let started = Instant::now();
            let req = BackupRequest {
                fast: false,
                wal_wait: Some(cfg.raw.backup.wal_timeout),
                stores,
            };
            match take_backup(cfg, &req).await {
                Ok(outcome) => {
                    for o in &outcome.stores {
                        match &o.result {
                            Ok(m) if o.is_complete() => {
                                tracing::info!(id = m.id, store = o.name, "scheduled base backup complete")
                            }
                            Ok(m) => tracing::warn!(
                                id = m.id,
                                store = o.name,
                                "scheduled base backup not complete: its WAL did not reach the store"
                            ),
                            Err(e) => tracing::error!(
                                id = outcome.id,
                                store = o.name,
                                "scheduled base backup failed in this store: {e:#}"
                            ),
                        }
                    }
                    if let (true, Some(m)) = (outcome.succeeded(), outcome.complete_manifest()) {
                        metrics
                            .backup_duration_seconds
                            .set(started.elapsed().as_secs_f64());
                        metrics
                            .backup_last_success_timestamp_seconds
                            .set(Utc::now().timestamp() as f64);
                        metrics.backup.record_last(m);
                        let s = &m.stats;
                        if s.chunks > 0 {
                            metrics
                                .backup_dedup_ratio
                                .set(1.0 - s.new_chunks as f64 / s.chunks as f64);
                        }
                    }
                }
                Err(e) => tracing::error!("scheduled base backup failed: {e:#}"),
            }
        }
    })
    .await;
}

/// Runs a drill of the newest backup to the end of the WAL at each time of
/// `drill.schedule` until `shutdown`: sets the drill gauges, records the report in the
/// store, and runs `alerts.on_failure` when a check failed.
async fn drills(
    cfg: Config,
    cron: Cron,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    fetch_prefix: String,
) {
    // Held by the thread a drill runs on: at shutdown the drill sees the cancelled token,
    // stops its server and removes its scratch directory; the daemon waits for that.
    let running = Arc::new(tokio::sync::Mutex::new(()));
    every(cron, "drill", shutdown.clone(), || async {
        let req = crate::drill::DrillRequest {
            backup: None,
            from: crate::restore::RestoreFrom::Auto,
            target: crate::restore::RecoveryTarget::Latest,
            keep: false,
            restore_command: format!("{fetch_prefix} fetch %f %p"),
        };
        // The restore's futures borrow across awaits in ways that are not `Send` for every
        // lifetime, so the drill runs on a blocking thread of its own, on this runtime.
        let (cfg, handle) = (cfg.clone(), tokio::runtime::Handle::current());
        let stop = shutdown.clone();
        let held = running.clone().lock_owned().await;
        let drilled = tokio::task::spawn_blocking(move || {
            let _held = held;
            handle.block_on(crate::drill::run_and_record(&cfg, &req, &stop))
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the drill task failed: {e}")));
        match drilled {
            Ok(report) => {
                metrics.drill_duration_seconds.set(report.duration_seconds);
                if let Some(rto) = report.rto_seconds() {
                    metrics.drill_rto_seconds.set(rto);
                }
                let failed = report.failed().count();
                metrics.drill_checks_failed.set(failed as i64);
                if report.passed {
                    metrics
                        .drill_last_success_timestamp_seconds
                        .set(Utc::now().timestamp() as f64);
                    tracing::info!(id = report.id, "scheduled drill passed");
                } else {
                    tracing::error!(
                        id = report.id,
                        "scheduled drill failed:\n{}",
                        crate::drill::report::text(&report)
                    );
                }
            }
            Err(e) => tracing::error!("scheduled drill could not run: {e:#}"),
        }
    })
    .await;
    let _ = running.lock().await;
}

/// Takes snapshots on `zfs.snapshot_schedule` inside `pgagent run` until `shutdown`.
async fn snapshots(cfg: Config, cron: Cron, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    every(cron, "snapshot", shutdown, || async {
        match take_snapshot(&cfg).await {
            Ok(_) => metrics
                .snapshot_last_success_timestamp_seconds
                .set(Utc::now().timestamp() as f64),
            Err(e) => {
                tracing::error!("scheduled snapshot failed: {e:#}");
                return;
            }
        }
        if let Err(e) = retention(&cfg).await {
            tracing::error!("snapshot retention failed: {e:#}");
        }
    })
    .await;
}
