//! One way to wrap a store: a [`Layer`] adds behaviour around every call (request counting,
//! read retries, faults in tests) and [`Layered`] makes it an [`ObjectStore`].
//!
//! A layer sees each call as a value ([`Call`]) and answers with a [`Reply`], so it is one
//! method, not one per store operation: a new [`ObjectStore`] method is added to [`Call`]
//! and [`Layered`] once, and no layer can forget to pass it on (as neon's
//! `remote_storage` does with its `simulate_failures` wrapper, one place decides what each
//! call does).
//!
//! ```text
//! let store = Layered::new(backend, Counting { … });     // an Arc<dyn ObjectStore> below
//! store.get("wal/…")  ─►  layer.around(backend, Call::Get { key })  ─►  call.run(backend)
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, StoreError};
use crate::lock::{LockPolicy, Retention};
use crate::object_store::{ObjectMeta, ObjectStore, PutOutcome};

/// One call of an [`ObjectStore`] method, with its arguments.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// [`ObjectStore::put`].
    Put {
        /// Object key.
        key: &'a str,
        /// Body to write.
        body: &'a Bytes,
    },
    /// [`ObjectStore::put_if_absent`].
    PutIfAbsent {
        /// Object key.
        key: &'a str,
        /// Body to write.
        body: &'a Bytes,
    },
    /// [`ObjectStore::get`].
    Get {
        /// Object key.
        key: &'a str,
    },
    /// [`ObjectStore::get_range`].
    GetRange {
        /// Object key.
        key: &'a str,
        /// First byte, offset from the start of the object.
        start: u64,
        /// Most bytes to read.
        len: u64,
    },
    /// [`ObjectStore::head`].
    Head {
        /// Object key.
        key: &'a str,
    },
    /// [`ObjectStore::list`].
    List {
        /// Key prefix.
        prefix: &'a str,
    },
    /// [`ObjectStore::list_after`].
    ListAfter {
        /// Key prefix.
        prefix: &'a str,
        /// Only keys strictly after this one.
        after: &'a str,
        /// Most objects returned.
        limit: usize,
    },
    /// [`ObjectStore::delete`].
    Delete {
        /// Object key.
        key: &'a str,
    },
    /// [`ObjectStore::retention`].
    Retention {
        /// Object key.
        key: &'a str,
    },
    /// [`ObjectStore::extend_retention`].
    ExtendRetention {
        /// Object key.
        key: &'a str,
        /// The lock lasts at least until then.
        until: SystemTime,
    },
}

impl Call<'_> {
    /// The operation, as errors name it.
    pub fn op(&self) -> Op {
        match self {
            Call::Put { .. } | Call::PutIfAbsent { .. } | Call::ExtendRetention { .. } => Op::Put,
            Call::Get { .. } | Call::GetRange { .. } => Op::Get,
            Call::Head { .. } | Call::Retention { .. } => Op::Head,
            Call::List { .. } | Call::ListAfter { .. } => Op::List,
            Call::Delete { .. } => Op::Delete,
        }
    }

    /// The object key, or the listed prefix.
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. }
            | Call::PutIfAbsent { key, .. }
            | Call::Get { key }
            | Call::GetRange { key, .. }
            | Call::Head { key }
            | Call::Delete { key }
            | Call::Retention { key }
            | Call::ExtendRetention { key, .. } => key,
            Call::List { prefix } | Call::ListAfter { prefix, .. } => prefix,
        }
    }

    /// Whether the call only reads (`get`, `get_range`, `head`, `list`, `list_after`,
    /// `retention`).
    pub fn is_read(&self) -> bool {
        matches!(self.op(), Op::Get | Op::Head | Op::List)
    }

    /// Sends the call to `store`.
    pub async fn run(self, store: &dyn ObjectStore) -> Result<Reply, StoreError> {
        Ok(match self {
            Call::Put { key, body } => {
                store.put(key, body.clone()).await?;
                Reply::Done
            }
            Call::PutIfAbsent { key, body } => {
                Reply::Written(store.put_if_absent(key, body.clone()).await?)
            }
            Call::Get { key } => Reply::Body(store.get(key).await?),
            Call::GetRange { key, start, len } => {
                Reply::Body(store.get_range(key, start, len).await?)
            }
            Call::Head { key } => Reply::Meta(store.head(key).await?),
            Call::List { prefix } => Reply::Listing(store.list(prefix).await?),
            Call::ListAfter {
                prefix,
                after,
                limit,
            } => Reply::Listing(store.list_after(prefix, after, limit).await?),
            Call::Delete { key } => {
                store.delete(key).await?;
                Reply::Done
            }
            Call::Retention { key } => Reply::Retention(store.retention(key).await?),
            Call::ExtendRetention { key, until } => {
                store.extend_retention(key, until).await?;
                Reply::Done
            }
        })
    }
}

