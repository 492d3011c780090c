//! Client-side encryption: the store's master key, the keys derived from it, and the
//! passphrases that unlock it (DESIGN.md, "Object envelope"; docs/security.md).
//!
//! The model is restic's:
//!
//! - Each encrypted store has one random 256-bit [`MasterKey`]. It never leaves the process
//!   in plaintext.
//! - `keys/<id>` objects each hold the master key wrapped (XChaCha20-Poly1305) by an access
//!   key derived from one passphrase with Argon2id (the format in `keyfile.rs`, the objects
//!   in [`crate::keyring::keys`]). Any one passphrase unlocks the
//!   store; rotation is "add a key, switch the configuration, remove the old key".
//! - From the master key, [`blake3::derive_key`] derives, under distinct context strings, the
//!   AEAD key that seals object payloads, the key of the keyed blake3 content hashes (so the
//!   bucket never shows a plaintext hash, and chunk names reveal nothing), and a key check
//!   recorded in `cluster.json` that tells one store's master key from another's. They live
//!   in an [`ObjectCipher`], which the read and write paths pass around (cheap to clone).
//!
//! [`crate::keyring::access`] decides, from `cluster.json`, `keys/` and the configured
//! passphrase, whether a command works with a cipher, and creates the keys of a new store.
//! This module holds the primitives only; it reads no store.
//!
//! Primitives are RustCrypto's `chacha20poly1305` and `argon2`, blake3's keyed mode and KDF,
//! randomness from the operating system ([`rand::rngs::OsRng`]); secrets are wiped on drop
//! (`zeroize`) and never printed by `Debug`.

mod error;
pub mod kdf;
pub(crate) mod keyfile;

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use error::KeyError;
pub use kdf::KdfParams;

/// Length of the master key and of every key derived from it, in bytes (256 bits).
pub const KEY_LEN: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce in bytes (192 bits: random nonces never collide in
/// practice, unlike ChaCha20-Poly1305's 96).
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 authentication tag in bytes.
pub const TAG_LEN: usize = 16;

/// blake3 [`derive_key`](blake3::derive_key) contexts: application, date, purpose. Changing
/// one changes every derived key, so they are fixed for the life of the format.
const CONTEXT_OBJECT_AEAD: &str = "pgagent 2026-12-01 envelope XChaCha20-Poly1305 payload key";
const CONTEXT_CONTENT_HASH: &str = "pgagent 2026-12-01 envelope keyed blake3 content hash key";
const CONTEXT_KEY_CHECK: &str = "pgagent 2026-12-01 cluster.json master key check";

/// Fills `buf` from the operating system's random source (`getrandom(2)`).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// A fresh random nonce for one AEAD seal.
pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    random_bytes(&mut n);
    n
}

/// The random 256-bit key of one encrypted store. Wiped from memory on drop; `Debug` never
/// shows it. It lives on the heap so that moving a `MasterKey` leaves no copy behind.
pub struct MasterKey(Box<[u8; KEY_LEN]>);

impl MasterKey {
    /// A new random master key (for a new store).
    pub fn generate() -> MasterKey {
        let mut key = MasterKey(Box::new([0u8; KEY_LEN]));
        random_bytes(&mut key.0[..]);
        key
    }

    /// Takes ownership of unwrapped key bytes (the caller's buffer is zeroized).
    pub(crate) fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> MasterKey {
        let mut key = MasterKey(Box::new([0u8; KEY_LEN]));
        key.0.copy_from_slice(bytes);
        bytes.zeroize();
        key
    }

    /// A second copy of this key (for a blocking task that needs its own).
    pub(crate) fn duplicate(&self) -> MasterKey {
        let mut key = MasterKey(Box::new([0u8; KEY_LEN]));
        key.0.copy_from_slice(&self.0[..]);
        key
    }

    /// The raw key bytes. Only for wrapping it under an access key and for tests that check
    /// it appears nowhere in the bucket; never log or store them.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The keys derived from this master key, as used by the envelope.
    pub fn cipher(&self) -> ObjectCipher {
        let aead_key = Zeroizing::new(blake3::derive_key(CONTEXT_OBJECT_AEAD, &self.0[..]));
        let hash_key = Zeroizing::new(blake3::derive_key(CONTEXT_CONTENT_HASH, &self.0[..]));
        let key_check = blake3::derive_key(CONTEXT_KEY_CHECK, &self.0[..]);
        ObjectCipher(Arc::new(CipherKeys {
            aead: Aead::new(&aead_key),
            hash_key,
            key_check,
        }))
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// The keys an encrypted store's objects are sealed and hashed with, derived from its
/// [`MasterKey`] (see the module documentation). Clone it freely: clones share one
/// allocation, wiped when the last one is dropped.
#[derive(Clone)]
pub struct ObjectCipher(Arc<CipherKeys>);

struct CipherKeys {
    /// Zeroizes its key on drop.
    aead: Aead,
    hash_key: Zeroizing<[u8; KEY_LEN]>,
    key_check: [u8; KEY_LEN],
}

impl ObjectCipher {
    /// A blake3 hasher keyed with this store's content hash key: what the envelope header
    /// and chunk names of an encrypted store hold instead of the plain blake3 hash.
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0.hash_key)
    }

