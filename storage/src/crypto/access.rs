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
#[path = "access_tests.rs"]
mod tests;
