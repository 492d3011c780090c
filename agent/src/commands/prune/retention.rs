//! Which backups retention keeps.
//!
//! `keep_backups = N` keeps the N newest complete backups *restorable*: each with its whole
//! chain ([`crate::store::chain`]). Every backup kept, for whatever reason, keeps the backups
//! it depends on (its parent, the parent's parent… and its root) while the store holds them,
//! and with them their chunks: a restore of an incremental backup reads them all. A complete
//! backup whose chain is broken (a parent missing, not complete, or not fitting) cannot be
//! restored: it does not count toward `keep_backups`, and it is deleted only when the rule
//! without chains would delete it too (not one of the N newest complete backups, nor younger
//! than `keep_days`), so one whose parent only waits for its WAL is not lost meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use super::RUNNING_GRACE;
use crate::store::chain::Chains;

/// What retention keeps and drops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backups kept, oldest first.
    pub keep: Vec<String>,
    /// Backups dropped.
    pub drop: Vec<String>,
    /// Backups kept only because a kept backup depends on them, oldest first, with why
    /// (`"parent of 20261121T030000Z"`).
    pub needed: Vec<(String, String)>,
    /// Complete backups that cannot be restored from the store, oldest first, with why;
    /// they do not count toward `keep_backups`.
    pub broken: Vec<(String, String)>,
    /// Kept backups that can be restored (complete, their whole chain kept), oldest first.
    pub restorable: Vec<String>,
}

/// Chooses the backups to keep among `manifests` (every manifest in the store, oldest
/// first) at time `now`.
///
/// `keep_backups = N` keeps the N newest complete backups *restorable*, each with its whole
/// chain ([`crate::store::chain`]). Every backup kept, for whatever reason, keeps the
/// backups it depends on (its parent, the parent's parent… and its root) while the store
/// holds them. A complete backup whose chain is broken cannot be restored: it does not
/// count toward `keep_backups`, and it is dropped only when the rule without chains would
/// drop it too (not one of the N newest complete backups, nor younger than `keep_days`).
pub fn plan(
    manifests: &[BackupManifest],
    keep_backups: usize,
    keep_days: u64,
    now: SystemTime,
) -> Plan {
    let chains = Chains::new(manifests);
    let complete: Vec<&BackupManifest> = manifests
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
        .collect();
    let mut broken = HashMap::new();
    for m in &complete {
        if let Err(why) = chains.chain(m) {
            broken.insert(m.id.as_str(), why.to_string());
        }
    }
    let n = keep_backups.max(1);
    let counted = newest(
        complete
            .iter()
            .copied()
            .filter(|m| !broken.contains_key(m.id.as_str())),
        n,
    );
    // The rule before chains: what a broken backup is kept by.
    let plain = newest(complete.iter().copied(), n);
    let young = |m: &BackupManifest| {
        keep_days > 0 && younger(m, Duration::from_secs(keep_days * 86_400), now)
    };
    let selected: Vec<&BackupManifest> = manifests
        .iter()
        .filter(|m| match m.status {
            BackupStatus::Running => younger(m, RUNNING_GRACE, now),
            BackupStatus::Complete if broken.contains_key(m.id.as_str()) => {
                plain.contains(m.id.as_str()) || young(m)
            }
            BackupStatus::Complete => counted.contains(m.id.as_str()) || young(m),
        })
        .collect();
    let mut kept: HashSet<&str> = selected.iter().map(|m| m.id.as_str()).collect();
    let mut needed: HashMap<&str, String> = HashMap::new();
    // Oldest first, so an ancestor is named with the nearest kept backup that needs it.
    for m in &selected {
        for (ancestor, child) in chains.ancestors(m) {
            if !kept.insert(ancestor.id.as_str()) {
                continue;
            }
            let is_parent = chains
                .get(child)
                .and_then(|c| c.parent.as_deref())
                .is_some_and(|p| p == ancestor.id);
            let mut why = if is_parent {
                format!("parent of {child}")
            } else {
                format!("root of the chain of {child}")
            };
            if child != m.id {
                why.push_str(&format!(", in the chain of {}", m.id));
            }
            needed.insert(ancestor.id.as_str(), why);
        }
    }
    let mut p = Plan::default();
    for m in manifests {
        let id = m.id.as_str();
        if let Some(why) = broken.get(id) {
            p.broken.push((m.id.clone(), why.clone()));
        }
        if !kept.contains(id) {
            p.drop.push(m.id.clone());
            continue;
        }
        p.keep.push(m.id.clone());
        if let Some(why) = needed.remove(id) {
            p.needed.push((m.id.clone(), why));
        }
        if m.status == BackupStatus::Complete && !broken.contains_key(id) {
            p.restorable.push(m.id.clone());
        }
    }
    p
}

