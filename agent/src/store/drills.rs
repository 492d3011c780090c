//! Drill records in the store: `drills/<id>.json`, the [`DrillReport`] of each drill,
//! sealed like every object (encrypted in an encrypted store).

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{drill_key, DRILL_PREFIX};
use pgagent_storage::{envelope, ObjectStore};

use crate::drill::DrillReport;

/// Writes the record of drill `r.id`.
///
/// Errors: the store's.
pub async fn put_record(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    r: &DrillReport,
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(r)?;
    let key = drill_key(&r.id);
    store
        .put(&key, envelope::seal_for(&json, 3, cipher, &key).body)
        .await
        .map_err(|e| anyhow::anyhow!("store {key}: {e}"))
}

/// Every drill record, oldest first; one that cannot be read is logged and skipped.
///
/// Errors: the listing or a read fails.
pub async fn records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<DrillReport>> {
    let mut listed = store
        .list(DRILL_PREFIX)
        .await
        .map_err(|e| anyhow::anyhow!("list {DRILL_PREFIX}: {e}"))?;
    listed.retain(|m| m.key.ends_with(".json"));
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for m in &listed {
        let body = store
            .get(&m.key)
            .await
            .map_err(|e| anyhow::anyhow!("read {}: {e}", m.key))?;
        let report = envelope::open_for(&body, cipher, &m.key)
            .map_err(|e| e.to_string())
            .and_then(|j| {
                serde_json::from_slice::<DrillReport>(&j).map_err(|e| format!("{}: {e}", m.key))
            });
        match report {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping drill record: {e}"),
        }
    }
    Ok(out)
}
