//! Request accounting: how many requests pgagent sends to its store, by operation.
//!
//! Object stores bill per request (S3: PUT/COPY/POST/LIST vs GET and the rest; R2: class A
//! vs class B), so the count matters as much as the bytes. [`CountedStore`] wraps a backend
//! and adds every request it sends to a shared [`RequestCounts`], whatever the outcome: a
//! failed request is still a request (and still billed).
//!
//! What counts as one request:
//!
//! - A backend that sends several requests for one call reports each one while the call
//!   runs. The S3 backend reports every HTTP request it transmits, classified by its method
//!   ([`RequestOp::of_http`]): each page of a `list` (`ListObjectsV2` returns at most 1000
//!   keys), each part of a multipart upload with its create and complete requests, the HEAD
//!   that answers an empty `get_range`, and each attempt of the SDK's own retries.
//! - For a call during which the backend reported nothing (the `fs` backend; an S3 call
//!   refused before it sent anything, such as an invalid key), one request of the call's
//!   operation is counted: `put` for `put`/`put_if_absent`, `get` for `get`/`get_range`,
//!   `list` for `list`/`list_after`, `head`, `delete`.
//! - A call abandoned half-way (its future dropped: a timeout, a shutdown) counts what it
//!   sent until then.
//!
//! Place the wrapper closest to the backend, below [`crate::prefixed::PrefixedStore`] and any
//! retrying wrapper, so each retry is a counted request; wrap a store once.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Op, StoreError};
use crate::layer::{Call, Layer, Layered, Reply};
use crate::object_store::ObjectStore;

/// The kind of a store request, as providers bill them; the `op` label of
/// `pgagent_store_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOp {
    /// Writes: PUT, and the POST/PUT requests of a multipart upload.
    Put,
    /// Object reads (GET, ranged or whole).
    Get,
    /// Listings (`ListObjectsV2`, one per page).
    List,
    /// Deletions (DELETE, including aborting a multipart upload).
    Delete,
    /// Metadata reads (HEAD).
    Head,
}

impl RequestOp {
    /// Every operation, in the order reports list them.
    pub const ALL: [RequestOp; 5] = [
        RequestOp::Put,
        RequestOp::Get,
        RequestOp::List,
        RequestOp::Delete,
        RequestOp::Head,
    ];

    /// The label value: `put`, `get`, `list`, `delete`, `head`.
    pub const fn label(self) -> &'static str {
        match self {
            RequestOp::Put => "put",
            RequestOp::Get => "get",
            RequestOp::List => "list",
            RequestOp::Delete => "delete",
            RequestOp::Head => "head",
        }
    }

    /// The operation of an S3 HTTP request from its method and URI: `GET` with a
    /// `list-type` query parameter is a `ListObjectsV2` page, any other `GET` an object read;
    /// `PUT` and `POST` (multipart create/complete) write; `HEAD`, `DELETE` as named.
    /// `None` for methods S3 object operations do not use.
    pub fn of_http(method: &str, uri: &str) -> Option<RequestOp> {
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        let listing = query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("list-type"));
        match method.to_ascii_uppercase().as_str() {
            "GET" if listing => Some(RequestOp::List),
            "GET" => Some(RequestOp::Get),
            "PUT" | "POST" => Some(RequestOp::Put),
            "HEAD" => Some(RequestOp::Head),
            "DELETE" => Some(RequestOp::Delete),
            _ => None,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RequestOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Requests sent so far, by operation: shared counters that [`CountedStore`]s add to and
/// readers (metrics, status) read at any time.
#[derive(Debug, Default)]
pub struct RequestCounts {
    counts: [AtomicU64; 5],
}

impl RequestCounts {
    /// All zero.
    pub const fn new() -> RequestCounts {
        RequestCounts {
            counts: [const { AtomicU64::new(0) }; 5],
        }
    }

    /// Adds `n` requests of `op`.
    pub fn add(&self, op: RequestOp, n: u64) {
        self.counts[op.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Requests of `op` so far.
    pub fn get(&self, op: RequestOp) -> u64 {
        self.counts[op.index()].load(Ordering::Relaxed)
    }

    /// Every operation's count now.
    pub fn totals(&self) -> RequestTotals {
        RequestTotals(RequestOp::ALL.map(|op| self.get(op)))
    }
}

/// Request counts by operation at one moment (or, from [`RequestTotals::since`], over an
/// interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals([u64; 5]);

impl RequestTotals {
    /// Totals from per-operation counts.
    pub fn from_fn(f: impl FnMut(RequestOp) -> u64) -> RequestTotals {
        RequestTotals(RequestOp::ALL.map(f))
    }

    /// Requests of `op`.
    pub fn get(&self, op: RequestOp) -> u64 {
        self.0[op.index()]
    }

    /// Requests of every operation together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The requests sent after `earlier` was taken (counters only grow; a smaller value
    /// gives 0 rather than wrapping).
    pub fn since(&self, earlier: &RequestTotals) -> RequestTotals {
        RequestTotals::from_fn(|op| self.get(op).saturating_sub(earlier.get(op)))
    }
}

impl fmt::Display for RequestTotals {
    /// `put 3, get 120, list 2, delete 0, head 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in RequestOp::ALL.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{op} {}", self.get(op))?;
        }
        Ok(())
    }
}

/// What a backend reported during one counted call.
#[derive(Debug, Default)]
struct CallTally {
    reported: AtomicBool,
    sent: RequestCounts,
}

tokio::task_local! {
    /// The tally of the [`CountedStore`] call running in this task, if any.
    static CALL: Arc<CallTally>;
}

/// Records one request of `op` sent on behalf of the [`CountedStore`] call running in this
/// task; does nothing outside one. For backends that send several requests per call (the S3
/// backend calls it for each HTTP request it transmits).
pub(crate) fn record_request(op: RequestOp) {
    let _ = CALL.try_with(|call| {
        call.reported.store(true, Ordering::Relaxed);
        call.sent.add(op, 1);
    });
}

/// Adds a call's requests to the shared counts when the call ends, however it ends
/// (success, error, or its future dropped).
struct Settle<'a> {
    op: RequestOp,
    call: Arc<CallTally>,
    into: &'a RequestCounts,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if self.call.reported.load(Ordering::Relaxed) {
            for op in RequestOp::ALL {
                let n = self.call.sent.get(op);
                if n > 0 {
                    self.into.add(op, n);
                }
            }
        } else {
            self.into.add(self.op, 1);
        }
    }
}

