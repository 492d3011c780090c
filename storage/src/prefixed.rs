//! A view of a store below a sub-prefix.
//!
//! Used by the conformance suite to work in a scratch namespace of a shared bucket, and by
//! tools that keep several stores side by side.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::layout::{validate_key, validate_prefix};
use crate::lock::{LockPolicy, Retention};
use crate::object_store::{ObjectMeta, ObjectStore, PutOutcome};

/// The objects of `inner` whose keys start with `prefix/`, seen with that prefix removed.
#[derive(Debug, Clone)]
pub struct PrefixedStore {
    inner: Arc<dyn ObjectStore>,
    /// Ends with `/`.
    prefix: String,
}

impl PrefixedStore {
    /// Wraps `inner` so that key `k` maps to `prefix/k`. `prefix` must be a valid key
    /// (a trailing `/` is accepted and ignored).
    ///
    /// Errors: [`StoreError::InvalidKey`].
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Result<PrefixedStore, StoreError> {
        let trimmed = prefix.trim_end_matches('/');
        validate_key(trimmed)?;
        Ok(PrefixedStore {
            inner,
            prefix: format!("{trimmed}/"),
        })
    }

    /// The underlying store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn strip(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::NotFound { key } => StoreError::NotFound {
                key: self.unprefixed(key),
            },
            StoreError::AlreadyExists { key } => StoreError::AlreadyExists {
                key: self.unprefixed(key),
            },
            other => other,
        }
    }

    fn unprefixed(&self, key: String) -> String {
        match key.strip_prefix(&self.prefix) {
            Some(k) => k.to_string(),
            None => key,
        }
    }
}

#[async_trait]
impl ObjectStore for PrefixedStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full(key)?;
        self.inner.put(&full, body).await.map_err(|e| self.strip(e))
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        let full = self.full(key)?;
        let r = self.inner.put_if_absent(&full, body).await;
        r.map_err(|e| self.strip(e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let full = self.full(key)?;
        self.inner.get(&full).await.map_err(|e| self.strip(e))
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let full = self.full(key)?;
        let r = self.inner.get_range(&full, start, len).await;
        r.map_err(|e| self.strip(e))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full = self.full(key)?;
        let meta = self.inner.head(&full).await.map_err(|e| self.strip(e))?;
        Ok(meta.map(|m| ObjectMeta {
            key: key.to_string(),
            ..m
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        let items = self.inner.list(&full).await?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let key = m.key.strip_prefix(&self.prefix)?.to_string();
                Some(ObjectMeta { key, ..m })
            })
            .collect())
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        validate_prefix(after)?;
        let full = format!("{}{prefix}", self.prefix);
        let after = format!("{}{after}", self.prefix);
        let items = self.inner.list_after(&full, &after, limit).await?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let key = m.key.strip_prefix(&self.prefix)?.to_string();
                Some(ObjectMeta { key, ..m })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full(key)?;
        self.inner.delete(&full).await.map_err(|e| self.strip(e))
    }

    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        let full = self.full(key)?;
        self.inner.retention(&full).await.map_err(|e| self.strip(e))
    }

    async fn extend_retention(&self, key: &str, until: SystemTime) -> Result<(), StoreError> {
        let full = self.full(key)?;
        let r = self.inner.extend_retention(&full, until).await;
        r.map_err(|e| self.strip(e))
    }

    fn lock_policy(&self) -> Option<LockPolicy> {
        self.inner.lock_policy()
    }

    fn enforces_conditional_put(&self) -> bool {
        self.inner.enforces_conditional_put()
    }

    fn describe(&self) -> String {
        format!("{} (under {})", self.inner.describe(), self.prefix)
    }
}
