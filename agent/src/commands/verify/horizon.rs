//! A backup's lock horizon: until when the bucket itself keeps everything a restore of it
//! reads — its manifest and chunks, those of the backups it was taken against, and its WAL
//! from the start to the stop segment — whatever a writer with the agent's credentials
//! does. Read from each object's own retention (`HeadObject`), not from what manifests
//! claim; with `--as-of`, from the versions a restore as of that time reads.

use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use pgagent_protocol::WalSegmentSize;
use pgagent_storage::layout::{backup_manifest_key, chunk_key, segment_key};
use pgagent_storage::manifest::BackupManifest;
use pgagent_storage::{ObjectStore, Retention};

use crate::store::wal::WalIndex;

/// What the locks of one backup's objects say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Horizon {
    /// Every object is locked; the earliest lock ends then.
    Until(SystemTime),
    /// Objects that carry no lock, or one already ended (some keys, and how many).
    Unlocked {
        /// Up to 5 of them.
        some: Vec<String>,
        /// How many.
        count: usize,
    },
}

impl Horizon {
    /// The earliest end among `locks` (key, its retention), at `now`.
    pub fn of(locks: &[(String, Option<Retention>)], now: SystemTime) -> Option<Horizon> {
        let unlocked: Vec<&String> = locks
            .iter()
            .filter(|(_, r)| !r.is_some_and(|r| r.holds_at(now)))
            .map(|(k, _)| k)
            .collect();
        if !unlocked.is_empty() {
            return Some(Horizon::Unlocked {
                some: unlocked.iter().take(5).map(|k| k.to_string()).collect(),
                count: unlocked.len(),
            });
        }
        let until = locks.iter().filter_map(|(_, r)| r.map(|r| r.until)).min()?;
        Some(Horizon::Until(until))
    }
}

/// The keys a restore of `m` reads: the manifests and chunks of `chain` (`m` and the
/// backups below it) and the complete WAL segments of `index` from `m`'s start segment to
/// its stop segment.
pub fn needed_keys(
    m: &BackupManifest,
    chain: &[&BackupManifest],
    index: &WalIndex,
    seg: WalSegmentSize,
) -> Vec<String> {
    let mut keys: Vec<String> = chain.iter().map(|b| backup_manifest_key(&b.id)).collect();
    let mut chunks: Vec<&str> = chain.iter().flat_map(|b| b.chunk_hashes()).collect();
    chunks.sort_unstable();
    chunks.dedup();
    keys.extend(chunks.into_iter().map(chunk_key));
    if let (Ok((start, _)), Ok(Some((stop, _)))) = (m.start(), m.stop()) {
        let range = start.segment_number(seg)..=stop.segment_number(seg);
        keys.extend(
            index
                .complete
                .keys()
                .filter(|(_, segno)| range.contains(segno))
                .map(|&(tli, segno)| segment_key(tli, segno, seg)),
        );
    }
    keys
}

/// The retention of each of `keys`, `concurrency` at a time.
///
/// Errors: the first that cannot be read (a missing object is another check's problem
/// and reads as no lock).
pub async fn locks_of(
    store: &dyn ObjectStore,
    keys: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, Option<Retention>)>> {
    futures::stream::iter(keys.into_iter().map(|key| async move {
        match store.retention(&key).await {
            Ok(r) => Ok((key, r)),
            Err(e) if e.is_not_found() => Ok((key, None)),
            Err(e) => Err(anyhow::Error::new(e).context(format!("read the lock of {key}"))),
        }
    }))
    .buffered(concurrency.max(1))
    .try_collect()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_storage::LockMode;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn r(until: &str) -> Option<Retention> {
        Some(Retention {
            mode: LockMode::Compliance,
            until: at(until),
        })
    }

    #[test]
    fn the_horizon_is_the_earliest_lock_unless_something_is_unlocked() {
        let now = at("2026-12-06T00:00:00Z");
        let locks = vec![
            ("a".to_string(), r("2026-12-20T00:00:00Z")),
            ("b".to_string(), r("2026-12-18T00:00:00Z")),
        ];
        assert_eq!(
            Horizon::of(&locks, now),
            Some(Horizon::Until(at("2026-12-18T00:00:00Z")))
        );
        let mut with_gap = locks.clone();
        with_gap.push(("c".into(), None));
        with_gap.push(("d".into(), r("2026-12-01T00:00:00Z")));
        assert_eq!(
            Horizon::of(&with_gap, now),
            Some(Horizon::Unlocked {
                some: vec!["c".into(), "d".into()],
                count: 2
            })
        );
        assert_eq!(Horizon::of(&[], now), None);
    }
}
