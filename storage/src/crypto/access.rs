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
//! | absent | set | a reader unlocks; a writer ([`claim`]) unlocks the store's key if it holds keys or sealed objects, else creates the master key and its first access key, and claims the store |
//!
//! A writer claims the store: `cluster.json` records the master key it seals with
//! ([`EncryptionInfo::of`]), and decides which of several writers creating keys at once
//! keeps them. A store's master key never changes by itself: no writer makes a new one for
//! a store that holds keys or sealed objects, even when its `cluster.json` is gone.
//!
//! Unlocking is bounded ([`UnlockLimits`]) and tries the key file `cluster.json` names
//! first.

use bytes::Bytes;

use super::keys::{self, Expect, KeyOrigin, UnlockLimits};
use super::{KdfParams, KeyError, ObjectCipher, Passphrase};
use crate::cluster::{
    check_encryption, check_encryption_info, check_same_cluster, ensure_cluster, read_cluster,
    ClusterInfo, EncryptionInfo,
};
use crate::envelope::Header;
use crate::error::StoreError;
use crate::layout::{
    key_file_key, BACKUP_PREFIX, CHUNK_PREFIX, CLUSTER_KEY, DRILL_PREFIX, KEY_PREFIX,
    SNAPSHOT_PREFIX, WAL_PREFIX,
};
use crate::ObjectStore;

/// The cipher of a command that only reads the store (`fetch`, `restore`, `list`, `verify`).
///
/// Errors: [`StoreError::Encrypted`] / [`StoreError::NotEncrypted`] (inside
/// [`KeyError::Store`]) when the store and the configuration disagree; the errors of
/// [`keys::unlock_with`]; store errors.
pub async fn reader_cipher(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
    limits: UnlockLimits,
) -> Result<Option<ObjectCipher>, KeyError> {
    decide(store, passphrase, limits).await
}

/// How long a writer that created a new store's keys waits, on a store that does not
/// enforce conditional writes, before it reads `cluster.json` again to learn which
/// writer's key it names: longer than another writer takes from reading no `cluster.json`
/// to writing its own (a key derivation and two small writes).
pub const CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Claims `store` for the cluster `ours` (its `encryption` is ignored: the passphrase
/// decides) as [`ensure_cluster`] does, and returns what `cluster.json` holds and the cipher
/// a writer (`run`, `backup`, `snapshot`) seals objects with. Unlocking keeps to `limits`.
///
/// - `cluster.json` exists: the reader's rule ([`reader_cipher`]), then the identity check.
/// - No `cluster.json`, but the store holds key files or sealed objects (it lost its
///   `cluster.json`: deleted by hand, by a lifecycle rule): never a new master key. With a
///   passphrase, the key it opens (holding the master key that opens a sealed object, when
///   there is one) is the store's, and `cluster.json` is written back naming it; a
///   passphrase that opens none, or none configured for a store of sealed objects without
///   keys, is [`KeyError::ClusterJsonMissing`] (refused). No passphrase with keys present:
///   [`StoreError::Encrypted`].
/// - A new store, no passphrase: claimed as plaintext; on a store that ignores conditional
///   writes, only once `cluster.json`, read again after [`CLAIM_SETTLE`], still says so (an
///   encrypted writer's may have landed after it: then [`StoreError::Encrypted`]).
/// - A new store, a passphrase: a new master key and its first access key
///   ([`keys::create`]), then `cluster.json` naming that master key, written only if absent
///   (a new store holding plaintext objects is refused: [`StoreError::NotEncrypted`]).
///   `cluster.json` is the one arbiter: of writers starting together (the daemon and a first
///   `pgagent backup`), the one whose `cluster.json` landed keeps its key; every other one
///   deletes the key file it made, which no object was ever sealed with, and unlocks the
///   winner's key with the same passphrase. On a store that ignores conditional writes,
///   where the last `cluster.json` written wins, each writer reads it again after
///   [`CLAIM_SETTLE`] before it trusts its own. Until `cluster.json` exists no object is
///   written, so a key file seen then (a racing writer's) is never used.
///
/// Errors: as [`reader_cipher`]; [`StoreError::ForeignCluster`] (inside [`KeyError::Store`])
/// for another cluster's store, as [`ensure_cluster`]; [`KeyError::ClusterJsonMissing`].
pub async fn claim(
    store: &dyn ObjectStore,
    ours: &ClusterInfo,
    passphrase: Option<&Passphrase>,
    params: KdfParams,
    origin: &KeyOrigin,
    limits: UnlockLimits,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    if let Some(stored) = read_cluster(store).await? {
        return claimed(store, stored, ours, passphrase, limits).await;
    }
    let holds = Holdings::read(store).await?;
    let mut info = ours.clone();
    let Some(passphrase) = passphrase else {
        if holds.keys {
            return Err(StoreError::Encrypted {
                key: KEY_PREFIX.to_string(),
            }
            .into());
        }
        if let Some((key, _)) = &holds.sealed {
            return Err(KeyError::ClusterJsonMissing {
                holds: format!("sealed objects ({key}) and no key file"),
                why: "no passphrase is configured, and no key is left to open them".into(),
            });
        }
        info.encryption = None;
        let stored = ensure_cluster(store, &info).await?;
        if !store.enforces_conditional_put() {
            // As for an encrypted claim below: on a store where the last `cluster.json`
            // written wins, an encrypted writer's may land after this one's. Nothing is
            // written before the settled `cluster.json` says plaintext too.
            tokio::time::sleep(CLAIM_SETTLE).await;
            let settled = crate::cluster::read_back(store).await?;
            check_same_cluster(&settled, &info)?;
            check_encryption_info(&settled, None)?;
            return Ok((settled, None));
        }
        return Ok((stored, None));
    };
    if holds.keys || holds.sealed.is_some() {
        return reclaim(store, ours, passphrase, &holds, limits).await;
    }
    if let Some(key) = holds.plaintext {
        return Err(StoreError::NotEncrypted { key }.into());
    }
    let created = keys::create(store, passphrase, params, origin).await?;
    let cipher = created.cipher();
    info.encryption = Some(EncryptionInfo::named(&cipher, &created.key_id));
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
            claimed(store, stored, ours, Some(passphrase), limits).await
        }
        _ => Err(lost.into()),
    }
}

