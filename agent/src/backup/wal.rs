//! A backup's WAL: a manifest says `complete` only once every WAL segment from its start to
//! its stop LSN is in its store (DESIGN.md, "Store layout"). A backup waits for that a
//! while ([`wait_for_wal`]); a manifest left `running` with its files stored is completed
//! later, once its WAL has reached the store ([`complete_waiting`], run by `pgagent prune`),
//! as happens to a store that lagged behind the others.

use std::time::{Duration, Instant};

use anyhow::bail;
use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::layout::wal_key;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::ObjectStore;

use crate::store::{catalog, Bucket};

/// How often a backup waiting for its WAL says what it waits for.
pub const WAIT_REMINDER: Duration = Duration::from_secs(30);

/// The segments holding WAL from `start` to `stop` (exclusive): first and last.
///
/// Errors: the timeline changed between them.
fn segments(
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
    seg: WalSegmentSize,
) -> anyhow::Result<(SegNo, SegNo)> {
    if start.1 != stop.1 {
        bail!(
            "the timeline changed during the backup ({} to {}); take it again",
            start.1,
            stop.1
        );
    }
    let first = start.0.segment_number(seg);
    // The stop LSN is exclusive: a stop on a segment boundary needs nothing past it.
    let last = Lsn(stop.0 .0.saturating_sub(1))
        .segment_number(seg)
        .max(first);
    Ok((first, last))
}

/// The first segment from `from` to `last` on timeline `tli` that `store` does not hold
/// complete; `None` when it holds them all. A transient error counts as missing.
async fn first_missing(
    store: &dyn ObjectStore,
    tli: TimelineId,
    (from, last): (SegNo, SegNo),
    seg: WalSegmentSize,
) -> anyhow::Result<Option<SegNo>> {
    let mut next = from;
    while next <= last {
        let key = wal_key(&segment_file_name(tli, next, seg));
        match store.head(&key).await {
            Ok(Some(_)) => next = next.next(),
            Ok(None) => return Ok(Some(next)),
            Err(e) if e.is_transient() => return Ok(Some(next)),
            Err(e) => return Err(anyhow::anyhow!("{key}: {e}")),
        }
    }
    Ok(None)
}

