//! The local tier of a restore: a pgagent snapshot on this machine that can reach the
//! target, brought back by `zfs clone` (into a new dataset mounted where `--pgdata` points;
//! nothing is destroyed) or `zfs rollback` (in place; needs `--force`), then made ready for
//! recovery with the snapshot's backup_label (DESIGN.md, "ZFS").
//!
//! [`plan`] only reads and says why a snapshot cannot serve; [`execute`] changes things.

use std::path::{Path, PathBuf};

use pgagent_storage::snapshot::SnapshotRecord;

use super::pgdata::running_server;
use super::request::RestoreRequest;
use super::target::RecoveryTarget;
use crate::config::{Config, SnapshotRestoreMode};
use crate::zfs::mounts::{read_mounts, Mount};
use crate::zfs::snapshots::{local_snapshots, LocalSnapshot};
use crate::zfs::Zfs;

/// What the snapshot tier will do.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    /// The snapshot's record.
    pub record: SnapshotRecord,
    /// How it comes back.
    pub action: Action,
}

/// How a snapshot comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `zfs clone -o mountpoint=<mountpoint> <snapshot> <dataset>`.
    Clone {
        /// The snapshot.
        snapshot: String,
        /// The new dataset.
        dataset: String,
        /// Its mount point (the data directory is at `--pgdata`, below or at it).
        mountpoint: PathBuf,
    },
    /// `zfs rollback -r` of each snapshot (the configured datasets and their descendants).
    Rollback {
        /// The snapshots.
        snapshots: Vec<String>,
    },
}

/// Whether a restore from `r` can stop at `target`: recovery cannot stop before the
/// snapshot's backup ended.
pub fn reaches(r: &SnapshotRecord, target: &RecoveryTarget) -> bool {
    match target {
        RecoveryTarget::Time(_, t) => {
            super::target::latest_instant(&r.finished_at).is_some_and(|f| f <= *t)
        }
        RecoveryTarget::Lsn(l) => r.positions().is_ok_and(|(_, stop, _)| stop <= *l),
        RecoveryTarget::Latest | RecoveryTarget::Xid(_) | RecoveryTarget::Name(_) => true,
    }
}

/// Chooses the newest usable local snapshot for `req`, or says why none can serve.
/// `system_identifier` is the store's cluster, when the store could be read.
pub fn plan(
    cfg: &Config,
    req: &RestoreRequest,
    system_identifier: Option<u64>,
) -> Result<SnapshotPlan, String> {
    let datasets = &cfg.raw.zfs.datasets;
    if datasets.is_empty() {
        return Err("zfs.datasets is not set".into());
    }
    let zfs = Zfs::new(&cfg.raw.zfs.command);
    let local =
        local_snapshots(&zfs, datasets).map_err(|e| format!("cannot list snapshots: {e}"))?;
    if local.is_empty() {
        return Err(format!(
            "no pgagent snapshot of {} on this machine",
            datasets.join(", ")
        ));
    }
    let candidate = newest_usable(&local, &req.target, system_identifier)?;
    let action = match cfg.raw.zfs.restore_mode {
        SnapshotRestoreMode::Clone => clone_action(&zfs, &candidate, &req.pgdata)?,
        SnapshotRestoreMode::Rollback => rollback_action(&zfs, &candidate, req)?,
    };
    Ok(SnapshotPlan {
        record: candidate,
        action,
    })
}

