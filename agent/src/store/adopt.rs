//! A new store joins a cluster kept in several stores: it gets the cluster's `cluster.json`
//! and, for an encrypted cluster, its key files, copied as they are from a store that holds
//! the cluster.
//!
//! The stores of one cluster hold the same sealed objects, so they share one master key
//! (README, "Several stores"). Claimed on its own, a new store of an encrypted cluster
//! would get a master key of its own; given the key files instead (the one master key,
//! wrapped under the same passphrases), it opens with the same passphrase and its lagging
//! WAL can be copied in byte for byte. `pgagent store add`, `pgagent run` and the commands
//! that write every store (`backup`, `snapshot`) all join a new store this way.

use std::sync::Arc;

use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::layout::{CLUSTER_KEY, KEY_PREFIX};
use pgagent_storage::ObjectStore;

use crate::exit::Refused;

/// What [`give_cluster`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// The store was new: this many key files and then `cluster.json` were copied.
    Copied {
        /// Key files copied (0 for a plaintext cluster).
        keys: usize,
    },
    /// The store already holds this cluster.
    AlreadyHeld,
}

/// Gives `target` (named `name`) the cluster `source` holds (`cluster`, as read from
/// `source`): its key files, then its `cluster.json`, each copied as it is and only where
/// absent (`put_if_absent`), so that a store is the cluster's only once its keys are there.
///
/// Errors ([`Refused`], exit 3): `target` holds another cluster (another system identifier,
/// or the same one with other contents: another master key); `target` holds objects but no
/// `cluster.json` (it is not new); its `cluster.json` does not read back as the copy. A
/// store's errors.
pub async fn give_cluster(
    source: &dyn ObjectStore,
    cluster: &ClusterInfo,
    target: &dyn ObjectStore,
    name: &str,
) -> anyhow::Result<Given> {
    match read_cluster(target).await? {
        Some(c) if same_cluster(&c, cluster) => return Ok(Given::AlreadyHeld),
        Some(c) => {
            let what = if c.system_identifier == cluster.system_identifier {
                "this cluster's system identifier under another master key (or without \
                 encryption)"
                    .to_string()
            } else {
                format!("cluster {}", c.system_identifier)
            };
            return Err(Refused(format!(
                "store {name} ({}) holds {what}, not the cluster.json of {}: point it at an \
                 empty prefix",
                target.describe(),
                source.describe()
            ))
            .into());
        }
        None => {}
    }
    if let Some(meta) = target.list_after("", "", 1).await?.first() {
        return Err(Refused(format!(
            "store {name} ({}) is not empty ({} and maybe more) but holds no cluster.json: it \
             is not a new store, so it is not given this cluster",
            target.describe(),
            meta.key
        ))
        .into());
    }
    let mut keys = 0;
    for meta in source.list(KEY_PREFIX).await? {
        let body = source.get(&meta.key).await?;
        target.put_if_absent(&meta.key, body).await?;
        keys += 1;
    }
    // Last: a store is the cluster's once cluster.json is there, and its keys are by then.
    let body = source.get(CLUSTER_KEY).await?;
    target.put_if_absent(CLUSTER_KEY, body).await?;
    match read_cluster(target).await? {
        Some(c) if same_cluster(&c, cluster) => Ok(Given::Copied { keys }),
        other => Err(Refused(format!(
            "store {name} ({}): cluster.json reads back as {other:?}, not the copy of {}'s",
            target.describe(),
            source.describe()
        ))
        .into()),
    }
}

/// Gives `target` the cluster of `source` when `target` is new (no `cluster.json`), and
/// says so in the log; leaves a store that has one to its claim, which checks it.
///
/// Errors: as [`give_cluster`].
pub async fn join_new(
    source: &dyn ObjectStore,
    cluster: &ClusterInfo,
    target: &dyn ObjectStore,
    name: &str,
) -> anyhow::Result<()> {
    if read_cluster(target).await?.is_some() {
        return Ok(());
    }
    if let Given::Copied { keys } = give_cluster(source, cluster, target, name).await? {
        tracing::info!(
            store = name,
            keys,
            "a new store of this encrypted cluster: gave it the cluster's key files and \
             cluster.json from {}",
            source.describe()
        );
    }
    Ok(())
}

/// Which of `stores` hold a `cluster.json` now. A store that cannot be read, or could not
/// be opened (`None`), counts as not holding one.
pub async fn holders(stores: &[Option<Arc<dyn ObjectStore>>]) -> Vec<bool> {
    let mut held = Vec::with_capacity(stores.len());
    for s in stores {
        let holds = match s {
            Some(s) => matches!(read_cluster(s.as_ref()).await, Ok(Some(_))),
            None => false,
        };
        held.push(holds);
    }
    held
}

