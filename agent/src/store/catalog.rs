//! Backup manifests in the store: `backups/<id>/manifest.json`, sealed like every object
//! (DESIGN.md, "Object envelope"), so a damaged manifest is detected before it is used.

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::chunk_key;
use pgagent_storage::layout::{backup_manifest_key, BACKUP_PREFIX};
use pgagent_storage::manifest::{BackupManifest, FileEntry};
use pgagent_storage::{envelope, ObjectStore};

/// Largest file [`read_chunked`] reads into memory: 64 MiB (a `backup_manifest` holds
/// about 200 bytes per file of the cluster).
pub const MAX_IN_MEMORY: u64 = 64 << 20;

/// Writes (or rewrites: a manifest goes from running to complete) the manifest of `m.id`,
/// sealed with `cipher` (`None`: a plaintext store).
///
/// Errors: the store's.
pub async fn put_manifest(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    m: &BackupManifest,
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(m)?;
    let key = backup_manifest_key(&m.id);
    let sealed = envelope::seal_for(&json, 3, cipher, &key);
    store
        .put(&key, sealed.body)
        .await
        .map_err(|e| anyhow::anyhow!("store {key}: {e}"))
}

/// Reads and verifies the manifest of backup `id` (opened with `cipher`); `None` if there
/// is none.
///
/// Errors: the store's, a damaged envelope, or JSON that is not a manifest.
pub async fn get_manifest(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    id: &str,
) -> anyhow::Result<Option<BackupManifest>> {
    let key = backup_manifest_key(id);
    let body = match store.get(&key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("read {key}: {e}")),
    };
    let json = envelope::open_for(&body, cipher, &key)
        .map_err(|e| anyhow::anyhow!("{}", e.with_key(&key)))?;
    let m: BackupManifest =
        serde_json::from_slice(&json).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    if m.id != id {
        anyhow::bail!("{key} holds the manifest of backup {}", m.id);
    }
    Ok(Some(m))
}

/// The bytes of a small stored file (PostgreSQL's `backup_manifest`), each chunk verified:
/// its envelope, and its content hash against the name the manifest gives it.
///
/// Errors: a file over [`MAX_IN_MEMORY`]; a chunk missing, unreadable or not what its name
/// says (naming the file and the chunk); chunks that add up to another size.
pub async fn read_chunked(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    entry: &FileEntry,
) -> anyhow::Result<Vec<u8>> {
    if entry.size > MAX_IN_MEMORY {
        anyhow::bail!(
            "{}: {} bytes is too large to read whole",
            entry.path,
            entry.size
        );
    }
    let mut out = Vec::with_capacity(entry.size as usize);
    for hash in &entry.chunks {
        let key = chunk_key(hash);
        let body = store
            .get(&key)
            .await
            .map_err(|e| anyhow::anyhow!("{}: chunk {hash}: {e}", entry.path))?;
        let header = envelope::Header::parse(&body)
            .map_err(|e| anyhow::anyhow!("{}: {}", entry.path, e.with_key(&key)))?;
        if header.hash.to_hex().as_str() != hash {
            anyhow::bail!(
                "{}: chunk {key} holds content of hash {}, not {hash}",
                entry.path,
                header.hash.to_hex()
            );
        }
        envelope::open_into_for(&body, cipher, &key, &mut out)
            .map_err(|e| anyhow::anyhow!("{}: {}", entry.path, e.with_key(&key)))?;
    }
    if out.len() as u64 != entry.size {
        anyhow::bail!(
            "{}: chunks hold {} bytes, the manifest says {}",
            entry.path,
            out.len(),
            entry.size
        );
    }
    Ok(out)
}

/// The ids of every backup with a manifest, oldest first (ids sort by start time).
///
/// Errors: the listing fails.
pub async fn backup_ids(store: &dyn ObjectStore) -> anyhow::Result<Vec<String>> {
    let listed = store
        .list(BACKUP_PREFIX)
        .await
        .map_err(|e| anyhow::anyhow!("list {BACKUP_PREFIX}: {e}"))?;
    let mut ids: Vec<String> = listed
        .iter()
        .filter_map(|m| {
            m.key
                .strip_prefix(BACKUP_PREFIX)?
                .strip_suffix("/manifest.json")
                .filter(|id| !id.contains('/'))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// A backup id for a backup starting at `now`: `YYYYMMDDTHHMMSSZ`, sortable by start time.
pub fn new_id(now: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let b = new_id(UNIX_EPOCH + Duration::from_secs(1_700_000_061));
        assert_eq!(a, "20231114T221320Z");
        assert!(a < b);
    }
}
