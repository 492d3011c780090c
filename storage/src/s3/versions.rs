//! Reading a versioned bucket as it was at a past time ([`StoreOptions::as_of`]): each key
//! shows the version that was current then, past later overwrites and delete markers.
//!
//! The version current at `T` is the newest entry of the key — object version or delete
//! marker — whose `LastModified` is at or before `T` (`ListObjectVersions`, S3 API
//! reference); a delete marker there, or no entry, means the key was absent at `T`. Two
//! entries of one key in the same second are ordered as S3 lists them (newest first), and a
//! version is preferred to a delete marker of the same second: `LastModified` has whole
//! seconds, so a time at least a second before an attack is what to pass.
//!
//! Listings remember the version of each key they saw, so a restore that lists `chunks/`
//! or `wal/` and then reads the objects sends one `GetObject` per object, as without
//! `as_of`; a key no listing covered costs one `ListObjectVersions` first.
//!
//! [`StoreOptions::as_of`]: crate::config::StoreOptions::as_of

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{map_sdk, to_system_time, S3Store};
use crate::error::{Op, StoreError};
use crate::object_store::ObjectMeta;

/// One key's version as of the store's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    /// `VersionId`.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub last_modified: SystemTime,
}

/// One entry of a `ListObjectVersions` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// An object version.
    Version(Version),
    /// A delete marker written at that time.
    Deleted(SystemTime),
}

impl Entry {
    fn at(&self) -> SystemTime {
        match self {
            Entry::Version(v) => v.last_modified,
            Entry::Deleted(t) => *t,
        }
    }
}

/// The entry current at `at` among one key's `entries` (in S3's order, newest first within
/// each kind): the newest written at or before `at`, a version before a delete marker of the
/// same time. `None` when the key was absent then.
pub(crate) fn current_at(entries: &[Entry], at: SystemTime) -> Option<Version> {
    let mut best: Option<&Entry> = None;
    for e in entries.iter().filter(|e| e.at() <= at) {
        let better = match best {
            None => true,
            Some(b) => {
                e.at() > b.at()
                    || (e.at() == b.at()
                        && matches!(e, Entry::Version(_))
                        && matches!(b, Entry::Deleted(_)))
            }
        };
        if better {
            best = Some(e);
        }
    }
    match best {
        Some(Entry::Version(v)) => Some(v.clone()),
        _ => None,
    }
}

/// The time a store is read as of, and the versions found so far.
#[derive(Debug)]
pub(crate) struct AsOf {
    /// The time.
    pub at: SystemTime,
    /// Key → its version at `at` (`None`: absent then), from listings and lookups.
    known: Mutex<HashMap<String, Option<Version>>>,
}

impl AsOf {
    pub(crate) fn new(at: SystemTime) -> AsOf {
        AsOf {
            at,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, key: &str, v: Option<Version>) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), v);
    }

    fn recall(&self, key: &str) -> Option<Option<Version>> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

impl S3Store {
    /// The version of `key` as of the store's time (`None`: absent then).
    pub(crate) async fn version_of(
        &self,
        as_of: &AsOf,
        key: &str,
    ) -> Result<Option<Version>, StoreError> {
        if let Some(v) = as_of.recall(key) {
            return Ok(v);
        }
        let found = self
            .versions(as_of, key, None, usize::MAX, Some(key))
            .await?;
        Ok(found.into_iter().next().map(|(_, v)| v))
    }

    /// The keys under `prefix` (after `after`) present as of the store's time, with their
    /// versions, in key order, at least the first `limit` of them when there are that many;
    /// `exact`: only that key.
    pub(crate) async fn versions(
        &self,
        as_of: &AsOf,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        exact: Option<&str>,
    ) -> Result<Vec<(String, Version)>, StoreError> {
        let mut entries: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let mut key_marker = after.map(|a| self.full_key(a));
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.loc.bucket)
                .prefix(self.full_key(prefix))
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| map_sdk(prefix, Op::List, e))?;
            let rel = |k: Option<&str>| {
                k.and_then(|k| k.strip_prefix(&self.key_prefix))
                    .map(str::to_string)
            };
            for v in page.versions() {
                let (Some(key), Some(id), Some(t)) = (
                    rel(v.key()),
                    v.version_id(),
                    to_system_time(v.last_modified()),
                ) else {
                    continue;
                };
                entries
                    .entry(key)
                    .or_default()
                    .push(Entry::Version(Version {
                        id: id.to_string(),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        last_modified: t,
                    }));
            }
            for d in page.delete_markers() {
                if let (Some(key), Some(t)) = (rel(d.key()), to_system_time(d.last_modified())) {
                    entries.entry(key).or_default().push(Entry::Deleted(t));
                }
            }
            let next = rel(page.next_key_marker());
            let done = page.is_truncated() != Some(true)
                || exact.is_some_and(|k| next.as_deref().is_some_and(|n| n > k))
                || enough(&entries, as_of.at, next.as_deref(), limit);
            if done {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        let mut out = Vec::new();
        for (key, list) in entries {
            if exact.is_some_and(|k| k != key) {
                continue;
            }
            let v = current_at(&list, as_of.at);
            as_of.remember(&key, v.clone());
            if let Some(v) = v {
                out.push((key, v));
            }
        }
        if let Some(k) = exact {
            if out.is_empty() {
                as_of.remember(k, None);
            }
        }
        Ok(out)
    }

    /// Listing as of the store's time, as [`ObjectMeta`]s.
    pub(crate) async fn list_as_of(
        &self,
        as_of: &AsOf,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out: Vec<ObjectMeta> = self
            .versions(as_of, prefix, after, limit, None)
            .await?
            .into_iter()
            .map(|(key, v)| ObjectMeta {
                key,
                size: v.size,
                last_modified: Some(v.last_modified),
            })
            .filter(|m| after.is_none_or(|a| m.key.as_str() > a))
            .collect();
        out.truncate(limit);
        Ok(out)
    }
}

/// Whether the keys wholly listed (those before `next`, the key a truncated page stopped
/// in) already hold `limit` present at `at`.
fn enough(
    entries: &BTreeMap<String, Vec<Entry>>,
    at: SystemTime,
    next: Option<&str>,
    limit: usize,
) -> bool {
    if limit == usize::MAX {
        return false;
    }
    let Some(next) = next else { return false };
    entries
        .iter()
        .filter(|(k, _)| k.as_str() < next)
        .filter(|(_, e)| current_at(e, at).is_some())
        .count()
        >= limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn v(id: &str, at: u64) -> Entry {
        Entry::Version(Version {
            id: id.into(),
            size: 1,
            last_modified: t(at),
        })
    }

    #[test]
    fn the_version_current_then_is_the_newest_written_by_then() {
        // Written at 10, overwritten at 20, hidden by a delete marker at 30.
        let e = [v("c", 20), v("b", 10), Entry::Deleted(t(30))];
        assert_eq!(current_at(&e, t(5)), None);
        assert_eq!(current_at(&e, t(10)).unwrap().id, "b");
        assert_eq!(current_at(&e, t(29)).unwrap().id, "c");
        assert_eq!(current_at(&e, t(30)), None);
        assert_eq!(current_at(&e, t(99)), None);
    }

    #[test]
    fn of_two_entries_in_one_second_the_listed_first_version_wins_over_a_marker() {
        let e = [v("new", 10), v("old", 10), Entry::Deleted(t(10))];
        assert_eq!(current_at(&e, t(10)).unwrap().id, "new");
        let e = [Entry::Deleted(t(10)), v("only", 10)];
        assert_eq!(current_at(&e, t(10)).unwrap().id, "only");
    }
}
