//! CNPG-I `Metrics` (`cnpgi.metrics.v1`): what the instance sidecar adds to the metrics
//! endpoint of CNPG's instance manager (port 9187 of each instance pod), so one scrape of
//! the pod covers pgagent too.
//!
//! | name | type | meaning |
//! | --- | --- | --- |
//! | `pgagent_cnpg_first_recoverability_point` | gauge | end of the oldest complete base backup, Unix seconds (0: none) |
//! | `pgagent_cnpg_last_backup_timestamp_seconds` | gauge | end of the newest complete base backup, Unix seconds |
//! | `pgagent_cnpg_last_failed_backup_timestamp_seconds` | gauge | when the last `Backup` request failed, Unix seconds (0: none since start) |
//! | `pgagent_cnpg_wal_age_seconds` | gauge | seconds since WAL last reached the store (stream or archive); -1 until it has |
//! | `pgagent_cnpg_staging_bytes` | gauge | bytes of WAL in staging |
//! | `pgagent_cnpg_upload_errors_total` | counter | failed upload attempts since start |
//!
//! The backup times come from the store's oldest and newest complete manifests, read at
//! most once a minute, through the store the sidecar's services share.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pgagent_cnpgi::metrics::metric_type::Type as MetricKind;
use pgagent_cnpgi::metrics::metrics_capability::rpc::Type as RpcType;
use pgagent_cnpgi::metrics::metrics_capability::{self, Rpc};
use pgagent_cnpgi::metrics::metrics_server::Metrics as MetricsRpc;
use pgagent_cnpgi::metrics::*;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use tonic::{Request, Response, Status};

use super::pod::Pod;
use super::store_once::StoreOnce;
use crate::config::Config;
use crate::metrics::{Metrics, UploadKind};

/// How long the backup times read from the store are reused.
const STORE_READ_EVERY: Duration = Duration::from_secs(60);

/// The metrics: (name, help, kind).
pub const DEFINED: &[(&str, &str, MetricKind)] = &[
    ("pgagent_cnpg_first_recoverability_point", "End of the oldest complete base backup in the store, Unix seconds (0: none).", MetricKind::Gauge),
    ("pgagent_cnpg_last_backup_timestamp_seconds", "End of the newest complete base backup in the store, Unix seconds (0: none).", MetricKind::Gauge),
    ("pgagent_cnpg_last_failed_backup_timestamp_seconds", "When the last Backup request failed, Unix seconds (0: none since the sidecar started).", MetricKind::Gauge),
    ("pgagent_cnpg_wal_age_seconds", "Seconds since WAL last reached the store, by the stream or an archive request (-1: not yet).", MetricKind::Gauge),
    ("pgagent_cnpg_staging_bytes", "Bytes of WAL in the sidecar's staging directory.", MetricKind::Gauge),
    ("pgagent_cnpg_upload_errors_total", "Failed upload attempts since the sidecar started.", MetricKind::Counter),
];

/// What the sidecar saw happen, for the metrics.
#[derive(Debug, Default)]
pub struct Recorded {
    inner: Mutex<RecordedInner>,
}

#[derive(Debug, Default)]
struct RecordedInner {
    last_failed_backup: Option<SystemTime>,
    last_wal_stored: Option<Instant>,
    /// (read at, first, last) backup end times from the store.
    backups: Option<(Instant, f64, f64)>,
}

impl Recorded {
    /// A `Backup` request failed now.
    pub fn backup_failed(&self) {
        self.lock().last_failed_backup = Some(SystemTime::now());
    }

    /// A backup completed: the cached times are read again at the next collection.
    pub fn backup_succeeded(&self, _: &BackupManifest) {
        self.lock().backups = None;
    }

