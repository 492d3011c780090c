//! Several stores read as one, in priority order: how restore and fetch read a cluster kept
//! in more than one store (a NAS near the database, R2 far away).
//!
//! The rules, which decide what `restore_command` answers:
//! - An object is read from the first store, in priority order, that has it. Copies are the
//!   same sealed bytes (and every body is verified after reading), so which store served
//!   does not change what is served.
//! - An object is **absent** only when every store says NotFound. A store that fails in any
//!   other way (unreachable, throttled, denied) leaves the answer open: if no other store has
//!   the object, its error is the answer, so a caller retries it and `pgagent fetch` ends in
//!   exit 255, never 1 ("not found" would end recovery early).
//! - A listing is the union of every store's listing, and needs every store to answer: a
//!   listing that missed a store could make a partial segment look shorter than it is.
//!   Leaving a store out (one known lost) is a choice made above, by not putting it in the set.
//! - The set takes no writes: each store has its own writer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, StoreError};
use crate::lock::{LockPolicy, Retention};
use crate::object_store::{list_window, ObjectMeta, ObjectStore, PutOutcome};

/// One store of a [`ReadSet`], and what it served.
struct Member {
    name: String,
    store: Arc<dyn ObjectStore>,
    /// Objects (or ranges) served from this store.
    objects: AtomicU64,
    /// Bytes of those bodies, as stored (envelopes).
    bytes: AtomicU64,
}

/// What one store of a [`ReadSet`] served, for the report at the end of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The store's name.
    pub name: String,
    /// Objects (or ranges) read from it.
    pub objects: u64,
    /// Bytes read from it, as stored.
    pub bytes: u64,
}

/// Stores read as one, first the first (see the module documentation).
pub struct ReadSet {
    members: Vec<Member>,
}

impl fmt::Debug for ReadSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ReadSet {
    /// The stores `(name, store)`, in the order they are tried.
    ///
    /// Errors: [`StoreError::Config`] for an empty list or a name given twice.
    pub fn new(stores: Vec<(String, Arc<dyn ObjectStore>)>) -> Result<ReadSet, StoreError> {
        if stores.is_empty() {
            return Err(StoreError::config(
                "a set of stores to read needs one store at least",
            ));
        }
        for (i, (name, _)) in stores.iter().enumerate() {
            if stores[..i].iter().any(|(n, _)| n == name) {
                return Err(StoreError::config(format!("store {name:?} is named twice")));
            }
        }
        let members = stores
            .into_iter()
            .map(|(name, store)| Member {
                name,
                store,
                objects: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            })
            .collect();
        Ok(ReadSet { members })
    }

    /// What each store served so far, in priority order.
    pub fn served(&self) -> Vec<Served> {
        self.members
            .iter()
            .map(|m| Served {
                name: m.name.clone(),
                objects: m.objects.load(Ordering::Relaxed),
                bytes: m.bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Reads with `read` from the first store that has the object; see the module
    /// documentation for what absent means. `size` tells the bytes a found answer holds.
    async fn first<'a, T, F, Fut>(
        &'a self,
        key: &str,
        read: F,
        size: impl Fn(&T) -> Option<u64>,
    ) -> Result<T, StoreError>
    where
        F: Fn(&'a dyn ObjectStore) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let mut open_error = None;
        for m in &self.members {
            match read(m.store.as_ref()).await {
                Ok(Some(found)) => {
                    if let Some(n) = size(&found) {
                        m.objects.fetch_add(1, Ordering::Relaxed);
                        m.bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    return Ok(found);
                }
                Ok(None) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(store = %m.name, %key, error = %e, "trying the next store");
                    open_error.get_or_insert(e);
                }
            }
        }
        Err(open_error.unwrap_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        }))
    }

    /// The union of every store's answer to `list`, in key order; the first store's metadata
    /// where several hold a key.
    async fn union<'a, F, Fut>(&'a self, list: F) -> Result<Vec<ObjectMeta>, StoreError>
    where
        F: Fn(&'a dyn ObjectStore) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<ObjectMeta>, StoreError>>,
    {
        let mut all = BTreeMap::new();
        for m in &self.members {
            for meta in list(m.store.as_ref()).await? {
                all.entry(meta.key.clone()).or_insert(meta);
            }
        }
        Ok(all.into_values().collect())
    }

    fn refuse_write(&self, key: &str) -> StoreError {
        StoreError::Other {
            key: key.to_string(),
            op: Op::Put,
            detail: format!("{} are read together and take no writes", self.describe()),
            source: None,
        }
    }
}

/// A found body's size.
fn body_len(b: &Bytes) -> Option<u64> {
    Some(b.len() as u64)
}

#[async_trait]
impl ObjectStore for ReadSet {
    async fn put(&self, key: &str, _body: Bytes) -> Result<(), StoreError> {
        Err(self.refuse_write(key))
    }

    async fn put_if_absent(&self, key: &str, _body: Bytes) -> Result<PutOutcome, StoreError> {
        Err(self.refuse_write(key))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.first(key, |s| async move { s.get(key).await.map(Some) }, body_len)
            .await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.first(
            key,
            |s| async move { s.get_range(key, start, len).await.map(Some) },
            body_len,
        )
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.first(key, |s| s.head(key), |_| None).await {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.union(|s| s.list(prefix)).await
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let merged = self.union(|s| s.list_after(prefix, after, limit)).await?;
        Ok(list_window(merged, after, limit))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        Err(StoreError::Other {
            key: key.to_string(),
            op: Op::Delete,
            detail: format!("{} are read together and take no deletes", self.describe()),
            source: None,
        })
    }

    /// The retention of `key` in the first store that holds it (the one reads are served
    /// from).
    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        self.first(
            key,
            |s| async move { s.retention(key).await.map(Some) },
            |_| None,
        )
        .await
    }

    async fn extend_retention(&self, key: &str, _until: SystemTime) -> Result<(), StoreError> {
        Err(self.refuse_write(key))
    }

    /// Stores read together write nothing.
    fn lock_policy(&self) -> Option<LockPolicy> {
        None
    }

    fn enforces_conditional_put(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.store.enforces_conditional_put())
    }

    fn describe(&self) -> String {
        let names: Vec<_> = self
            .members
            .iter()
            .map(|m| format!("{} ({})", m.name, m.store.describe()))
            .collect();
        format!("stores {}", names.join(", "))
    }
}

#[cfg(test)]
#[path = "read_set_tests.rs"]
mod tests;
