//! Keeping `pgagent prune` from deleting chunks that a starting base backup counts on.
//!
//! A backup deduplicates against a listing of `chunks/`: a chunk found there is not sent
//! again, only referenced ([`super::chunks`]). Prune deletes the chunks no manifest
//! references. A chunk in a backup's listing that a prune deletes afterwards leaves the
//! backup, once complete, pointing at a missing object. So both sides write first and read
//! second, and of two that overlap at least one sees the other:
//!
//! - the backup writes its `running` manifest (its announcement), then lists the prune
//!   markers (`prune/<id>.json`); it waits until each marker it saw is gone (that prune is
//!   done deleting), or for at most [`PRUNE_LEASE`] + [`DELETE_SETTLE`]; only then does it
//!   list `chunks/`;
//! - prune writes its marker ([`PruneMarker::write`]), then reads every manifest. It deletes
//!   no chunk while a manifest is `running` (and younger than [`RUNNING_GRACE`]), otherwise
//!   only chunks no manifest references; it sends no delete later than [`PRUNE_LEASE`] after it
//!   began writing its marker, and removes the marker when done.
//!
//! Why that is enough, on a store where a read sees every write that completed before it
//! (the fs backend; S3, strongly consistent for reads and listings; Garage): take a chunk in
//! the backup's listing, and a prune that deletes it. If that prune read the manifests after
//! the backup's announcement landed, it saw a running backup and deleted no chunk. Otherwise
//! its marker landed before the announcement, so the backup's look at the markers, which
//! follows the announcement, saw it; the backup then listed `chunks/` only once the marker
//! was gone (after every delete of that prune) or once the lease and the settle time had
//! passed since it saw the marker (every delete was sent before the lease ended and has
//! landed within [`DELETE_SETTLE`]). Either way the delete came before the listing, and the
//! chunk was not in it: the backup uploads it again. A marker written after the backup's look
//! belongs to a prune that reads the manifests later still, and sees the backup.
//!
//! Staleness bounds: a marker left by a prune that died delays a backup by at most
//! [`PRUNE_LEASE`] + [`DELETE_SETTLE`]. A `running` manifest left by a backup that died holds
//! back chunk deletion until prune drops it, [`RUNNING_GRACE`] after its start; a backup that
//! is still alive gives up before its manifest can look that old ([`BACKUP_LIMIT`]).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgagent_storage::layout::{prune_marker_key, PRUNE_PREFIX};
use pgagent_storage::{ObjectStore, StoreError};
use tokio::time::Instant;

use crate::store::catalog;

/// A `running` manifest older than this (by its `started_at`) is taken for a backup that
/// died: prune drops it, and keeps no chunk for it.
pub const RUNNING_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How long a backup may run before it gives up (its manifest stays `running`):
/// [`RUNNING_GRACE`] less an hour, for clocks that disagree (prune compares the backup's
/// `started_at`, from the backup's clock, with its own).
pub const BACKUP_LIMIT: Duration = Duration::from_secs(23 * 3600);

/// A prune sends no chunk delete later than this after it began writing its marker; what it
/// has not deleted by then is left for the next prune.
pub const PRUNE_LEASE: Duration = Duration::from_secs(10 * 60);

/// How long a delete sent to the store may take to land: well above one request's
/// `store.request_timeout` (default 60 s) and its retries.
pub const DELETE_SETTLE: Duration = Duration::from_secs(5 * 60);

/// How often a waiting backup looks at the markers again.
const POLL: Duration = Duration::from_secs(1);

/// The marker of a prune that may delete chunks. Remove it with [`PruneMarker::remove`].
#[derive(Debug)]
pub struct PruneMarker {
    key: String,
    lease_end: Instant,
}

