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
use pgagent_protocol::{segment_file_name, Lsn, TimelineId};
use pgagent_storage::manifest::BackupManifest;
use tonic::{Request, Response, Status};

use super::metrics_service::Recorded;
use super::pod::Pod;
use crate::backup::take::take_backup;
use crate::config::Config;

/// The `Backup` service of the instance sidecar.
pub struct BackupService {
    cfg: Config,
    pod: Arc<Pod>,
    recorded: Arc<Recorded>,
}

impl BackupService {
    /// A service backing up the server of `pod` into the stores of `cfg`, recording each
    /// outcome in `recorded` (for the metrics).
    pub fn new(cfg: Config, pod: Arc<Pod>, recorded: Arc<Recorded>) -> Self {
        BackupService { cfg, pod, recorded }
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
        result(&manifest, name, &self.pod.name).map(Response::new)
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
fn result(m: &BackupManifest, name: String, pod: &str) -> Result<BackupResult, Status> {
    let unix = |t: &str| crate::times::unix_seconds(t).unwrap_or_default() as i64;
    let (Some(stop_lsn), Some(stop_tli)) = (&m.stop_lsn, m.stop_timeline) else {
        return Err(Status::internal(format!(
            "backup {}: no stop position",
            m.id
        )));
    };
    let seg = label_segment_size(&m.backup_label);
    let wal_name = |lsn: &str, tli: u32| -> String {
        match (lsn.parse::<Lsn>(), seg) {
            (Ok(lsn), Some(seg)) => {
                // The segment holding the last byte before `lsn` for the stop position, the
                // one holding `lsn` for the start.
                segment_file_name(TimelineId(tli), lsn.segment_number(seg), seg)
            }
            _ => String::new(),
        }
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

/// The WAL segment size, from `backup_label`'s `START WAL LOCATION: X/Y (file NAME)`: the
/// start LSN and the name of its segment fix the size (the largest power of two from 1 MiB
/// to 1 GiB whose segment number for the LSN gives that name).
/// `backup_label` format: `do_pg_backup_stop` in `src/backend/access/transam/xlog.c`.
fn label_segment_size(label: &str) -> Option<pgagent_protocol::WalSegmentSize> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))?;
    let (lsn, rest) = line.split_once(" (file ")?;
    let file = rest.strip_suffix(')')?;
    let lsn: Lsn = lsn.parse().ok()?;
    (20..=30).find_map(|bits| {
        let seg = pgagent_protocol::WalSegmentSize::new(1u64 << bits).ok()?;
        let tli = u32::from_str_radix(file.get(..8)?, 16).ok()?;
        (segment_file_name(TimelineId(tli), lsn.segment_number(seg), seg) == file).then_some(seg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_size_comes_from_backup_label() {
        let label = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
                     CHECKPOINT LOCATION: 0/5000060\n";
        assert_eq!(label_segment_size(label).map(|s| s.bytes()), Some(16 << 20));
        let one_mib = "START WAL LOCATION: 0/5000028 (file 000000010000000000000050)\n";
        assert_eq!(
            label_segment_size(one_mib).map(|s| s.bytes()),
            Some(1 << 20)
        );
        assert_eq!(label_segment_size("no label"), None);
    }

    #[test]
    fn the_backup_name_is_the_objects() {
        let def = br#"{"apiVersion":"postgresql.cnpg.io/v1","kind":"Backup","metadata":{"name":"nightly-1"}}"#;
        assert_eq!(backup_name(def), "nightly-1");
        assert_eq!(backup_name(b"not json"), "");
    }
}