    /// WAL reached the store now.
    pub fn wal_stored(&self) {
        self.lock().last_wal_stored = Some(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecordedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `Metrics` service of the instance sidecar.
pub struct MetricsService {
    store: Arc<StoreOnce>,
    pod: Arc<Pod>,
    metrics: Arc<Metrics>,
    recorded: Arc<Recorded>,
    staging: PathBuf,
}

impl MetricsService {
    /// A service reporting `metrics` and `recorded`, the backups of `store` and the staging
    /// directory of `cfg`.
    pub fn new(
        cfg: &Config,
        store: Arc<StoreOnce>,
        pod: Arc<Pod>,
        metrics: Arc<Metrics>,
        recorded: Arc<Recorded>,
    ) -> Self {
        let staging = cfg.staging_dir().to_path_buf();
        MetricsService {
            store,
            pod,
            metrics,
            recorded,
            staging,
        }
    }

    /// (first, last) complete backup end times, Unix seconds; from the cache when fresh.
    async fn backup_times(&self) -> (f64, f64) {
        if let Some((at, first, last)) = self.recorded.lock().backups {
            if at.elapsed() < STORE_READ_EVERY {
                return (first, last);
            }
        }
        // The oldest complete backup from the front, the newest from the back: usually one
        // manifest read each, however many backups the store keeps.
        let read = async {
            let opened = self.store.get().await?;
            let (store, cipher) = (opened.store.as_ref(), opened.cipher.as_ref());
            let ids = crate::store::catalog::backup_ids(store).await?;
            let mut ends = Vec::new();
            for ordered in [
                Box::new(ids.iter()) as Box<dyn Iterator<Item = &String> + Send>,
                Box::new(ids.iter().rev()),
            ] {
                for id in ordered {
                    let manifest = crate::store::catalog::get_manifest(store, cipher, id).await?;
                    let end = manifest
                        .filter(|m| m.status == BackupStatus::Complete)
                        .and_then(|m| {
                            m.finished_at
                                .as_deref()
                                .and_then(crate::times::unix_seconds)
                        });
                    if let Some(end) = end {
                        ends.push(end);
                        break;
                    }
                }
            }
            anyhow::Ok(ends)
        };
        match read.await {
            Ok(ends) => {
                let first = ends.iter().copied().fold(f64::INFINITY, f64::min);
                let last = ends.iter().copied().fold(0.0, f64::max);
                let first = if first.is_finite() { first } else { 0.0 };
                self.recorded.lock().backups = Some((Instant::now(), first, last));
                (first, last)
            }
            Err(e) => {
                tracing::debug!("metrics: backups not read: {e:#}");
                (0.0, 0.0)
            }
        }
    }
}

#[tonic::async_trait]
impl MetricsRpc for MetricsService {
    async fn get_capabilities(
        &self,
        _: Request<MetricsCapabilitiesRequest>,
    ) -> Result<Response<MetricsCapabilitiesResult>, Status> {
        Ok(Response::new(MetricsCapabilitiesResult {
            capabilities: vec![MetricsCapability {
                r#type: Some(metrics_capability::Type::Rpc(Rpc {
                    r#type: RpcType::Metrics as i32,
                })),
            }],
        }))
    }

    async fn define(
        &self,
        _: Request<DefineMetricsRequest>,
    ) -> Result<Response<DefineMetricsResult>, Status> {
        let metrics = DEFINED
            .iter()
            .map(|(name, help, kind)| Metric {
                fq_name: name.to_string(),
                help: help.to_string(),
                variable_labels: Vec::new(),
                const_labels: Default::default(),
                value_type: Some(MetricType {
                    r#type: *kind as i32,
                }),
            })
            .collect();
        Ok(Response::new(DefineMetricsResult { metrics }))
    }

    async fn collect(
        &self,
        request: Request<CollectMetricsRequest>,
    ) -> Result<Response<CollectMetricsResult>, Status> {
        self.pod
            .observe(&request.into_inner().cluster_definition)
            .await;
        let (first, last) = self.backup_times().await;
        let recorded = {
            let r = self.recorded.lock();
            (r.last_failed_backup, r.last_wal_stored)
        };
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let errors: u64 = UploadKind::ALL
            .iter()
            .map(|k| self.metrics.upload_errors(*k).get())
            .sum();
        let values = [
            first,
            last,
            recorded.0.map_or(0.0, unix),
            recorded.1.map_or(-1.0, |t| t.elapsed().as_secs_f64()),
            crate::staging::staging_bytes(&self.staging) as f64,
            errors as f64,
        ];
        let metrics = DEFINED
            .iter()
            .zip(values)
            .map(|((name, _, _), value)| CollectMetric {
                value,
                fq_name: name.to_string(),
                variable_labels: Vec::new(),
            })
            .collect();
        Ok(Response::new(CollectMetricsResult { metrics }))
    }
}
