//! pgagent's snapshots on this machine: found by their [`ID_PROPERTY`], each with the
//! record kept in [`RECORD_PROPERTY`], and thinned by the retention policy.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use pgagent_storage::snapshot::SnapshotRecord;

use super::command::{Zfs, ZfsError};
use super::retention::{keep, Policy};
use super::{ID_PROPERTY, RECORD_PROPERTY, SNAPSHOT_NAME_PREFIX};

/// One snapshot set pgagent made: the snapshots named `<dataset>@pgagent-<id>` of the
/// configured datasets.
#[derive(Debug, Clone)]
pub struct LocalSnapshot {
    /// `YYYYMMDDTHHMMSSZ`.
    pub id: String,
    /// The snapshots of the configured datasets found with this id, in configuration order
    /// (their descendants' snapshots, made by `-r`, are not listed).
    pub names: Vec<String>,
    /// The record stored on the first dataset's snapshot, checked; the reason it cannot be
    /// used otherwise.
    pub record: Result<SnapshotRecord, String>,
}

/// The snapshot name pgagent gives snapshot `id` of `dataset`.
pub fn snapshot_name(dataset: &str, id: &str) -> String {
    format!("{dataset}@{SNAPSHOT_NAME_PREFIX}{id}")
}

/// Seconds since the Unix epoch of a snapshot id, `None` if it is not an id.
pub fn id_time(id: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// pgagent's snapshots of `datasets`, oldest first. A snapshot counts only if it carries
/// [`ID_PROPERTY`] and is named after that id: a snapshot someone else made is never
/// listed, so never destroyed.
///
/// Errors: `zfs list` fails (a dataset does not exist, no ZFS).
pub fn local_snapshots(zfs: &Zfs, datasets: &[String]) -> Result<Vec<LocalSnapshot>, ZfsError> {
    let mut by_id: BTreeMap<String, LocalSnapshot> = BTreeMap::new();
    for (i, dataset) in datasets.iter().enumerate() {
        for s in zfs.snapshots(dataset, &[ID_PROPERTY, RECORD_PROPERTY])? {
            let Some(id) = s.properties.first().cloned().flatten() else {
                continue;
            };
            if s.name != snapshot_name(dataset, &id) || id_time(&id).is_none() {
                continue;
            }
            let entry = by_id.entry(id.clone()).or_insert_with(|| LocalSnapshot {
                id: id.clone(),
                names: Vec::new(),
                record: Err(format!(
                    "{} has no snapshot {}",
                    datasets[0],
                    snapshot_name(&datasets[0], &id)
                )),
            });
            entry.names.push(s.name.clone());
            if i == 0 {
                entry.record = parse_record(&id, s.properties.get(1).cloned().flatten());
            }
        }
    }
    Ok(by_id.into_values().collect())
}

fn parse_record(id: &str, json: Option<String>) -> Result<SnapshotRecord, String> {
    let json = json.ok_or_else(|| {
        format!("snapshot {id} has no {RECORD_PROPERTY} (pg_backup_stop never returned?)")
    })?;
    let r: SnapshotRecord = serde_json::from_str(&json)
        .map_err(|e| format!("snapshot {id}: {RECORD_PROPERTY}: {e}"))?;
    if r.id != id {
        return Err(format!("snapshot {id} holds the record of {}", r.id));
    }
    r.check().map_err(|e| e.to_string())?;
    Ok(r)
}

/// Destroys pgagent's snapshots of `datasets` that `policy` does not keep (each with its
/// descendants, `zfs destroy -r`), and returns their ids.
///
/// Errors: listing or destroying fails; snapshots destroyed before the failure stay so.
pub fn apply_retention(
    zfs: &Zfs,
    datasets: &[String],
    policy: Policy,
) -> Result<Vec<String>, ZfsError> {
    let local = local_snapshots(zfs, datasets)?;
    let times: Vec<(String, i64)> = local
        .iter()
        .filter_map(|s| Some((s.id.clone(), id_time(&s.id)?)))
        .collect();
    let kept = keep(&times, policy);
    let mut destroyed = Vec::new();
    for s in local.iter().filter(|s| !kept.contains(&s.id)) {
        for name in &s.names {
            zfs.destroy_snapshot(name)?;
        }
        tracing::info!(id = s.id, "destroyed snapshot (retention)");
        destroyed.push(s.id.clone());
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(
            snapshot_name("tank/pg", "20261121T101500Z"),
            "tank/pg@pgagent-20261121T101500Z"
        );
        assert_eq!(id_time("19700101T000100Z"), Some(60));
        assert_eq!(id_time("manual"), None);
    }

    #[test]
    fn records_are_checked() {
        assert!(parse_record("x", None)
            .unwrap_err()
            .contains("no pgagent:record"));
        assert!(parse_record("x", Some("{".into())).is_err());
    }
}
