//! Drill records in the store: `drills/<id>.json`, the [`DrillReport`] of each drill,
//! sealed like every object (encrypted in an encrypted store).

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{drill_key, DRILL_PREFIX};
use pgagent_storage::ObjectStore;

use super::records::{put_json, read_json_all};
use crate::drill::DrillReport;

/// Writes the record of drill `r.id`.
///
/// Errors: the store's.
pub async fn put_record(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    r: &DrillReport,
) -> anyhow::Result<()> {
    put_json(store, cipher, &drill_key(&r.id), r).await
}

/// Every drill record, oldest first; one that cannot be read is logged and skipped.
///
/// Errors: the listing or a read fails.
pub async fn records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<DrillReport>> {
    let mut out = Vec::new();
    for r in read_json_all::<DrillReport>(store, cipher, DRILL_PREFIX).await? {
        match r {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping drill record: {e}"),
        }
    }
    Ok(out)
}
