//! The status the daemon publishes every second: the gauges, `<staging>/status.json`
//! (read by `pgagent status`, with the last hour's store traffic from [`super::usage`]), the
//! metrics textfile, and the alert hooks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgagent_storage::ObjectStore;
use tokio::task::JoinHandle;

use super::usage::{Counters, Window};
use crate::config::Config;
use crate::metrics::{ByteStage, Metrics};
use crate::pipeline::{Positions, Progress};
use crate::statusfile::DaemonStatus;

/// Every second: gauges, `status.json`, the textfile, and the alert hooks. `usage` holds the
/// samples of the last hour (shared with the last [`publish`] at shutdown).
pub fn spawn_publisher(
    progress: Progress,
    metrics: Arc<Metrics>,
    staging_dir: PathBuf,
    store: &dyn ObjectStore,
    system_id: u64,
    cfg: &Config,
    usage: Arc<Mutex<Window>>,
) -> JoinHandle<()> {
    let store = store.describe();
    let alerts = cfg.raw.alerts.clone();
    let max_rpo = cfg.raw.metrics.max_rpo_seconds;
    let textfile_dir = (!cfg.raw.metrics.textfile_dir.is_empty())
        .then(|| std::path::PathBuf::from(&cfg.raw.metrics.textfile_dir));
    tokio::spawn(async move {
        let mut incidents = crate::alerts::Incidents::new(alerts.grace, alerts.min_interval);
        let mut textfile_failed = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let status = publish(
                &progress,
                &metrics,
                &usage,
                &staging_dir,
                &store,
                system_id,
                false,
            );
            if let Some(dir) = &textfile_dir {
                match crate::metrics::write_textfile(&metrics, dir) {
                    Ok(()) => textfile_failed = false,
                    Err(e) if !textfile_failed => {
                        textfile_failed = true;
                        tracing::error!("metrics.textfile_dir {}: {e}", dir.display());
                    }
                    Err(_) => {}
                }
            }
            let problems = crate::alerts::problems(&status, max_rpo);
            if let Some(event) = incidents.observe(&problems, std::time::Instant::now()) {
                let command = match event.kind {
                    crate::alerts::EventKind::Failure => &alerts.on_failure,
                    crate::alerts::EventKind::Recovery => &alerts.on_recovery,
                };
                tracing::warn!(event = ?event.kind, problems = ?event.problems, "incident");
                if !command.is_empty() {
                    tokio::spawn(crate::alerts::run_hook(
                        command.clone(),
                        crate::alerts::hook_env(&event, &status),
                        alerts.hook_timeout,
                    ));
                }
            }
        }
    })
}

/// Updates the gauges and `status.json`, and samples the counters into `usage`.
pub fn publish(
    progress: &Progress,
    m: &Metrics,
    usage: &Mutex<Window>,
    staging_dir: &Path,
    store: &str,
    system_id: u64,
    stopped: bool,
) -> DaemonStatus {
    let Positions {
        received,
        flushed,
        uploaded,
        lag_bytes: lag,
        rpo_seconds: rpo,
    } = progress.positions();
    let staging_bytes = crate::staging::staging_bytes(staging_dir);
    m.wal_received_lsn.set(received.0 as i64);
    m.wal_uploaded_lsn.set(uploaded.0 as i64);
    m.upload_lag_bytes.set(lag as i64);
    m.rpo_seconds.set(rpo);
    m.staging_bytes.set(staging_bytes as i64);
    let counters = Counters {
        requests: m.store_requests(),
        raw_bytes: m.upload_bytes(ByteStage::Raw).get(),
        stored_bytes: m.upload_bytes(ByteStage::Stored).get(),
        received,
    };
    let usage = usage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .observe(Instant::now(), counters);
    let live = progress.live();
    let status = DaemonStatus {
        pid: std::process::id(),
        updated_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        system_identifier: system_id.to_string(),
        store: store.to_string(),
        stopped,
        connected: live.connected,
        timeline: live.timeline.map(|t| t.0),
        received_lsn: received.to_string(),
        flushed_lsn: flushed.to_string(),
        uploaded_lsn: uploaded.to_string(),
        upload_lag_bytes: lag,
        rpo_seconds: rpo,
        staging_bytes,
        staging_full: m.staging_full.get() == 1,
        staging_disk_full: live.staging_disk_full,
        last_error: live.last_error,
        wal_gap: live.wal_gap.map(|(from, to)| format!("{from}-{to}")),
        usage,
    };
    if let Err(e) = crate::statusfile::write(staging_dir, &status) {
        tracing::debug!(error = %e, "cannot write status.json");
    }
    status
}
