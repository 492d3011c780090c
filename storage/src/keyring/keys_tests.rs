//! Unit tests of key files on a `file://` store (with cheap Argon2 costs).

use super::*;
use crate::crypto::kdf::tests::FAST;
use crate::crypto::keyfile::new_id;
use crate::crypto::KEY_LEN;
use crate::fs::FsStore;

fn origin() -> KeyOrigin {
    KeyOrigin {
        hostname: "db1".into(),
        username: "postgres".into(),
    }
}

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s).unwrap()
}

async fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn create_unlock_add_list_remove() {
    let (_dir, store) = store().await;
    let first = create(&store, &pass("one"), FAST, &origin()).await.unwrap();

    let u1 = unlock(&store, &pass("one"), None).await.unwrap();
    assert_eq!(u1.key_id, first.key_id);
    assert_eq!(u1.master.expose_bytes(), first.master.expose_bytes());
    let e = unlock(&store, &pass("two"), None).await.unwrap_err();
    assert!(e.is_wrong_passphrase(), "{e}");
    assert!(e.to_string().contains("1 tried"), "{e}");
    assert!(
        e.to_string().contains("PGAGENT_ENCRYPTION_PASSPHRASE"),
        "{e}"
    );

    let added = add(&store, &u1.master, &pass("two"), FAST, &origin())
        .await
        .unwrap();
    assert_eq!(added.hostname, "db1");
    assert_eq!(added.kdf, FAST);
    let listed = list(&store).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == first.key_id));
    assert!(listed.contains(&added));
    let u2 = unlock(&store, &pass("two"), None).await.unwrap();
    assert_eq!(u2.key_id, added.id);
    assert_eq!(u2.master.expose_bytes(), first.master.expose_bytes());

    // The key in use is never removed; an unknown id is named.
    let e = remove(&store, &added.id, &u2).await.unwrap_err();
    assert!(matches!(e, KeyError::InUse { .. }) && e.is_refused(), "{e}");
    let e = remove(&store, "0123", &u2).await.unwrap_err();
    assert!(matches!(e, KeyError::UnknownKey { .. }), "{e}");
    let e = remove(&store, "../cluster.json", &u2).await.unwrap_err();
    assert!(matches!(e, KeyError::UnknownKey { .. }), "{e}");

    remove(&store, &first.key_id, &u2).await.unwrap();
    let e = unlock(&store, &pass("one"), None).await.unwrap_err();
    assert!(e.is_wrong_passphrase(), "{e}");
    // The last key: refused whoever asks.
    let e = remove(&store, &added.id, &u1).await.unwrap_err();
    assert!(
        matches!(e, KeyError::LastKey { .. }) && e.is_refused(),
        "{e}"
    );
    assert_eq!(list(&store).await.unwrap(), vec![added]);
}

#[tokio::test]
async fn key_files_hold_neither_the_master_key_nor_the_passphrase() {
    let (_dir, store) = store().await;
    let phrase = "a passphrase nobody should see";
    let u = create(&store, &pass(phrase), FAST, &origin())
        .await
        .unwrap();
    let body = store.get(&key_file_key(&u.key_id)).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let master = u.master.expose_bytes();
    assert!(!body.windows(KEY_LEN).any(|w| w == master));
    assert!(!text.contains(&hex::encode(master)));
    assert!(!text.contains(phrase));
    assert!(!text.contains(&hex::encode(phrase)));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kdf"]["algorithm"], "argon2id");
    assert_eq!(v["kdf"]["m_cost_kib"], FAST.m_cost_kib);
    assert_eq!(v["wrap"]["algorithm"], "xchacha20poly1305");
    assert_eq!(v["id"], u.key_id.as_str());
    assert_eq!(v["username"], "postgres");
}

