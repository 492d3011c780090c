use super::*;
use crate::cluster::{ensure_cluster, ClusterInfo, EncryptionInfo};
use crate::crypto::kdf::tests::FAST;
use crate::fs::FsStore;

pub(super) fn origin() -> KeyOrigin {
    KeyOrigin {
        hostname: "db1".into(),
        username: "postgres".into(),
    }
}

pub(super) fn cluster(encryption: Option<EncryptionInfo>) -> ClusterInfo {
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
        crate::keyring::keys::tests::plant(&store, &id, &planted, KdfParams::MAX_M_COST_KIB, 4)
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

/// A prefix whose claim entries name another cluster (its `cluster.json` gone) is refused,
/// and this writer writes no `cluster.json` of the other cluster back, nor keeps a key.
#[tokio::test]
async fn claim_entries_of_another_cluster_are_refused_without_writing() {
    let (_dir, store) = fs_store().await;
    let mut theirs = cluster(None);
    theirs.system_identifier = "8".into();
    crate::agreement::agree(&store, theirs).await.unwrap();
    let p = Passphrase::new("s3cret").unwrap();
    for pass in [None, Some(&p)] {
        let e = claim_with(&store, pass).await.unwrap_err();
        assert!(
            e.store_error().is_some_and(StoreError::is_foreign_cluster),
            "{e}"
        );
        assert!(read_cluster(&store).await.unwrap().is_none());
        assert!(!has_keys(&store).await.unwrap());
    }
}