/// [`claim`] of a store without `cluster.json` that holds key files or sealed objects:
/// unlock the key the passphrase opens (the one whose master key opens a sealed object,
/// when the store holds one), then write `cluster.json` back naming it, and take whatever
/// `cluster.json` then says (another writer may have written it meanwhile).
async fn reclaim(
    store: &dyn ObjectStore,
    ours: &ClusterInfo,
    passphrase: &Passphrase,
    holds: &Holdings,
    limits: UnlockLimits,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    let expect = match &holds.sealed {
        Some((key, body)) => Expect::Opens { key, body },
        None => Expect::Any,
    };
    let unlocked = match keys::unlock_with(store, passphrase, expect, None, limits).await {
        Ok(u) => u,
        Err(e @ (KeyError::NoKeys | KeyError::NoMatchingKey { .. })) => {
            return Err(KeyError::ClusterJsonMissing {
                holds: holds.describe(),
                why: e.to_string(),
            })
        }
        Err(e) => return Err(e),
    };
    let cipher = unlocked.cipher();
    tracing::warn!(
        store = %store.describe(),
        key = %key_file_key(&unlocked.key_id),
        "cluster.json is missing from a store that holds {}: writing it back with the \
         master key this passphrase opens",
        holds.describe()
    );
    let mut info = ours.clone();
    info.encryption = Some(EncryptionInfo::named(&cipher, &unlocked.key_id));
    match ensure_cluster(store, &info).await {
        Ok(stored) if store.enforces_conditional_put() => return Ok((stored, Some(cipher))),
        Ok(_) => tokio::time::sleep(CLAIM_SETTLE).await,
        // Another writer's `cluster.json` landed first; `claimed` checks it below.
        Err(e) if e.is_foreign_cluster() => {}
        Err(e) => return Err(e.into()),
    }
    let stored = crate::cluster::read_back(store).await?;
    claimed(store, stored, ours, Some(passphrase), limits).await
}