    /// The keyed blake3 hash of `raw` (see [`ObjectCipher::hasher`]).
    pub fn keyed_hash(&self, raw: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0.hash_key, raw)
    }

    /// Lowercase hex of a value derived from the master key that identifies it without
    /// revealing anything about it; `cluster.json` records it so that a key of another store
    /// is told apart from a corrupt object.
    pub fn key_check(&self) -> String {
        hex::encode(self.0.key_check)
    }

    /// The AEAD of object payloads.
    pub(crate) fn aead(&self) -> &Aead {
        &self.0.aead
    }
}

/// XChaCha20-Poly1305 under one key, sealing in place with detached tags.
pub(crate) struct Aead(XChaCha20Poly1305);

impl Aead {
    /// The AEAD keyed with `key` (the cipher zeroizes its copy on drop).
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Aead {
        Aead(XChaCha20Poly1305::new(key.into()))
    }

    /// Encrypts `buf` in place and returns the tag to append.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        associated_data: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .encrypt_in_place_detached(XNonce::from_slice(nonce), associated_data, buf)
            .expect("XChaCha20-Poly1305 seals any buffer below 256 GiB");
        tag.into()
    }

    /// Checks `tag` and decrypts `buf` in place; on `Err` `buf` holds nothing usable.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        associated_data: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), ()> {
        self.0
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                associated_data,
                buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| ())
    }
}

impl fmt::Debug for ObjectCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectCipher")
            .field("key_check", &self.key_check())
            .finish_non_exhaustive()
    }
}

/// A passphrase that unlocks an access key. Wiped from memory on drop; `Debug` never shows
/// it. Any bytes are allowed (a file need not be UTF-8); empty is refused.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Wraps `bytes` as given (no trimming).
    ///
    /// Errors: [`KeyError::EmptyPassphrase`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Passphrase, KeyError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        Ok(Passphrase(bytes))
    }

    /// The passphrase bytes.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for Passphrase {
    /// Byte equality (used to refuse adding a key whose passphrase is the one in use; no
    /// secret is compared against attacker-chosen input, so constant time is not needed).
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_distinct_and_stable() {
        let master = MasterKey::generate();
        let a = master.cipher();
        let b = master.cipher();
        assert_eq!(a.key_check(), b.key_check());
        assert_eq!(a.keyed_hash(b"x"), b.keyed_hash(b"x"));
        assert_ne!(a.keyed_hash(b"x"), blake3::hash(b"x"));
        let derived = [
            blake3::derive_key(CONTEXT_OBJECT_AEAD, master.expose_bytes()),
            blake3::derive_key(CONTEXT_CONTENT_HASH, master.expose_bytes()),
            blake3::derive_key(CONTEXT_KEY_CHECK, master.expose_bytes()),
        ];
        for (i, d) in derived.iter().enumerate() {
            assert_ne!(d, master.expose_bytes());
            for e in &derived[i + 1..] {
                assert_ne!(d, e);
            }
        }
        let other = MasterKey::generate().cipher();
        assert_ne!(other.key_check(), a.key_check());
        assert_ne!(other.keyed_hash(b"x"), a.keyed_hash(b"x"));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let master = MasterKey::generate();
        let hex_key = hex::encode(master.expose_bytes());
        let shown = format!("{master:?} {:?}", master.cipher());
        assert!(!shown.contains(&hex_key), "{shown}");
        assert!(!shown.contains(&format!("{:?}", master.expose_bytes())));
        let p = Passphrase::new("correct horse").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(matches!(
            Passphrase::new(""),
            Err(KeyError::EmptyPassphrase)
        ));
    }

    #[test]
    fn seal_and_open_in_place() {
        let c = MasterKey::generate().cipher();
        let nonce = random_nonce();
        let mut buf = b"payload".to_vec();
        let tag = c.aead().seal_in_place(&nonce, b"ad", &mut buf);
        assert_ne!(&buf, b"payload");
        let mut wrong_ad = buf.clone();
        assert!(c
            .aead()
            .open_in_place(&nonce, b"AD", &mut wrong_ad, &tag)
            .is_err());
        c.aead()
            .open_in_place(&nonce, b"ad", &mut buf, &tag)
            .unwrap();
        assert_eq!(&buf, b"payload");
    }
}
