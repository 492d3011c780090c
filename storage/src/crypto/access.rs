//! Which cipher a command works with: decided once at start from `cluster.json`, `keys/` and
//! the configured passphrase, so that every read and write path just passes an
//! `Option<&ObjectCipher>` along.
//!
//! | `cluster.json` | passphrase | result |
//! | --- | --- | --- |
//! | plaintext | none | `None`: plaintext objects |
//! | plaintext | set | [`StoreError::NotEncrypted`] |
//! | encrypted | none | [`StoreError::Encrypted`] |
//! | encrypted | set | unlock (only a key holding the master key `cluster.json` records) |
//! | absent | none | `None`, unless `keys/` holds keys ([`StoreError::Encrypted`]) |
//! | absent | set | a reader unlocks; a writer ([`claim`]) creates the master key and its first access key and claims the store with them |
//!
//! A writer claims the store: `cluster.json` records the master key it seals with
//! ([`EncryptionInfo::of`]), and decides which of several writers creating keys at once
//! keeps them.

use super::keys::{self, KeyOrigin};
use super::{KdfParams, KeyError, ObjectCipher, Passphrase};
use crate::cluster::{
    check_encryption, check_same_cluster, ensure_cluster, read_cluster, ClusterInfo, EncryptionInfo,
};
use crate::error::StoreError;
use crate::layout::{key_file_key, CLUSTER_KEY, KEY_PREFIX};
use crate::ObjectStore;

/// The cipher of a command that only reads the store (`fetch`, `restore`, `list`, `verify`).
///
/// Errors: [`StoreError::Encrypted`] / [`StoreError::NotEncrypted`] (inside
/// [`KeyError::Store`]) when the store and the configuration disagree; the errors of
/// [`keys::unlock`]; store errors.
pub async fn reader_cipher(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
) -> Result<Option<ObjectCipher>, KeyError> {
    decide(store, passphrase).await
}

