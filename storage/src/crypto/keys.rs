//! Access keys: `keys/<id>` objects, each the store's master key wrapped under a key derived
//! from one passphrase.
//!
//! A key file is plain JSON (not an envelope: it must be readable before any key is known):
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "id": "5f0c6a3e9b1d47a2c8e4f6b0a1d2c3e4",
//!   "created_at": "2026-12-01T10:00:00Z",
//!   "hostname": "db1",
//!   "username": "postgres",
//!   "kdf": { "algorithm": "argon2id", "version": 19, "m_cost_kib": 65536, "t_cost": 3,
//!            "p_cost": 1, "salt": "<64 hex>" },
//!   "wrap": { "algorithm": "xchacha20poly1305", "nonce": "<48 hex>",
//!             "ciphertext": "<96 hex: 32-byte master key + 16-byte tag>" }
//! }
//! ```
//!
//! The wrap's associated data is [`WRAP_CONTEXT`] followed by the id, so a key file renamed
//! to another id does not open. The id is 16 random bytes in hex. Host and user say where a
//! key was made, for `pgagent key list`; they are not secret and not authenticated.
//!
//! Removal rule: a key is removed only when the caller unlocked the store with *another* key
//! ([`KeyError::InUse`]), which also means the last key is never removed
//! ([`KeyError::LastKey`] guards it anyway). Rotation is `key add`, switch the configured
//! passphrase, `key remove` the old id — as restic does it.

use bytes::Bytes;
use serde::Serialize;

use super::kdf::KdfParams;
use super::keyfile::{info, is_key_id, parse, unwrap, wrap, KeyFile};
use super::{KeyError, MasterKey, ObjectCipher, Passphrase};
use crate::layout::{key_file_key, KEY_PREFIX};
use crate::{ObjectStore, PutOutcome};

/// Key file format version written by this build.
pub const KEY_FORMAT_VERSION: u32 = 1;
/// Start of the associated data of the master key wrap (the id follows).
pub const WRAP_CONTEXT: &[u8] = b"pgagent keys/ master key wrap v1\0";
/// Length of a key id in hex digits (16 random bytes).
pub const KEY_ID_LEN: usize = 32;

/// Who made a key, recorded in its file for `pgagent key list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// Host name of the machine.
    pub hostname: String,
    /// OS user name of the process.
    pub username: String,
}

/// What `pgagent key list` shows of one key file: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The id (`keys/<id>`).
    pub id: String,
    /// When the key was added, RFC 3339 UTC.
    pub created_at: String,
    /// Host it was added on.
    pub hostname: String,
    /// OS user that added it.
    pub username: String,
    /// Its Argon2id costs.
    pub kdf: KdfParams,
}

/// A store unlocked with one passphrase: its master key, and which key file opened it.
#[derive(Debug)]
pub struct Unlocked {
    /// The store's master key.
    pub master: MasterKey,
    /// Id of the key file the passphrase opened.
    pub key_id: String,
}

impl Unlocked {
    /// The derived keys objects are sealed with.
    pub fn cipher(&self) -> ObjectCipher {
        self.master.cipher()
    }
}

/// Runs a blocking Argon2id step off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("key derivation does not panic")
}

/// Ids of the key files under `keys/`, in key order.
async fn key_ids(store: &dyn ObjectStore) -> Result<Vec<String>, KeyError> {
    Ok(store
        .list(KEY_PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| m.key.strip_prefix(KEY_PREFIX).map(str::to_string))
        .collect())
}

async fn write_key_file(store: &dyn ObjectStore, f: &KeyFile) -> Result<(), KeyError> {
    let key = key_file_key(&f.id);
    let mut body = serde_json::to_vec_pretty(f).expect("KeyFile serializes");
    body.push(b'\n');
    // Ids are random: Exists means a 128-bit collision, i.e. a broken random source.
    match store.put_if_absent(&key, Bytes::from(body.clone())).await? {
        PutOutcome::Created => {}
        PutOutcome::Exists => {
            return Err(KeyError::corrupt(&key, "a key with this random id exists"))
        }
    }
    if store.get(&key).await?[..] != body[..] {
        return Err(KeyError::corrupt(
            &key,
            "reads back different from what was written",
        ));
    }
    Ok(())
}