#[tokio::test]
async fn a_key_file_under_another_name_or_altered_does_not_open() {
    let (_dir, store) = store().await;
    let u = create(&store, &pass("one"), FAST, &origin()).await.unwrap();
    let key = key_file_key(&u.key_id);
    let original: serde_json::Value =
        serde_json::from_slice(&store.get(&key).await.unwrap()).unwrap();
    let other_id = "00112233445566778899aabbccddeeff";

    // Copied under another name as is: its id does not match.
    store
        .put(
            &key_file_key(other_id),
            serde_json::to_vec(&original).unwrap().into(),
        )
        .await
        .unwrap();
    let e = list(&store).await.unwrap_err();
    assert!(e.to_string().contains("is not its name"), "{e}");
    // With the id rewritten too: the wrap's associated data holds the id.
    let mut renamed = original.clone();
    renamed["id"] = other_id.into();
    store
        .put(
            &key_file_key(other_id),
            serde_json::to_vec(&renamed).unwrap().into(),
        )
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
    let e = unlock(&store, &pass("one"), None).await.unwrap_err();
    assert!(matches!(e, KeyError::NoMatchingKey { tried: 1, .. }), "{e}");

    // A flipped bit of the wrapped key.
    let mut flipped = original.clone();
    let ct = flipped["wrap"]["ciphertext"].as_str().unwrap().to_string();
    let last = if ct.ends_with('0') { "1" } else { "0" };
    flipped["wrap"]["ciphertext"] = format!("{}{last}", &ct[..ct.len() - 1]).into();
    store.delete(&key_file_key(other_id)).await.unwrap();
    store
        .put(&key, serde_json::to_vec(&flipped).unwrap().into())
        .await
        .unwrap();
    assert!(unlock(&store, &pass("one"), None)
        .await
        .unwrap_err()
        .is_wrong_passphrase());
}

#[tokio::test]
async fn hostile_parameters_are_refused_before_allocating() {
    let (_dir, store) = store().await;
    let u = create(&store, &pass("one"), FAST, &origin()).await.unwrap();
    add(&store, &u.master, &pass("two"), FAST, &origin())
        .await
        .unwrap();
    let key = key_file_key(&u.key_id);
    let mut v: serde_json::Value = serde_json::from_slice(&store.get(&key).await.unwrap()).unwrap();
    // 100 GiB of memory: refused by the bounds, never handed to Argon2.
    v["kdf"]["m_cost_kib"] = (100u64 * 1024 * 1024).into();
    store
        .put(&key, serde_json::to_vec(&v).unwrap().into())
        .await
        .unwrap();
    let e = list(&store).await.unwrap_err();
    assert!(e.to_string().contains("m_cost"), "{e}");
    // Unlocking skips it, and says so when nothing else opens.
    let e = unlock(&store, &pass("one"), None).await.unwrap_err();
    assert!(matches!(e, KeyError::NoMatchingKey { tried: 1, .. }), "{e}");
    assert!(e.to_string().contains(&key), "{e}");
    unlock(&store, &pass("two"), None).await.unwrap();
    // Not JSON at all.
    store
        .put(&key, Bytes::from_static(b"\x00junk"))
        .await
        .unwrap();
    let e = list(&store).await.unwrap_err();
    assert!(matches!(e, KeyError::Corrupt { .. }), "{e}");
}

#[tokio::test]
async fn no_keys_is_its_own_error() {
    let (_dir, store) = store().await;
    let e = unlock(&store, &pass("one"), None).await.unwrap_err();
    assert!(matches!(e, KeyError::NoKeys), "{e}");
    assert!(list(&store).await.unwrap().is_empty());
}

#[test]
fn ids_are_random_hex() {
    let (a, b) = (new_id(), new_id());
    assert_ne!(a, b);
    assert!(is_key_id(&a) && is_key_id(&b));
    assert!(!is_key_id("ABCDEF0123456789abcdef0123456789"));
    assert!(!is_key_id("abc"));
}