/// How long a writer that created a new store's keys waits, on a store that does not
/// enforce conditional writes, before it reads `cluster.json` again to learn which
/// writer's key it names: longer than another writer takes from reading no `cluster.json`
/// to writing its own (a key derivation and two small writes).
pub const CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Claims `store` for the cluster `ours` (its `encryption` is ignored: the passphrase
/// decides) as [`ensure_cluster`] does, and returns what `cluster.json` holds and the cipher
/// a writer (`run`, `backup`, `snapshot`) seals objects with.
///
/// - `cluster.json` exists: the reader's rule ([`reader_cipher`]), then the identity check.
/// - A new store, no passphrase: claimed as plaintext (refused if `keys/` holds keys: an
///   encrypted store being created).
/// - A new store, a passphrase: a new master key and its first access key
///   ([`keys::create`]), then `cluster.json` naming that master key, written only if absent.
///   `cluster.json` is the one arbiter: of writers starting together (the daemon and a first
///   `pgagent backup`), the one whose `cluster.json` landed keeps its key; every other one
///   deletes the key file it made, which no object was ever sealed with, and unlocks the
///   winner's key with the same passphrase. On a store that ignores conditional writes,
///   where the last `cluster.json` written wins, each writer reads it again after
///   [`CLAIM_SETTLE`] before it trusts its own. Until `cluster.json` exists no object is
///   written, so a key file seen then (a racing writer's) is never used.
///
/// Errors: as [`reader_cipher`]; [`StoreError::ForeignCluster`] (inside [`KeyError::Store`])
/// for another cluster's store, as [`ensure_cluster`].
pub async fn claim(
    store: &dyn ObjectStore,
    ours: &ClusterInfo,
    passphrase: Option<&Passphrase>,
    params: KdfParams,
    origin: &KeyOrigin,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    if let Some(stored) = read_cluster(store).await? {
        return claimed(store, stored, ours, passphrase).await;
    }
    let mut info = ours.clone();
    let Some(passphrase) = passphrase else {
        if has_keys(store).await? {
            return Err(StoreError::Encrypted {
                key: KEY_PREFIX.to_string(),
            }
            .into());
        }
        info.encryption = None;
        return Ok((ensure_cluster(store, &info).await?, None));
    };
    let created = keys::create(store, passphrase, params, origin).await?;
    let cipher = created.cipher();
    info.encryption = Some(EncryptionInfo::of(&cipher));
    let lost = match ensure_cluster(store, &info).await {
        Ok(stored) if store.enforces_conditional_put() => return Ok((stored, Some(cipher))),
        Ok(_) => {
            // A store that ignores `If-None-Match` (Garage) lets a writer that read no
            // `cluster.json` just before this one wrote it overwrite it: the last write
            // wins, and every writer must see which did before it seals anything.
            tokio::time::sleep(CLAIM_SETTLE).await;
            match read_cluster(store).await? {
                Some(stored) if stored.encryption.as_ref() == info.encryption.as_ref() => {
                    return Ok((stored, Some(cipher)))
                }
                _ => StoreError::Encrypted {
                    key: CLUSTER_KEY.to_string(),
                },
            }
        }
        Err(e) => e,
    };
    // Delete the new key only when `cluster.json` is known to name another master key; if
    // it cannot be read, the key stays (an unused key file at worst, never a store whose
    // master key has no key file).
    match read_cluster(store).await {
        Ok(Some(stored)) if stored.encryption.as_ref() != info.encryption.as_ref() => {
            store.delete(&key_file_key(&created.key_id)).await?;
            claimed(store, stored, ours, Some(passphrase)).await
        }
        _ => Err(lost.into()),
    }
}

/// [`claim`] of a store whose `cluster.json` is `stored`.
async fn claimed(
    store: &dyn ObjectStore,
    stored: ClusterInfo,
    ours: &ClusterInfo,
    passphrase: Option<&Passphrase>,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    check_same_cluster(&stored, ours)?;
    let cipher = decide(store, passphrase).await?;
    Ok((stored, cipher))
}

async fn decide(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
) -> Result<Option<ObjectCipher>, KeyError> {
    let cluster = read_cluster(store).await?;
    let Some(passphrase) = passphrase else {
        match &cluster {
            Some(c) => check_encryption(c, None)?,
            None if has_keys(store).await? => {
                return Err(StoreError::Encrypted {
                    key: KEY_PREFIX.to_string(),
                }
                .into())
            }
            None => {}
        }
        return Ok(None);
    };
    let unlocked = match &cluster {
        Some(c) => match &c.encryption {
            None => {
                return Err(StoreError::NotEncrypted {
                    key: CLUSTER_KEY.to_string(),
                }
                .into())
            }
            Some(e) => keys::unlock(store, passphrase, Some(&e.key_check)).await?,
        },
        None => keys::unlock(store, passphrase, None).await?,
    };
    let cipher = unlocked.cipher();
    if let Some(c) = &cluster {
        check_encryption(c, Some(&cipher))?;
    }
    Ok(Some(cipher))
}

async fn has_keys(store: &dyn ObjectStore) -> Result<bool, StoreError> {
    Ok(!store.list_after(KEY_PREFIX, "", 1).await?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ensure_cluster, ClusterInfo, EncryptionInfo};
    use crate::crypto::kdf::tests::FAST;
    use crate::fs::FsStore;

    fn origin() -> KeyOrigin {
        KeyOrigin {
            hostname: "db1".into(),
            username: "postgres".into(),
        }
    }

    fn cluster(encryption: Option<EncryptionInfo>) -> ClusterInfo {
        ClusterInfo {
            format_version: 1,
            system_identifier: "7".into(),
            pg_version_num: 150004,
            wal_segment_size: 16 << 20,
            created_at: "2026-12-01T00:00:00Z".into(),
            encryption,
        }
    }

    async fn fs_store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        (dir, store)
    }

    async fn claim_with(
        store: &FsStore,
        p: Option<&Passphrase>,
    ) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
        claim(store, &cluster(None), p, FAST, &origin()).await
    }

    #[tokio::test]
    async fn the_decision_table() {
        let (_dir, store) = fs_store().await;
        let p = Passphrase::new("s3cret").unwrap();
        let other = Passphrase::new("other").unwrap();

        // Empty store: a reader without passphrase sees plaintext; a reader with one finds
        // no keys; a writer creates them and claims the store as encrypted.
        assert!(reader_cipher(&store, None).await.unwrap().is_none());
        let e = reader_cipher(&store, Some(&p)).await.unwrap_err();
        assert!(matches!(e, KeyError::NoKeys), "{e}");
        let (stored, w) = claim_with(&store, Some(&p)).await.unwrap();
        let w = w.unwrap();
        assert_eq!(stored.encryption, Some(EncryptionInfo::of(&w)));
        assert_eq!(stored.format_version, 2);
        let r = reader_cipher(&store, Some(&p)).await.unwrap().unwrap();
        assert_eq!(r.key_check(), w.key_check());
        let (_, again) = claim_with(&store, Some(&p)).await.unwrap();
        assert_eq!(again.unwrap().key_check(), w.key_check());
        assert_eq!(keys::list(&store).await.unwrap().len(), 1);

        let e = reader_cipher(&store, None).await.unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        let e = claim_with(&store, None).await.unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        let e = reader_cipher(&store, Some(&other)).await.unwrap_err();
        assert!(e.is_wrong_passphrase(), "{e}");
        // A plaintext claim of the encrypted store is refused.
        let e = ensure_cluster(&store, &cluster(None)).await.unwrap_err();
        assert!(e.is_encrypted(), "{e}");
        // Another cluster's writer is refused, and leaves no key behind.
        let mut theirs = cluster(None);
        theirs.system_identifier = "8".into();
        let e = claim(&store, &theirs, Some(&p), FAST, &origin())
            .await
            .unwrap_err();
        assert!(
            e.store_error().is_some_and(StoreError::is_foreign_cluster),
            "{e}"
        );
        assert_eq!(keys::list(&store).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_claiming_a_new_store_together_share_one_master_key() {
        let p = Passphrase::new("s3cret").unwrap();
        for _ in 0..10 {
            let (_dir, store) = fs_store().await;
            let store = std::sync::Arc::new(store);
            let writers: Vec<_> = (0..3)
                .map(|_| {
                    let (store, p) = (store.clone(), p.clone());
                    tokio::spawn(async move { claim_with(&store, Some(&p)).await })
                })
                .collect();
            let mut checks = Vec::new();
            for w in writers {
                checks.push(w.await.unwrap().unwrap().1.unwrap().key_check());
            }
            checks.dedup();
            assert_eq!(checks.len(), 1, "writers sealed with different master keys");
            let keys = keys::list(store.as_ref()).await.unwrap();
            assert_eq!(keys.len(), 1, "the losers' key files stayed: {keys:?}");
            let stored = read_cluster(store.as_ref()).await.unwrap().unwrap();
            assert_eq!(stored.encryption.unwrap().key_check, checks[0]);
        }
    }

    #[tokio::test]
    async fn a_plaintext_store_refuses_a_passphrase_and_never_gets_keys() {
        let (_dir, store) = fs_store().await;
        let (stored, cipher) = claim_with(&store, None).await.unwrap();
        assert!(cipher.is_none() && !stored.is_encrypted());
        let p = Passphrase::new("s3cret").unwrap();
        let e = claim_with(&store, Some(&p)).await.unwrap_err();
        assert!(
            e.store_error().is_some_and(StoreError::is_not_encrypted),
            "{e}"
        );
        assert!(!has_keys(&store).await.unwrap(), "no key was created");
        assert!(reader_cipher(&store, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_key_of_another_store_is_not_taken_for_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        let p = Passphrase::new("shared passphrase").unwrap();
        let ours = keys::create(&store, &p, FAST, &origin()).await.unwrap();
        ensure_cluster(&store, &cluster(Some(EncryptionInfo::of(&ours.cipher()))))
            .await
            .unwrap();
        // A key file copied in from another store that uses the same passphrase.
        let elsewhere = tempfile::tempdir().unwrap();
        let other_store = FsStore::open(elsewhere.path().to_path_buf()).await.unwrap();
        let theirs = keys::create(&other_store, &p, FAST, &origin())
            .await
            .unwrap();
        let body = other_store
            .get(&crate::layout::key_file_key(&theirs.key_id))
            .await
            .unwrap();
        store
            .put(&crate::layout::key_file_key(&theirs.key_id), body)
            .await
            .unwrap();
        // Whatever order the files are tried in, this store's master key comes back.
        let got = reader_cipher(&store, Some(&p)).await.unwrap().unwrap();
        assert_eq!(got.key_check(), ours.cipher().key_check());
        let u = keys::unlock(&store, &p, None).await.unwrap();
        assert!(u.key_id == ours.key_id || u.key_id == theirs.key_id);
    }
}