/// The order to claim stores in, given which hold a `cluster.json` (`held`, in restore
/// order): the first that holds one, then the others in restore order. Claiming a store
/// that holds the cluster first means an encrypted cluster's new stores are given its
/// master key, and never get one of their own.
pub fn claim_order(held: &[bool]) -> Vec<usize> {
    let h = held.iter().position(|&h| h).unwrap_or(0);
    std::iter::once(h)
        .chain((0..held.len()).filter(|&i| i != h))
        .take(held.len())
        .collect()
}

/// Whether two `cluster.json` name the same cluster, sealed the same way: system
/// identifier, segment size and master key (its key check). Stores of a plaintext cluster
/// claimed each on its own differ only in when they were claimed.
pub fn same_cluster(a: &ClusterInfo, b: &ClusterInfo) -> bool {
    let key = |c: &ClusterInfo| c.encryption.as_ref().map(|e| e.key_check.clone());
    a.system_identifier == b.system_identifier
        && a.wal_segment_size == b.wal_segment_size
        && key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgagent_storage::fs::FsStore;

    use super::*;

    async fn fs(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(FsStore::open(dir.to_path_buf()).await.unwrap())
    }

    fn cluster(id: &str) -> ClusterInfo {
        serde_json::from_value(serde_json::json!({
            "format_version": 1,
            "system_identifier": id,
            "pg_version_num": 150000,
            "wal_segment_size": 16777216,
            "created_at": "2026-12-06T00:00:00Z",
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_new_store_gets_the_keys_then_cluster_json_and_only_once() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (fs(a.path()).await, fs(b.path()).await);
        let info = cluster("7");
        src.put(CLUSTER_KEY, Bytes::from(serde_json::to_vec(&info).unwrap()))
            .await
            .unwrap();
        src.put("keys/k1", Bytes::from_static(b"wrapped"))
            .await
            .unwrap();
        let given = give_cluster(src.as_ref(), &info, dst.as_ref(), "b")
            .await
            .unwrap();
        assert_eq!(given, Given::Copied { keys: 1 });
        assert_eq!(
            dst.get("keys/k1").await.unwrap(),
            Bytes::from_static(b"wrapped")
        );
        assert_eq!(
            read_cluster(dst.as_ref()).await.unwrap(),
            Some(info.clone())
        );
        let again = give_cluster(src.as_ref(), &info, dst.as_ref(), "b")
            .await
            .unwrap();
        assert_eq!(again, Given::AlreadyHeld);
    }

    #[test]
    fn the_store_that_holds_the_cluster_is_claimed_first() {
        assert_eq!(
            claim_order(&[false, false, false]),
            vec![0, 1, 2],
            "none holds one"
        );
        assert_eq!(claim_order(&[false, true, true]), vec![1, 0, 2]);
        assert_eq!(claim_order(&[true]), vec![0]);
        assert!(claim_order(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_store_holds_the_cluster_once_it_has_cluster_json() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let stores = vec![Some(fs(a.path()).await), Some(fs(b.path()).await), None];
        assert_eq!(holders(&stores).await, vec![false, false, false]);
        let info = serde_json::to_vec(&cluster("7")).unwrap();
        stores[1]
            .as_ref()
            .unwrap()
            .put(CLUSTER_KEY, Bytes::from(info))
            .await
            .unwrap();
        assert_eq!(holders(&stores).await, vec![false, true, false]);
    }

    #[tokio::test]
    async fn another_cluster_or_stray_objects_are_refused_and_left_alone() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (src, other, stray) = (fs(a.path()).await, fs(b.path()).await, fs(c.path()).await);
        let info = cluster("7");
        src.put(CLUSTER_KEY, Bytes::from(serde_json::to_vec(&info).unwrap()))
            .await
            .unwrap();
        other
            .put(
                CLUSTER_KEY,
                Bytes::from(serde_json::to_vec(&cluster("8")).unwrap()),
            )
            .await
            .unwrap();
        let e = give_cluster(src.as_ref(), &info, other.as_ref(), "b")
            .await
            .unwrap_err();
        assert_eq!(crate::exit::code_for(&e), crate::exit::REFUSED, "{e:#}");
        assert!(format!("{e:#}").contains("holds cluster 8"), "{e:#}");
        stray.put("wal/x", Bytes::from_static(b"x")).await.unwrap();
        let e = give_cluster(src.as_ref(), &info, stray.as_ref(), "c")
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("is not empty (wal/x"), "{e:#}");
        assert_eq!(read_cluster(stray.as_ref()).await.unwrap(), None);
    }
}