/// The [`Layer`] that counts every request the store below sends in a shared
/// [`RequestCounts`] (see the module documentation for what one request is).
#[derive(Debug)]
pub struct CountedStore {
    counts: Arc<RequestCounts>,
}

impl CountedStore {
    /// Wraps `inner` (a backend, as [`crate::open::open`] returns it), counting into `counts`.
    pub fn wrap(inner: Arc<dyn ObjectStore>, counts: Arc<RequestCounts>) -> Arc<dyn ObjectStore> {
        Arc::new(Layered::new(inner, CountedStore { counts }))
    }
}

/// The request kind a call is counted under when the backend does not report its requests.
fn request_op(call: &Call<'_>) -> RequestOp {
    match call.op() {
        Op::Put | Op::Open => RequestOp::Put,
        Op::Get => RequestOp::Get,
        Op::Head => RequestOp::Head,
        Op::List => RequestOp::List,
        Op::Delete => RequestOp::Delete,
    }
}

#[async_trait]
impl Layer for CountedStore {
    async fn around(&self, below: &dyn ObjectStore, call: Call<'_>) -> Result<Reply, StoreError> {
        let tally = Arc::new(CallTally::default());
        let _settle = Settle {
            op: request_op(&call),
            call: tally.clone(),
            into: &self.counts,
        };
        // `list_after` goes down as itself, so the backend's bounded listing (one request on
        // S3) is kept.
        CALL.scope(tally, call.run(below)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fs::FsStore;
    use crate::object_store::PutOutcome;
    use crate::prefixed::PrefixedStore;
    use bytes::Bytes;

    async fn counted_fs() -> (tempfile::TempDir, Arc<dyn ObjectStore>, Arc<RequestCounts>) {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::open(dir.path().join("store")).await.unwrap();
        let counts = Arc::new(RequestCounts::new());
        let store = CountedStore::wrap(Arc::new(fs), counts.clone());
        (dir, store, counts)
    }

    fn totals(put: u64, get: u64, list: u64, delete: u64, head: u64) -> RequestTotals {
        RequestTotals([put, get, list, delete, head])
    }

    #[tokio::test]
    async fn each_call_is_one_request_of_its_operation() {
        let (_dir, store, counts) = counted_fs().await;
        let body = Bytes::from_static(b"wal");
        store.put("wal/a", body.clone()).await.unwrap();
        assert_eq!(
            store.put_if_absent("wal/a", body.clone()).await.unwrap(),
            PutOutcome::Exists
        );
        store.put_if_absent("wal/b", body).await.unwrap();
        assert_eq!(store.get("wal/a").await.unwrap(), "wal");
        assert_eq!(store.get_range("wal/a", 1, 1).await.unwrap(), "a");
        assert_eq!(store.list("wal/").await.unwrap().len(), 2);
        assert_eq!(store.list_after("wal/", "wal/a", 5).await.unwrap().len(), 1);
        assert!(store.head("wal/a").await.unwrap().is_some());
        store.delete("wal/b").await.unwrap();
        assert_eq!(counts.totals(), totals(3, 2, 2, 1, 1));
        assert_eq!(counts.totals().total(), 9);
    }

    #[tokio::test]
    async fn failed_requests_count_too() {
        let (_dir, store, counts) = counted_fs().await;
        assert!(store.get("wal/none").await.unwrap_err().is_not_found());
        assert!(store.get_range("wal/none", 0, 8).await.is_err());
        assert!(store.head("wal/none").await.unwrap().is_none());
        assert!(store.put("../escape", Bytes::new()).await.is_err());
        assert_eq!(counts.totals(), totals(1, 2, 0, 0, 1));
    }

    #[tokio::test]
    async fn a_prefixed_view_above_the_counter_counts_once_per_call() {
        let (_dir, store, counts) = counted_fs().await;
        let view = PrefixedStore::new(store, "cluster-a/").unwrap();
        view.put("wal/a", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(view.list("wal/").await.unwrap().len(), 1);
        assert_eq!(counts.totals(), totals(1, 0, 1, 0, 0));
    }

    /// A backend that sends `n` requests per call, reporting each as the S3 backend does.
    #[derive(Debug)]
    struct Chatty {
        pages: u64,
    }

    #[async_trait]
    impl Layer for Chatty {
        async fn around(
            &self,
            below: &dyn ObjectStore,
            call: Call<'_>,
        ) -> Result<Reply, StoreError> {
            match call {
                // An empty range is answered with a HEAD, as on S3.
                Call::GetRange { .. } => record_request(RequestOp::Head),
                Call::List { .. } => {
                    for _ in 0..self.pages {
                        record_request(RequestOp::List);
                        // Pages arrive over time; the tally survives the awaits in between.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                _ => {}
            }
            call.run(below).await
        }
    }

    #[tokio::test]
    async fn requests_a_backend_reports_are_counted_each_by_its_own_operation() {
        let dir = tempfile::tempdir().unwrap();
        let inner = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        let counts = Arc::new(RequestCounts::new());
        let store = CountedStore::wrap(
            Arc::new(Layered::new(Arc::new(inner), Chatty { pages: 3 })),
            counts.clone(),
        );
        store.put("a", Bytes::from_static(b"x")).await.unwrap();
        store.list("").await.unwrap();
        store.get_range("a", 0, 0).await.unwrap();
        // Concurrent calls in one task keep their tallies apart.
        let (a, b) = tokio::join!(store.list(""), store.list(""));
        a.unwrap();
        b.unwrap();
        assert_eq!(counts.totals(), totals(1, 0, 9, 0, 1));
    }

    #[tokio::test]
    async fn an_abandoned_call_counts_what_it_sent() {
        let dir = tempfile::tempdir().unwrap();
        let inner = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        let counts = Arc::new(RequestCounts::new());
        let store = CountedStore::wrap(
            Arc::new(Layered::new(Arc::new(inner), Chatty { pages: 1000 })),
            counts.clone(),
        );
        let cut = tokio::time::timeout(Duration::from_millis(30), store.list("")).await;
        assert!(cut.is_err(), "the listing should still be paging");
        let sent = counts.get(RequestOp::List);
        assert!((1..1000).contains(&sent), "{sent}");
    }

    #[test]
    fn s3_requests_are_classified_by_method_and_query() {
        let op = |m, u| RequestOp::of_http(m, u);
        assert_eq!(
            op("GET", "http://h/b?list-type=2&prefix=p%2Fwal%2F"),
            Some(RequestOp::List)
        );
        assert_eq!(
            op("GET", "http://h/b?prefix=x&list-type=2"),
            Some(RequestOp::List)
        );
        assert_eq!(op("GET", "http://h/b/p/wal/0001"), Some(RequestOp::Get));
        assert_eq!(op("GET", "http://h/b/p/list-type"), Some(RequestOp::Get));
        assert_eq!(
            op("GET", "http://h/b/k?x-id=GetObject"),
            Some(RequestOp::Get)
        );
        assert_eq!(
            op("PUT", "http://h/b/k?partNumber=2&uploadId=u"),
            Some(RequestOp::Put)
        );
        assert_eq!(op("POST", "http://h/b/k?uploads"), Some(RequestOp::Put));
        assert_eq!(op("HEAD", "http://h/b/k"), Some(RequestOp::Head));
        assert_eq!(
            op("DELETE", "http://h/b/k?uploadId=u"),
            Some(RequestOp::Delete)
        );
        assert_eq!(op("OPTIONS", "http://h/b/k"), None);
    }

    #[test]
    fn totals_subtract_and_print() {
        let later = totals(10, 5, 2, 0, 1);
        let earlier = totals(4, 5, 1, 0, 0);
        assert_eq!(later.since(&earlier), totals(6, 0, 1, 0, 1));
        assert_eq!(earlier.since(&later), totals(0, 0, 0, 0, 0));
        assert_eq!(later.to_string(), "put 10, get 5, list 2, delete 0, head 1");
    }
}
