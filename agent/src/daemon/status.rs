//! The status the daemon publishes every second: the gauges, `<staging>/status.json`
//! (read by `pgagent status`, with the last hour's store traffic from [`super::usage`]), the
//! metrics textfile, and the alert hooks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::usage::{Counters, Window};
use crate::config::Config;
use crate::metrics::{ByteStage, Metrics, StoreHealth, StoreSample};
use crate::pipeline::{Positions, Progress};
use crate::statusfile::{DaemonStatus, StoreStatus};

/// What the daemon publishes and where from: the pipeline's positions, the gauges, the
/// samples of the last hour's store traffic, and `<staging>/status.json` naming the
/// cluster and the store.
pub struct Publisher {
    progress: Progress,
    metrics: Arc<Metrics>,
    usage: Mutex<Window>,
    staging_dir: PathBuf,
    store: String,
    system_id: u64,
}

impl Publisher {
    /// A publisher of `progress` into `metrics` and `<staging_dir>/status.json`, for the
    /// cluster `system_id` streaming to `store` (as the store describes itself).
    pub fn new(
        progress: Progress,
        metrics: Arc<Metrics>,
        staging_dir: PathBuf,
        store: String,
        system_id: u64,
    ) -> Publisher {
        Publisher {
            progress,
            metrics,
            usage: Mutex::new(Window::last_hour()),
            staging_dir,
            store,
            system_id,
        }
    }

    /// Every second: gauges, `status.json`, the textfile, and the alert hooks, until the
    /// task is aborted (the daemon then calls [`Publisher::publish`] one last time).
    pub fn spawn(self: &Arc<Self>, cfg: &Config) -> JoinHandle<()> {
        let this = self.clone();
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
                let status = this.publish(false);
                if let Some(dir) = &textfile_dir {
                    match crate::metrics::write_textfile(&this.metrics, dir) {
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

    /// Updates the gauges and `status.json`, and samples the counters into the last hour's
    /// window; `stopped` says the daemon has stopped streaming.
    pub fn publish(&self, stopped: bool) -> DaemonStatus {
        let m = &self.metrics;
        let Positions {
            received,
            flushed,
            uploaded,
            lag_bytes: lag,
            rpo_seconds: rpo,
        } = self.progress.positions();
        let stores = self.progress.stores();
        m.stores.set(
            &stores
                .iter()
                .map(|s| StoreSample {
                    health: StoreHealth {
                        name: s.name.clone(),
                        up: !s.failing,
                        lag_exceeded: s.lag_exceeded,
                    },
                    uploaded_lsn: s.uploaded.0,
                    lag_bytes: s.lag_bytes,
                    rpo_seconds: s.rpo_seconds,
                })
                .collect::<Vec<_>>(),
        );
        let staging_bytes = crate::staging::staging_bytes(&self.staging_dir);
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
        let usage = self
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(Instant::now(), counters);
        let live = self.progress.live();
        let status = DaemonStatus {
            pid: std::process::id(),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            system_identifier: self.system_id.to_string(),
            store: self.store.clone(),
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
            stores: stores
                .iter()
                .map(|s| StoreStatus {
                    name: s.name.clone(),
                    role: if s.required { "required" } else { "async" }.into(),
                    uploaded_lsn: s.uploaded.to_string(),
                    lag_bytes: s.lag_bytes,
                    rpo_seconds: s.rpo_seconds,
                    failing: s.failing,
                    lag_exceeded: s.lag_exceeded,
                })
                .collect(),
        };
        if let Err(e) = crate::statusfile::write(&self.staging_dir, &status) {
            tracing::debug!(error = %e, "cannot write status.json");
        }
        status
    }
}
