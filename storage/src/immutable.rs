//! Writing objects that must never change: WAL segments, history files, chunks.
//!
//! DESIGN.md: "Re-uploading an object whose content hash matches is a no-op; a different hash
//! under the same name is an alarm (error + metric), never an overwrite."
//!
//! [`put_immutable`] relies on the envelope header (which carries the blake3 hash of the raw
//! content, keyed in an encrypted store, so equal content compares equal even though each
//! encrypted body has its own nonce) rather than on ETags, which differ between multipart and single uploads and
//! between services. On a store that enforces `If-None-Match: *`
//! ([`ObjectStore::enforces_conditional_put`]: fs, AWS S3, R2, MinIO) it is one request in the
//! usual case: `put_if_absent`, and only when that answers `Exists`, a read of the existing
//! header to compare (step 1). Elsewhere (Garage) the sequence is:
//!
//! 1. read the existing header (a ranged GET of [`MAX_HEADER_LEN`] bytes: an encrypted
//!    header, or a plaintext one and the start of its payload): same hash → nothing to do;
//!    different hash → [`StoreError::Conflict`];
//! 2. absent → `put_if_absent` (`If-None-Match: *` on S3): `Exists` → compare as in 1;
//! 3. `Created` → read the header back and compare. This catches services that ignore
//!    `If-None-Match` (Garage up to at least 2.5) when another writer's different content won
//!    the race: the loser sees the other hash and reports a conflict instead of success.
//!
//! On such services, two writers with different content racing within one request time can
//! still both read back their own header if their PUTs and read-backs interleave exactly
//! (A puts, A reads, B puts, B reads): the object then holds B's content and A believed it
//! wrote. pgagent keeps one writer per prefix (`cluster.json` identity, one agent per
//! cluster), so this needs two agents misconfigured onto one prefix; `pgagent verify` reports
//! the result. Services that enforce the header (AWS S3, R2, MinIO) close the window.

use bytes::Bytes;

use crate::envelope::{Header, Sealed, MAX_HEADER_LEN};
use crate::error::StoreError;
use crate::object_store::{ObjectStore, PutOutcome};

/// Result of [`put_immutable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImmutablePut {
    /// This call stored the object.
    Created,
    /// An object with the same content hash was already stored; nothing was written.
    AlreadyPresent,
}

/// Stores `sealed` at `key` unless identical content is already there; never overwrites
/// different content (see the module documentation for the exact sequence).
///
/// Errors: [`StoreError::Conflict`] if `key` holds an object with another content hash;
/// [`StoreError::Corrupt`] if it holds something that is not a valid envelope; any error of
/// the store operations (retry when [`StoreError::is_transient`]).
pub async fn put_immutable(
    store: &dyn ObjectStore,
    key: &str,
    sealed: &Sealed,
) -> Result<ImmutablePut, StoreError> {
    if store.enforces_conditional_put() {
        return match store.put_if_absent(key, sealed.body.clone()).await? {
            PutOutcome::Created => Ok(ImmutablePut::Created),
            PutOutcome::Exists => match check_existing(store, key, sealed).await? {
                Existing::Same => Ok(ImmutablePut::AlreadyPresent),
                // Deleted between the write and the read (a prune racing): the caller retries.
                Existing::Absent => Err(vanished(key)),
            },
        };
    }
    if check_existing(store, key, sealed).await? == Existing::Same {
        return Ok(ImmutablePut::AlreadyPresent);
    }
    let outcome = store.put_if_absent(key, sealed.body.clone()).await?;
    match (outcome, check_existing(store, key, sealed).await?) {
        (PutOutcome::Exists, Existing::Same) => Ok(ImmutablePut::AlreadyPresent),
        (PutOutcome::Created, Existing::Same) => Ok(ImmutablePut::Created),
        // Deleted between the write and the read (a prune racing): the caller retries.
        (_, Existing::Absent) => Err(vanished(key)),
    }
}

fn vanished(key: &str) -> StoreError {
    StoreError::Transient {
        key: key.to_string(),
        op: crate::error::Op::Put,
        detail: "object vanished between its conditional put and the read-back".to_string(),
        source: None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Absent,
    Same,
}

/// Reads the stored header; a different hash is returned as [`StoreError::Conflict`].
async fn check_existing(
    store: &dyn ObjectStore,
    key: &str,
    sealed: &Sealed,
) -> Result<Existing, StoreError> {
    let head = match store.get_range(key, 0, MAX_HEADER_LEN as u64).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Existing::Absent),
        Err(e) => return Err(e),
    };
    let existing = parse(key, &head)?;
    if existing.hash == sealed.hash {
        Ok(Existing::Same)
    } else {
        Err(StoreError::Conflict {
            key: key.to_string(),
            existing: existing.hash.to_hex().to_string(),
            new: sealed.hash.to_hex().to_string(),
        })
    }
}

fn parse(key: &str, head: &Bytes) -> Result<Header, StoreError> {
    Header::parse(head).map_err(|e| e.with_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::envelope::seal_for;

    const NAME: &str = "wal/000000010000000000000003";

    #[tokio::test]
    async fn put_immutable_compares_keyed_hashes_of_encrypted_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        let c = MasterKey::generate().cipher();
        let raw: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        // Sealed twice: other nonces, other bodies, the same keyed hash.
        let first = seal_for(&raw, 3, Some(&c), NAME);
        let again = seal_for(&raw, 3, Some(&c), NAME);
        assert_ne!(first.body, again.body);
        let put = |s: Sealed| {
            let store = &store;
            async move { put_immutable(store, NAME, &s).await }
        };
        assert_eq!(put(first.clone()).await.unwrap(), ImmutablePut::Created);
        assert_eq!(put(again).await.unwrap(), ImmutablePut::AlreadyPresent);
        let other = seal_for(b"other", 3, Some(&c), NAME);
        assert!(put(other).await.unwrap_err().is_conflict());
        assert_eq!(store.get(NAME).await.unwrap(), first.body);
    }
}