/// What a [`Call`] returns: the kind matches the call (a `get` is answered with
/// [`Reply::Body`], a `list` with [`Reply::Listing`], …).
#[derive(Debug, Clone)]
pub enum Reply {
    /// `put`, `delete`, `extend_retention`.
    Done,
    /// `put_if_absent`.
    Written(PutOutcome),
    /// `get`, `get_range`.
    Body(Bytes),
    /// `head`.
    Meta(Option<ObjectMeta>),
    /// `list`, `list_after`.
    Listing(Vec<ObjectMeta>),
    /// `retention`.
    Retention(Option<Retention>),
}

/// Behaviour added around every call of the store below.
#[async_trait]
pub trait Layer: fmt::Debug + Send + Sync + 'static {
    /// Answers `call`, normally by running it on `below` ([`Call::run`]) once, or again
    /// (retries), or not at all (a fault), or with other calls around it (a race in a
    /// test). The reply must be of the call's kind.
    async fn around(&self, below: &dyn ObjectStore, call: Call<'_>) -> Result<Reply, StoreError>;

    /// [`ObjectStore::enforces_conditional_put`], given the answer of the store below.
    fn enforces_conditional_put(&self, below: bool) -> bool {
        below
    }

    /// [`ObjectStore::describe`], given the description of the store below.
    fn describe(&self, below: String) -> String {
        below
    }
}

/// `inner` with `layer` around every call.
#[derive(Debug)]
pub struct Layered<L> {
    inner: Arc<dyn ObjectStore>,
    layer: L,
}

impl<L: Layer> Layered<L> {
    /// Wraps `inner` in `layer`.
    pub fn new(inner: Arc<dyn ObjectStore>, layer: L) -> Layered<L> {
        Layered { inner, layer }
    }

    /// The layer, e.g. to read what it recorded.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    async fn call(&self, call: Call<'_>) -> Result<Reply, StoreError> {
        self.layer.around(self.inner.as_ref(), call).await
    }
}

/// The error for a layer that answered a call with the wrong kind of reply: a bug in the
/// layer, reported rather than trusted.
fn mismatch(call: Call<'_>, reply: &Reply) -> StoreError {
    StoreError::Other {
        key: call.key().to_string(),
        op: call.op(),
        detail: format!("a store layer answered {call:?} with {reply:?}"),
        source: None,
    }
}