fn newest_usable(
    local: &[LocalSnapshot],
    target: &RecoveryTarget,
    system_identifier: Option<u64>,
) -> Result<SnapshotRecord, String> {
    let mut why = Vec::new();
    for s in local.iter().rev() {
        let r = match &s.record {
            Ok(r) => r,
            Err(e) => {
                why.push(e.clone());
                continue;
            }
        };
        if system_identifier.is_some_and(|id| id != r.system_identifier) {
            why.push(format!(
                "snapshot {} is of another cluster ({})",
                r.id, r.system_identifier
            ));
        } else if r.tablespace_map.is_some() {
            why.push(format!(
                "snapshot {}: the cluster has tablespaces outside the snapshotted datasets",
                r.id
            ));
        } else if !reaches(r, target) {
            why.push(format!(
                "snapshot {} ended after {}",
                r.id,
                target.describe()
            ));
        } else {
            return Ok(r.clone());
        }
    }
    Err(format!("no usable snapshot: {}", why.join("; ")))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

fn clone_action(zfs: &Zfs, r: &SnapshotRecord, pgdata: &Path) -> Result<Action, String> {
    let [snapshot] = r.snapshots.as_slice() else {
        return Err(format!(
            "snapshot {} spans {} datasets; a clone brings back one: set zfs.restore_mode = \"rollback\"",
            r.id,
            r.snapshots.len()
        ));
    };
    let (dataset, _) = snapshot.split_once('@').unwrap_or((snapshot, ""));
    let children = zfs
        .snapshots(dataset, &[])
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|s| s.name.ends_with(&format!("@pgagent-{}", r.id)) && s.name != *snapshot)
        .count();
    if children > 0 {
        return Err(format!(
            "{dataset} has child datasets; a clone brings back one: set zfs.restore_mode = \"rollback\""
        ));
    }
    let pgdata = absolute(pgdata);
    let rel = r.pgdata_in_dataset().unwrap_or("");
    let mountpoint = if rel.is_empty() {
        pgdata.clone()
    } else {
        let text = pgdata.display().to_string();
        match text.trim_end_matches('/').strip_suffix(&format!("/{rel}")) {
            Some(m) if !m.is_empty() => PathBuf::from(m),
            _ => {
                return Err(format!(
                    "the snapshot's data directory is {rel} inside its dataset, so --pgdata must end in /{rel} for a clone"
                ))
            }
        }
    };
    let mounts = read_mounts().unwrap_or_default();
    check_clone_place(&mountpoint, &mounts)?;
    let leaf = dataset.rsplit('/').next().unwrap_or(dataset);
    let parent = dataset.rsplit_once('/').map_or(dataset, |(p, _)| p);
    let clone = if parent == dataset {
        format!("{dataset}/{leaf}-restore-{}", r.id)
    } else {
        format!("{parent}/{leaf}-restore-{}", r.id)
    };
    if zfs.get(&clone, &["mountpoint"]).is_ok() {
        return Err(format!(
            "{clone} exists already (an earlier restore?): zfs destroy it, or restore elsewhere"
        ));
    }
    Ok(Action::Clone {
        snapshot: snapshot.clone(),
        dataset: clone,
        mountpoint,
    })
}

/// A clone can be mounted at `m` when nothing is mounted there and it is missing or an
/// empty directory.
fn check_clone_place(m: &Path, mounts: &[Mount]) -> Result<(), String> {
    if mounts.iter().any(|x| x.mount_point == m) {
        return Err(format!(
            "{} is a mount point already; a clone there would be layered over it",
            m.display()
        ));
    }
    let occupied = std::fs::read_dir(m).is_ok_and(|mut entries| entries.next().is_some());
    match occupied {
        true => Err(format!(
            "{} is not empty; a clone there would hide what it holds (restore elsewhere, or use zfs.restore_mode = \"rollback\" with --force)",
            m.display()
        )),
        false => Ok(()),
    }
}

fn rollback_action(zfs: &Zfs, r: &SnapshotRecord, req: &RestoreRequest) -> Result<Action, String> {
    let pgdata = absolute(&req.pgdata);
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .zip(b.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
    };
    if !same(&pgdata, Path::new(&r.pgdata)) {
        return Err(format!(
            "a rollback restores the snapshot's data directory {}, not {}",
            r.pgdata,
            pgdata.display()
        ));
    }
    if let Some(pid) = running_server(&pgdata) {
        return Err(format!(
            "PostgreSQL runs in {} (pid {pid}): stop it first",
            pgdata.display()
        ));
    }
    if !req.force {
        return Err(format!(
            "a rollback to snapshot {} discards what changed on {} since, and newer snapshots: pass --force",
            r.id,
            r.snapshots.join(", ")
        ));
    }
    let mut snapshots = Vec::new();
    for top in &r.snapshots {
        let (dataset, name) = top.split_once('@').unwrap_or((top, ""));
        let all = zfs.snapshots(dataset, &[]).map_err(|e| e.to_string())?;
        snapshots.extend(
            all.into_iter()
                .map(|s| s.name)
                .filter(|n| n.ends_with(&format!("@{name}"))),
        );
    }
    Ok(Action::Rollback { snapshots })
}

