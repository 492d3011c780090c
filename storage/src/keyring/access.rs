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
//! ([`EncryptionInfo::of`]). Writers that find no `cluster.json` agree on the one they
//! write ([`crate::agreement`]), so of several creating keys at once one keeps its key and
//! every writer seals with it. A store's master key never changes by itself: no writer makes a new one for
//! a store that holds keys or sealed objects, even when its `cluster.json` is gone.
//!
//! Unlocking is bounded ([`UnlockLimits`]) and tries the key file `cluster.json` names
//! first.

use bytes::Bytes;

use super::keys::{self, Expect, KeyOrigin, UnlockLimits};
use crate::agreement;
use crate::cluster::{
    check_encryption, check_same_cluster, read_cluster, ClusterInfo, EncryptionInfo,
    ENCRYPTED_STORE_FORMAT_VERSION,
};
use crate::crypto::{KdfParams, KeyError, ObjectCipher, Passphrase};
use crate::envelope::Header;
use crate::error::StoreError;
use crate::layout::{
    key_file_key, BACKUP_PREFIX, CHUNK_PREFIX, CLUSTER_KEY, DRILL_PREFIX, KEY_PREFIX,
    SNAPSHOT_PREFIX, WAL_PREFIX,
};
use crate::object_store::ObjectStore;

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

/// Claims `store` for the cluster `ours` (its `encryption` is ignored: the passphrase
/// decides) and returns what `cluster.json` holds and the cipher a writer (`run`, `backup`,
/// `snapshot`) seals objects with. Unlocking keeps to `limits`.
///
/// - `cluster.json` exists: the reader's rule ([`reader_cipher`]), then the identity check.
/// - No `cluster.json`: the writer forms its proposal, and every writer that finds no
///   `cluster.json` agrees on one ([`agreement::agree`], decided only from what each can
///   read back, so a PUT landing late, even after its writer gave up, changes nothing);
///   each then writes the agreed `cluster.json`, byte for byte the same, and takes it.
///   The proposal:
///   - the store holds key files or sealed objects (it lost its `cluster.json`: deleted by
///     hand, by a lifecycle rule): never a new master key. With a passphrase, the key it
///     opens (holding the master key that opens a sealed object, when there is one); a
///     passphrase that opens none, or none configured for a store of sealed objects
///     without keys, is [`KeyError::ClusterJsonMissing`] (refused). No passphrase with
///     keys present: [`StoreError::Encrypted`].
///   - a new store, no passphrase: plaintext.
///   - a new store, a passphrase: a new master key and its first access key
///     ([`keys::create`]); a new store holding plaintext objects is refused
///     ([`StoreError::NotEncrypted`]).
///
///   A writer whose proposal lost then takes the agreed store as any later writer would
///   (a plaintext writer is refused by an encrypted store, and the other way round), and
///   deletes the key file it made, which no object was ever sealed with. No object is
///   written before `cluster.json` exists, and a writer that fails midway keeps its key
///   file (the agreement may still pick it): an unused key file at worst, never a
///   `cluster.json` naming a master key whose file is gone.
///
/// Errors: as [`reader_cipher`]; [`StoreError::ForeignCluster`] (inside [`KeyError::Store`])
/// for another cluster's store; [`KeyError::ClusterJsonMissing`]; the errors of
/// [`agreement::agree`] and of [`write_agreed`].
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
    let mut proposal = ours.clone();
    proposal.encryption = None;
    // The cipher of this writer's proposal, and the key file it made for it (if new).
    let mut own: Option<(ObjectCipher, Option<String>)> = None;
    match passphrase {
        None if holds.keys => {
            return Err(StoreError::Encrypted {
                key: KEY_PREFIX.to_string(),
            }
            .into())
        }
        None => {
            if let Some((key, _)) = &holds.sealed {
                return Err(KeyError::ClusterJsonMissing {
                    holds: format!("sealed objects ({key}) and no key file"),
                    why: "no passphrase is configured, and no key is left to open them".into(),
                });
            }
        }
        Some(p) if holds.keys || holds.sealed.is_some() => {
            let unlocked = reopen(store, p, &holds, limits).await?;
            proposal.encryption = Some(EncryptionInfo::named(&unlocked.cipher(), &unlocked.key_id));
            own = Some((unlocked.cipher(), None));
        }
        Some(_) if holds.plaintext.is_some() => {
            let key = holds.plaintext.clone().unwrap_or_default();
            return Err(StoreError::NotEncrypted { key }.into());
        }
        Some(p) => {
            let created = keys::create(store, p, params, origin).await?;
            proposal.encryption = Some(EncryptionInfo::named(&created.cipher(), &created.key_id));
            own = Some((created.cipher(), Some(created.key_id)));
        }
    }
    if proposal.encryption.is_some() {
        proposal.format_version = proposal.format_version.max(ENCRYPTED_STORE_FORMAT_VERSION);
    }
    let agreed = agreement::agree(store, proposal.clone()).await?;
    let won = agreed.encryption.as_ref().map(|e| &e.key_check)
        == proposal.encryption.as_ref().map(|e| &e.key_check);
    if !won {
        if let Some((_, Some(id))) = &own {
            // The agreed master key is another: this one was never used. Deleting it is
            // tidiness; failing to changes nothing but `pgagent key list`.
            if let Err(e) = store.delete(&key_file_key(id)).await {
                tracing::warn!(key = %key_file_key(id), error = %e, "could not delete the key file of a proposal that lost");
            }
        }
    }
    // The prefix was claimed for another cluster (its `cluster.json` lost, its claim
    // entries left): refused before this writer puts that cluster's identity back.
    check_same_cluster(&agreed, ours)?;
    let stored = write_agreed(store, &agreed).await?;
    if !won {
        return claimed(store, stored, ours, passphrase, limits).await;
    }
    // `stored` is `agreed` (read back by `write_agreed`), already checked above.
    Ok((stored, own.map(|(cipher, _)| cipher)))
}

/// Writes the agreed `cluster.json` (only if absent; a writer that agreed on the same value
/// may have written it already, with the same bytes) and reads it back.
///
/// Errors: [`StoreError::Corrupt`] when what is read back differs from `agreed` (written
/// by a pgagent from before the agreement, or by hand); store errors.
pub async fn write_agreed(
    store: &dyn ObjectStore,
    agreed: &ClusterInfo,
) -> Result<ClusterInfo, StoreError> {
    crate::cluster::put_cluster(store, agreed).await?;
    let stored = crate::cluster::read_back(store).await?;
    if &stored != agreed {
        return Err(StoreError::corrupt(
            CLUSTER_KEY,
            "differs from the one the writers of this store agreed on under claims/ \
             (written by hand, or by a pgagent from before the agreement); compare them \
             and keep the one whose master key opens the store's objects",
        ));
    }
    Ok(stored)
}

/// The key a writer's passphrase opens in a store without `cluster.json` that holds key
/// files or sealed objects: the one whose master key opens a sealed object, when the store
/// holds one.
async fn reopen(
    store: &dyn ObjectStore,
    passphrase: &Passphrase,
    holds: &Holdings,
    limits: UnlockLimits,
) -> Result<keys::Unlocked, KeyError> {
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
    tracing::warn!(
        store = %store.describe(),
        key = %key_file_key(&unlocked.key_id),
        "cluster.json is missing from a store that holds {}: writing it back with the \
         master key this passphrase opens",
        holds.describe()
    );
    Ok(unlocked)
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

#[cfg(test)]
#[path = "access_race_tests.rs"]
mod race_tests;
