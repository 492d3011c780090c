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
//! | absent | set | unlock; a writer ([`writer_cipher`]) on a store without keys creates the master key and the first access key |
//!
//! A writer then claims the store with [`EncryptionInfo::of`] the cipher in `cluster.json`
//! ([`crate::cluster::ensure_cluster`]), which also catches a writer that lost a race to
//! another one that created different keys.
//!
//! [`EncryptionInfo::of`]: crate::cluster::EncryptionInfo::of

use super::keys::{self, KeyOrigin};
use super::{KdfParams, KeyError, ObjectCipher, Passphrase};
use crate::cluster::{check_encryption, read_cluster};
use crate::error::StoreError;
use crate::layout::{CLUSTER_KEY, KEY_PREFIX};
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
    decide(store, passphrase, None).await
}

/// The cipher of a command that writes the store (`run`, `backup`): as [`reader_cipher`],
/// and on a store with neither `cluster.json` nor keys, with a passphrase configured, it
/// creates the store's master key and first access key ([`keys::create`]) with `params`
/// and `origin`.
///
/// Errors: as [`reader_cipher`], and [`KeyError::Contended`] from [`keys::create`].
pub async fn writer_cipher(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
    params: KdfParams,
    origin: &KeyOrigin,
) -> Result<Option<ObjectCipher>, KeyError> {
    decide(store, passphrase, Some((params, origin))).await
}

async fn decide(
    store: &dyn ObjectStore,
    passphrase: Option<&Passphrase>,
    create: Option<(KdfParams, &KeyOrigin)>,
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
        None => match create {
            Some((params, origin)) if !has_keys(store).await? => {
                keys::create(store, passphrase, params, origin).await?
            }
            _ => keys::unlock(store, passphrase, None).await?,
        },
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

    #[tokio::test]
    async fn the_decision_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        let p = Passphrase::new("s3cret").unwrap();
        let other = Passphrase::new("other").unwrap();

        // Empty store: a reader without passphrase sees plaintext; a reader with one finds
        // no keys; a writer creates them.
        assert!(reader_cipher(&store, None).await.unwrap().is_none());
        let e = reader_cipher(&store, Some(&p)).await.unwrap_err();
        assert!(matches!(e, KeyError::NoKeys), "{e}");
        let w = writer_cipher(&store, Some(&p), FAST, &origin())
            .await
            .unwrap()
            .unwrap();
        // Keys but no cluster.json yet: the same passphrase unlocks the same master key.
        let r = reader_cipher(&store, Some(&p)).await.unwrap().unwrap();
        assert_eq!(r.key_check(), w.key_check());
        let again = writer_cipher(&store, Some(&p), FAST, &origin()).await;
        assert_eq!(again.unwrap().unwrap().key_check(), w.key_check());
        let e = reader_cipher(&store, None).await.unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        let e = reader_cipher(&store, Some(&other)).await.unwrap_err();
        assert!(e.is_wrong_passphrase(), "{e}");

        // Claimed as encrypted.
        ensure_cluster(&store, &cluster(Some(EncryptionInfo::of(&w))))
            .await
            .unwrap();
        let r = reader_cipher(&store, Some(&p)).await.unwrap().unwrap();
        assert_eq!(r.key_check(), w.key_check());
        let e = writer_cipher(&store, None, FAST, &origin())
            .await
            .unwrap_err();
        assert!(e.store_error().is_some_and(StoreError::is_encrypted), "{e}");
        // A plaintext claim of the encrypted store is refused.
        let e = ensure_cluster(&store, &cluster(None)).await.unwrap_err();
        assert!(e.is_encrypted(), "{e}");
    }

    #[tokio::test]
    async fn a_plaintext_store_refuses_a_passphrase_and_never_gets_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        ensure_cluster(&store, &cluster(None)).await.unwrap();
        let p = Passphrase::new("s3cret").unwrap();
        let e = writer_cipher(&store, Some(&p), FAST, &origin())
            .await
            .unwrap_err();
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