/// Brings the snapshot back and prepares the data directory for recovery to the target,
/// with the same recovery settings as a bucket restore. Returns the recovery settings the
/// snapshot carried and that were taken out of effect (`<file>: <line>`).
///
/// Errors: `zfs` or I/O failures.
pub fn execute(
    cfg: &Config,
    req: &RestoreRequest,
    plan: &SnapshotPlan,
) -> anyhow::Result<Vec<String>> {
    let zfs = Zfs::new(&cfg.raw.zfs.command);
    match &plan.action {
        Action::Clone {
            snapshot,
            dataset,
            mountpoint,
        } => {
            if let Some(parent) = mountpoint.parent() {
                std::fs::create_dir_all(parent)?;
            }
            zfs.clone_to(snapshot, dataset, &mountpoint.display().to_string())?;
            tracing::info!(snapshot, dataset, "cloned to {}", mountpoint.display());
        }
        Action::Rollback { snapshots } => {
            for s in snapshots {
                zfs.rollback(s)?;
                tracing::info!(snapshot = s, "rolled back");
            }
        }
    }
    super::pgdata::prepare_snapshot_copy(&req.pgdata, &plan.record)?;
    super::pgdata::write_recovery_settings(
        &req.pgdata,
        &format!("snapshot {}", plan.record.id),
        req,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, finished: &str, stop: &str) -> SnapshotRecord {
        let mut r: SnapshotRecord =
            serde_json::from_str(super::super::pgdata::tests_record()).unwrap();
        r.id = id.into();
        r.snapshots = vec![format!("tank/pg@pgagent-{id}")];
        r.finished_at = finished.into();
        r.stop_lsn = stop.into();
        r
    }

    fn local(r: SnapshotRecord) -> LocalSnapshot {
        LocalSnapshot {
            id: r.id.clone(),
            names: r.snapshots.clone(),
            record: Ok(r),
        }
    }

    #[test]
    fn the_newest_snapshot_that_reaches_the_target_is_chosen() {
        let snaps = vec![
            local(record(
                "20261121T100000Z",
                "2026-11-21T10:00:05Z",
                "0/3000000",
            )),
            local(record(
                "20261121T110000Z",
                "2026-11-21T11:00:05Z",
                "0/5000000",
            )),
            LocalSnapshot {
                id: "20261121T120000Z".into(),
                names: vec![],
                record: Err("no record".into()),
            },
        ];
        let at = |t: &str| RecoveryTarget::time(t).unwrap();
        assert_eq!(
            newest_usable(&snaps, &RecoveryTarget::Latest, None)
                .unwrap()
                .id,
            "20261121T110000Z"
        );
        assert_eq!(
            newest_usable(&snaps, &at("2026-11-21T10:30:00Z"), None)
                .unwrap()
                .id,
            "20261121T100000Z"
        );
        assert_eq!(
            newest_usable(
                &snaps,
                &RecoveryTarget::Lsn("0/4000000".parse().unwrap()),
                None
            )
            .unwrap()
            .id,
            "20261121T100000Z"
        );
        let why = newest_usable(&snaps, &at("2026-11-21T09:00:00Z"), None).unwrap_err();
        assert!(
            why.contains("no record") && why.contains("ended after"),
            "{why}"
        );
        let why = newest_usable(&snaps, &RecoveryTarget::Latest, Some(99)).unwrap_err();
        assert!(why.contains("another cluster"), "{why}");
    }

    #[test]
    fn a_clone_needs_an_empty_unmounted_place() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("restored");
        check_clone_place(&m, &[]).unwrap();
        std::fs::create_dir(&m).unwrap();
        check_clone_place(&m, &[]).unwrap();
        std::fs::write(m.join("PG_VERSION"), "15").unwrap();
        assert!(check_clone_place(&m, &[])
            .unwrap_err()
            .contains("not empty"));
        let mounted = Mount {
            mount_point: d.path().to_path_buf(),
            fs_type: "zfs".into(),
            source: "tank/x".into(),
        };
        assert!(check_clone_place(d.path(), &[mounted])
            .unwrap_err()
            .contains("mount point"));
    }
}
