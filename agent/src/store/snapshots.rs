//! ZFS snapshot records in the store (`snapshots/<id>.json`, sealed envelopes).

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{snapshot_key, SNAPSHOT_PREFIX};
use pgagent_storage::snapshot::SnapshotRecord;
use pgagent_storage::ObjectStore;

use super::records::{put_json, read_json_all};

/// Writes the record, sealed with `cipher` (`None`: a plaintext store), to
/// `snapshots/<id>.json` (once; an equal record already there is fine).
///
/// Errors: the store's.
pub async fn put_record(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    r: &SnapshotRecord,
) -> anyhow::Result<()> {
    put_json(store, cipher, &snapshot_key(&r.id), r).await
}

/// Every record in the store (opened with `cipher`), oldest first; unreadable ones are logged and skipped.
///
/// Errors: the listing fails, or a record cannot be fetched.
pub async fn store_records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<SnapshotRecord>> {
    let mut out = Vec::new();
    for r in read_records(store, cipher).await? {
        match r {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping snapshot record: {e}"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Every record in the store, oldest first, each one checked to be usable
/// ([`SnapshotRecord::positions`]), for callers that must not overlook one (`pgagent prune`
/// keeps WAL for all of them).
///
/// Errors: the listing fails, or a record cannot be fetched, opened or read (named, with
/// what to do about it).
pub async fn all_store_records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<SnapshotRecord>> {
    let mut out = Vec::new();
    for r in read_records(store, cipher).await? {
        let r = r.and_then(|r| match r.positions() {
            Ok(_) => Ok(r),
            Err(e) => Err(format!("{}: {}", snapshot_key(&r.id), e.reason)),
        });
        out.push(r.map_err(|e| {
            anyhow::anyhow!(
                "{e}: this snapshot record cannot be read; delete it if that snapshot is gone \
                 (pgagent list snapshots shows the snapshots on this machine)"
            )
        })?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The records under `snapshots/`: each one, or why it cannot be read (a message starting
/// with its key).
async fn read_records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<Result<SnapshotRecord, String>>> {
    read_json_all(store, cipher, SNAPSHOT_PREFIX).await
}