impl PruneMarker {
    /// Writes a new marker `prune/<time>-<nanos>-<pid>.json` (JSON: start time, host, pid).
    ///
    /// Errors: the store's.
    pub async fn write(store: &dyn ObjectStore) -> anyhow::Result<PruneMarker> {
        let begun = Instant::now();
        let now = SystemTime::now();
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("{}-{nanos:09}-{}", catalog::new_id(now), std::process::id());
        let key = prune_marker_key(&id);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let body = serde_json::json!({
            "started_at": humantime::format_rfc3339_seconds(now).to_string(),
            "host": host.trim(),
            "pid": std::process::id(),
            "lease_seconds": PRUNE_LEASE.as_secs(),
        });
        store
            .put(&key, Bytes::from(serde_json::to_vec_pretty(&body)?))
            .await
            .map_err(|e| anyhow::anyhow!("store {key}: {e}"))?;
        Ok(PruneMarker {
            key,
            lease_end: begun + PRUNE_LEASE,
        })
    }

    /// Whether a chunk delete may still be sent ([`PRUNE_LEASE`]).
    pub fn may_delete(&self) -> bool {
        Instant::now() < self.lease_end
    }

    /// The marker's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the marker.
    ///
    /// Errors: the store's; a marker left behind delays backups by at most
    /// [`PRUNE_LEASE`] + [`DELETE_SETTLE`].
    pub async fn remove(self, store: &dyn ObjectStore) -> Result<(), StoreError> {
        store.delete(&self.key).await
    }
}

/// Waits until no prune that may have missed this backup's announcement can still delete a
/// chunk: until every prune marker present now is gone, or for at most `patience`
/// ([`PRUNE_LEASE`] + [`DELETE_SETTLE`]). Call it after the backup's `running` manifest is
/// written and before `chunks/` is listed.
///
/// Errors: listing `prune/` fails.
pub async fn wait_for_prunes(store: &dyn ObjectStore, patience: Duration) -> anyhow::Result<()> {
    let markers = || async {
        store
            .list(PRUNE_PREFIX)
            .await
            .map(|l| l.into_iter().map(|m| m.key).collect::<BTreeSet<String>>())
            .map_err(|e| anyhow::anyhow!("list {PRUNE_PREFIX}: {e}"))
    };
    let mut waiting = markers().await?;
    if waiting.is_empty() {
        return Ok(());
    }
    // From after the look that saw them: never earlier than the markers landed.
    let until = Instant::now() + patience;
    tracing::info!(
        "pgagent prune is deleting chunks ({}); the backup lists chunks once it is done \
         (at most {})",
        waiting.iter().cloned().collect::<Vec<_>>().join(", "),
        humantime::format_duration(patience)
    );
    loop {
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
        let now = markers().await?;
        waiting.retain(|k| now.contains(k));
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            tracing::warn!(
                "{} outlived a prune's lease: left by a prune that stopped (remove it if no \
                 pgagent prune runs); the backup goes on",
                waiting.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            return Ok(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn without_a_marker_a_backup_does_not_wait() {
        let (_dir, store) = store().await;
        let started = Instant::now();
        wait_for_prunes(store.as_ref(), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_backup_waits_until_the_prune_removes_its_marker() {
        let (_dir, store) = store().await;
        let marker = PruneMarker::write(store.as_ref()).await.unwrap();
        assert!(marker.may_delete());
        assert!(marker.key().starts_with(PRUNE_PREFIX));
        let waiting = {
            let store = store.clone();
            tokio::spawn(
                async move { wait_for_prunes(store.as_ref(), Duration::from_secs(60)).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !waiting.is_finished(),
            "the backup went on past a prune's marker"
        );
        // Another prune starting now sees the backup's manifest: it is not waited for.
        let later = PruneMarker::write(store.as_ref()).await.unwrap();
        marker.remove(store.as_ref()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the backup went on once the marker was gone")
            .unwrap()
            .unwrap();
        later.remove(store.as_ref()).await.unwrap();
    }

    #[tokio::test]
    async fn a_marker_that_stays_is_waited_for_at_most_the_patience() {
        let (_dir, store) = store().await;
        let _left = PruneMarker::write(store.as_ref()).await.unwrap();
        let started = Instant::now();
        wait_for_prunes(store.as_ref(), Duration::from_millis(1200))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1200) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
}