/// Deletes wait until `barrier` lets them through: two removals that both checked "not the
/// last key" before either deleted.
#[derive(Debug)]
struct DeletesTogether {
    barrier: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl crate::layer::Layer for DeletesTogether {
    async fn around(
        &self,
        below: &dyn ObjectStore,
        call: crate::layer::Call<'_>,
    ) -> Result<crate::layer::Reply, crate::error::StoreError> {
        if let crate::layer::Call::Delete { .. } = call {
            self.barrier.wait().await;
        }
        call.run(below).await
    }
}

/// Two `key remove` at once, each with the passphrase of the key the other removes: each
/// sees two keys, so neither is the last, and both delete. At least one key must stay, and
/// a removal that would have left none says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_removals_at_once_never_leave_the_store_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let inner = FsStore::open(dir.path().to_path_buf()).await.unwrap();
    let a = create(&inner, &pass("one"), FAST, &origin()).await.unwrap();
    let b = add(&inner, &a.master, &pass("two"), FAST, &origin())
        .await
        .unwrap();
    let layer = DeletesTogether {
        barrier: tokio::sync::Barrier::new(2),
    };
    let store = std::sync::Arc::new(crate::layer::Layered::new(
        std::sync::Arc::new(inner),
        layer,
    ));
    let by_a = unlock(store.as_ref(), &pass("one"), None).await.unwrap();
    let by_b = unlock(store.as_ref(), &pass("two"), None).await.unwrap();
    let (s1, s2) = (store.clone(), store.clone());
    let (b_id, a_id) = (b.id.clone(), a.key_id.clone());
    let r1 = tokio::spawn(async move { remove(s1.as_ref(), &b_id, &by_a).await });
    let r2 = tokio::spawn(async move { remove(s2.as_ref(), &a_id, &by_b).await });
    let (r1, r2) = (r1.await.unwrap(), r2.await.unwrap());
    let left = list(store.as_ref()).await.unwrap();
    assert!(!left.is_empty(), "no key left: {r1:?} {r2:?}");
    assert!(r1.is_err() || r2.is_err(), "both removals reported success");
    for r in [&r1, &r2] {
        if let Err(e) = r {
            assert!(e.is_refused(), "{e}");
        }
    }
    // Whatever is left opens the store.
    let p = if left.iter().any(|k| k.id == a.key_id) {
        "one"
    } else {
        "two"
    };
    let u = unlock(store.as_ref(), &pass(p), None).await.unwrap();
    assert_eq!(u.master.expose_bytes(), a.master.expose_bytes());
}

/// A copy of key file `id` under `new_id` with other Argon2 costs: it never opens (the id
/// is associated data), but its costs are paid when it is tried.
pub(crate) async fn plant(store: &FsStore, id: &str, new_id: &str, m_cost_kib: u32, t_cost: u32) {
    let body = store.get(&key_file_key(id)).await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["id"] = new_id.into();
    v["kdf"]["m_cost_kib"] = m_cost_kib.into();
    v["kdf"]["t_cost"] = t_cost.into();
    store
        .put(
            &key_file_key(new_id),
            serde_json::to_vec(&v).unwrap().into(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn unlocking_skips_costly_files_bounds_the_count_and_tries_the_named_key_first() {
    let (_dir, store) = store().await;
    let u = create(&store, &pass("one"), FAST, &origin()).await.unwrap();
    let limits = UnlockLimits::default();
    // 512 MiB, above the default 256 MiB: skipped without being derived, and named.
    let costly = "0".repeat(32);
    plant(&store, &u.key_id, &costly, 512 * 1024, FAST.t_cost).await;
    let e = unlock_with(&store, &pass("two"), Expect::Any, None, limits)
        .await
        .unwrap_err();
    assert!(matches!(e, KeyError::NoMatchingKey { tried: 1, .. }), "{e}");
    assert!(e.to_string().contains(&key_file_key(&costly)), "{e}");
    assert!(e.to_string().contains("512 MiB"), "{e}");

    // More files than the bound, listed before the store's key: only the bound is read…
    for i in 1..=6 {
        plant(
            &store,
            &u.key_id,
            &format!("{i:032x}"),
            FAST.m_cost_kib,
            FAST.t_cost,
        )
        .await;
    }
    let small = UnlockLimits {
        max_files: 4,
        ..limits
    };
    let e = unlock_with(&store, &pass("one"), Expect::Any, None, small)
        .await
        .unwrap_err();
    assert!(matches!(e, KeyError::NoMatchingKey { tried: 3, .. }), "{e}");
    assert!(e.to_string().contains("4 more key files not tried"), "{e}");
    // …and the key `cluster.json` names is read first, so it is found.
    let got = unlock_with(&store, &pass("one"), Expect::Any, Some(&u.key_id), small)
        .await
        .unwrap();
    assert_eq!(got.key_id, u.key_id);
    // A key that opens, but not the master key asked for, is passed over.
    let e = unlock_with(
        &store,
        &pass("one"),
        Expect::KeyCheck("another store's"),
        Some(&u.key_id),
        small,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("another store's master key"), "{e}");
}
