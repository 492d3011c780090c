//! Which backups retention keeps.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use super::RUNNING_GRACE;

/// What retention keeps and drops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backups kept, oldest first.
    pub keep: Vec<String>,
    /// Backups dropped.
    pub drop: Vec<String>,
}

/// Chooses the backups to keep among `manifests` (oldest first) at time `now`.
pub fn plan(
    manifests: &[BackupManifest],
    keep_backups: usize,
    keep_days: u64,
    now: SystemTime,
) -> Plan {
    let complete: Vec<&BackupManifest> = manifests
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
        .collect();
    let newest: HashSet<&str> = complete
        .iter()
        .rev()
        .take(keep_backups.max(1))
        .map(|m| m.id.as_str())
        .collect();
    let mut p = Plan::default();
    for m in manifests {
        let kept = match m.status {
            BackupStatus::Running => younger(m, RUNNING_GRACE, now),
            BackupStatus::Complete => {
                newest.contains(m.id.as_str())
                    || (keep_days > 0 && younger(m, Duration::from_secs(keep_days * 86_400), now))
            }
        };
        if kept {
            p.keep.push(m.id.clone());
        } else {
            p.drop.push(m.id.clone());
        }
    }
    p
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
}
