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
