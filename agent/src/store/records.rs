//! Records kept as sealed JSON objects (snapshot records, drill reports): one object per
//! record, sealed like every object (encrypted in an encrypted store), read back all at
//! once under their prefix.

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::{envelope, ObjectStore};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writes `value` as pretty JSON to `key`, sealed with `cipher` (`None`: plaintext).
///
/// Errors: the store's.
pub async fn put_json<T: Serialize>(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    key: &str,
    value: &T,
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(value)?;
    store
        .put(key, envelope::seal_for(&json, 3, cipher, key).body)
        .await
        .map_err(|e| anyhow::anyhow!("store {key}: {e}"))
}

/// The keys of the `.json` objects under `prefix`, in key order.
///
/// Errors: the listing fails.
pub async fn json_keys(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<Vec<String>> {
    let listed = store
        .list(prefix)
        .await
        .map_err(|e| anyhow::anyhow!("list {prefix}: {e}"))?;
    let mut keys: Vec<String> = listed
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    Ok(keys)
}

/// The record at `key`, or why it cannot be read (a message starting with its key).
///
/// Errors: the object cannot be fetched.
pub async fn read_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    key: &str,
) -> anyhow::Result<Result<T, String>> {
    let body = store
        .get(key)
        .await
        .map_err(|e| anyhow::anyhow!("read {key}: {e}"))?;
    Ok(envelope::open_for(&body, cipher, key)
        .map_err(|e| e.to_string())
        .and_then(|j| serde_json::from_slice::<T>(&j).map_err(|e| format!("{key}: {e}"))))
}

/// Every `.json` object under `prefix`, in key order: its record, or why it cannot be read
/// (a message starting with its key).
///
/// Errors: the listing fails, or an object cannot be fetched.
pub async fn read_json_all<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    prefix: &str,
) -> anyhow::Result<Vec<Result<T, String>>> {
    let mut out = Vec::new();
    for key in json_keys(store, prefix).await? {
        out.push(read_json(store, cipher, &key).await?);
    }
    Ok(out)
}