/// What a store without `cluster.json` holds, as far as its claim is concerned.
struct Holdings {
    /// `keys/` holds at least one object.
    keys: bool,
    /// A sealed (encrypted) object, key and body.
    sealed: Option<(String, Bytes)>,
    /// A plaintext object's key.
    plaintext: Option<String>,
}

impl Holdings {
    /// Looks at `keys/` and at the first object under each data prefix, smallest kinds first
    /// (at most one listing and one read per prefix).
    async fn read(store: &dyn ObjectStore) -> Result<Holdings, StoreError> {
        let mut holds = Holdings {
            keys: has_keys(store).await?,
            sealed: None,
            plaintext: None,
        };
        for prefix in [
            DRILL_PREFIX,
            SNAPSHOT_PREFIX,
            BACKUP_PREFIX,
            WAL_PREFIX,
            CHUNK_PREFIX,
        ] {
            let Some(meta) = store.list_after(prefix, "", 1).await?.pop() else {
                continue;
            };
            let body = match store.get(&meta.key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            match Header::parse(&body) {
                Ok(h) if h.is_encrypted() => {
                    holds.sealed = Some((meta.key, body));
                    break;
                }
                Ok(_) => holds.plaintext = holds.plaintext.or(Some(meta.key)),
                Err(_) => {} // not an object pgagent wrote: says nothing either way
            }
        }
        Ok(holds)
    }

    fn describe(&self) -> String {
        match (&self.sealed, self.keys) {
            (Some((key, _)), true) => format!("key files and sealed objects ({key})"),
            (Some((key, _)), false) => format!("sealed objects ({key}) and no key file"),
            (None, _) => "key files (keys/)".to_string(),
        }
    }
}

/// [`claim`] of a store whose `cluster.json` is `stored`.
async fn claimed(
    store: &dyn ObjectStore,
    stored: ClusterInfo,
    ours: &ClusterInfo,
    passphrase: Option<&Passphrase>,
    limits: UnlockLimits,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    check_same_cluster(&stored, ours)?;
    let cipher = decide(store, passphrase, limits).await?;
    Ok((stored, cipher))
}

async fn decide(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
    limits: UnlockLimits,
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
            Some(e) => {
                let expect = Expect::KeyCheck(&e.key_check);
                keys::unlock_with(store, passphrase, expect, e.key_id.as_deref(), limits).await?
            }
        },
        None => keys::unlock_with(store, passphrase, Expect::Any, None, limits).await?,
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
        claim(
            store,
            &cluster(None),
            p,
            FAST,
            &origin(),
            UnlockLimits::default(),
        )
        .await
    }

    /// One writer's view of a file store that ignores conditional writes, as Garage does:
    /// `put_if_absent` overwrites, the last write wins. Its PUT of `cluster.json` waits
    /// until every writer has got that far (all of them read no `cluster.json` first), then
    /// `delay` more: a PUT that lands late.
    #[derive(Debug)]
    struct LastWriteWins {
        fs: FsStore,
        together: std::sync::Arc<tokio::sync::Barrier>,
        delay: std::time::Duration,
    }

    #[async_trait::async_trait]
    impl ObjectStore for LastWriteWins {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
            self.fs.put(key, body).await
        }
        async fn put_if_absent(
            &self,
            key: &str,
            body: Bytes,
        ) -> Result<crate::PutOutcome, StoreError> {
            if key == CLUSTER_KEY {
                self.together.wait().await;
                tokio::time::sleep(self.delay).await;
            }
            self.fs.put(key, body).await?;
            Ok(crate::PutOutcome::Created)
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.fs.get(key).await
        }
        async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
            self.fs.get_range(key, start, len).await
        }
        async fn head(&self, key: &str) -> Result<Option<crate::ObjectMeta>, StoreError> {
            self.fs.head(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::ObjectMeta>, StoreError> {
            self.fs.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.fs.delete(key).await
        }
        fn enforces_conditional_put(&self) -> bool {
            false
        }
        fn describe(&self) -> String {
            "last write wins".into()
        }
    }

    /// A writer without a passphrase and one with a passphrase claim a new store that
    /// ignores conditional writes at the same time; the encrypted one's `cluster.json` lands
    /// a second after the plaintext one's and overwrites it. A plaintext writer that trusted
    /// its own write would stream plaintext WAL into a store declared encrypted: every
    /// writer let in must agree with the `cluster.json` that stays.
    #[tokio::test]
    async fn a_plaintext_and_an_encrypted_writer_racing_on_a_last_write_wins_store_agree() {
        let dir = tempfile::tempdir().unwrap();
        let together = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let view = |delay_ms| {
            let together = together.clone();
            let path = dir.path().to_path_buf();
            async move {
                LastWriteWins {
                    fs: FsStore::open(path).await.unwrap(),
                    together,
                    delay: std::time::Duration::from_millis(delay_ms),
                }
            }
        };
        let (plain_view, sealed_view) = (view(0).await, view(1000).await);
        let p = Passphrase::new("s3cret").unwrap();
        let (ours, limits) = (cluster(None), UnlockLimits::default());
        let who = origin();
        let (plain, sealed) = tokio::join!(
            claim(&plain_view, &ours, None, FAST, &who, limits),
            claim(&sealed_view, &ours, Some(&p), FAST, &who, limits)
        );
        let stays = read_cluster(&plain_view).await.unwrap().unwrap();
        for (who, r) in [("plaintext", &plain), ("encrypted", &sealed)] {
            if let Ok((_, cipher)) = r {
                assert_eq!(
                    cipher.is_some(),
                    stays.encryption.is_some(),
                    "the {who} writer was let in, but cluster.json says encrypted = {}",
                    stays.encryption.is_some()
                );
            }
        }
        assert!(
            plain.is_ok() || sealed.is_ok(),
            "one of them must win: {plain:?} / {sealed:?}"
        );
    }

    #[tokio::test]
    async fn the_decision_table() {
        let (_dir, store) = fs_store().await;
        let p = Passphrase::new("s3cret").unwrap();
        let other = Passphrase::new("other").unwrap();

        // Empty store: a reader without passphrase sees plaintext; a reader with one finds
        // no keys; a writer creates them and claims the store as encrypted.
        assert!(reader_cipher(&store, None, UnlockLimits::default())
            .await
            .unwrap()
            .is_none());
        let e = reader_cipher(&store, Some(&p), UnlockLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(e, KeyError::NoKeys), "{e}");
        let (stored, w) = claim_with(&store, Some(&p)).await.unwrap();
        let w = w.unwrap();
        let recorded = stored.encryption.clone().unwrap();
        assert_eq!(recorded.key_check, w.key_check());
        assert_eq!(
            recorded.key_id,
            Some(keys::list(&store).await.unwrap()[0].id.clone())
        );
        assert_eq!(stored.format_version, 2);
        let r = reader_cipher(&store, Some(&p), UnlockLimits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.key_check(), w.key_check());
        let (_, again) = claim_with(&store, Some(&p)).await.unwrap();
        assert_eq!(again.unwrap().key_check(), w.key_check());
        assert_eq!(keys::list(&store).await.unwrap().len(), 1);

        let e = reader_cipher(&store, None, UnlockLimits::default())
            .await
            .unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        let e = claim_with(&store, None).await.unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        let e = reader_cipher(&store, Some(&other), UnlockLimits::default())
            .await
            .unwrap_err();
        assert!(e.is_wrong_passphrase(), "{e}");
        // A plaintext claim of the encrypted store is refused.
        let e = ensure_cluster(&store, &cluster(None)).await.unwrap_err();
        assert!(e.is_encrypted(), "{e}");
        // Another cluster's writer is refused, and leaves no key behind.
        let mut theirs = cluster(None);
        theirs.system_identifier = "8".into();
        let e = claim(
            &store,
            &theirs,
            Some(&p),
            FAST,
            &origin(),
            UnlockLimits::default(),
        )
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
        assert!(reader_cipher(&store, None, UnlockLimits::default())
            .await
            .unwrap()
            .is_none());
    }

    /// A store whose `cluster.json` was deleted (by hand, a lifecycle rule, anyone with write
    /// access) keeps its master key: the next writer with its passphrase writes
    /// `cluster.json` back; one without, or with another passphrase, is refused; no new
    /// master key is ever made while the store holds keys or sealed objects.
    #[tokio::test]
    async fn a_lost_cluster_json_never_re_keys_the_store() {
        let (_dir, store) = fs_store().await;
        let p = Passphrase::new("s3cret").unwrap();
        let (_, w) = claim_with(&store, Some(&p)).await.unwrap();
        let w = w.unwrap();
        let name = "wal/000000010000000000000001";
        let sealed = crate::envelope::seal_for(b"wal bytes", 1, Some(&w), name);
        store.put(name, sealed.body).await.unwrap();
        // A key file of another store with the same passphrase, listed first: it opens,
        // but holds another master key.
        let elsewhere = tempfile::tempdir().unwrap();
        let other_store = FsStore::open(elsewhere.path().to_path_buf()).await.unwrap();
        let theirs = keys::create(&other_store, &p, FAST, &origin())
            .await
            .unwrap();
        let body = other_store
            .get(&key_file_key(&theirs.key_id))
            .await
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let planted = "0".repeat(32);
        v["id"] = planted.clone().into();
        store
            .put(
                &key_file_key(&planted),
                serde_json::to_vec(&v).unwrap().into(),
            )
            .await
            .unwrap();
        store.delete(CLUSTER_KEY).await.unwrap();

        // The same passphrase: the same master key, cluster.json written back, no new key.
        let (stored, again) = claim_with(&store, Some(&p)).await.unwrap();
        assert_eq!(again.unwrap().key_check(), w.key_check());
        assert_eq!(stored.encryption.unwrap().key_check, w.key_check());
        let back = read_cluster(&store)
            .await
            .unwrap()
            .expect("cluster.json written back");
        assert_eq!(back.encryption.unwrap().key_check, w.key_check());
        assert_eq!(keys::list(&store).await.unwrap().len(), 2);

        // Another passphrase: refused (exit 3), naming the fix; nothing written.
        store.delete(CLUSTER_KEY).await.unwrap();
        let other = Passphrase::new("other").unwrap();
        let e = claim_with(&store, Some(&other)).await.unwrap_err();
        assert!(e.is_refused(), "{e}");
        assert!(e.to_string().contains("cluster.json"), "{e}");
        assert_eq!(keys::list(&store).await.unwrap().len(), 2);
        assert!(read_cluster(&store).await.unwrap().is_none());

        // Sealed objects and no key file at all: refused with and without a passphrase.
        for k in keys::list(&store).await.unwrap() {
            store.delete(&key_file_key(&k.id)).await.unwrap();
        }
        for p in [Some(&p), None] {
            let e = claim_with(&store, p).await.unwrap_err();
            assert!(e.is_refused(), "{e}");
        }
        assert!(!has_keys(&store).await.unwrap());
        assert!(read_cluster(&store).await.unwrap().is_none());
    }

    /// Key files asking for the most Argon2 allows (1 GiB, 16 passes), listed before the
    /// store's key, do not hold up an unlock: the key `cluster.json` names is tried first,
    /// and a file asking for more memory than allowed is not tried at all.
    #[tokio::test]
    async fn costly_key_files_do_not_stall_an_unlock() {
        let (_dir, store) = fs_store().await;
        let p = Passphrase::new("s3cret").unwrap();
        let (_, w) = claim_with(&store, Some(&p)).await.unwrap();
        let id = keys::list(&store).await.unwrap()[0].id.clone();
        for i in 0..2 {
            let planted = format!("{i:032x}");
            crate::crypto::keys::tests::plant(&store, &id, &planted, KdfParams::MAX_M_COST_KIB, 4)
                .await;
        }
        let started = std::time::Instant::now();
        let r = reader_cipher(&store, Some(&p), UnlockLimits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.key_check(), w.unwrap().key_check());
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(2),
            "unlock took {took:?}"
        );
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
        let got = reader_cipher(&store, Some(&p), UnlockLimits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.key_check(), ours.cipher().key_check());
        let u = keys::unlock(&store, &p, None).await.unwrap();
        assert!(u.key_id == ours.key_id || u.key_id == theirs.key_id);
    }
}
