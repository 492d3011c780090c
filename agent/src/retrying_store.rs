//! A store whose reads ride out a bucket that goes away for a while.
//!
//! A restore reads thousands of objects (`cluster.json`, the backup listing, manifests,
//! chunks); the S3 client's own few attempts cover a glitch of a second or two, not a load
//! balancer restart or a dropped connection in the middle of a body. [`RetryingReads`] wraps
//! a store so that every read (`get`, `get_range`, `head`, `list`) that fails with a
//! transient error ([`StoreError::is_transient`]) is tried again with backoff
//! ([`crate::retry::until`]) until it succeeds or `timeout` has passed since the read began,
//! as `pgagent fetch` does for `restore_command`. Other errors — absent, denied, corrupt —
//! come back at once, and writes pass through unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgagent_storage::{Call, Layer, Layered, ObjectStore, Op, Reply, StoreError};
use tokio::time::Instant;

use crate::retry::{GaveUp, Policy};

/// The [`Layer`] that retries reads on transient errors (see the module documentation).
#[derive(Debug)]
pub struct RetryingReads {
    policy: Policy,
    timeout: Duration,
    /// The setting `timeout` comes from and its value, for messages (`fetch.timeout (5m)`),
    /// made once.
    setting: String,
}

impl RetryingReads {
    /// Wraps `inner`: each read is retried with `policy` for up to `timeout`, the value of
    /// `setting` (named in warnings and in the error given when time runs out).
    pub fn wrap(
        inner: Arc<dyn ObjectStore>,
        policy: Policy,
        timeout: Duration,
        setting: &'static str,
    ) -> Arc<dyn ObjectStore> {
        let layer = RetryingReads {
            policy,
            timeout,
            setting: format!("{setting} ({})", humantime::format_duration(timeout)),
        };
        Arc::new(Layered::new(inner, layer))
    }
}

/// Runs `op` (a read of `key`, or `what` on the store) until it succeeds, fails for good, or
/// `deadline` passes: the one read retry, used by [`RetryingReads`] and by `pgagent fetch`.
/// `setting` names the time limit in messages (`fetch.timeout (5m)`); the first transient
/// error is logged as a warning, later ones at debug level.
///
/// Errors: a permanent error as it came; at the deadline the last transient error with
/// "still failing when `setting` ran out" added, or a transient error saying no answer
/// came.
pub async fn read_until<T, F, Fut>(
    policy: Policy,
    deadline: Instant,
    setting: &str,
    what: Op,
    key: &str,
    op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut warned = false;
    let notify = |e: &StoreError, wait: Duration| {
        if !std::mem::replace(&mut warned, true) {
            tracing::warn!("{e}; retrying until {setting} runs out");
        } else {
            tracing::debug!("{e}; next attempt in {wait:?}");
        }
    };
    crate::retry::until(policy, deadline, StoreError::is_transient, notify, op)
        .await
        .map_err(|gave_up| {
            let spent = format!("still failing when {setting} ran out");
            match gave_up {
                GaveUp::Permanent(e) => e,
                GaveUp::Deadline(Some(StoreError::Transient {
                    key,
                    op,
                    detail,
                    source,
                })) => StoreError::Transient {
                    key,
                    op,
                    detail: format!("{detail}; {spent}"),
                    source,
                },
                GaveUp::Deadline(Some(e)) => e,
                GaveUp::Deadline(None) => StoreError::Transient {
                    key: key.to_string(),
                    op: what,
                    detail: format!("no answer; {spent}"),
                    source: None,
                },
            }
        })
}

#[async_trait]
impl Layer for RetryingReads {
    async fn around(&self, below: &dyn ObjectStore, call: Call<'_>) -> Result<Reply, StoreError> {
        if !call.is_read() {
            return call.run(below).await;
        }
        // `list_after` goes down as itself, so the backend's bounded listing (one request on
        // S3) is kept.
        let deadline = Instant::now() + self.timeout;
        read_until(
            self.policy,
            deadline,
            &self.setting,
            call.op(),
            call.key(),
            || call.run(below),
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting
mod tests {
    use bytes::Bytes;

    use super::*;

    const QUICK: Policy = Policy::new(Duration::from_millis(10), Duration::from_millis(50));

    /// An S3 store at an address where nothing listens: every request is a connection
    /// error, which is transient.
    async fn unreachable() -> Arc<dyn ObjectStore> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("s3://b/p?endpoint=http://127.0.0.1:{port}&region=r&path_style=true");
        let opts = pgagent_storage::StoreOptions {
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..Default::default()
        };
        pgagent_storage::open(&url, &opts).await.unwrap()
    }

    #[tokio::test]
    async fn a_read_that_keeps_failing_gives_up_at_the_timeout_naming_it() {
        let store = RetryingReads::wrap(
            unreachable().await,
            QUICK,
            Duration::from_secs(2),
            "fetch.timeout",
        );
        let started = std::time::Instant::now();
        let e = store.get("chunks/ab/abcd").await.unwrap_err();
        let spent = started.elapsed();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("fetch.timeout (2s) ran out"), "{e}");
        assert!(
            spent >= Duration::from_millis(1900) && spent < Duration::from_secs(10),
            "{spent:?}"
        );
    }

    /// The counter sits below the retries (as `crate::store::open` places it): each attempt
    /// is a request sent, and billed, so each one counts.
    #[tokio::test]
    async fn each_retry_is_a_counted_request() {
        use pgagent_storage::{CountedStore, RequestCounts, RequestOp};
        let counts = Arc::new(RequestCounts::new());
        let counted = CountedStore::wrap(unreachable().await, counts.clone());
        let store = RetryingReads::wrap(counted, QUICK, Duration::from_secs(2), "fetch.timeout");
        assert!(store.head("wal/x").await.unwrap_err().is_transient());
        let sent = counts.get(RequestOp::Head);
        assert!(sent > 1, "one read, {sent} requests counted");
        assert_eq!(counts.totals().total(), sent);
    }

    #[tokio::test]
    async fn absent_objects_and_writes_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let fs = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        let store = RetryingReads::wrap(fs, QUICK, Duration::from_secs(60), "fetch.timeout");
        let started = std::time::Instant::now();
        assert!(store.get("cluster.json").await.unwrap_err().is_not_found());
        assert!(store.head("cluster.json").await.unwrap().is_none());
        store.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(store.list("a/").await.unwrap().len(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
