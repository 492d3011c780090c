//! Prune under `store.lock`: which of the objects retention would delete are still locked.
//!
//! A delete of a locked object is never sent: on a versioned bucket it would succeed as a
//! delete marker, hiding the object while its locked version stays and is billed. An object
//! is taken as locked without a request while `last_modified + lock_days` is ahead (it was
//! written locked that long, unless the lock was turned on later: then it waits for nothing
//! worse than the next prune); otherwise its lock is read (`HeadObject`) and it is deleted
//! only if its retain-until date has passed. So a prune sends one read per object it
//! deletes, and none for the young objects that make up most of a locked store.
//!
//! Without a lock policy every object passes, without a request: prune behaves as before.

use std::collections::HashMap;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use pgagent_storage::manifest::BackupManifest;
use pgagent_storage::{LockPolicy, ObjectMeta, ObjectStore};

use crate::store::chain::Chains;

/// The outcome for a set of candidates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sorted {
    /// Keys whose locks have ended (or that carry none): they may be deleted.
    pub deletable: Vec<String>,
    /// Keys still locked, with the end of the lock (known, or presumed from the write).
    pub locked: Vec<(String, SystemTime)>,
}

impl Sorted {
    /// `"N objects are still locked, deletable from A to B"`, or `None` when none is.
    pub fn locked_text(&self, what: &str) -> Option<String> {
        let first = self.locked.iter().map(|(_, t)| *t).min()?;
        let last = self.locked.iter().map(|(_, t)| *t).max()?;
        let day = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        Some(if first == last {
            format!(
                "left {} {what} still locked, deletable from {}",
                self.locked.len(),
                day(first)
            )
        } else {
            format!(
                "left {} {what} still locked, deletable from {} to {}",
                self.locked.len(),
                day(first),
                day(last)
            )
        })
    }
}

/// The backups the backups in `locked` (kept whole by their locks) depend on: each
/// ancestor's id, with the locked backup that needs it. They stay too, so a backup a lock
/// keeps in the store keeps its chain.
pub fn held_for<'a>(
    manifests: &'a [BackupManifest],
    locked: &HashMap<&str, SystemTime>,
) -> HashMap<&'a str, &'a str> {
    let chains = Chains::new(manifests);
    let mut held = HashMap::new();
    for m in manifests
        .iter()
        .filter(|m| locked.contains_key(m.id.as_str()))
    {
        for (ancestor, _) in chains.ancestors(m) {
            held.entry(ancestor.id.as_str()).or_insert(m.id.as_str());
        }
    }
    held
}

/// When `meta`, written under `policy`, is presumed locked until at `now`: `None` when its
/// presumed lock has ended (or its write time is unknown).
pub fn presumed_until(
    meta: &ObjectMeta,
    policy: &LockPolicy,
    now: SystemTime,
) -> Option<SystemTime> {
    let end = meta.last_modified? + policy.period();
    (end > now).then_some(end)
}

/// Sorts `candidates` (keys, with their listing metadata where known) into deletable and
/// locked, at `now`, reading at most `concurrency` locks at a time.
///
/// Errors: a lock that cannot be read (the object is then neither deleted nor skipped:
/// prune stops).
pub async fn sort(
    store: &dyn ObjectStore,
    candidates: &[String],
    listed: &HashMap<&str, &ObjectMeta>,
    now: SystemTime,
    concurrency: usize,
) -> anyhow::Result<Sorted> {
    let Some(policy) = store.lock_policy() else {
        return Ok(Sorted {
            deletable: candidates.to_vec(),
            locked: Vec::new(),
        });
    };
    let mut out = Sorted::default();
    let mut to_read = Vec::new();
    for key in candidates {
        match listed
            .get(key.as_str())
            .and_then(|m| presumed_until(m, &policy, now))
        {
            Some(until) => out.locked.push((key.clone(), until)),
            None => to_read.push(key.clone()),
        }
    }
    let read: Vec<(String, Option<SystemTime>)> =
        futures::stream::iter(to_read.into_iter().map(|key| async move {
            match store.retention(&key).await {
                Ok(r) => Ok((key, r.filter(|r| r.holds_at(now)).map(|r| r.until))),
                // Gone meanwhile: nothing to delete, nothing locked.
                Err(e) if e.is_not_found() => Ok((key, None)),
                Err(e) => Err(anyhow::Error::new(e).context(format!("read the lock of {key}"))),
            }
        }))
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    for (key, until) in read {
        match until {
            Some(t) => out.locked.push((key, t)),
            None => out.deletable.push(key),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use pgagent_storage::fs::FsStore;
    use pgagent_storage::LockMode;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn an_object_written_within_lock_days_is_presumed_locked() {
        let p = LockPolicy {
            mode: LockMode::Compliance,
            days: 10,
        };
        let meta = |t: &str| ObjectMeta {
            key: "wal/x".into(),
            size: 1,
            last_modified: Some(at(t)),
        };
        let now = at("2026-12-06T12:00:00Z");
        assert_eq!(
            presumed_until(&meta("2026-12-01T12:00:00Z"), &p, now),
            Some(at("2026-12-11T12:00:00Z"))
        );
        assert_eq!(presumed_until(&meta("2026-11-26T12:00:00Z"), &p, now), None);
        let unknown = ObjectMeta {
            last_modified: None,
            ..meta("2026-12-01T12:00:00Z")
        };
        assert_eq!(presumed_until(&unknown, &p, now), None);
    }

    #[test]
    fn a_backup_kept_by_its_lock_keeps_its_chain() {
        use crate::store::chain::tests::{full, incremental};
        let (f, i1, i2) = ("20261201T030000Z", "20261202T030000Z", "20261203T030000Z");
        let full_1 = full(f, "0/2000028");
        let inc_1 = incremental(i1, "0/4000028", &full_1);
        let inc_2 = incremental(i2, "0/6000028", &inc_1);
        let other = full("20261204T030000Z", "0/8000028");
        let all = [full_1, inc_1, inc_2, other];
        let locked = HashMap::from([(i2, at("2026-12-20T00:00:00Z"))]);
        let held = held_for(&all, &locked);
        assert_eq!(held, HashMap::from([(i1, i2), (f, i2)]));
        assert!(held_for(&all, &HashMap::new()).is_empty());
    }

    #[test]
    fn the_report_names_how_many_and_when() {
        let s = Sorted {
            deletable: vec![],
            locked: vec![
                ("a".into(), at("2026-12-20T00:00:00Z")),
                ("b".into(), at("2026-12-10T00:00:00Z")),
            ],
        };
        assert_eq!(
            s.locked_text("chunks").unwrap(),
            "left 2 chunks still locked, deletable from 2026-12-10T00:00:00Z to 2026-12-20T00:00:00Z"
        );
        assert_eq!(Sorted::default().locked_text("chunks"), None);
    }

    #[tokio::test]
    async fn without_a_lock_policy_everything_passes_without_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        // The keys do not exist: a request would have found that out.
        let keys = vec!["chunks/aa/aa1".to_string(), "wal/x".to_string()];
        let s = sort(&fs, &keys, &HashMap::new(), SystemTime::now(), 2)
            .await
            .unwrap();
        assert_eq!(s.deletable, keys);
        assert!(s.locked.is_empty());
    }
}