/// The ids of the `n` newest of `among` (oldest first).
fn newest<'a>(
    among: impl DoubleEndedIterator<Item = &'a BackupManifest>,
    n: usize,
) -> HashSet<&'a str> {
    among.rev().take(n).map(|m| m.id.as_str()).collect()
}

pub(super) fn younger(m: &BackupManifest, limit: Duration, now: SystemTime) -> bool {
    humantime::parse_rfc3339(&m.started_at)
        .ok()
        .map(|t| now.duration_since(t).unwrap_or_default())
        .is_some_and(|age| age < limit)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{m, now};
    use super::*;

    #[test]
    fn count_age_running_and_the_newest_complete() {
        use BackupStatus::*;
        let list = vec![
            m("a", "2026-11-01T03:00:00Z", Complete),
            m("b", "2026-11-10T03:00:00Z", Complete),
            m("c", "2026-11-19T03:00:00Z", Complete),
            m("d", "2026-11-21T03:00:00Z", Running),
            m("old", "2026-11-02T03:00:00Z", Running),
            m("e", "2026-11-21T03:00:00Z", Complete),
        ];
        let p = plan(&list, 2, 0, now());
        assert_eq!(p.keep, ["c", "d", "e"]);
        assert_eq!(p.drop, ["a", "b", "old"]);
        let p = plan(&list, 1, 14, now());
        assert_eq!(p.keep, ["b", "c", "d", "e"]);
        // keep_backups = 0 still keeps the newest complete backup.
        let p = plan(&list, 0, 0, now());
        assert_eq!(p.keep, ["d", "e"]);
    }

    use crate::store::chain::tests::{full, incremental};

    fn ids(p: &[String]) -> Vec<&str> {
        p.iter().map(|s| &s[4..8]).collect()
    }

    fn needed(p: &Plan) -> Vec<(&str, &str)> {
        p.needed
            .iter()
            .map(|(id, why)| (&id[4..8], why.as_str()))
            .collect()
    }

    #[test]
    fn a_kept_incremental_keeps_its_whole_chain() {
        // Full backups on the 1st and 5th, each with three incrementals after it.
        let f1 = full("20261101T030000Z", "0/1000028");
        let a = incremental("20261102T030000Z", "0/2000028", &f1);
        let b = incremental("20261103T030000Z", "0/3000028", &a);
        let c = incremental("20261104T030000Z", "0/4000028", &b);
        let f2 = full("20261105T030000Z", "0/5000028");
        let d = incremental("20261106T030000Z", "0/6000028", &f2);
        let e = incremental("20261107T030000Z", "0/7000028", &d);
        let g = incremental("20261108T030000Z", "0/8000028", &e);
        let all = [f1, a, b, c, f2, d, e, g];
        let at =
            |day: u32| humantime::parse_rfc3339(&format!("2026-11-{day:02}T12:00:00Z")).unwrap();
        // Two restorable backups: the newest incremental and its parent; their chain down
        // to the full backup of the 5th stays with them.
        let p = plan(&all, 2, 0, at(8));
        assert_eq!(ids(&p.keep), ["1105", "1106", "1107", "1108"]);
        assert_eq!(ids(&p.drop), ["1101", "1102", "1103", "1104"]);
        assert_eq!(
            needed(&p),
            [
                (
                    "1105",
                    "parent of 20261106T030000Z, in the chain of 20261107T030000Z"
                ),
                ("1106", "parent of 20261107T030000Z"),
            ]
        );
        assert_eq!(ids(&p.restorable), ["1105", "1106", "1107", "1108"]);
        assert!(p.broken.is_empty());
        // Five: the oldest kept is an incremental of depth 3 whose root is old.
        let p = plan(&all, 5, 0, at(8));
        assert_eq!(ids(&p.drop), Vec::<&str>::new());
        assert_eq!(
            needed(&p),
            [
                (
                    "1101",
                    "parent of 20261102T030000Z, in the chain of 20261104T030000Z"
                ),
                (
                    "1102",
                    "parent of 20261103T030000Z, in the chain of 20261104T030000Z"
                ),
                ("1103", "parent of 20261104T030000Z"),
            ]
        );
        // keep_days alone keeps a young incremental's old chain too.
        let p = plan(&all, 1, 2, at(9));
        assert_eq!(ids(&p.keep), ["1105", "1106", "1107", "1108"]);
        // One restorable backup is always kept, with its chain.
        let p = plan(&all, 0, 0, at(30));
        assert_eq!(ids(&p.keep), ["1105", "1106", "1107", "1108"]);
    }

    #[test]
    fn a_broken_chain_counts_for_nothing_and_goes_only_when_it_would_anyway() {
        let f1 = full("20261101T030000Z", "0/1000028");
        let a = incremental("20261102T030000Z", "0/2000028", &f1);
        let b = incremental("20261103T030000Z", "0/3000028", &a);
        let f2 = full("20261104T030000Z", "0/4000028");
        let c = incremental("20261105T030000Z", "0/5000028", &f2);
        // a's manifest is gone: b cannot be restored. c's parent waits for its WAL.
        let waiting = BackupManifest {
            status: BackupStatus::Running,
            started_at: "2026-11-04T03:00:00Z".into(),
            ..f2.clone()
        };
        let all = [f1.clone(), b.clone(), waiting, c.clone()];
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
        let p = plan(&all, 2, 0, now);
        // Nothing restorable but f1: it is kept; b and c are among the two newest
        // complete backups, so they stay, and with them what they name.
        assert_eq!(ids(&p.restorable), ["1101"]);
        assert_eq!(ids(&p.keep), ["1101", "1103", "1104", "1105"]);
        assert_eq!(needed(&p), [("1104", "parent of 20261105T030000Z")]);
        let broken: Vec<(&str, &str)> = p
            .broken
            .iter()
            .map(|(id, why)| (&id[4..8], why.as_str()))
            .collect();
        assert_eq!(
            broken,
            [
                (
                    "1103",
                    "20261103T030000Z was taken against 20261102T030000Z, which is not in the store"
                ),
                (
                    "1105",
                    "20261105T030000Z was taken against 20261104T030000Z, which is not complete"
                ),
            ]
        );
        // Once newer restorable backups exist, the broken ones age out like any other.
        let f3 = full("20261106T030000Z", "0/6000028");
        let f4 = full("20261107T030000Z", "0/7000028");
        let mut all = all.to_vec();
        all.extend([f3, f4]);
        let p = plan(&all, 2, 0, now);
        assert_eq!(ids(&p.keep), ["1106", "1107"]);
        assert_eq!(ids(&p.drop), ["1101", "1103", "1104", "1105"]);
        assert!(p.needed.is_empty());
        // A young broken backup keeps its root even though the link between is gone.
        let f3 = full("20261106T030000Z", "0/6000028");
        let p = plan(&[f1, b, f3], 1, 28, now);
        assert_eq!(ids(&p.keep), ["1101", "1103", "1106"]);
        assert_eq!(
            needed(&p),
            [("1101", "root of the chain of 20261103T030000Z")]
        );
    }
}
