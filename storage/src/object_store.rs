//! The store trait: the few operations pgagent needs from a bucket, and what they return.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::lock::{LockPolicy, Retention};

/// The part of a full listing `listed` (in key order) that [`ObjectStore::list_after`]
/// returns: keys strictly after `after`, at most `limit` of them. For stores whose listing
/// costs the same either way (a local directory, a simulation).
pub fn list_window(mut listed: Vec<ObjectMeta>, after: &str, limit: usize) -> Vec<ObjectMeta> {
    listed.retain(|m| m.key.as_str() > after);
    listed.truncate(limit);
    listed
}

/// Metadata of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store prefix.
    pub key: String,
    /// Size of the stored body in bytes (the envelope, not the raw content).
    pub size: u64,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<SystemTime>,
}

/// Result of [`ObjectStore::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds the given body.
    Created,
    /// The object already existed; nothing was written.
    Exists,
}

/// A flat key → bytes store: a bucket prefix, or a directory.
///
/// Keys are relative to the store's prefix, `/`-separated, and must pass
/// [`validate_key`](crate::layout::validate_key) (every method returns [`StoreError::InvalidKey`] otherwise, without
/// touching the store). Errors name the key; retry only [`StoreError::is_transient`] ones.
/// Every backend passes the [`conformance`](crate::conformance) suite.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Creates or replaces the object at `key` with `body`.
    ///
    /// The object is either wholly replaced or untouched; on success it is durable (fs:
    /// fsynced; S3: acknowledged by the service).
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;

    /// Creates the object at `key` only if no object exists there.
    ///
    /// Returns [`PutOutcome::Exists`] without writing if the object exists. The fs backend
    /// decides atomically. The S3 backend sends `If-None-Match: *` and maps HTTP 412 to
    /// `Exists`; some servers (Garage up to at least 2.5) ignore that header and overwrite, so
    /// callers that need immutability must read the object back (as
    /// [`put_immutable`](crate::immutable::put_immutable) does); [`ObjectStore::enforces_conditional_put`] tells which kind
    /// of store this is.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError>;

    /// Returns the whole body of `key`.
    ///
    /// Returns [`StoreError::NotFound`] if no object exists at `key`.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Returns up to `len` bytes of `key` starting at byte offset `start`.
    ///
    /// Returns fewer bytes when the object ends first, and an empty body when `start` is at
    /// or past the end. Returns [`StoreError::NotFound`] if no object exists at `key`.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError>;

    /// Returns the metadata of `key`, or `None` if no object exists there.
    ///
    /// On S3 a missing bucket also gives `None` (a HEAD response has no body to tell the two
    /// 404s apart); [`ObjectStore::get`] reports it as [`StoreError::Config`]. Decide that an
    /// object is absent with `get`/`get_range` where it matters (restore_command).
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Returns every object whose key starts with `prefix` (a plain string prefix, not only
    /// whole segments: `"wal/00000002"` matches `"wal/000000020000000000000001"`), sorted by
    /// key in byte order. The backend pages through the listing itself. An empty prefix lists
    /// the whole store. `prefix` must pass [`validate_prefix`](crate::layout::validate_prefix).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Returns, in key order, the first `limit` objects whose key starts with `prefix` and
    /// sorts strictly after `after` in byte order (`after` need not exist): a bounded look
    /// at what follows a key, e.g. the next WAL object after a segment. The S3 backend sends
    /// one `ListObjectsV2` request (`StartAfter`, `MaxKeys`) for a `limit` up to 1000, where
    /// [`ObjectStore::list`] pages through the whole prefix. `prefix` and `after` must pass
    /// [`validate_prefix`](crate::layout::validate_prefix).
    ///
    /// Every store implements it: no default lists the whole prefix behind a caller's back.
    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Deletes `key`. Succeeds if the object does not exist (idempotent).
    ///
    /// On a versioned S3 bucket this adds a delete marker: the versions below it stay, and a
    /// store read [`as of`](crate::config::StoreOptions::as_of) an earlier time finds them.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// The S3 Object Lock retention of the current version of `key` (with `as_of`, of the
    /// version current then; S3: `HeadObject`'s `x-amz-object-lock-*` headers).
    /// `Ok(None)` when it carries none, and always on stores without object lock (fs).
    ///
    /// Errors: [`StoreError::NotFound`] if no object exists at `key`.
    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError>;

    /// Makes the lock of the current version of `key` last at least until `until`, in the
    /// mode of [`ObjectStore::lock_policy`] (S3: `PutObjectRetention`, sent only when the
    /// version's lock ends before `until`: a lock is never shortened).
    ///
    /// Errors: [`StoreError::Config`] on a store that writes no lock;
    /// [`StoreError::NotFound`] if no object exists at `key`.
    async fn extend_retention(&self, key: &str, until: SystemTime) -> Result<(), StoreError>;

    /// The lock every write carries, if any.
    fn lock_policy(&self) -> Option<LockPolicy>;

    /// Whether [`ObjectStore::put_if_absent`] is known to be enforced by the store. `false`
    /// means the store may overwrite instead of answering `Exists`.
    fn enforces_conditional_put(&self) -> bool;

    /// The store location for logs and messages, without credentials.
    fn describe(&self) -> String;
}
