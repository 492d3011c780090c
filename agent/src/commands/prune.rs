//! `pgagent prune [--dry-run]`: apply retention (`backup.keep_backups`, `backup.keep_days`).
//!
//! A complete backup is kept if it is one of the newest `keep_backups` or younger than
//! `keep_days` days (0: no age rule); the newest complete backup is always kept, and so is
//! a running one started less than [`RUNNING_GRACE`] ago (older ones failed). Then, in this
//! order, so that no kept manifest ever points at a missing object:
//! 1. the manifests of the other backups are deleted;
//! 2. chunks no kept manifest references are deleted — unless a backup is running: it
//!    writes a manifest when it starts, and its chunks are only listed at its end;
//! 3. WAL segments (and `.partial`s) before the oldest kept backup's start segment are
//!    deleted; history files stay (they are small and recovery reads them).
//!
//! Only this command deletes: `pgagent run` and `pgagent backup` need no delete right.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pgagent_protocol::WalFileName;
use pgagent_storage::layout::{backup_manifest_key, CHUNK_PREFIX, WAL_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use crate::backup::catalog;
use crate::config::Config;

/// A running backup older than this is taken as failed and dropped.
pub const RUNNING_GRACE: Duration = Duration::from_secs(24 * 3600);

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
    let younger = |m: &BackupManifest, limit: Duration| {
        humantime::parse_rfc3339(&m.started_at)
            .ok()
            .map(|t| now.duration_since(t).unwrap_or_default())
            .is_some_and(|age| age < limit)
    };
    let mut p = Plan::default();
    for m in manifests {
        let kept = match m.status {
            BackupStatus::Running => younger(m, RUNNING_GRACE),
            BackupStatus::Complete => {
                newest.contains(m.id.as_str())
                    || (keep_days > 0 && younger(m, Duration::from_secs(keep_days * 86_400)))
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

/// Applies retention (or, with `dry_run`, prints what it would delete).
///
/// Errors: the store cannot be read, or a delete fails (what was deleted before stays
/// deleted; a rerun finishes the job).
pub async fn run(cfg: &Config, dry_run: bool) -> anyhow::Result<()> {
    let (store, _cluster, seg) = super::open_cluster_store(cfg).await?;
    let mut manifests = Vec::new();
    for id in catalog::backup_ids(store.as_ref()).await? {
        // A damaged manifest stops prune: deleting around it could lose what it needs.
        if let Some(m) = catalog::get_manifest(store.as_ref(), &id).await? {
            manifests.push(m);
        }
    }
    let b = &cfg.raw.backup;
    let p = plan(&manifests, b.keep_backups, b.keep_days, SystemTime::now());
    let kept: Vec<&BackupManifest> = manifests
        .iter()
        .filter(|m| p.keep.contains(&m.id))
        .collect();
    if kept.iter().all(|m| m.status != BackupStatus::Complete) {
        println!("prune: no complete backup, nothing to prune");
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };

    for id in &p.drop {
        if !dry_run {
            store.delete(&backup_manifest_key(id)).await?;
        }
        println!("{verb} backup {id}");
    }

    if kept.iter().any(|m| m.status == BackupStatus::Running) {
        println!("a backup is running: chunks are left for the next prune");
    } else {
        let referenced: HashSet<&str> = kept
            .iter()
            .flat_map(|m| m.files.iter().chain(m.pg_manifest.iter()))
            .flat_map(|f| f.chunks.iter().map(String::as_str))
            .collect();
        let mut chunks = 0u64;
        for o in store.list(CHUNK_PREFIX).await? {
            let hash = o.key.rsplit('/').next().unwrap_or_default();
            if referenced.contains(hash) {
                continue;
            }
            if !dry_run {
                store.delete(&o.key).await?;
            }
            chunks += 1;
        }
        println!("{verb} {chunks} chunks no kept backup needs");
    }

    let oldest_start = kept
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
        .filter_map(|m| m.start().ok())
        .map(|(lsn, _)| lsn.segment_number(seg))
        .min()
        .expect("a complete backup is kept");
    let mut wal = 0u64;
    for o in store.list(WAL_PREFIX).await? {
        let name = o.key.strip_prefix(WAL_PREFIX).unwrap_or_default();
        let old = match WalFileName::parse(name, seg) {
            Some(WalFileName::Segment { segno, .. }) | Some(WalFileName::Partial { segno, .. }) => {
                segno < oldest_start
            }
            Some(WalFileName::BackupHistory { segno, .. }) => segno < oldest_start,
            _ => false,
        };
        if old {
            if !dry_run {
                store.delete(&o.key).await?;
            }
            wal += 1;
        }
    }
    println!(
        "{verb} {wal} WAL objects before the oldest kept backup; kept {} backups",
        p.keep.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_storage::manifest::{BackupStats, MANIFEST_FORMAT_VERSION};

    fn m(id: &str, started: &str, status: BackupStatus) -> BackupManifest {
        BackupManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            id: id.into(),
            status,
            system_identifier: "1".into(),
            pg_version_num: 150000,
            label: String::new(),
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            stop_lsn: None,
            stop_timeline: None,
            started_at: started.into(),
            finished_at: None,
            chunk_size: 1 << 20,
            backup_label: String::new(),
            tablespace_map: None,
            pg_manifest: None,
            tablespaces: vec![],
            files: vec![],
            stats: BackupStats::default(),
        }
    }

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
        let now = humantime::parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        let p = plan(&list, 2, 0, now);
        assert_eq!(p.keep, ["c", "d", "e"]);
        assert_eq!(p.drop, ["a", "b", "old"]);
        let p = plan(&list, 1, 14, now);
        assert_eq!(p.keep, ["b", "c", "d", "e"]);
        // keep_backups = 0 still keeps the newest complete backup.
        let p = plan(&list, 0, 0, now);
        assert_eq!(p.keep, ["d", "e"]);
    }
}
