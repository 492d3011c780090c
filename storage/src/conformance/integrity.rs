//! Conformance cases for large objects, immutable writes and the cluster identity.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::pattern;
use crate::cluster::{read_cluster, ClusterInfo};
use crate::crypto::{KdfParams, KeyError};
use crate::envelope::{self, seal};
use crate::error::StoreError;
use crate::immutable::{put_immutable, ImmutablePut};
use crate::keyring::access::claim;
use crate::keyring::keys::{KeyOrigin, UnlockLimits};
use crate::layout::{wal_key, CLUSTER_KEY};
use crate::object_store::{ObjectStore, PutOutcome};

/// Retries `f` while it fails with a transient error (S3 answers 409 to concurrent
/// conditional writes and asks for a retry), a few times with a short pause.
async fn retry_transient<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// A body above the S3 part size (multipart) round-trips; ranges across part boundaries
/// read correctly; a conditional put of it is refused where enforced.
pub async fn large_object(store: &dyn ObjectStore, len: usize) {
    let d = store.describe();
    let body = Bytes::from(pattern(len, 42));
    let want = blake3::hash(&body);
    store
        .put("big", body.clone())
        .await
        .expect("put large object");
    let meta = store
        .head("big")
        .await
        .expect("head")
        .expect("large object present");
    assert_eq!(meta.size, len as u64, "{d}: large object size");
    let got = store.get("big").await.expect("get large object");
    assert_eq!(got.len(), len, "{d}: large object length");
    assert_eq!(blake3::hash(&got), want, "{d}: large object content");
    for start in [(8 << 20) - 10, (16 << 20) - 1, len as u64 - 5] {
        let start = start.min(len as u64 - 1);
        let r = store
            .get_range("big", start, 20)
            .await
            .expect("range of large object");
        let end = (start as usize + 20).min(len);
        assert_eq!(
            r.as_ref(),
            &body[start as usize..end],
            "{d}: range at {start}"
        );
    }
    let other = Bytes::from(pattern(len, 43));
    let outcome = store
        .put_if_absent("big", other)
        .await
        .expect("conditional large put");
    if store.enforces_conditional_put() {
        assert_eq!(
            outcome,
            PutOutcome::Exists,
            "{d}: multipart conditional put overwrote"
        );
        let again = store.get("big").await.expect("get");
        assert_eq!(
            blake3::hash(&again),
            want,
            "{d}: refused put changed the object"
        );
    }
    let created = store
        .put_if_absent("big-new", body.clone())
        .await
        .expect("conditional large put on a new key");
    assert_eq!(created, PutOutcome::Created, "{d}: new large object");
    let got = store.get("big-new").await.expect("get");
    assert_eq!(
        blake3::hash(&got),
        want,
        "{d}: conditional multipart content"
    );
}

/// `put_immutable`: stores once, a repeat with the same content is a no-op, different content
/// is a Conflict naming both hashes and leaves the object unchanged.
pub async fn immutable_puts(store: &dyn ObjectStore) {
    let d = store.describe();
    let key = wal_key("000000010000000000000001");
    let raw = pattern(100_000, 9);
    let sealed = seal(&raw, 3);
    let r = put_immutable(store, &key, &sealed)
        .await
        .expect("first immutable put");
    assert_eq!(r, ImmutablePut::Created, "{d}");
    // Sealed again at another level: a different body, the same content hash.
    let resealed = seal(&raw, 1);
    let r = put_immutable(store, &key, &resealed)
        .await
        .expect("repeat immutable put");
    assert_eq!(
        r,
        ImmutablePut::AlreadyPresent,
        "{d}: same hash must be a no-op"
    );
    let stored = store.get(&key).await.expect("get");
    assert!(
        stored == sealed.body,
        "{d}: no-op repeat rewrote the object"
    );

    let other = seal(&pattern(100_000, 10), 3);
    let e = put_immutable(store, &key, &other)
        .await
        .expect_err("different content accepted");
    match &e {
        StoreError::Conflict {
            key: k,
            existing,
            new,
        } => {
            assert_eq!(k, &key, "{d}: conflict key");
            assert_eq!(
                existing,
                &sealed.hash.to_hex().to_string(),
                "{d}: existing hash"
            );
            assert_eq!(new, &other.hash.to_hex().to_string(), "{d}: new hash");
        }
        other => panic!("{d}: expected Conflict, got {other}"),
    }
    assert!(e.is_conflict() && !e.is_transient(), "{d}");
    let stored = store.get(&key).await.expect("get");
    assert_eq!(
        envelope::open(&stored).expect("envelope"),
        raw,
        "{d}: conflict overwrote"
    );

    store
        .put("not-an-envelope", Bytes::from_static(b"plain"))
        .await
        .expect("put");
    let e = put_immutable(store, "not-an-envelope", &other)
        .await
        .expect_err("overwrote junk");
    assert!(
        e.is_corrupt(),
        "{d}: a non-envelope object must be reported corrupt, got {e}"
    );
}

