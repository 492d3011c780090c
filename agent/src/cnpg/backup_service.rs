//! CNPG-I `Backup` (`cnpgi.backup.v1`): a CNPG `Backup` (or `ScheduledBackup`) with
//! `method: plugin` runs a pgagent base backup on the instance CNPG chose and returns the
//! fields CNPG records in the Backup's status (`BackupResult` of cnpg-i `proto/backup.proto`).
//!
//! The backup is the one `pgagent backup` takes (immediate checkpoint, chunks deduplicated
//! against the store, incremental when configured), complete once the WAL up to its stop
//! LSN is in the store: the primary's stream brings it there, and the answer waits for it
//! up to `backup.wal_timeout`.

use std::sync::Arc;

use pgagent_cnpgi::backup::backup_capability::rpc::Type as RpcType;
use pgagent_cnpgi::backup::backup_capability::{self, Rpc};
use pgagent_cnpgi::backup::backup_server::Backup;
use pgagent_cnpgi::backup::*;
use pgagent_protocol::{segment_file_name, Lsn, TimelineId, WalSegmentSize};
use pgagent_storage::manifest::BackupManifest;
use tonic::{Request, Response, Status};

use super::metrics_service::Recorded;
use super::pod::Pod;
use super::store_once::StoreOnce;
use crate::backup::take::take_backup;
use crate::config::Config;

/// The `Backup` service of the instance sidecar.
pub struct BackupService {
    cfg: Config,
    store: Arc<StoreOnce>,
    pod: Arc<Pod>,
    recorded: Arc<Recorded>,
}

impl BackupService {
    /// A service backing up the server of `pod` into the store of `cfg` (`store`, opened
    /// once and shared), recording each outcome in `recorded` (for the metrics).
    pub fn new(cfg: Config, store: Arc<StoreOnce>, pod: Arc<Pod>, recorded: Arc<Recorded>) -> Self {
        BackupService {
            cfg,
            store,
            pod,
            recorded,
        }
    }
}

#[tonic::async_trait]
impl Backup for BackupService {
    async fn get_capabilities(
        &self,
        _: Request<BackupCapabilitiesRequest>,
    ) -> Result<Response<BackupCapabilitiesResult>, Status> {
        Ok(Response::new(BackupCapabilitiesResult {
            capabilities: vec![BackupCapability {
                r#type: Some(backup_capability::Type::Rpc(Rpc {
                    r#type: RpcType::Backup as i32,
                })),
            }],
        }))
    }

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<BackupResult>, Status> {
        let req = request.into_inner();
        self.pod.observe(&req.cluster_definition).await;
        let name = backup_name(&req.backup_definition);
        let taken = take_backup(
            &self.cfg,
            &crate::backup::take::BackupRequest {
                fast: true,
                wal_wait: Some(self.cfg.raw.backup.wal_timeout),
                stores: Vec::new(),
            },
        )
        .await;
        let manifest = match &taken {
            Ok(outcome) if outcome.succeeded() => outcome.complete_manifest().cloned(),
            _ => None,
        };
        let Some(manifest) = manifest else {
            self.recorded.backup_failed();
            let why = match taken {
                Ok(outcome) => outcome
                    .stores
                    .iter()
                    .map(|s| match &s.result {
                        Ok(_) => format!("{}: the WAL up to its stop LSN did not reach the store within backup.wal_timeout", s.name),
                        Err(e) => format!("{}: {e:#}", s.name),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => format!("{e:#}"),
            };
            tracing::warn!("backup {name}: {why}");
            return Err(Status::internal(format!("base backup failed: {why}")));
        };
        self.recorded.backup_succeeded(&manifest);
        tracing::info!("backup {name}: {} complete", manifest.id);
        // The backup claimed the store: its cluster.json gives the segment size.
        let seg = self
            .store
            .get()
            .await
            .map_err(|e| {
                Status::unavailable(format!("backup {} taken; store: {e:#}", manifest.id))
            })?
            .seg;
        result(&manifest, name, &self.pod.name, seg).map(Response::new)
    }
}

/// `metadata.name` of the CNPG `Backup` object, if the definition has one.
fn backup_name(definition: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(definition)
        .ok()
        .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What CNPG records of a complete backup: times as Unix seconds, WAL file names and LSNs
/// of its start and stop, `backup_label` and `tablespace_map` as the server returned them.
///
/// Errors: a manifest without its stop position (not complete).
fn result(
    m: &BackupManifest,
    name: String,
    pod: &str,
    seg: WalSegmentSize,
) -> Result<BackupResult, Status> {
    let unix = |t: &str| crate::times::unix_seconds(t).unwrap_or_default() as i64;
    let (Some(stop_lsn), Some(stop_tli)) = (&m.stop_lsn, m.stop_timeline) else {
        return Err(Status::internal(format!(
            "backup {}: no stop position",
            m.id
        )));
    };
    // The segment holding `lsn` for the start, the last byte before it for the stop.
    let wal_name = |lsn: &str, tli: u32| -> String {
        lsn.parse::<Lsn>()
            .map(|lsn| segment_file_name(TimelineId(tli), lsn.segment_number(seg), seg))
            .unwrap_or_default()
    };
    let stop_before = stop_lsn
        .parse::<Lsn>()
        .map(|l| Lsn(l.0.saturating_sub(1)).to_string())
        .unwrap_or_default();
    Ok(BackupResult {
        backup_id: m.id.clone(),
        backup_name: name,
        started_at: unix(&m.started_at),
        stopped_at: m.finished_at.as_deref().map(unix).unwrap_or_default(),
        begin_wal: wal_name(&m.start_lsn, m.start_timeline),
        end_wal: wal_name(&stop_before, stop_tli),
        begin_lsn: m.start_lsn.clone(),
        end_lsn: stop_lsn.clone(),
        backup_label_file: m.backup_label.clone().into_bytes(),
        tablespace_map_file: m.tablespace_map.clone().unwrap_or_default().into_bytes(),
        instance_id: pod.to_string(),
        online: true,
        metadata: [(
            "pgagent.io/kind".to_string(),
            format!("{:?}", m.kind).to_lowercase(),
        )]
        .into_iter()
        .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnpg_gets_the_wal_files_and_times_of_the_backup() {
        let mut m = BackupManifest::announced("20261207T003000Z");
        m.start_lsn = "0/5000028".into();
        m.start_timeline = 1;
        m.stop_lsn = Some("0/7000100".into());
        m.stop_timeline = Some(1);
        m.started_at = "2026-12-07T00:30:00Z".into();
        m.finished_at = Some("2026-12-07T00:30:09Z".into());
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let r = result(&m, "nightly".into(), "pg-1", seg).unwrap();
        assert_eq!(r.begin_wal, "000000010000000000000005");
        assert_eq!(r.end_wal, "000000010000000000000007");
        assert_eq!((r.started_at, r.stopped_at), (1_796_603_400, 1_796_603_409));
        assert_eq!(
            (r.begin_lsn.as_str(), r.end_lsn.as_str()),
            ("0/5000028", "0/7000100")
        );
        // A stop at a segment boundary ends in the segment before it.
        m.stop_lsn = Some("0/7000000".into());
        let r = result(&m, "nightly".into(), "pg-1", seg).unwrap();
        assert_eq!(r.end_wal, "000000010000000000000006");
    }

    #[test]
    fn the_backup_name_is_the_objects() {
        let def = br#"{"apiVersion":"postgresql.cnpg.io/v1","kind":"Backup","metadata":{"name":"nightly-1"}}"#;
        assert_eq!(backup_name(def), "nightly-1");
        assert_eq!(backup_name(b"not json"), "");
    }
}