/// Makes a new master key and an access key for it, opened by `passphrase`, and writes
/// that key file. The master key is the store's only once `cluster.json` records it: the
/// caller claims the store with it ([`super::access::claim`]) and deletes this key file if
/// another writer's claim won.
///
/// Errors: [`KeyError::Store`]; [`KeyError::Corrupt`] if the file does not read back.
pub async fn create(
    store: &dyn ObjectStore,
    passphrase: &Passphrase,
    params: KdfParams,
    origin: &KeyOrigin,
) -> Result<Unlocked, KeyError> {
    let master = MasterKey::generate();
    let file = {
        let (pass, origin) = (passphrase.clone(), origin.clone());
        let copy = master.duplicate();
        blocking(move || wrap(&copy, &pass, params, &origin)).await?
    };
    write_key_file(store, &file).await?;
    Ok(Unlocked {
        master,
        key_id: file.id,
    })
}

/// Unlocks the store with `passphrase`: tries every key file until one opens.
///
/// With `expected_key_check` (from `cluster.json`), a key that opens but holds another
/// store's master key is skipped. Unreadable key files are skipped too, and both are named
/// in the error if no key opens.
///
/// Errors: [`KeyError::NoKeys`], [`KeyError::NoMatchingKey`], [`KeyError::Store`].
pub async fn unlock(
    store: &dyn ObjectStore,
    passphrase: &Passphrase,
    expected_key_check: Option<&str>,
) -> Result<Unlocked, KeyError> {
    let ids = key_ids(store).await?;
    if ids.is_empty() {
        return Err(KeyError::NoKeys);
    }
    let mut skipped = Vec::new();
    let mut tried = 0;
    for id in &ids {
        let key = key_file_key(id);
        let file = match store.get(&key).await {
            Ok(body) => match parse(&key, &body) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "skipping an unusable key file");
                    skipped.push(e.to_string());
                    continue;
                }
            },
            Err(e) if e.is_not_found() => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        tried += 1;
        let pass = passphrase.clone();
        let Some(master) = blocking(move || unwrap(&file, &pass)).await? else {
            continue;
        };
        if let Some(want) = expected_key_check {
            if master.cipher().key_check() != want {
                skipped.push(format!(
                    "{key} opens, but holds another store's master key than cluster.json records"
                ));
                continue;
            }
        }
        return Ok(Unlocked {
            master,
            key_id: id.clone(),
        });
    }
    Err(KeyError::NoMatchingKey { tried, skipped })
}

/// Adds an access key for `passphrase` to the store whose master key is `master`; returns
/// what `list` will show of it.
///
/// Errors: [`KeyError::Store`].
pub async fn add(
    store: &dyn ObjectStore,
    master: &MasterKey,
    passphrase: &Passphrase,
    params: KdfParams,
    origin: &KeyOrigin,
) -> Result<KeyInfo, KeyError> {
    let (pass, origin) = (passphrase.clone(), origin.clone());
    let copy = master.duplicate();
    let file = blocking(move || wrap(&copy, &pass, params, &origin)).await?;
    write_key_file(store, &file).await?;
    Ok(info(&file))
}

/// The store's key files, in id order.
///
/// Errors: [`KeyError::Corrupt`] naming an unusable key file; [`KeyError::Store`].
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<KeyInfo>, KeyError> {
    let mut out = Vec::new();
    for id in key_ids(store).await? {
        let key = key_file_key(&id);
        match store.get(&key).await {
            Ok(body) => out.push(info(&parse(&key, &body)?)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Removes key `id`. `unlocked` is how the caller opened the store: the key it used is never
/// removed (see the module documentation).
///
/// Errors: [`KeyError::UnknownKey`], [`KeyError::InUse`], [`KeyError::LastKey`],
/// [`KeyError::Store`].
pub async fn remove(
    store: &dyn ObjectStore,
    id: &str,
    unlocked: &Unlocked,
) -> Result<(), KeyError> {
    let ids = key_ids(store).await?;
    if !is_key_id(id) || !ids.iter().any(|i| i == id) {
        return Err(KeyError::UnknownKey { id: id.to_string() });
    }
    if ids.len() == 1 {
        return Err(KeyError::LastKey { id: id.to_string() });
    }
    if id == unlocked.key_id {
        return Err(KeyError::InUse { id: id.to_string() });
    }
    store.delete(&key_file_key(id)).await?;
    Ok(())
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