#[async_trait]
impl<L: Layer> ObjectStore for Layered<L> {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let call = Call::Put { key, body: &body };
        match self.call(call).await? {
            Reply::Done => Ok(()),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        let call = Call::PutIfAbsent { key, body: &body };
        match self.call(call).await? {
            Reply::Written(outcome) => Ok(outcome),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let call = Call::Get { key };
        match self.call(call).await? {
            Reply::Body(body) => Ok(body),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let call = Call::GetRange { key, start, len };
        match self.call(call).await? {
            Reply::Body(body) => Ok(body),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let call = Call::Head { key };
        match self.call(call).await? {
            Reply::Meta(meta) => Ok(meta),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let call = Call::List { prefix };
        match self.call(call).await? {
            Reply::Listing(items) => Ok(items),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let call = Call::ListAfter {
            prefix,
            after,
            limit,
        };
        match self.call(call).await? {
            Reply::Listing(items) => Ok(items),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let call = Call::Delete { key };
        match self.call(call).await? {
            Reply::Done => Ok(()),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        let call = Call::Retention { key };
        match self.call(call).await? {
            Reply::Retention(r) => Ok(r),
            other => Err(mismatch(call, &other)),
        }
    }

    async fn extend_retention(&self, key: &str, until: SystemTime) -> Result<(), StoreError> {
        let call = Call::ExtendRetention { key, until };
        match self.call(call).await? {
            Reply::Done => Ok(()),
            other => Err(mismatch(call, &other)),
        }
    }

    fn lock_policy(&self) -> Option<LockPolicy> {
        self.inner.lock_policy()
    }

    fn enforces_conditional_put(&self) -> bool {
        self.layer
            .enforces_conditional_put(self.inner.enforces_conditional_put())
    }

    fn describe(&self) -> String {
        self.layer.describe(self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::fs::FsStore;

    /// Counts calls and fails deletes.
    #[derive(Debug, Default)]
    struct Probe {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Layer for Probe {
        async fn around(
            &self,
            below: &dyn ObjectStore,
            call: Call<'_>,
        ) -> Result<Reply, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if let Call::Delete { key } = call {
                return Err(StoreError::Transient {
                    key: key.to_string(),
                    op: call.op(),
                    detail: "refused by the probe".into(),
                    source: None,
                });
            }
            call.run(below).await
        }
        fn describe(&self, below: String) -> String {
            format!("probe over {below}")
        }
    }

    /// A layer answering with the wrong kind of reply.
    #[derive(Debug)]
    struct Confused;

    #[async_trait]
    impl Layer for Confused {
        async fn around(&self, _: &dyn ObjectStore, _: Call<'_>) -> Result<Reply, StoreError> {
            Ok(Reply::Done)
        }
    }

    #[tokio::test]
    async fn every_call_goes_through_the_layer_and_reaches_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn ObjectStore> =
            Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
        let store = Layered::new(fs.clone(), Probe::default());
        let body = Bytes::from_static(b"abcdef");
        store.put("wal/a", body.clone()).await.unwrap();
        assert_eq!(
            store.put_if_absent("wal/a", body.clone()).await.unwrap(),
            PutOutcome::Exists
        );
        assert_eq!(
            store.put_if_absent("wal/b", body.clone()).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(store.get("wal/a").await.unwrap(), body);
        assert_eq!(store.get_range("wal/a", 2, 2).await.unwrap(), "cd");
        assert_eq!(store.head("wal/a").await.unwrap().unwrap().size, 6);
        assert_eq!(store.list("wal/").await.unwrap().len(), 2);
        let after = store.list_after("wal/", "wal/a", 5).await.unwrap();
        assert_eq!(
            after.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["wal/b"]
        );
        assert!(store.delete("wal/a").await.unwrap_err().is_transient());
        assert!(
            fs.head("wal/a").await.unwrap().is_some(),
            "the failed delete reached the store"
        );
        assert_eq!(store.layer().calls.load(Ordering::Relaxed), 9);
        assert_eq!(store.describe(), format!("probe over {}", fs.describe()));
        assert_eq!(
            store.enforces_conditional_put(),
            fs.enforces_conditional_put()
        );
    }

    #[tokio::test]
    async fn a_reply_of_the_wrong_kind_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
        let store = Layered::new(fs, Confused);
        let e = store.get("wal/a").await.unwrap_err();
        assert!(e.to_string().contains("answered Get"), "{e}");
        store.delete("wal/a").await.unwrap();
    }
}
