//! The bucket side of pgagent.
//!
//! - [`ObjectStore`]: the few operations pgagent needs from a bucket, with two backends:
//!   [`fs::FsStore`] (`file:///path`, the embedded default) and [`s3::S3Store`]
//!   (`s3://bucket/prefix?endpoint=…`, any S3-compatible service). [`open`] picks one from a
//!   store URL.
//! - [`envelope`]: the self-verifying object format (zstd + blake3, optionally encrypted).
//! - [`crypto`]: client-side encryption: the master key, the keys derived from it, and the
//!   passphrase-wrapped access keys under `keys/`.
//! - [`layout`]: where each kind of object lives in the store; [`deltas`]: how the segment
//!   being filled is stored as deltas, and how they are put back together.
//! - [`immutable::put_immutable`]: the write path for WAL and chunks, which never overwrites
//!   different content.
//! - [`cluster`]: `cluster.json`, which keeps two clusters from mixing in one prefix.
//! - [`conformance`]: the behaviour every backend must show, runnable against any store.
//! - [`requests`]: [`CountedStore`], which counts the requests a store sends, by operation.

pub mod cluster;
pub mod config;
pub mod conformance;
pub mod crypto;
pub mod deltas;
pub mod drill;
pub mod envelope;
pub mod error;
pub mod fs;
pub mod immutable;
pub mod layout;
pub mod manifest;
pub mod prefixed;
pub mod requests;
pub mod s3;
pub mod snapshot;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::config::{open, S3Location, StoreOptions, StoreUrl};
pub use crate::error::{ErrorKind, Op, StoreError};
pub use crate::immutable::{put_immutable, ImmutablePut};
pub use crate::layout::{validate_key, validate_prefix};
pub use crate::prefixed::PrefixedStore;
pub use crate::requests::{CountedStore, RequestCounts, RequestOp, RequestTotals};

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
/// [`validate_key`] (every method returns [`StoreError::InvalidKey`] otherwise, without
/// touching the store). Errors name the key; retry only [`StoreError::is_transient`] ones.
/// Every backend passes the [`conformance`] suite.
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
    /// [`put_immutable`] does); [`ObjectStore::enforces_conditional_put`] tells which kind
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
    /// the whole store. `prefix` must pass [`validate_prefix`].
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Returns, in key order, the first `limit` objects whose key starts with `prefix` and
    /// sorts strictly after `after` in byte order (`after` need not exist): a bounded look
    /// at what follows a key, e.g. the next WAL object after a segment. The S3 backend sends
    /// one `ListObjectsV2` request (`StartAfter`, `MaxKeys`) for a `limit` up to 1000, where
    /// [`ObjectStore::list`] pages through the whole prefix. `prefix` and `after` must pass
    /// [`validate_prefix`].
    ///
    /// The default filters [`ObjectStore::list`], which is as cheap as it gets for a local
    /// directory.
    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(after)?;
        let mut listed = self.list(prefix).await?;
        listed.retain(|m| m.key.as_str() > after);
        listed.truncate(limit);
        Ok(listed)
    }

    /// Deletes `key`. Succeeds if the object does not exist (idempotent).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Whether [`ObjectStore::put_if_absent`] is known to be enforced by the store. `false`
    /// means the store may overwrite instead of answering `Exists`.
    fn enforces_conditional_put(&self) -> bool;

    /// The store location for logs and messages, without credentials.
    fn describe(&self) -> String;
}