/// Whether every segment holding WAL from `start` to `stop` is in `store` (named `name` in
/// messages) as a complete object; polls once a second until `wait` passes (`None`:
/// forever).
///
/// Only `pgagent run` streaming the server puts that WAL in the store: while a segment is
/// missing, backup `id` says which, at once and every [`WAIT_REMINDER`], and that the
/// daemon must be streaming this server, so a wait with no daemon is not a silent one.
///
/// Errors: the timeline changed during the backup; a store error that is not transient.
pub async fn wait_for_wal(
    (id, name): (&str, &str),
    store: &dyn ObjectStore,
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
    seg: WalSegmentSize,
    wait: Option<Duration>,
) -> anyhow::Result<bool> {
    let (first, last) = segments(start, stop, seg)?;
    let begun = Instant::now();
    let deadline = wait.map(|w| begun + w);
    let mut say_at = begun;
    let mut next = first;
    loop {
        match first_missing(store, start.1, (next, last), seg).await? {
            None => return Ok(true),
            Some(missing) => next = missing,
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(false);
        }
        if now >= say_at {
            let waited = Duration::from_secs(now.duration_since(begun).as_secs());
            let left = deadline.map_or_else(
                || "no limit".to_string(),
                |d| {
                    format!(
                        "{} left",
                        humantime::format_duration(Duration::from_secs(
                            d.saturating_duration_since(now).as_secs(),
                        ))
                    )
                },
            );
            let message = format!(
                "backup {id}: waiting for WAL segment {} ({} of {} up to the stop LSN {}) to \
                 reach the store ({name}); waited {}, {left}. Only `pgagent run` puts WAL in \
                 the store: it must be streaming this server into this store",
                segment_file_name(start.1, next, seg),
                next.0 - first.0 + 1,
                last.0 - first.0 + 1,
                stop.0,
                humantime::format_duration(waited),
            );
            if say_at == begun {
                tracing::info!("{message}");
            } else {
                tracing::warn!("{message}");
            }
            say_at += WAIT_REMINDER;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether `m` is a backup whose files are stored (it has a stop LSN) but that is still
/// `running`: it waits for its WAL.
fn waits_for_wal(m: &BackupManifest) -> bool {
    m.status == BackupStatus::Running && m.stop_lsn.is_some()
}

/// Marks `complete` every manifest in `bucket` whose files are stored and whose WAL has
/// reached the store since (a backup that gave up waiting, or whose store lagged); returns
/// their ids. A manifest is written with its files only once every chunk it names is in
/// the store, so its WAL is all it lacks.
///
/// Errors: the store's, or a damaged manifest.
pub async fn complete_waiting(bucket: &Bucket, seg: WalSegmentSize) -> anyhow::Result<Vec<String>> {
    let store = bucket.store.as_ref();
    let mut done = Vec::new();
    for id in catalog::backup_ids(store).await? {
        let Some(mut m) = catalog::get_manifest(store, bucket.cipher(), &id).await? else {
            continue;
        };
        if !waits_for_wal(&m) {
            continue;
        }
        let (Ok(start), Ok(Some(stop))) = (m.start(), stop_of(&m)) else {
            continue;
        };
        let Ok(range) = segments(start, stop, seg) else {
            continue;
        };
        if first_missing(store, start.1, range, seg).await?.is_none() {
            m.status = BackupStatus::Complete;
            catalog::put_manifest(store, bucket.cipher(), &m).await?;
            done.push(id);
        }
    }
    Ok(done)
}

/// The stop position of `m`, when it has one that parses.
fn stop_of(m: &BackupManifest) -> anyhow::Result<Option<(Lsn, TimelineId)>> {
    let (Some(lsn), Some(tli)) = (&m.stop_lsn, m.stop_timeline) else {
        return Ok(None);
    };
    Ok(Some((lsn.parse::<Lsn>()?, TimelineId(tli))))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    #[test]
    fn the_segments_of_a_backup_end_before_an_exclusive_stop_on_a_boundary() {
        let seg = WalSegmentSize::DEFAULT;
        let t = TimelineId(1);
        assert_eq!(
            segments((Lsn(0x200_0028), t), (Lsn(0x400_0000), t), seg).unwrap(),
            (SegNo(2), SegNo(3))
        );
        assert_eq!(
            segments((Lsn(0x200_0028), t), (Lsn(0x200_0100), t), seg).unwrap(),
            (SegNo(2), SegNo(2))
        );
        assert!(segments((Lsn(0x200_0028), t), (Lsn(0x400_0000), TimelineId(2)), seg).is_err());
    }

    /// A manifest left `running` with its files is completed once its WAL is in the store;
    /// one without files (a backup that died while storing them) never is.
    #[tokio::test]
    async fn a_waiting_backup_is_completed_once_its_wal_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store: Arc<dyn ObjectStore> = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        let bucket = Bucket {
            store: store.clone(),
            cipher: None,
        };
        let seg = WalSegmentSize::DEFAULT;
        let base = BackupManifest {
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            started_at: "2026-11-21T03:00:00Z".into(),
            ..BackupManifest::announced("a")
        };
        let waiting = BackupManifest {
            stop_lsn: Some("0/3000100".into()),
            stop_timeline: Some(1),
            ..base.clone()
        };
        let died = BackupManifest {
            id: "b".into(),
            ..base
        };
        catalog::put_manifest(store.as_ref(), None, &waiting)
            .await
            .unwrap();
        catalog::put_manifest(store.as_ref(), None, &died)
            .await
            .unwrap();
        let put = |name: &str| {
            let store = store.clone();
            let key = wal_key(name);
            async move { store.put(&key, Bytes::from_static(b"x")).await.unwrap() }
        };
        put("000000010000000000000002").await;
        assert!(complete_waiting(&bucket, seg).await.unwrap().is_empty());
        put("000000010000000000000003").await;
        assert_eq!(complete_waiting(&bucket, seg).await.unwrap(), ["a"]);
        let m = catalog::get_manifest(store.as_ref(), None, "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.status, BackupStatus::Complete);
        let b = catalog::get_manifest(store.as_ref(), None, "b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.status, BackupStatus::Running);
        assert!(complete_waiting(&bucket, seg).await.unwrap().is_empty());
    }
}