/// Eight writers racing to store the same content all succeed; at least one created it (on
/// stores that enforce conditional puts, exactly one).
pub async fn immutable_race_same(store: &dyn ObjectStore) {
    let d = store.describe();
    let sealed = seal(&pattern(50_000, 11), 3);
    let results = futures::future::join_all(
        (0..8).map(|_| retry_transient(|| put_immutable(store, "seg", &sealed))),
    )
    .await;
    let mut created = 0;
    for r in results {
        match r {
            Ok(ImmutablePut::Created) => created += 1,
            Ok(ImmutablePut::AlreadyPresent) => {}
            Err(e) => panic!("{d}: racing identical immutable put failed: {e}"),
        }
    }
    assert!(created >= 1, "{d}: nobody created the object");
    if store.enforces_conditional_put() {
        assert_eq!(created, 1, "{d}: {created} writers created the same object");
    }
    assert!(
        store.get("seg").await.expect("get") == sealed.body,
        "{d}: racing content"
    );
}

/// Eight writers racing with different content: the stored object is one of theirs and
/// verifies; on stores that enforce conditional puts exactly one wins and the others get
/// Conflict.
pub async fn immutable_race_different(store: &dyn ObjectStore) {
    let d = store.describe();
    let seals: Vec<_> = (0..8).map(|i| seal(&pattern(50_000, 100 + i), 3)).collect();
    let results = futures::future::join_all(
        seals
            .iter()
            .map(|s| retry_transient(move || put_immutable(store, "seg", s))),
    )
    .await;
    let stored = store.get("seg").await.expect("get");
    let winner = seals
        .iter()
        .position(|s| s.body == stored)
        .unwrap_or_else(|| panic!("{d}: stored object is none of the racing writers' bodies"));
    envelope::open(&stored).expect("stored object verifies");
    let mut created = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(ImmutablePut::Created) => created += 1,
            Ok(ImmutablePut::AlreadyPresent) => panic!("{d}: writer {i} saw its content present"),
            Err(e) if e.is_conflict() => {}
            Err(e) => panic!("{d}: racing immutable put failed: {e}"),
        }
    }
    if store.enforces_conditional_put() {
        assert_eq!(
            created, 1,
            "{d}: {created} different writers all created the object"
        );
        assert!(
            results[winner].is_ok(),
            "{d}: the stored content's writer got an error"
        );
    } else if created != 1 {
        tracing::warn!(
            store = %d,
            created,
            "store ignores If-None-Match: racing writers were not all detected"
        );
    }
}

/// A plaintext writer's claim (through the agreement under `claims/`), as `pgagent run`
/// makes it.
async fn ensure_cluster(
    store: &dyn ObjectStore,
    ours: &ClusterInfo,
) -> Result<ClusterInfo, StoreError> {
    let origin = KeyOrigin {
        hostname: "conformance".into(),
        username: "conformance".into(),
    };
    match claim(
        store,
        ours,
        None,
        KdfParams::DEFAULT,
        &origin,
        UnlockLimits::default(),
    )
    .await
    {
        Ok((stored, _)) => Ok(stored),
        Err(KeyError::Store(e)) => Err(e),
        Err(e) => panic!("{}: unexpected claim error {e}", store.describe()),
    }
}

/// A claim takes an empty store, accepts the same cluster again and refuses another
/// system identifier or WAL segment size.
pub async fn cluster_identity(store: &dyn ObjectStore) {
    let d = store.describe();
    assert_eq!(
        read_cluster(store).await.expect("read_cluster"),
        None,
        "{d}: empty store"
    );
    let ours = ClusterInfo {
        format_version: 1,
        system_identifier: "7312345678901234567".into(),
        pg_version_num: 150004,
        wal_segment_size: 16 << 20,
        created_at: "2024-05-01T03:00:00Z".into(),
        encryption: None,
    };
    let stored = ensure_cluster(store, &ours)
        .await
        .expect("claim empty store");
    assert_eq!(stored, ours, "{d}: claimed identity");
    let later = ClusterInfo {
        created_at: "2024-06-01T00:00:00Z".into(),
        pg_version_num: 150007,
        ..ours.clone()
    };
    let stored = ensure_cluster(store, &later)
        .await
        .expect("same cluster again");
    assert_eq!(stored, ours, "{d}: cluster.json must not be rewritten");
    let body = store.get(CLUSTER_KEY).await.expect("cluster.json readable");
    assert!(body.starts_with(b"{"), "{d}: cluster.json is plain JSON");

    let foreign = ClusterInfo {
        system_identifier: "7312345678901234999".into(),
        ..ours.clone()
    };
    let e = ensure_cluster(store, &foreign)
        .await
        .expect_err("foreign cluster accepted");
    assert!(
        e.is_foreign_cluster(),
        "{d}: expected ForeignCluster, got {e}"
    );
    let resized = ClusterInfo {
        wal_segment_size: 64 << 20,
        ..ours
    };
    let e = ensure_cluster(store, &resized)
        .await
        .expect_err("segment size accepted");
    assert!(
        e.is_foreign_cluster(),
        "{d}: expected ForeignCluster, got {e}"
    );

    store
        .put(CLUSTER_KEY, Bytes::from_static(b"{not json"))
        .await
        .expect("put");
    let e = read_cluster(store)
        .await
        .expect_err("garbage cluster.json accepted");
    assert!(e.is_corrupt(), "{d}: expected Corrupt, got {e}");
}
