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

use crate::crypto::kdf::KdfParams;
use crate::crypto::keyfile::{info, is_key_id, kdf_params, parse, unwrap, wrap, KeyFile};
pub use crate::crypto::keyfile::{
    KeyInfo, KeyOrigin, KEY_FORMAT_VERSION, KEY_ID_LEN, WRAP_CONTEXT,
};
use crate::crypto::{KeyError, MasterKey, ObjectCipher, Passphrase};
use crate::layout::{key_file_key, KEY_PREFIX};
use crate::object_store::{ObjectStore, PutOutcome};

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

/// Bounds on what one unlock may cost. Key files come from the bucket, which others may
/// write: without bounds, every start of every agent would run each file's Argon2 costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlockLimits {
    /// Most memory one key derivation may take, in KiB; a key file asking for more is
    /// skipped with a warning naming it (it is never derived).
    pub max_m_cost_kib: u32,
    /// Most key files read in one unlock, the first one tried included.
    pub max_files: usize,
}

impl UnlockLimits {
    /// Default memory bound: 256 MiB, four times what [`KdfParams::DEFAULT`] takes.
    pub const DEFAULT_MAX_M_COST_KIB: u32 = 256 * 1024;
    /// Default bound on the key files read: 16, more than a store rotating its keys holds.
    pub const DEFAULT_MAX_FILES: usize = 16;
}

impl Default for UnlockLimits {
    fn default() -> Self {
        UnlockLimits {
            max_m_cost_kib: Self::DEFAULT_MAX_M_COST_KIB,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }
}

/// Which master key an unlock must find.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// Any key that opens (a store with neither `cluster.json` nor sealed objects).
    Any,
    /// The master key with this [`ObjectCipher::key_check`] (from `cluster.json`).
    KeyCheck(&'a str),
    /// The master key that opens this sealed object (`key`, its `body`): for a store that
    /// lost its `cluster.json`.
    Opens {
        /// The object's key.
        key: &'a str,
        /// Its whole body.
        body: &'a [u8],
    },
}

impl Expect<'_> {
    fn accepts(&self, master: &MasterKey) -> bool {
        match self {
            Expect::Any => true,
            Expect::KeyCheck(want) => master.cipher().key_check() == *want,
            Expect::Opens { key, body } => {
                crate::envelope::open_for(body, Some(&master.cipher()), key).is_ok()
            }
        }
    }
}

/// Unlocks the store with `passphrase`, with no expectation on the master key beyond
/// `expected_key_check` and the default [`UnlockLimits`]: [`unlock_with`] for tools and
/// tests.
///
/// Errors: as [`unlock_with`].
pub async fn unlock(
    store: &dyn ObjectStore,
    passphrase: &Passphrase,
    expected_key_check: Option<&str>,
) -> Result<Unlocked, KeyError> {
    let expect = expected_key_check.map_or(Expect::Any, Expect::KeyCheck);
    unlock_with(store, passphrase, expect, None, UnlockLimits::default()).await
}

/// Unlocks the store with `passphrase`: tries key files until one opens a master key that
/// `expect` accepts. The key file `first` (the one `cluster.json` names) is tried first,
/// then the others in id order, at most `limits.max_files` files in all; a file asking for
/// more than `limits.max_m_cost_kib` is skipped without being derived.
///
/// Key files that cannot be used, that ask for too much memory, that open another master
/// key, and those past the bound are named in the error if no key opens (and logged as
/// warnings).
///
/// Errors: [`KeyError::NoKeys`], [`KeyError::NoMatchingKey`], [`KeyError::Store`].
pub async fn unlock_with(
    store: &dyn ObjectStore,
    passphrase: &Passphrase,
    expect: Expect<'_>,
    first: Option<&str>,
    limits: UnlockLimits,
) -> Result<Unlocked, KeyError> {
    let mut ids = key_ids(store).await?;
    if ids.is_empty() {
        return Err(KeyError::NoKeys);
    }
    if let Some(pos) = first.and_then(|f| ids.iter().position(|i| i == f)) {
        let named = ids.remove(pos);
        ids.insert(0, named);
    }
    let mut skipped = Vec::new();
    let mut tried = 0;
    if ids.len() > limits.max_files {
        let left = ids.split_off(limits.max_files);
        let note = format!(
            "{} more key files not tried (at most {} are read per unlock), the first {}",
            left.len(),
            limits.max_files,
            key_file_key(&left[0])
        );
        tracing::warn!("{note}");
        skipped.push(note);
    }
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
        let m_cost = kdf_params(&file).m_cost_kib;
        if m_cost > limits.max_m_cost_kib {
            let note = format!(
                "{key} asks for {} MiB of memory, more than the {} MiB one unlock may take \
                 (encryption.max_unlock_memory)",
                m_cost / 1024,
                limits.max_m_cost_kib / 1024
            );
            tracing::warn!("skipping a key file: {note}");
            skipped.push(note);
            continue;
        }
        tried += 1;
        let pass = passphrase.clone();
        let Some(master) = blocking(move || unwrap(&file, &pass)).await? else {
            continue;
        };
        if !expect.accepts(&master) {
            let note = match expect {
                Expect::Opens { key: object, .. } => format!(
                    "{key} opens, but holds a master key that does not open {object} \
                     (another store's key)"
                ),
                _ => format!(
                    "{key} opens, but holds another store's master key than cluster.json \
                     records"
                ),
            };
            tracing::warn!("{note}");
            skipped.push(note);
            continue;
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
/// Stores have no conditional delete, so the rule is checked again after the delete: if the
/// caller's own key is gone by then (another `key remove` at the same time), the removed key
/// is written back and [`KeyError::RemovalRaced`] returned.
///
/// Errors: [`KeyError::UnknownKey`], [`KeyError::InUse`], [`KeyError::LastKey`],
/// [`KeyError::RemovalRaced`], [`KeyError::Store`].
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
    let key = key_file_key(id);
    let body = match store.get(&key).await {
        Ok(body) => body,
        Err(e) if e.is_not_found() => return Err(KeyError::UnknownKey { id: id.to_string() }),
        Err(e) => return Err(e.into()),
    };
    store.delete(&key).await?;
    // Another removal may have run at once with the passphrase of the key removed here,
    // removing the caller's: each saw another key left, together they left none. The
    // caller's key is the one known to hold the store's master key; if it is gone now (or
    // that cannot be told), the key removed here goes back.
    let ours_left = matches!(
        store.head(&key_file_key(&unlocked.key_id)).await,
        Ok(Some(_))
    );
    if !ours_left {
        store.put(&key, body).await?;
        return Err(KeyError::RemovalRaced {
            id: id.to_string(),
            ours: unlocked.key_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "keys_tests.rs"]
pub(crate) mod tests;
